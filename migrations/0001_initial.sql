-- voucherd ledger schema, version 1, for PostgreSQL and CockroachDB.
--
-- Applied at every open and by `voucherd migrate`, so every statement is
-- idempotent. Times are microseconds since the Unix epoch (BIGINT), phone
-- numbers are the integer of their E.164 digits, ids are UUIDs. Integers are
-- BIGINT throughout because CockroachDB's INT is 8 bytes: one width keeps the
-- driver's parameter types the same on both databases.
--
-- The constraints, not the service, are the last line of defence for the
-- invariants of DESIGN.md: I1 (limit) by the primary key (code, slot) with the
-- slot checked against the voucher's limit, I2 (unique) by UNIQUE (code, phone),
-- I5 (balance) by CHECK (balance >= 0).

CREATE TABLE IF NOT EXISTS vouchers (
    code        TEXT   NOT NULL PRIMARY KEY,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    slot_limit  BIGINT NOT NULL CHECK (slot_limit >= 1),
    starts_at   BIGINT,
    expires_at  BIGINT,
    created_at  BIGINT NOT NULL,
    -- The target of the redemptions' foreign key below, which carries the
    -- limit into every redemption so that a CHECK can bound its slot.
    UNIQUE (code, slot_limit)
);

-- One row per taken slot: the claim of slot k (I1) and of the user's key (I2).
-- The number of a voucher's redemptions is the count of its rows, read on the
-- primary key; no counter row is updated per claim, because such a hot row
-- serialises every claim of a voucher.
CREATE TABLE IF NOT EXISTS redemptions (
    code        TEXT   NOT NULL,
    slot        BIGINT NOT NULL,
    slot_limit  BIGINT NOT NULL,
    phone       BIGINT NOT NULL,
    -- The id of the wallet credit this redemption made (I3).
    id          UUID   NOT NULL,
    amount      BIGINT NOT NULL,
    redeemed_at BIGINT NOT NULL,
    PRIMARY KEY (code, slot),
    UNIQUE (code, phone),
    CHECK (slot >= 1 AND slot <= slot_limit),
    FOREIGN KEY (code, slot_limit) REFERENCES vouchers (code, slot_limit)
);

-- A wallet's head: its balance and the sequence of its newest transaction.
CREATE TABLE IF NOT EXISTS wallets (
    phone         BIGINT NOT NULL PRIMARY KEY,
    balance       BIGINT NOT NULL CHECK (balance >= 0),
    last_sequence BIGINT NOT NULL CHECK (last_sequence >= 0),
    created_at    BIGINT NOT NULL
);

-- A wallet's history. `sequence` counts the wallet's own transactions from 1,
-- so it is assigned under the wallet row's lock and always increases along the
-- wallet's history, whichever instance writes.
CREATE TABLE IF NOT EXISTS wallet_transactions (
    phone         BIGINT  NOT NULL,
    sequence      BIGINT  NOT NULL CHECK (sequence >= 1),
    id            UUID    NOT NULL,
    -- True when the id derives from a client's Idempotency-Key and may come again.
    replayable    BOOLEAN NOT NULL,
    amount        BIGINT  NOT NULL,
    reference     TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    balance_after BIGINT  NOT NULL CHECK (balance_after >= 0),
    PRIMARY KEY (phone, sequence)
);

-- Only ids that can be replayed are indexed: random ids never repeat, and a
-- voucher credit is deduplicated by the redemption's UNIQUE (code, phone).
CREATE UNIQUE INDEX IF NOT EXISTS wallet_transactions_replayable_id
    ON wallet_transactions (id) WHERE replayable;
