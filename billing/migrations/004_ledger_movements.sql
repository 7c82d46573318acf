-- Movements and holds.
--
-- A movement is a balanced set of legs (ledger_transfers rows) posted in one transaction and
-- idempotent by its reference. ledger_balances is maintained in the same transaction as the legs
-- (so it always equals credits minus debits of the entries, which billing.ledger.check_balances
-- verifies) and lets PostgreSQL refuse, row-locked, any movement that would take an account below
-- zero; only the accounts marked overdraft (the treasury, external counterparts) may go negative.
-- A hold is a two-phase reserve: funds move to the account's hold account, and the hold is
-- resolved exactly once: posted in part or whole, the rest voided back.
CREATE TABLE ledger_movements (
    id          BIGSERIAL PRIMARY KEY,
    reference   TEXT NULL UNIQUE,
    kind        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE ledger_transfers ADD COLUMN movement_id BIGINT NULL REFERENCES ledger_movements (id);
INSERT INTO ledger_movements (id, reference, kind, created_at)
    SELECT id, reference, kind, created_at FROM ledger_transfers;
UPDATE ledger_transfers SET movement_id = id;
SELECT setval(pg_get_serial_sequence('ledger_movements', 'id'),
              COALESCE((SELECT max(id) FROM ledger_movements), 0) + 1, false);
ALTER TABLE ledger_transfers ALTER COLUMN movement_id SET NOT NULL;
ALTER TABLE ledger_transfers DROP COLUMN reference;
CREATE INDEX ledger_transfers_movement ON ledger_transfers (movement_id);

CREATE TABLE ledger_balances (
    account    TEXT PRIMARY KEY CHECK (account <> ''),
    balance    NUMERIC(78, 0) NOT NULL,
    overdraft  BOOLEAN NOT NULL,
    CHECK (overdraft OR balance >= 0)
);
INSERT INTO ledger_balances (account, balance, overdraft)
    SELECT account, SUM(delta), account = 'operator:treasury' OR account LIKE 'external:%'
    FROM (SELECT credit_account AS account, amount AS delta FROM ledger_transfers
          UNION ALL
          SELECT debit_account, -amount FROM ledger_transfers) AS entries
    GROUP BY account;

CREATE TABLE ledger_holds (
    id           BIGSERIAL PRIMARY KEY,
    reference    TEXT NOT NULL UNIQUE,
    account      TEXT NOT NULL,
    amount       NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    posted       NUMERIC(78, 0) NOT NULL DEFAULT 0 CHECK (posted >= 0 AND posted <= amount),
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'posted', 'voided')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at  TIMESTAMPTZ NULL,
    CHECK ((state = 'pending') = (resolved_at IS NULL)),
    CHECK (state = 'posted' OR posted = 0)
);
CREATE INDEX ledger_holds_pending ON ledger_holds (account) WHERE state = 'pending';
