//! Shared by the HTTP tests: an in-memory repository, settings, signed
//! deliveries and a way to send requests to an [`App`].

#![allow(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub use std::sync::{Arc, Mutex};
pub use std::time::Duration;

pub use bytes::Bytes;
pub use dispatcher_core::config::PoolKey;
pub use dispatcher_core::config::{Settings, parse};
pub use dispatcher_core::domain::TimelineEntry;
pub use dispatcher_core::domain::{EventDetail, EventId, EventRecord, EventRef, EventStatus};
pub use dispatcher_core::intake::NewEvent;
pub use dispatcher_core::operate::QueueSnapshot;
pub use dispatcher_core::ports::{
    CancelOutcome, EventPage, EventQuery, EventRepository, OperatorStore, RecordOutcome,
    ReplayOutcome, ReplayRequest, StoreError,
};
pub use dispatcher_http::{App, Liveness, ServeOptions};
pub use http::{Request, StatusCode};
pub use http_body_util::{BodyExt, Full};
pub use serde_json::{Value, json};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tokio::net::TcpStream;

pub const SECRET: &str = "It's a Secret to Everybody";

#[derive(Default, Clone)]
pub struct MemRepo {
    pub rows: Arc<Mutex<Vec<(NewEvent, EventRecord)>>>,
    pub down: bool,
    pub paused_by: Arc<Mutex<Vec<String>>>,
}

/// The operators' port: no queue, nothing to replay or cancel; pausing
/// records who asked (checked by the auth tests).
impl OperatorStore for MemRepo {
    async fn timeline(&self, _event: EventId) -> Result<Vec<TimelineEntry>, StoreError> {
        Ok(Vec::new())
    }

    async fn payload(&self, event: EventId) -> Result<Option<String>, StoreError> {
        let rows = self.rows.lock().unwrap();
        // A stored `null` stands for a payload retention dropped (as in the store).
        Ok(rows
            .iter()
            .find(|(_, r)| r.id == event)
            .map(|(e, _)| e.payload.clone())
            .filter(|p| p != "null"))
    }

    async fn queue_snapshot(
        &self,
        _reservation: Duration,
        _extras: dispatcher_core::ports::OpenExtras,
    ) -> Result<QueueSnapshot, StoreError> {
        Ok(QueueSnapshot {
            now: time::OffsetDateTime::now_utc(),
            open: Vec::new(),
            facts: Default::default(),
            paused: Default::default(),
        })
    }

    async fn replay(
        &self,
        _event: EventId,
        _request: &ReplayRequest,
    ) -> Result<Option<ReplayOutcome>, StoreError> {
        Ok(None)
    }

    async fn cancel(
        &self,
        _event: EventId,
        _actor: &str,
    ) -> Result<Option<CancelOutcome>, StoreError> {
        Ok(None)
    }

    async fn set_paused(
        &self,
        _pool: &PoolKey,
        _paused: bool,
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.paused_by.lock().unwrap().push(actor.to_owned());
        Ok(true)
    }
}

impl EventRepository for MemRepo {
    async fn record(&self, event: NewEvent) -> Result<RecordOutcome, StoreError> {
        if self.down {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        let mut rows = self.rows.lock().unwrap();
        if let Some((stored, record)) = rows
            .iter()
            .find(|(e, _)| e.delivery_id == event.delivery_id)
        {
            return Ok(if stored.payload == event.payload {
                RecordOutcome::AlreadyStored(record.clone())
            } else {
                RecordOutcome::Conflict(record.clone())
            });
        }
        let n = rows.len() + 1;
        let record = EventRecord {
            id: EventId(n as i64),
            uuid: format!("00000000-0000-4000-8000-{n:012}").parse().unwrap(),
            delivery_id: event.delivery_id.clone(),
            action: event.action.clone(),
            repository_full_name: event.repository_full_name.clone(),
            pull_request_number: event.pull_request_number,
            processed: false,
            processing_error: None,
            received_at: time::OffsetDateTime::UNIX_EPOCH,
            processed_at: None,
            status: EventStatus::Pending,
        };
        rows.push((event, record.clone()));
        Ok(RecordOutcome::Created(record))
    }

    async fn list(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        let rows = self.rows.lock().unwrap();
        let events: Vec<EventRecord> = rows
            .iter()
            .rev()
            .map(|(_, r)| r.clone())
            .filter(|r| query.filter.action.as_ref().is_none_or(|a| &r.action == a))
            .collect();
        Ok(EventPage {
            total_count: events.len() as u64,
            events,
        })
    }

    async fn detail(
        &self,
        id: impl Into<EventRef> + Send,
    ) -> Result<Option<EventDetail>, StoreError> {
        let id = id.into();
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .find(|(_, r)| id == EventRef::Id(r.id) || id == EventRef::Uuid(r.uuid))
            .map(|(e, r)| EventDetail {
                event: r.clone(),
                event_type: e.event_type.clone(),
                headers: e.headers.clone(),
                dispatches: vec![],
            }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.down {
            Err(StoreError::Unavailable("connection refused".into()))
        } else {
            Ok(())
        }
    }
}

pub fn settings(extra: &Value) -> Settings {
    let mut v = json!({
        "security": {"github_webhook_secret": SECRET, "allowed_github_events": ["pull_request", "push", "pull_request_review"]},
        "server": {"body_limit_bytes": 4096},
    });
    if let (Some(base), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            base.insert(k.clone(), val.clone());
        }
    }
    let (raw, _) = parse(v).unwrap();
    Settings::from_raw(raw).unwrap()
}

/// One item ("ops" on o/r) in pool `ns/p`.
pub fn with_pool(mut extra: Value) -> Value {
    extra["dispatcher"] = json!({"items": [{
        "name": "ops", "events": ["opened"], "full_repository_name": "o/r",
        "callback_url": "http://el.example:8080",
        "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 2, "namespace": "ns"},
    }]});
    extra
}

pub fn app() -> App<MemRepo> {
    App::new(&settings(&json!({})), MemRepo::default()).unwrap()
}

pub fn pr_payload(number: i64) -> String {
    json!({"action": "opened", "number": number, "pull_request": {"number": number}, "repository": {"full_name": "o/r"}})
        .to_string()
}

pub struct Delivery {
    pub event: Option<&'static str>,
    pub ua: Option<&'static str>,
    pub delivery: Option<String>,
    pub content_type: Option<&'static str>,
    pub signature: Option<String>,
    pub body: String,
}

impl Delivery {
    pub fn pr(delivery: &str, body: String) -> Self {
        let signature = Some(dispatcher_sig::sign(SECRET.as_bytes(), body.as_bytes()));
        Self {
            event: Some("pull_request"),
            ua: Some("GitHub-Hookshot/abc123"),
            delivery: Some(delivery.to_owned()),
            content_type: Some("application/json"),
            signature,
            body,
        }
    }

    pub fn request(&self) -> Request<Full<Bytes>> {
        let mut b = Request::post("/api/v1/webhooks/github-pipeline");
        let mut set = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                b = std::mem::take(&mut b).header(k, v);
            }
        };
        set("x-github-event", self.event);
        set("user-agent", self.ua);
        set("x-github-delivery", self.delivery.as_deref());
        set("content-type", self.content_type);
        set("x-hub-signature-256", self.signature.as_deref());
        set("x-github-hook-id", Some("42"));
        b.body(Full::new(Bytes::from(self.body.clone()))).unwrap()
    }
}

pub async fn send(app: &App<MemRepo>, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
    let response = app.handle(request).await;
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "every answer is JSON"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}")),
    )
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

pub fn with_bearer(mut request: Request<Full<Bytes>>, token: &str) -> Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn post(path: &str) -> Request<Full<Bytes>> {
    Request::post(path).body(Full::new(Bytes::new())).unwrap()
}
