-- Drops webhook_events_uuid_key with the column.
ALTER TABLE webhook_events DROP COLUMN uuid;
