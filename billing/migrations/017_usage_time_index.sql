-- The operator's network page reads the last hour of streams of every account (throughput, outcomes,
-- top accounts): an index on the time alone, beside the per-requester and per-provider ones.
CREATE INDEX usage_events_closed ON usage_events (closed_at);
