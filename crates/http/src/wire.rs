//! The API's JSON shapes, as typed structs. The domain types in
//! `dispatcher-core` carry no serialisation: the edge owns the format, and
//! the original service's field names and formats live here alone.

use dispatcher_core::domain::{DispatchRecord, EventDetail, EventRecord, rfc3339};
use serde::Serialize;

/// An event as every endpoint shows it (the original's fields; `id` is the UUID).
#[derive(Debug, Serialize)]
pub(crate) struct EventJson<'a> {
    id: String,
    delivery_id: &'a str,
    action: &'a str,
    repository_full_name: &'a str,
    pull_request_number: i64,
    processed: bool,
    processing_error: Option<&'a str>,
    received_at: String,
    processed_at: Option<String>,
    status: &'static str,
}

impl<'a> From<&'a EventRecord> for EventJson<'a> {
    fn from(e: &'a EventRecord) -> Self {
        Self {
            id: e.uuid.to_string(),
            delivery_id: &e.delivery_id,
            action: &e.action,
            repository_full_name: &e.repository_full_name,
            pull_request_number: e.pull_request_number,
            processed: e.processed,
            processing_error: e.processing_error.as_deref(),
            received_at: rfc3339::format(e.received_at),
            processed_at: e.processed_at.map(rfc3339::format),
            status: e.status.as_str(),
        }
    }
}

/// The answer to a stored delivery: the event plus a message, as the original.
#[derive(Debug, Serialize)]
pub(crate) struct IntakeAnswer<'a> {
    #[serde(flatten)]
    pub(crate) event: EventJson<'a>,
    pub(crate) message: &'static str,
}

/// `GET /api/v1/events/status`.
#[derive(Debug, Serialize)]
pub(crate) struct EventPageJson<'a> {
    pub(crate) status: &'static str,
    pub(crate) events: Vec<EventJson<'a>>,
    pub(crate) page: u32,
    pub(crate) page_size: u32,
    pub(crate) total_count: u64,
}

/// One dispatch in the event detail.
#[derive(Debug, Serialize)]
struct DispatchJson<'a> {
    id: i64,
    item: &'a str,
    round: i32,
    pool: &'a str,
    state: &'static str,
    attempts: i32,
    next_attempt_at: Option<String>,
    last_error: Option<&'a str>,
    listener_event_id: Option<&'a str>,
    created_at: String,
    triggered_at: Option<String>,
    confirmed_at: Option<String>,
    finished_at: Option<String>,
}

impl<'a> From<&'a DispatchRecord> for DispatchJson<'a> {
    fn from(d: &'a DispatchRecord) -> Self {
        Self {
            id: d.id.0,
            item: &d.item,
            round: d.round,
            pool: &d.pool,
            state: d.state.as_str(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at.map(rfc3339::format),
            last_error: d.last_error.as_deref(),
            listener_event_id: d.listener_event_id.as_deref(),
            created_at: rfc3339::format(d.created_at),
            triggered_at: d.triggered_at.map(rfc3339::format),
            confirmed_at: d.confirmed_at.map(rfc3339::format),
            finished_at: d.finished_at.map(rfc3339::format),
        }
    }
}

/// `GET /api/v1/events/{id}`: the event, its type, headers (name → value) and dispatches.
#[derive(Debug, Serialize)]
struct EventDetailJson<'a> {
    #[serde(flatten)]
    event: EventJson<'a>,
    event_type: &'a str,
    headers: serde_json::Map<String, serde_json::Value>,
    dispatches: Vec<DispatchJson<'a>>,
}

/// The detail answer: `{"status":"ok","event":{...}}`.
#[derive(Debug, Serialize)]
pub(crate) struct EventDetailAnswer<'a> {
    status: &'static str,
    event: EventDetailJson<'a>,
}

impl<'a> From<&'a EventDetail> for EventDetailAnswer<'a> {
    fn from(d: &'a EventDetail) -> Self {
        Self {
            status: "ok",
            event: EventDetailJson {
                event: EventJson::from(&d.event),
                event_type: &d.event_type,
                headers: d
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into()))
                    .collect(),
                dispatches: d.dispatches.iter().map(DispatchJson::from).collect(),
            },
        }
    }
}

/// Every error: `{"status":"rejected"|"error","message":...}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub(crate) status: &'static str,
    pub(crate) message: &'a str,
}

#[cfg(test)]
mod tests {
    use dispatcher_core::domain::{EventId, EventStatus, EventUuid};

    use super::*;

    #[test]
    fn event_json_shows_the_uuid_as_id_and_hides_the_key() {
        let uuid: EventUuid = "8F14E45F-CEEA-467F-A0E6-A7C1B4E0B1E2"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let record = EventRecord {
            id: EventId(42),
            uuid,
            delivery_id: "d".into(),
            action: "opened".into(),
            repository_full_name: "o/r".into(),
            pull_request_number: 7,
            processed: false,
            processing_error: None,
            received_at: time::macros::datetime!(2026-11-28 10:00:00 +02:00),
            processed_at: None,
            status: EventStatus::Pending,
        };
        let json = serde_json::to_value(IntakeAnswer {
            event: EventJson::from(&record),
            message: "Event received",
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "8f14e45f-ceea-467f-a0e6-a7c1b4e0b1e2", "delivery_id": "d", "action": "opened",
                "repository_full_name": "o/r", "pull_request_number": 7, "processed": false,
                "processing_error": null, "received_at": "2026-11-28T08:00:00Z", "processed_at": null,
                "status": "pending", "message": "Event received",
            })
        );
    }
}
