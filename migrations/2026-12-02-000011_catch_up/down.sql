DROP TABLE catch_up_requests;
DROP TABLE catch_up_cursors;
