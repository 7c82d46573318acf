-- The dashboard reads the deals settled in a time range of every account (top requesters and
-- providers today): settled deals by the time they were last written, which is when they settled.
CREATE INDEX deals_settled_at ON deals (updated_at) WHERE state = 'settled';
