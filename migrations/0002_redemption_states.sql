-- voucherd ledger schema, version 2: the two halves of split mode.
--
-- Applied at every open after 0001, so every statement is idempotent; plain SQL
-- that CockroachDB accepts too (no PL/pgSQL, no advisory locks).
--
-- In role `all` a redemption and its wallet credit are one write: its row has
-- no state (status NULL) and counts as credited, its balance is the credit's
-- balance_after. A voucher half (role `voucher`) credits in another service:
-- its redemptions are born pending (status 0) and settled later, credited
-- (status 1, with the balance the wallet answered) or void. A void redemption
-- leaves `redemptions`, releasing its slot (I1) and its user's key (I2), so the
-- primary key, the limit CHECK and UNIQUE (code, phone) of 0001 keep holding
-- for every redemption that is not void. The indexes on the new columns come
-- in 0003.

-- 0 pending, 1 credited (RedemptionStatus::stored); NULL: credited in the same
-- write as the claim (role `all`).
ALTER TABLE redemptions ADD COLUMN IF NOT EXISTS status SMALLINT CHECK (status IN (0, 1));
-- The balance right after the credit, once a settled redemption knows it.
ALTER TABLE redemptions ADD COLUMN IF NOT EXISTS balance BIGINT CHECK (balance >= 0);

-- Void redemptions, by id: what the user's redemption came to until the user
-- claims the voucher again (a live row in `redemptions` then takes precedence).
CREATE TABLE IF NOT EXISTS void_redemptions (
    id          UUID   NOT NULL PRIMARY KEY,
    code        TEXT   NOT NULL,
    phone       BIGINT NOT NULL,
    slot        BIGINT NOT NULL,
    amount      BIGINT NOT NULL,
    redeemed_at BIGINT NOT NULL,
    reason      TEXT   NOT NULL
);

-- Ids of credits the wallet refused for good (`refusal_is_final`): any later
-- transaction with one of these ids is refused again, whatever the wallet holds.
CREATE TABLE IF NOT EXISTS refused_transactions (
    id         UUID   NOT NULL PRIMARY KEY,
    phone      BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    refused_at BIGINT NOT NULL
);
