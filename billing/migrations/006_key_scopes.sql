-- API keys get scopes (what they may do), an optional spend limit (base units the deals opened
-- through the key may cost at most) and sub-keys: a key made by another key, never wider than it,
-- revoked with it. One level deep: a sub-key cannot make keys of its own.
ALTER TABLE api_keys
    ADD COLUMN scopes TEXT[] NOT NULL DEFAULT ARRAY['proxy', 'read', 'trade', 'keys']::TEXT[],
    ADD COLUMN spend_limit NUMERIC(78, 0) NULL CHECK (spend_limit > 0),
    ADD COLUMN parent_key_id TEXT NULL REFERENCES api_keys (key_id);
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_scopes_known
        CHECK (scopes <@ ARRAY['proxy', 'read', 'trade', 'keys']::TEXT[] AND cardinality(scopes) > 0);
CREATE INDEX api_keys_parent ON api_keys (parent_key_id) WHERE parent_key_id IS NOT NULL;
