-- Cancelling superseded and closed work (issue 10, `cancel_superseded` and
-- `cancel_on_close` per item): one row per dispatch whose PipelineRun must be
-- cancelled, written in the transaction of the decision so a crash never
-- loses a cancel. The cancel worker of the active replica patches the run
-- (`spec.status`) with retries and backoff until `done_at` is set.
--
-- Where the run lives is stored with the row (namespace, Tekton API version,
-- the pool's dispatch label), so a config change cannot lose it; the run is
-- found by the dispatch's `listener_event_id` (read at each attempt) or by
-- the dispatch label.
CREATE TABLE run_cancellations (
    dispatch_id     BIGINT PRIMARY KEY REFERENCES dispatches (id) ON DELETE CASCADE,
    reason          TEXT NOT NULL,
    by_event_id     BIGINT NOT NULL,
    namespace       TEXT NOT NULL,
    api_version     TEXT NOT NULL,
    dispatch_label  TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT,
    requested_at    TIMESTAMPTZ NOT NULL,
    done_at         TIMESTAMPTZ,
    runs            TEXT
);

-- The worker's due query.
CREATE INDEX run_cancellations_pending_idx ON run_cancellations (next_attempt_at)
    WHERE done_at IS NULL;

-- Close detection looks up `closed` events of a pull request.
CREATE INDEX webhook_events_closed_idx ON webhook_events (repository_full_name, pull_request_number, id)
    WHERE action = 'closed';
