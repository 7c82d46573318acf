-- Withdrawals: an account takes funds out of IPSX to its own wallet address.
--
-- Requesting one reserves the amount (a hold with reference 'withdrawal:<id>'), so the funds can
-- no longer be spent while it waits. The operator, or the chain payer of the payments issue,
-- completes it with the transaction that sent the tokens (the hold is posted to
-- 'external:chain', where tokens leave the books) or rejects it with a reason (the hold is voided
-- back); the owner may cancel it while it is pending. A withdrawal is resolved exactly once.
-- The 'withdraw' key scope lets an API key request withdrawals; no key has it unless asked for.
CREATE TABLE withdrawals (
    id            BIGSERIAL PRIMARY KEY,
    reference     TEXT NOT NULL UNIQUE,
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    ledger_account TEXT NOT NULL,
    amount        NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    address       TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'completed', 'rejected', 'cancelled')),
    tx_hash       TEXT NULL,
    reason        TEXT NULL,
    key_id        TEXT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at   TIMESTAMPTZ NULL,
    CHECK ((state = 'completed') = (tx_hash IS NOT NULL)),
    CHECK ((state = 'pending') = (resolved_at IS NULL))
);
CREATE INDEX withdrawals_account ON withdrawals (account_id, id DESC);
CREATE INDEX withdrawals_pending ON withdrawals (id) WHERE state = 'pending';
CREATE UNIQUE INDEX withdrawals_tx ON withdrawals (tx_hash) WHERE tx_hash IS NOT NULL;

ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_known;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_scopes_known
        CHECK (scopes <@ ARRAY['proxy', 'read', 'trade', 'keys', 'withdraw', 'operator']::TEXT[]
               AND cardinality(scopes) > 0);
