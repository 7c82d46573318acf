-- Each order's place in time priority, which the market replays open orders in when it loads. An
-- order takes one when it is placed and a fresh, larger one from market_orders_queued whenever the
-- engine re-queues it (an amendment that loses time priority, a scheduled offer put on the book
-- as its window opens or re-clipped, a waiting request whose time frame starts), in the
-- transaction that stores the change. Orders placed before this keep their arrival order: which
-- of them had been re-queued was never recorded.
ALTER TABLE market_orders ADD COLUMN queued BIGINT;
CREATE SEQUENCE market_orders_queued AS BIGINT OWNED BY market_orders.queued;
SELECT setval('market_orders_queued', COALESCE(max(seq), 0) + 1, false) FROM market_orders;
UPDATE market_orders SET queued = seq;
ALTER TABLE market_orders
    ALTER COLUMN queued SET DEFAULT nextval('market_orders_queued'),
    ALTER COLUMN queued SET NOT NULL;
-- The replay reads open orders by their place now, not by arrival.
DROP INDEX market_orders_open;
CREATE INDEX market_orders_open ON market_orders (queued) WHERE state = 'open';
