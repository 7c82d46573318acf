-- A market rebuilding its book reads, for every open request order, the exits its deals were
-- opened on (ended deals' too): deals by request.
CREATE INDEX deals_request_id ON deals (request_id);
