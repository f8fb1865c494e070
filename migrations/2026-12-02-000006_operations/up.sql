-- Operating the queue (issue 8): a stored timeline per event, replay rounds,
-- forced replays, and pools an operator paused.

-- What happened to an event and its dispatches, in order: written in the
-- same transaction as the change it records, so it survives restarts and
-- failover. `detail` holds the facts (position, attempt, answer, actor...);
-- the sentence shown to people is rendered from them at read time.
CREATE TABLE event_timeline (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    BIGINT      NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    dispatch_id BIGINT      REFERENCES dispatches (id) ON DELETE CASCADE,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind        TEXT        NOT NULL,
    detail      JSONB       NOT NULL DEFAULT '{}',
    actor       TEXT
);
CREATE INDEX event_timeline_event_idx ON event_timeline (event_id, id);
CREATE INDEX event_timeline_dispatch_idx ON event_timeline (dispatch_id) WHERE dispatch_id IS NOT NULL;

-- A replay adds a new round of dispatches to a finished event; the event's
-- status folds the dispatches of its current round only.
ALTER TABLE webhook_events ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dispatches ADD COLUMN round INTEGER NOT NULL DEFAULT 1;
-- A forced replay runs even though a newer event of its pull request exists:
-- newest-wins leaves it alone.
ALTER TABLE dispatches ADD COLUMN forced BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE dispatches DROP CONSTRAINT dispatches_event_item_key;
ALTER TABLE dispatches ADD CONSTRAINT dispatches_event_item_round_key UNIQUE (event_id, item_name, round);

-- Pools an operator paused: they queue but dispatch nothing.
CREATE TABLE pool_controls (
    pool       TEXT        PRIMARY KEY,
    paused     BOOLEAN     NOT NULL,
    changed_by TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
