-- Payment channels as the chain watcher confirmed them, and the balance proofs IPSX holds.
--
-- A requester channel (role 'requester') runs from a requester's wallet to the operator: its
-- deposit is credited to the requester's ledger balance (external:chain -> requester:<name>) once
-- the watcher confirms it, and the requester's payment agent signs balance proofs for what its
-- usage costs. A payout channel (role 'provider') runs from the operator to a provider: the hub
-- signs balance proofs for what the provider earned. proof_balance / proof_signature are the
-- latest balance proof held for the channel (signed by its sender), the one the watcher submits
-- when the other side starts an uncooperative close with a stale balance.
CREATE TABLE channels (
    channel_id       TEXT PRIMARY KEY CHECK (channel_id ~ '^0x[0-9a-f]{64}$'),
    contract         TEXT NOT NULL,           -- the PaymentChannels address (checksummed)
    sender           TEXT NOT NULL,           -- checksummed addresses
    receiver         TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('requester', 'provider')),
    account_id       BIGINT NULL REFERENCES accounts (id),  -- the requester or provider it serves
    deposit          NUMERIC(78, 0) NOT NULL CHECK (deposit >= 0),
    state            TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closing', 'settled')),
    closing_balance  NUMERIC(78, 0) NULL,
    settle_after     BIGINT NULL,             -- unix seconds: the challenge period's end
    proof_balance    NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (proof_balance >= 0),
    proof_signature  TEXT NULL,
    paid             NUMERIC(78, 0) NULL,     -- at settlement: to the receiver
    refunded         NUMERIC(78, 0) NULL,     -- at settlement: back to the sender
    opened_block     BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (proof_balance <= deposit OR state = 'settled')
);
CREATE INDEX channels_account ON channels (account_id, role) WHERE state <> 'settled';

-- Every chain log the watcher applied, once: a log is applied in the same transaction as its
-- effects, so a restart or a replayed block never applies it twice.
CREATE TABLE chain_logs (
    tx_hash      TEXT NOT NULL,
    log_index    INT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash   TEXT NOT NULL,
    event        TEXT NOT NULL,
    applied_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_hash, log_index)
);

-- How far each watcher has applied the chain: the last block and its hash (to notice a reorg
-- deeper than the confirmations).
CREATE TABLE chain_cursors (
    name        TEXT PRIMARY KEY,
    block       BIGINT NOT NULL,
    block_hash  TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
