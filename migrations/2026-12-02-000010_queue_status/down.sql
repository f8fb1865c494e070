DROP TABLE pr_queue_status;
