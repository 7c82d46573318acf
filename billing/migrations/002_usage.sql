-- Metering from both sides: the gateway's count of each stream and the provider agent's count of the
-- same stream, keyed by the same event_id so they can be reconciled.
CREATE TABLE usage_events (
    event_id     TEXT PRIMARY KEY CHECK (event_id ~ '^[0-9a-f]{32}$'),
    deal_id      TEXT NULL,
    requester    TEXT NOT NULL,
    provider     TEXT NOT NULL,
    exit_id      TEXT NOT NULL,
    node         TEXT NOT NULL,
    protocol     TEXT NOT NULL CHECK (protocol IN ('http', 'connect', 'socks5')),
    target       TEXT NOT NULL,
    bytes_up     BIGINT NOT NULL CHECK (bytes_up >= 0),
    bytes_down   BIGINT NOT NULL CHECK (bytes_down >= 0),
    opened_at    TIMESTAMPTZ NOT NULL,
    closed_at    TIMESTAMPTZ NOT NULL,
    outcome      TEXT NOT NULL,
    attempts     INT NOT NULL CHECK (attempts >= 0),
    ingested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (closed_at >= opened_at)
);

CREATE INDEX usage_events_requester_closed ON usage_events (requester, closed_at);
CREATE INDEX usage_events_provider_closed ON usage_events (provider, closed_at);
CREATE INDEX usage_events_deal ON usage_events (deal_id) WHERE deal_id IS NOT NULL;

CREATE TABLE agent_reports (
    event_id     TEXT PRIMARY KEY CHECK (event_id ~ '^[0-9a-f]{32}$'),
    provider     TEXT NOT NULL,
    exit_id      TEXT NOT NULL,
    bytes_up     BIGINT NOT NULL CHECK (bytes_up >= 0),
    bytes_down   BIGINT NOT NULL CHECK (bytes_down >= 0),
    opened_at    TIMESTAMPTZ NOT NULL,
    closed_at    TIMESTAMPTZ NOT NULL,
    outcome      TEXT NOT NULL,
    ingested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (closed_at >= opened_at)
);

-- One row per stream the gateway counted; agent_* columns are NULL until (unless) the agent reports.
CREATE VIEW metered_streams AS
SELECT
    u.event_id,
    u.deal_id,
    u.requester,
    u.provider,
    u.exit_id,
    u.node,
    u.protocol,
    u.target,
    u.outcome,
    u.attempts,
    u.opened_at,
    u.closed_at,
    u.bytes_up       AS gateway_bytes_up,
    u.bytes_down     AS gateway_bytes_down,
    a.bytes_up       AS agent_bytes_up,
    a.bytes_down     AS agent_bytes_down,
    a.provider       AS agent_provider,
    a.exit_id        AS agent_exit_id,
    a.opened_at      AS agent_opened_at,
    a.closed_at      AS agent_closed_at,
    a.outcome        AS agent_outcome
FROM usage_events AS u
LEFT JOIN agent_reports AS a USING (event_id);
