-- Rows adopted from the Python service's database (crates/store: migrate.rs).
--
-- `adopted`: the original re-serialized payloads, so GitHub's signature no
-- longer matches the stored bytes; such events are re-signed when forwarded.
-- `superseded_duplicate`: the original stored redeliveries twice; all rows are
-- kept, and only the newest of each delivery id takes part in the uniqueness
-- the intake relies on (ON CONFLICT (delivery_id) WHERE NOT superseded_duplicate).
ALTER TABLE webhook_events
    ADD COLUMN adopted BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN superseded_duplicate BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_delivery_id_key;
CREATE UNIQUE INDEX webhook_events_delivery_id_key ON webhook_events (delivery_id)
    WHERE NOT superseded_duplicate;
