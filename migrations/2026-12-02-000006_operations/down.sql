DROP TABLE pool_controls;
ALTER TABLE dispatches DROP CONSTRAINT dispatches_event_item_round_key;
DELETE FROM dispatches WHERE round > 1;
ALTER TABLE dispatches ADD CONSTRAINT dispatches_event_item_key UNIQUE (event_id, item_name);
ALTER TABLE dispatches DROP COLUMN forced;
ALTER TABLE dispatches DROP COLUMN round;
ALTER TABLE webhook_events DROP COLUMN round;
DROP TABLE event_timeline;
