-- Fair shared pools (issue 10).
--
-- `dispatcher.priority_labels` orders waiting work by its pull request's
-- labels. They are extracted once at intake (where the body is parsed
-- anyway) into this column, so the dispatch pass never reads payloads for
-- them. NULL: the payload had no `pull_request.labels` list (or the row is
-- older than this column).
ALTER TABLE webhook_events ADD COLUMN labels text[];

-- Open work stored before this migration gets its labels once, here.
UPDATE webhook_events e
   SET labels = ARRAY(SELECT l ->> 'name'
                        FROM json_array_elements(e.payload -> 'pull_request' -> 'labels') AS l
                       WHERE json_typeof(l) = 'object' AND json_typeof(l -> 'name') = 'string')
 WHERE e.status IN ('pending', 'queued')
   AND e.payload_dropped_at IS NULL
   AND json_typeof(e.payload -> 'pull_request' -> 'labels') = 'array';

-- Under `capacity.fairness: round_robin_repository` each pass reads, per
-- waiting dispatch, the most recent trigger starts of its repository in its
-- pool (turns carry across passes). This index keeps that a short
-- backwards scan.
CREATE INDEX dispatches_pool_repository_trigger_idx
    ON dispatches (pool, repository_full_name, trigger_started_at DESC)
    WHERE trigger_started_at IS NOT NULL;
