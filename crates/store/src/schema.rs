//! Diesel table definitions, mirroring `migrations/` (checked by the
//! `schema_matches_migrations` test).
//!
//! The state columns are `text` in PostgreSQL but have their own SQL types
//! here ([`sql_types`]), so only the store's typed wrappers of the domain
//! vocabularies can be bound to or read from them: a string literal does not
//! compile.

/// SQL types of the vocabulary columns.
pub mod sql_types {
    /// `dispatches.state`: `text` holding a `DispatchState` spelling.
    #[derive(
        Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
    )]
    // The fixed OIDs of `text` and `text[]`: no catalog lookup per connection.
    #[diesel(postgres_type(oid = 25, array_oid = 1009))]
    pub struct DispatchState;

    /// `webhook_events.status`: `text` holding an `EventStatus` spelling.
    #[derive(
        Debug, Clone, Copy, Default, diesel::sql_types::SqlType, diesel::query_builder::QueryId,
    )]
    #[diesel(postgres_type(oid = 25, array_oid = 1009))]
    pub struct EventStatus;
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::EventStatus;

    webhook_events (id) {
        id -> Int8,
        delivery_id -> Text,
        event_type -> Text,
        action -> Text,
        repository_full_name -> Text,
        pull_request_number -> Int8,
        payload -> Json,
        headers -> Jsonb,
        status -> EventStatus,
        processed -> Bool,
        processing_error -> Nullable<Text>,
        received_at -> Timestamptz,
        processed_at -> Nullable<Timestamptz>,
        planned_at -> Nullable<Timestamptz>,
        uuid -> Uuid,
        adopted -> Bool,
        superseded_duplicate -> Bool,
        round -> Int4,
        payload_dropped_at -> Nullable<Timestamptz>,
        labels -> Nullable<Array<Text>>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::DispatchState;

    dispatches (id) {
        id -> Int8,
        event_id -> Int8,
        item_name -> Text,
        pool -> Text,
        queued_label -> Text,
        repository_full_name -> Text,
        pull_request_number -> Int8,
        state -> DispatchState,
        queue_position -> Int8,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        listener_event_id -> Nullable<Text>,
        created_at -> Timestamptz,
        trigger_started_at -> Nullable<Timestamptz>,
        triggered_at -> Nullable<Timestamptz>,
        confirmed_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        round -> Int4,
        forced -> Bool,
    }
}

diesel::table! {
    event_timeline (id) {
        id -> Int8,
        event_id -> Int8,
        dispatch_id -> Nullable<Int8>,
        at -> Timestamptz,
        kind -> Text,
        detail -> Jsonb,
        actor -> Nullable<Text>,
    }
}

diesel::table! {
    pool_controls (pool) {
        pool -> Text,
        paused -> Bool,
        changed_by -> Text,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    pr_labels (repository_full_name, pull_request_number, label) {
        repository_full_name -> Text,
        pull_request_number -> Int8,
        label -> Text,
        wanted -> Bool,
        applied -> Bool,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    catch_up_cursors (hook) {
        hook -> Text,
        last_delivery_id -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    pr_queue_status (repository_full_name, pull_request_number, pool, head_sha) {
        repository_full_name -> Text,
        pull_request_number -> Int8,
        pool -> Text,
        head_sha -> Text,
        pipeline -> Text,
        dispatch_id -> Int8,
        phase -> Text,
        description -> Text,
        significant -> Text,
        applied_phase -> Nullable<Text>,
        applied_description -> Nullable<Text>,
        check_run_id -> Nullable<Int8>,
        pushed_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    catch_up_requests (delivery_guid) {
        delivery_guid -> Text,
        hook -> Text,
        hook_delivery_id -> Int8,
        event_type -> Text,
        requested_at -> Timestamptz,
    }
}

diesel::table! {
    run_cancellations (dispatch_id) {
        dispatch_id -> Int8,
        reason -> Text,
        by_event_id -> Int8,
        namespace -> Text,
        api_version -> Text,
        dispatch_label -> Nullable<Text>,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        last_error -> Nullable<Text>,
        requested_at -> Timestamptz,
        done_at -> Nullable<Timestamptz>,
        runs -> Nullable<Text>,
    }
}

diesel::joinable!(dispatches -> webhook_events (event_id));
diesel::joinable!(run_cancellations -> dispatches (dispatch_id));
diesel::joinable!(event_timeline -> webhook_events (event_id));
diesel::allow_tables_to_appear_in_same_query!(
    webhook_events,
    dispatches,
    pr_labels,
    event_timeline,
    pool_controls,
    pr_queue_status,
    run_cancellations
);
