-- Anchoring: batches of settled deals whose Merkle roots the operator posts to DealAnchor.
--
-- A batch is written ahead of its transaction, as 'pending', with its records (so a crash between
-- planning, posting and recording neither loses nor doubles it: the anchorer finishes the pending
-- batch first, checking the contract's batchCount and root), and turns 'anchored' once the
-- transaction that posted it is mined. batch_id is the contract's own sequential id (from 1).
-- Hashes are 0x-hex; amounts base units. total_amount is the sum of the records' charges,
-- total_bytes of their billable bytes: what anchor(batchId, root, recordCount, totalAmount,
-- totalBytes) states on-chain.
CREATE TABLE anchor_batches (
    contract      TEXT NOT NULL,                     -- the DealAnchor address (checksummed)
    batch_id      BIGINT NOT NULL CHECK (batch_id >= 1),
    chain_id      BIGINT NOT NULL,
    root          TEXT NOT NULL CHECK (root ~ '^0x[0-9a-f]{64}$'),
    record_count  INT NOT NULL CHECK (record_count >= 1),
    total_amount  NUMERIC(78, 0) NOT NULL CHECK (total_amount >= 0),
    total_bytes   NUMERIC(78, 0) NOT NULL CHECK (total_bytes >= 0),
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'anchored')),
    from_block    BIGINT NOT NULL,                   -- the chain's head when planned: posted after it
    tx_hash       TEXT NULL,                         -- the last post sent, then the one mined
    block_number  BIGINT NULL,                       -- the block that mined it
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    anchored_at   TIMESTAMPTZ NULL,
    PRIMARY KEY (contract, batch_id),
    CHECK ((state = 'anchored') = (block_number IS NOT NULL AND anchored_at IS NOT NULL)),
    CHECK (state = 'pending' OR tx_hash IS NOT NULL)
);
-- One batch in flight per contract: the next can only be planned once it is anchored.
CREATE UNIQUE INDEX anchor_batches_one_pending ON anchor_batches (contract) WHERE state = 'pending';

-- The records of each batch: a settled deal is in one batch only (deal_id is the key).
CREATE TABLE anchor_records (
    deal_id     TEXT PRIMARY KEY REFERENCES deals (deal_id),
    contract    TEXT NOT NULL,
    batch_id    BIGINT NOT NULL,
    leaf_index  INT NOT NULL CHECK (leaf_index >= 0),  -- among the batch's sorted leaves
    leaf        TEXT NOT NULL CHECK (leaf ~ '^0x[0-9a-f]{64}$'),
    record      BYTEA NOT NULL,                    -- the canonical encoding hashed (billing.deal_record)
    proof       TEXT[] NOT NULL,                   -- sibling hashes from the leaf up to the root
    FOREIGN KEY (contract, batch_id) REFERENCES anchor_batches (contract, batch_id),
    UNIQUE (contract, batch_id, leaf_index)
);
