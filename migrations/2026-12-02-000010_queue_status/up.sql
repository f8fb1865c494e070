-- Queue position and ETA on the pull request (issue 10,
-- `github.queue_status: check_run | commit_status`).
--
-- One row per (pull request, pool, head SHA): what GitHub should show
-- (`phase`, `description`, written by the leader's pass) and what it shows
-- (`applied_*`, written by the status worker after GitHub answered). A row
-- is due while the two differ; a position change waits until
-- `pushed_at + github.queue_status_interval` (coalescing), a final phase
-- (started, cancelled) is due at once. Rows are deleted once their final
-- phase is shown.
CREATE TABLE pr_queue_status (
    repository_full_name TEXT        NOT NULL,
    pull_request_number  BIGINT      NOT NULL,
    pool                 TEXT        NOT NULL,
    head_sha             TEXT        NOT NULL,
    pipeline             TEXT        NOT NULL,
    -- The dispatch whose place the row shows (no foreign key: retention
    -- may delete it; a missing dispatch settles the row as cancelled).
    dispatch_id          BIGINT      NOT NULL,
    phase                TEXT        NOT NULL CHECK (phase IN ('queued', 'started', 'cancelled')),
    description          TEXT        NOT NULL,
    -- The part of `description` whose change is sent (everything but the
    -- estimate's minutes): a ticking estimate alone updates nothing.
    significant          TEXT        NOT NULL DEFAULT '',
    applied_phase        TEXT        CHECK (applied_phase IN ('queued', 'started', 'cancelled')),
    applied_description  TEXT,
    check_run_id         BIGINT,
    pushed_at            TIMESTAMPTZ,
    attempts             INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error           TEXT,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_full_name, pull_request_number, pool, head_sha)
);
CREATE INDEX pr_queue_status_pending_idx ON pr_queue_status (next_attempt_at)
    WHERE applied_phase IS DISTINCT FROM phase OR applied_description IS DISTINCT FROM description;
CREATE INDEX pr_queue_status_waiting_idx ON pr_queue_status (dispatch_id) WHERE phase = 'queued';
