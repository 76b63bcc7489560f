-- voucherd ledger schema, version 3: the indexes of the redemption states of
-- 0002, idempotent like every migration.
--
-- A migration of its own because each migration is applied as one
-- transaction, and CockroachDB refuses a partial index whose predicate names a
-- column added in the same transaction.

-- A redemption with a state is found by its id when it is settled. Rows made
-- in one write (status NULL) stay out, so the claim path of role `all` writes
-- no more index entries than before.
CREATE UNIQUE INDEX IF NOT EXISTS redemptions_state_id
    ON redemptions (id) WHERE status IS NOT NULL;

-- The pending redemptions, oldest first, for recovery.
CREATE INDEX IF NOT EXISTS redemptions_pending
    ON redemptions (redeemed_at, id) WHERE status = 0;
