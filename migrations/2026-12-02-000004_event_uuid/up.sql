-- The event's public id: a random (version 4) UUID, as the original's uuid4
-- primary key. It is `id` in every event JSON and the key of
-- GET /api/v1/events/{id}; the BIGINT `id` stays the internal FIFO and
-- newest-wins ordering key, never shown to clients.
--
-- New rows get their UUID from the application (the OS random source).
-- The default fills the rows already stored (a volatile default is evaluated
-- once per row while the table is rewritten) and rows an older binary inserts
-- during a rolling upgrade. It only needs PostgreSQL 12 (gen_random_uuid() is
-- built in from 13 and pgcrypto may not be installed): 128 bits of md5 over
-- random() and the clock, with the version and variant nibbles set so it is
-- a well-formed v4 UUID. The unique constraint turns any collision into an
-- error instead of two events sharing an id.
ALTER TABLE webhook_events
    ADD COLUMN uuid UUID NOT NULL DEFAULT (
        overlay(
            overlay(md5(random()::text || clock_timestamp()::text) PLACING '4' FROM 13)
            PLACING substr('89ab', floor(random() * 4)::int + 1, 1) FROM 17
        )::uuid
    );
ALTER TABLE webhook_events ADD CONSTRAINT webhook_events_uuid_key UNIQUE (uuid);
