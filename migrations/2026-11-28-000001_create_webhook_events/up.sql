-- One row per GitHub delivery. The column names of the original service are
-- kept so existing queries and dashboards keep working.
CREATE TABLE webhook_events (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id          TEXT        NOT NULL,
    event_type           TEXT        NOT NULL,
    action               TEXT        NOT NULL,
    repository_full_name TEXT        NOT NULL,
    pull_request_number  BIGINT      NOT NULL,
    -- `json` (not `jsonb`) keeps the text byte-for-byte: the EventListener's
    -- GitHub interceptor re-verifies the signature over these exact bytes.
    payload              JSON        NOT NULL,
    -- Forwardable X-GitHub-* / X-Hub-* headers as [[name, value], ...], GitHub's spelling.
    headers              JSONB       NOT NULL DEFAULT '[]',
    status               TEXT        NOT NULL DEFAULT 'pending',
    processed            BOOLEAN     NOT NULL DEFAULT FALSE,
    processing_error     TEXT,
    received_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at         TIMESTAMPTZ,
    CONSTRAINT webhook_events_delivery_id_key UNIQUE (delivery_id),
    CONSTRAINT webhook_events_status_check
        CHECK (status IN ('pending', 'queued', 'processed', 'cancelled', 'aborted', 'failed'))
);

-- Listing is newest first, usually filtered by one of these.
CREATE INDEX webhook_events_status_idx ON webhook_events (status, id DESC);
CREATE INDEX webhook_events_pr_idx ON webhook_events (repository_full_name, pull_request_number, id DESC);
