-- Work in flight per pool: an incremental pass reads it every time (a few
-- rows however deep the queue), instead of scanning every open dispatch.
CREATE INDEX dispatches_in_flight_idx ON dispatches (pool)
    WHERE state IN ('triggering', 'triggered');
