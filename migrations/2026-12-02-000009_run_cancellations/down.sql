DROP INDEX webhook_events_closed_idx;
DROP TABLE run_cancellations;
