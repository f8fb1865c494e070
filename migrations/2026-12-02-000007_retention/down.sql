DROP INDEX webhook_events_processed_at_idx;
ALTER TABLE webhook_events DROP COLUMN payload_dropped_at;
