DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression') THEN
        ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION default;
    END IF;
END
$$;
