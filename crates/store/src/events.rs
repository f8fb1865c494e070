//! [`EventRepository`] on PostgreSQL: idempotent intake, listing, detail.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use dispatcher_core::domain::{
    DispatchId, DispatchRecord, DispatchState, EventDetail, EventId, EventRecord, EventRef,
    EventUuid,
};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::ports::{
    EventFilter, EventPage, EventQuery, EventRepository, RecordOutcome, StoreError,
};
use time::OffsetDateTime;

use crate::error;
use crate::pool::Database;
use crate::raw_json::RawJsonRef;
use crate::schema::{dispatches, webhook_events};
use crate::vocab::{DbDispatchState, DbEventStatus};

/// Events stored in PostgreSQL; cheap to clone.
#[derive(Debug, Clone)]
pub struct PgEvents {
    pub(crate) db: Database,
}

#[derive(Insertable)]
#[diesel(table_name = webhook_events)]
pub(crate) struct NewRow<'a> {
    uuid: uuid::Uuid,
    delivery_id: &'a str,
    event_type: &'a str,
    action: &'a str,
    repository_full_name: &'a str,
    pull_request_number: i64,
    payload: RawJsonRef<'a>,
    headers: serde_json::Value,
    labels: Option<&'a [String]>,
}

impl<'a> NewRow<'a> {
    pub(crate) fn from_event(event: &'a NewEvent) -> Self {
        Self {
            // Generated here (OS random source) rather than by the column's
            // default, which exists for older rows and older binaries.
            uuid: uuid::Uuid::new_v4(),
            delivery_id: &event.delivery_id,
            event_type: &event.event_type,
            action: &event.action,
            repository_full_name: &event.repository_full_name,
            pull_request_number: event.pull_request_number,
            payload: RawJsonRef(&event.payload),
            headers: headers_to_json(&event.headers),
            labels: event.labels.as_deref(),
        }
    }
}

#[derive(Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = webhook_events)]
pub(crate) struct EventRow {
    id: i64,
    uuid: uuid::Uuid,
    pub(crate) delivery_id: String,
    action: String,
    repository_full_name: String,
    pull_request_number: i64,
    processed: bool,
    processing_error: Option<String>,
    received_at: OffsetDateTime,
    processed_at: Option<OffsetDateTime>,
    status: DbEventStatus,
}

impl From<EventRow> for EventRecord {
    fn from(r: EventRow) -> Self {
        Self {
            id: EventId(r.id),
            uuid: EventUuid(r.uuid),
            delivery_id: r.delivery_id,
            action: r.action,
            repository_full_name: r.repository_full_name,
            pull_request_number: r.pull_request_number,
            processed: r.processed,
            processing_error: r.processing_error,
            received_at: r.received_at,
            processed_at: r.processed_at,
            status: r.status.0,
        }
    }
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = dispatches)]
struct DispatchRow {
    id: i64,
    item_name: String,
    round: i32,
    pool: String,
    state: DbDispatchState,
    attempts: i32,
    next_attempt_at: OffsetDateTime,
    last_error: Option<String>,
    listener_event_id: Option<String>,
    created_at: OffsetDateTime,
    triggered_at: Option<OffsetDateTime>,
    confirmed_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
}

/// Headers are stored as `[[name, value], ...]` to keep order and duplicates.
pub(crate) fn headers_to_json(headers: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect(),
    )
}

pub(crate) fn headers_from_json(value: &serde_json::Value) -> Vec<(String, String)> {
    value
        .as_array()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|p| {
                    Some((
                        p.get(0)?.as_str()?.to_owned(),
                        p.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl PgEvents {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }
}

fn filtered<'a>(filter: &'a EventFilter) -> webhook_events::BoxedQuery<'a, diesel::pg::Pg> {
    let mut q = webhook_events::table.into_boxed();
    if let Some(s) = filter.status {
        q = q.filter(webhook_events::status.eq(DbEventStatus(s)));
    }
    if let Some(r) = &filter.repository_full_name {
        q = q.filter(webhook_events::repository_full_name.eq(r));
    }
    if let Some(n) = filter.pull_request_number {
        q = q.filter(webhook_events::pull_request_number.eq(n));
    }
    if let Some(a) = &filter.action {
        q = q.filter(webhook_events::action.eq(a));
    }
    if let Some(d) = &filter.delivery_id {
        q = q.filter(webhook_events::delivery_id.eq(d));
    }
    if let Some(p) = filter.processed {
        q = q.filter(webhook_events::processed.eq(p));
    }
    q
}

impl EventRepository for PgEvents {
    async fn record(&self, event: NewEvent) -> Result<RecordOutcome, StoreError> {
        // Grouped with concurrent deliveries into one insert (crate::intake);
        // answered only after its row committed.
        self.db.record_event(event).await
    }

    async fn list(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let mut conn = self.db.conn().await?;
        let total: i64 = filtered(&query.filter)
            .count()
            .get_result(&mut conn)
            .await
            .map_err(error::query)?;
        let offset = i64::from(query.page.saturating_sub(1)) * i64::from(query.page_size);
        let rows: Vec<EventRow> = filtered(&query.filter)
            .order(webhook_events::id.desc())
            .limit(i64::from(query.page_size))
            .offset(offset)
            .select(EventRow::as_select())
            .load(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(EventPage {
            events: rows.into_iter().map(Into::into).collect(),
            total_count: u64::try_from(total).unwrap_or_default(),
        })
    }

    async fn detail(
        &self,
        id: impl Into<EventRef> + Send,
    ) -> Result<Option<EventDetail>, StoreError> {
        let mut conn = self.db.conn().await?;
        let by = match id.into() {
            EventRef::Id(id) => webhook_events::table
                .filter(webhook_events::id.eq(id.0))
                .into_boxed(),
            EventRef::Uuid(uuid) => webhook_events::table
                .filter(webhook_events::uuid.eq(uuid.0))
                .into_boxed(),
        };
        let found: Option<(EventRow, String, serde_json::Value)> = by
            .select((
                EventRow::as_select(),
                webhook_events::event_type,
                webhook_events::headers,
            ))
            .first(&mut conn)
            .await
            .optional()
            .map_err(error::query)?;
        let Some((row, event_type, headers)) = found else {
            return Ok(None);
        };
        let rows: Vec<DispatchRow> = dispatches::table
            .filter(dispatches::event_id.eq(row.id))
            .order(dispatches::id)
            .select(DispatchRow::as_select())
            .load(&mut conn)
            .await
            .map_err(error::query)?;
        let dispatches = rows
            .into_iter()
            .map(|d| {
                let state = d.state.0;
                DispatchRecord {
                    id: DispatchId(d.id),
                    item: d.item_name,
                    round: d.round,
                    pool: d.pool,
                    state,
                    attempts: d.attempts,
                    next_attempt_at: (state == DispatchState::Queued).then_some(d.next_attempt_at),
                    last_error: d.last_error,
                    listener_event_id: d.listener_event_id,
                    created_at: d.created_at,
                    triggered_at: d.triggered_at,
                    confirmed_at: d.confirmed_at,
                    finished_at: d.finished_at,
                }
            })
            .collect();
        Ok(Some(EventDetail {
            event: row.into(),
            event_type,
            headers: headers_from_json(&headers),
            dispatches,
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.db.conn().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(error::query)?;
        Ok(())
    }
}
