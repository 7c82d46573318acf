-- Fee bumping for the chain payer (billing/withdrawal_sender.py): a transfer that a fee spike
-- leaves unmined is replaced by the same ERC-20 transfer call with the same nonce and higher fees.
--
-- withdrawal_transfers stays one row per nonce (the transfer: which withdrawal, to whom, how much,
-- which nonce, its state); the transactions signed for it move to withdrawal_transfer_versions.
-- Version 0 is the first signature, written in the transaction that moves the withdrawal to
-- 'sending' (as in 020); version n + 1 is a replacement, written in one transaction of its own
-- (after checking the transfer is still 'signed'), before it is broadcast. Nothing is ever deleted
-- or overwritten: after a crash the sender broadcasts the newest stored version again, byte for
-- byte, and never signs a new nonce for a withdrawal whose nonce may still be mined.
--
-- Any version may be the one mined (a node or a block builder may still hold an earlier one), so
-- the sender follows the receipts of all of them. mined_hash is the version that was mined once
-- the transfer is 'confirmed', 'reverted' or 'mismatch' (the withdrawal is completed with it); it
-- is NULL while 'signed', and for 'dropped' (none of ours took the nonce).
CREATE TABLE withdrawal_transfer_versions (
    id           BIGSERIAL PRIMARY KEY,
    transfer_id  BIGINT NOT NULL REFERENCES withdrawal_transfers (id),
    version      INTEGER NOT NULL CHECK (version >= 0),
    tx_hash      TEXT NOT NULL UNIQUE,
    raw_tx       BYTEA NOT NULL,
    -- raw_tx holds the fees the version offers (read back from it, never stored twice): a
    -- replacement raises both by 12.5 % at least (nodes ask 10 %), up to the sender's ceiling.
    -- The chain's head when the version was signed: a replacement is due only after the sender's
    -- wait in blocks (NULL, only for versions 0 stored before this migration, counts as waited
    -- long enough).
    signed_block BIGINT NULL CHECK (signed_block >= 0),
    broadcasts   INTEGER NOT NULL DEFAULT 0,  -- times a node accepted it
    last_error   TEXT NULL,  -- what the node said when it last refused it
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (transfer_id, version),
    UNIQUE (transfer_id, tx_hash),  -- the target of withdrawal_transfers.mined_hash
    CHECK (version = 0 OR signed_block IS NOT NULL)
);

-- Every transfer's one transaction becomes its version 0.
INSERT INTO withdrawal_transfer_versions
    (transfer_id, version, tx_hash, raw_tx, broadcasts, last_error, created_at)
SELECT id, 0, tx_hash, raw_tx, broadcasts, last_error, created_at FROM withdrawal_transfers;

ALTER TABLE withdrawal_transfers DROP CONSTRAINT withdrawal_transfers_tx_hash_key;
ALTER TABLE withdrawal_transfers RENAME COLUMN tx_hash TO mined_hash;
ALTER TABLE withdrawal_transfers ALTER COLUMN mined_hash DROP NOT NULL;
UPDATE withdrawal_transfers SET mined_hash = NULL WHERE state IN ('signed', 'dropped');
ALTER TABLE withdrawal_transfers
    DROP COLUMN raw_tx,
    DROP COLUMN broadcasts,
    DROP COLUMN last_error,
    ADD CONSTRAINT withdrawal_transfers_mined_when_resolved
        CHECK ((mined_hash IS NOT NULL) = (state IN ('confirmed', 'reverted', 'mismatch'))),
    ADD CONSTRAINT withdrawal_transfers_mined_is_a_version
        FOREIGN KEY (id, mined_hash) REFERENCES withdrawal_transfer_versions (transfer_id, tx_hash);
