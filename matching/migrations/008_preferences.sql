-- What an account prefers when it sends traffic without an order: the most it pays per GB for the
-- spot deals the gateways ask for (NULL: the market's default). A `-maxprice-` in the proxy user
-- name overrides it for that connection.
CREATE TABLE account_preferences (
    account                TEXT PRIMARY KEY,
    spot_max_price_per_gb  NUMERIC(78, 0) NULL CHECK (spot_max_price_per_gb > 0),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
