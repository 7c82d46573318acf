-- The market's own tables (owned by matching/): orders as placed and amended, deals with their
-- lifecycle state, and every deal transition with who caused it. Amounts are base units.
CREATE TABLE market_orders (
    seq         BIGSERIAL PRIMARY KEY,               -- arrival order: time priority on reload
    order_id    TEXT NOT NULL UNIQUE CHECK (order_id ~ '^[A-Za-z0-9_]{1,64}$'),
    side        TEXT NOT NULL CHECK (side IN ('offer', 'request')),
    account     TEXT NOT NULL,                       -- the account name that placed it
    terms       JSONB NOT NULL,                      -- the order's fields, as last amended
    filled      INT NOT NULL DEFAULT 0 CHECK (filled >= 0),
    state       TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'cancelled', 'expired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX market_orders_open ON market_orders (seq) WHERE state = 'open';
CREATE INDEX market_orders_account ON market_orders (account, seq);

CREATE TABLE deals (
    deal_id         TEXT PRIMARY KEY,
    request_id      TEXT NOT NULL,
    offer_id        TEXT NOT NULL,
    requester       TEXT NOT NULL,                   -- account names
    provider        TEXT NOT NULL,
    exit_id         TEXT NOT NULL,
    price_per_gb    NUMERIC(78, 0) NOT NULL CHECK (price_per_gb >= 0),
    price_per_hour  NUMERIC(78, 0) NOT NULL CHECK (price_per_hour >= 0),
    reserve         NUMERIC(78, 0) NOT NULL CHECK (reserve >= 0),
    duration_s      BIGINT NOT NULL,
    traffic_bytes   BIGINT NOT NULL,
    dedicated       BOOLEAN NOT NULL,
    spot            BOOLEAN NOT NULL DEFAULT false,
    state           TEXT NOT NULL,
    record          JSONB NOT NULL,                  -- the deal as matching.deals holds it
    charge          NUMERIC(78, 0) NULL,             -- set when settled
    commission      NUMERIC(78, 0) NULL,
    billable_bytes  BIGINT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deals_requester ON deals (requester, created_at);
CREATE INDEX deals_provider ON deals (provider, created_at);
CREATE INDEX deals_live ON deals (state) WHERE state NOT IN ('settled', 'cancelled', 'expired');

CREATE TABLE deal_transitions (
    id          BIGSERIAL PRIMARY KEY,
    deal_id     TEXT NOT NULL REFERENCES deals (deal_id),
    from_state  TEXT NOT NULL,
    to_state    TEXT NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          BIGINT NOT NULL,                     -- unix seconds
    detail      TEXT NOT NULL DEFAULT '',
    noop        BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX deal_transitions_deal ON deal_transitions (deal_id, id);
