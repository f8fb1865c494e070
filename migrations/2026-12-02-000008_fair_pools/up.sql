-- Fair shared pools (issue 10): under `capacity.fairness:
-- round_robin_repository` each pass reads, per waiting dispatch, the most
-- recent trigger starts of its repository in its pool (turns carry across
-- passes). This index keeps that a short backwards scan.
CREATE INDEX dispatches_pool_repository_trigger_idx
    ON dispatches (pool, repository_full_name, trigger_started_at DESC)
    WHERE trigger_started_at IS NOT NULL;
