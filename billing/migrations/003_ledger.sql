-- A minimal double-entry ledger: each row moves `amount` base units (18 decimals) from
-- debit_account to credit_account, so every movement balances by construction. Balances are
-- derived (credits minus debits), never stored.
CREATE TABLE ledger_transfers (
    id              BIGSERIAL PRIMARY KEY,
    debit_account   TEXT NOT NULL CHECK (debit_account <> ''),
    credit_account  TEXT NOT NULL CHECK (credit_account <> ''),
    amount          NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    kind            TEXT NOT NULL,
    reference       TEXT NULL UNIQUE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (debit_account <> credit_account)
);

CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account);
