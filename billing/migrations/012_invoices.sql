-- Invoices: what a requester paying over a payment channel owes for its settled deals.
--
-- Each invoice bills settled deals not billed before, and names the cumulative balance the
-- requester's next balance proof must state to pay it (the previous invoice's, plus this one's
-- amount); it never goes past the channel's deposit. A balance proof for that cumulative amount
-- pays it and every earlier invoice of the channel. A deal is billed by one invoice at most.
CREATE TABLE invoices (
    invoice_id  BIGSERIAL PRIMARY KEY,
    channel_id  TEXT NOT NULL REFERENCES channels (channel_id),
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    amount      NUMERIC(78, 0) NOT NULL CHECK (amount > 0),
    cumulative  NUMERIC(78, 0) NOT NULL CHECK (cumulative >= amount),
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'paid')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at     TIMESTAMPTZ NULL,
    UNIQUE (channel_id, cumulative),
    CHECK ((state = 'paid') = (paid_at IS NOT NULL))
);
CREATE INDEX invoices_account ON invoices (account_id, invoice_id DESC);
CREATE INDEX invoices_open ON invoices (channel_id) WHERE state = 'open';

CREATE TABLE invoiced_deals (
    deal_id     TEXT PRIMARY KEY REFERENCES deals (deal_id),
    invoice_id  BIGINT NOT NULL REFERENCES invoices (invoice_id),
    charge      NUMERIC(78, 0) NOT NULL CHECK (charge > 0)
);
CREATE INDEX invoiced_deals_invoice ON invoiced_deals (invoice_id);
