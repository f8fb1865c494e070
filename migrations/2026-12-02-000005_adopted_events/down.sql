-- Fails while superseded duplicates exist (they cannot be unique).
DROP INDEX webhook_events_delivery_id_key;
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_delivery_id_key UNIQUE (delivery_id);
ALTER TABLE webhook_events DROP COLUMN superseded_duplicate, DROP COLUMN adopted;
