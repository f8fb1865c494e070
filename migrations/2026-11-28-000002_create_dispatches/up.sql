-- The dispatch engine: one row per (event, matched config item).

-- NULL = not yet matched against the config. Events stored before this
-- migration stay NULL: they were acknowledged to GitHub, so they get dispatched.
ALTER TABLE webhook_events ADD COLUMN planned_at TIMESTAMPTZ;
CREATE INDEX webhook_events_unplanned_idx ON webhook_events (id) WHERE planned_at IS NULL;

CREATE TABLE dispatches (
    id                   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id             BIGINT      NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    item_name            TEXT        NOT NULL,
    pool                 TEXT        NOT NULL,
    queued_label         TEXT        NOT NULL,
    repository_full_name TEXT        NOT NULL,
    pull_request_number  BIGINT      NOT NULL,
    state                TEXT        NOT NULL DEFAULT 'queued',
    -- FIFO key: the first event of this PR's chain of superseding events.
    queue_position       BIGINT      NOT NULL,
    attempts             INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error           TEXT,
    listener_event_id    TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    trigger_started_at   TIMESTAMPTZ,
    triggered_at         TIMESTAMPTZ,
    confirmed_at         TIMESTAMPTZ,
    finished_at          TIMESTAMPTZ,
    CONSTRAINT dispatches_event_item_key UNIQUE (event_id, item_name),
    CONSTRAINT dispatches_state_check
        CHECK (state IN ('queued', 'triggering', 'triggered', 'confirmed', 'cancelled', 'failed'))
);

-- Open work per pool in FIFO order (the engine's hot query).
CREATE INDEX dispatches_open_idx ON dispatches (pool, queue_position, id)
    WHERE state IN ('queued', 'triggering', 'triggered');
-- Newest-wins checks: the dispatches of one PR and item by event.
CREATE INDEX dispatches_pr_item_idx ON dispatches (repository_full_name, pull_request_number, item_name, event_id);

-- Desired `<pipeline>/queued` labels and whether GitHub has them yet.
CREATE TABLE pr_labels (
    repository_full_name TEXT        NOT NULL,
    pull_request_number  BIGINT      NOT NULL,
    label                TEXT        NOT NULL,
    wanted               BOOLEAN     NOT NULL,
    applied              BOOLEAN     NOT NULL DEFAULT FALSE,
    attempts             INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error           TEXT,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_full_name, pull_request_number, label)
);
CREATE INDEX pr_labels_pending_idx ON pr_labels (next_attempt_at) WHERE wanted <> applied;

-- Wake-ups: replicas send `NOTIFY dispatcher_wakeup` *after* a delivery
-- commits, from a separate statement. A NOTIFY inside the inserting
-- transaction (say, from a trigger) would take PostgreSQL's notification-queue
-- lock through every commit and serialise all concurrent intake.
