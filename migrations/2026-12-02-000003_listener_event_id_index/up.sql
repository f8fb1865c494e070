-- Settling a trigger whose answer was lost asks which PipelineRun eventIDs
-- some dispatch already holds (crates/store: claimed_listener_event_ids).
CREATE INDEX dispatches_listener_event_id_idx ON dispatches (listener_event_id)
    WHERE listener_event_id IS NOT NULL;
