-- The API key that placed an order, or whose traffic opened a spot deal (NULL: a session token or
-- the operator), so a key's spend limit can be held against what was opened through it.
ALTER TABLE market_orders ADD COLUMN key_id TEXT NULL;
ALTER TABLE deals ADD COLUMN key_id TEXT NULL;
CREATE INDEX deals_key ON deals (key_id) WHERE key_id IS NOT NULL;
