DROP INDEX dispatches_pool_repository_trigger_idx;
ALTER TABLE webhook_events DROP COLUMN labels;
