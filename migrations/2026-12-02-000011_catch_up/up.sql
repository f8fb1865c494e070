-- Catch-up of missed deliveries (issue 10, `github.catch_up`).
--
-- `catch_up_cursors`: per webhook (its key, e.g. `repos/o/r/hooks/1`), the
-- newest delivery id already looked at; a pass lists only newer deliveries.
-- `catch_up_requests`: every delivery guid the dispatcher asked GitHub to
-- redeliver. A guid is asked for at most once: the row is inserted before
-- the request (the primary key decides between passes and replicas) and
-- deleted again only when the request failed.
CREATE TABLE catch_up_cursors (
    hook TEXT PRIMARY KEY,
    last_delivery_id BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE catch_up_requests (
    delivery_guid TEXT PRIMARY KEY,
    hook TEXT NOT NULL,
    hook_delivery_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
