-- White-label resellers (read and written by billing/resellers.py and billing/reseller_terms.py only).
--
-- A reseller is an account the operator flagged as one: it has a brand (what its customers see on
-- its gateway listener instead of IPSX), a markup in basis points of each settled charge of its
-- sub-users (10000 = 100 %), and the endpoint its customers are told to use (informational: the
-- listener itself is `ipsx gateway --reseller-port NAME=PORT`, the hostname a load balancer's).
CREATE TABLE resellers (
    account_id     BIGINT PRIMARY KEY REFERENCES accounts (id),
    brand          TEXT NOT NULL CHECK (char_length(brand) BETWEEN 1 AND 64),
    markup_bps     INT NOT NULL DEFAULT 0 CHECK (markup_bps BETWEEN 0 AND 100000),
    endpoint_host  TEXT NULL CHECK (endpoint_host ~ '^[a-z0-9.-]{1,253}$'),
    endpoint_port  INT NULL CHECK (endpoint_port BETWEEN 1 AND 65535),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A sub-user is an account of its own (its ledger balance, keys, usage and deals are those of
-- any account, under an internal name), owned by one reseller, which knows it by `name`: unique
-- per reseller, the proxy user name its customer gives on the reseller's listener. A monthly
-- traffic quota (bytes) and spend limit (base units) stop its new streams once reached; NULL is
-- no limit. A suspended sub-user is refused by the listener.
CREATE TABLE reseller_subusers (
    account_id    BIGINT PRIMARY KEY REFERENCES accounts (id),
    reseller_id   BIGINT NOT NULL REFERENCES resellers (account_id),
    name          TEXT NOT NULL CHECK (name ~ '^[a-z0-9_]{1,32}$'),
    quota_bytes   BIGINT NULL CHECK (quota_bytes >= 0),
    spend_limit   NUMERIC(78, 0) NULL CHECK (spend_limit >= 0),
    suspended_at  TIMESTAMPTZ NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (reseller_id, name)
);

-- The markup each settled deal of a sub-user owed its reseller (`due`, rounded down) and what its
-- balance covered (`charged`, moved to the reseller's earnings in the settlement's transaction,
-- ledger reference 'markup:<deal_id>'). One row per deal: a retried settlement charges nothing twice.
CREATE TABLE reseller_markups (
    deal_id      TEXT PRIMARY KEY,
    reseller_id  BIGINT NOT NULL REFERENCES resellers (account_id),
    subuser_id   BIGINT NOT NULL REFERENCES reseller_subusers (account_id),
    charge       NUMERIC(78, 0) NOT NULL CHECK (charge >= 0),
    markup_bps   INT NOT NULL CHECK (markup_bps BETWEEN 0 AND 100000),
    due          NUMERIC(78, 0) NOT NULL CHECK (due >= 0),
    charged      NUMERIC(78, 0) NOT NULL CHECK (charged >= 0 AND charged <= due),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX reseller_markups_reseller ON reseller_markups (reseller_id, created_at);
CREATE INDEX reseller_markups_subuser ON reseller_markups (subuser_id, created_at);
