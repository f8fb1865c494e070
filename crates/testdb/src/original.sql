-- The Python dispatcher's database (operator-pipelines, webhook_dispatcher's
-- SQLAlchemy model `WebhookEvent`, created by `create_all`), with rows in
-- every status, a delivery stored twice, mixed header spellings and naive
-- (UTC) timestamps. Used by the adoption tests.
CREATE TABLE webhook_events (
    id UUID NOT NULL,
    delivery_id VARCHAR(255) NOT NULL,
    action VARCHAR(100) NOT NULL,
    payload JSON NOT NULL,
    received_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    repository_full_name VARCHAR(255) NOT NULL,
    pull_request_number INTEGER NOT NULL,
    processed BOOLEAN NOT NULL,
    processing_error TEXT,
    processed_at TIMESTAMP WITHOUT TIME ZONE,
    status VARCHAR(50) NOT NULL,
    request_headers JSON,
    CONSTRAINT webhook_events_pkey PRIMARY KEY (id)
);
CREATE INDEX ix_webhook_events_delivery_id ON webhook_events (delivery_id);
CREATE INDEX ix_webhook_events_status ON webhook_events (status);
CREATE INDEX ix_webhook_events_processed ON webhook_events (processed);
CREATE INDEX ix_webhook_events_received_at ON webhook_events (received_at);
CREATE INDEX ix_webhook_events_repository_full_name ON webhook_events (repository_full_name);
CREATE INDEX ix_webhook_events_pull_request_number ON webhook_events (pull_request_number);

INSERT INTO webhook_events VALUES
('00000000-0000-4000-8000-000000000001', 'd-processed', 'opened',
 '{"action": "opened", "number": 1, "pull_request": {"number": 1}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 10:00:00', 'o/r', 1, TRUE, NULL, '2024-01-01 10:00:05', 'processed',
 '{"Host": "dispatcher", "User-Agent": "GitHub-Hookshot/abc", "Content-Type": "application/json", "X-Github-Event": "pull_request", "X-Github-Delivery": "d-processed", "X-Hub-Signature-256": "sha256=00", "X-Hub-Signature": "sha1=00"}'),
('00000000-0000-4000-8000-000000000002', 'd-cancelled', 'synchronize',
 '{"action": "synchronize", "number": 2, "pull_request": {"number": 2}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 10:01:00', 'o/r', 2, TRUE, 'Cancelled due to receiving a newer event for the same pull request',
 '2024-01-01 10:02:00', 'cancelled',
 '{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-cancelled"}'),
('00000000-0000-4000-8000-000000000003', 'd-aborted', 'closed',
 '{"action": "closed", "number": 3, "pull_request": {"number": 3}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 10:03:00', 'o/r', 3, TRUE, 'Unsupported event', '2024-01-01 10:03:01', 'aborted',
 '{"x-github-event": "pull_request", "x-github-hook-installation-target-id": "42"}'),
('00000000-0000-4000-8000-000000000004', 'd-dup', 'opened',
 '{"action": "opened", "number": 4, "pull_request": {"number": 4}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 11:00:00', 'o/r', 4, TRUE, 'Cancelled due to receiving a newer event for the same pull request',
 '2024-01-01 11:00:10', 'cancelled',
 '{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-dup"}'),
('00000000-0000-4000-8000-000000000005', 'd-dup', 'opened',
 '{"action": "opened", "number": 4, "pull_request": {"number": 4}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 11:00:10', 'o/r', 4, FALSE, NULL, NULL, 'queued',
 '{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-dup", "X-Hub-Signature-256": "sha256=stale", "Accept": "*/*"}'),
('00000000-0000-4000-8000-000000000006', 'd-pending', 'opened',
 '{"action": "opened", "number": 5, "pull_request": {"number": 5}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 12:00:00', 'o/r', 5, FALSE, NULL, NULL, 'pending',
 '{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-pending"}'),
('00000000-0000-4000-8000-000000000007', 'd-queued', 'reopened',
 '{"action": "reopened", "number": 6, "pull_request": {"number": 6}, "repository": {"full_name": "o/r"}}',
 '2024-01-01 11:30:00', 'o/r', 6, FALSE, NULL, NULL, 'queued',
 '{"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-queued"}');
