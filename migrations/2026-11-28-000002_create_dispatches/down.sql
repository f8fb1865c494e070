DROP TABLE pr_labels;
DROP TABLE dispatches;
DROP INDEX webhook_events_unplanned_idx;
ALTER TABLE webhook_events DROP COLUMN planned_at;
