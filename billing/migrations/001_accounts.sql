-- Accounts (one per wallet address) and their API keys; only sha256(secret) is stored.
CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    address     TEXT NOT NULL UNIQUE CHECK (address ~ '^0x[0-9a-fA-F]{40}$'),
    name        TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9_]{1,32}$'),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    key_id         TEXT PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{12}$'),
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    label          TEXT NOT NULL DEFAULT '',
    secret_sha256  BYTEA NOT NULL CHECK (octet_length(secret_sha256) = 32),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at     TIMESTAMPTZ NULL
);

CREATE INDEX api_keys_account_id ON api_keys (account_id);
