-- Retention (issue 9): finished events older than `retention.max_age` are
-- deleted, and their payloads may be dropped earlier
-- (`retention.payload_max_age`).
--
-- A dropped payload becomes the JSON `null` (the column stays NOT NULL and
-- byte-exact while present; intake only stores JSON objects, so `null` is
-- never a real payload) and `payload_dropped_at` records when. The column is
-- the mark every reader checks.
ALTER TABLE webhook_events ADD COLUMN payload_dropped_at TIMESTAMPTZ;

-- Retention picks finished events by when they finished, oldest first.
CREATE INDEX webhook_events_processed_at_idx ON webhook_events (processed_at, id)
    WHERE processed_at IS NOT NULL;
