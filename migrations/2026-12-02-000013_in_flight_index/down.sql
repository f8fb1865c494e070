DROP INDEX dispatches_in_flight_idx;
