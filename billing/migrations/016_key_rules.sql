-- An API key's standing rules: targeting keys (country, type, retryon, maxretries, …) in the proxy
-- user name's form without the account, e.g. 'retryon-403,429-maxretries-2'. Every connection made
-- with the key gets them unless its user name or X-IPSX-* headers say otherwise (gateway.targeting
-- parse_rules / with_rules). NULL: none. Checked by the code that writes it, not here: the grammar
-- is the gateway's.
ALTER TABLE api_keys ADD COLUMN rules TEXT NULL CHECK (rules IS NULL OR char_length(rules) BETWEEN 1 AND 200);
