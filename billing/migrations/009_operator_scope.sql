-- The operator scope: a key that may decide disputed deals. Only the operator's command line
-- (`ipsx key create --scopes operator`) grants it; the API never does, and no sub-key has it.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_scopes_known;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_scopes_known
        CHECK (scopes <@ ARRAY['proxy', 'read', 'trade', 'keys', 'operator']::TEXT[] AND cardinality(scopes) > 0);
