-- The chain payer (billing/withdrawal_sender.py): IPSX sends each withdrawal's tokens on-chain
-- from the operator's wallet and completes the withdrawal once the transfer is confirmed.
--
-- Two new withdrawal states, neither of which resolves the hold:
--   'sending' -- a transfer is signed and stored (withdrawal_transfers, state 'signed'); it may be
--                on-chain already. Nobody but the sender moves it on: not the owner, not the
--                operator, since the transfer may still land.
--   'failed'  -- its transfer reverted (or moved something else than asked): the tokens did not
--                leave as asked, the hold is kept, and the operator approves it again (a new
--                transfer), completes it by hand, or rejects it.
-- 'approved_at': when the operator let the sender send it (needed above the sender's approval limit).
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_state_check;
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_check1;
ALTER TABLE withdrawals
    ADD COLUMN approved_at TIMESTAMPTZ NULL,
    ADD CONSTRAINT withdrawals_state_known
        CHECK (state IN ('pending', 'sending', 'completed', 'failed', 'rejected', 'cancelled')),
    ADD CONSTRAINT withdrawals_resolved_when_final
        CHECK ((state IN ('pending', 'sending', 'failed')) = (resolved_at IS NULL));
CREATE INDEX withdrawals_open ON withdrawals (id) WHERE state IN ('sending', 'failed');

-- Every transaction the sender signs for a withdrawal, written (with its raw signed bytes) in the
-- same transaction that moves the withdrawal to 'sending', before it is broadcast: after a crash
-- the very same transaction is broadcast again, never a new one. A transfer is
--   'signed'    -- stored, maybe broadcast, maybe mined, not yet confirmed;
--   'confirmed' -- mined with status 1 and the exact Transfer log, confirmations deep: the
--                  withdrawal is completed with its hash;
--   'reverted'  -- mined with status 0, confirmations deep: the withdrawal is failed;
--   'mismatch'  -- mined with status 1 but its logs are not the one Transfer asked for: failed;
--   'dropped'   -- its nonce was taken by another transaction confirmations deep, so it can never
--                  be mined: the withdrawal goes back to 'pending' for a new transfer.
-- At most one 'signed' transfer per withdrawal, and no two transfers share a nonce of a sender.
CREATE TABLE withdrawal_transfers (
    id            BIGSERIAL PRIMARY KEY,
    withdrawal_id BIGINT NOT NULL REFERENCES withdrawals (id),
    chain_id      BIGINT NOT NULL,
    token         TEXT NOT NULL,
    sender        TEXT NOT NULL,
    recipient     TEXT NOT NULL,
    amount        NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    nonce         BIGINT NOT NULL CHECK (nonce >= 0),
    tx_hash       TEXT NOT NULL UNIQUE,
    raw_tx        BYTEA NOT NULL,
    state         TEXT NOT NULL DEFAULT 'signed'
                  CHECK (state IN ('signed', 'confirmed', 'reverted', 'mismatch', 'dropped')),
    broadcasts    INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT NULL,
    block_number  BIGINT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at   TIMESTAMPTZ NULL,
    UNIQUE (chain_id, sender, nonce),
    CHECK ((state = 'signed') = (resolved_at IS NULL))
);
CREATE UNIQUE INDEX withdrawal_transfers_live ON withdrawal_transfers (withdrawal_id) WHERE state = 'signed';
CREATE INDEX withdrawal_transfers_of ON withdrawal_transfers (withdrawal_id, id);
