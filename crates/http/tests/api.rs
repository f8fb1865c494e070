//! The HTTP layer against an in-memory repository: every intake outcome,
//! the check order, listing, auth and error shapes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dispatcher_core::config::{Settings, parse};
use dispatcher_core::domain::{EventDetail, EventId, EventRecord, EventStatus};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::ports::{EventPage, EventQuery, EventRepository, RecordOutcome, StoreError};
use dispatcher_http::App;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const SECRET: &str = "It's a Secret to Everybody";

#[derive(Default, Clone)]
struct MemRepo {
    rows: Arc<Mutex<Vec<(NewEvent, EventRecord)>>>,
    down: bool,
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
        let record = EventRecord {
            id: EventId(rows.len() as i64 + 1),
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

    async fn detail(&self, id: EventId) -> Result<Option<EventDetail>, StoreError> {
        let rows = self.rows.lock().unwrap();
        Ok(rows
            .iter()
            .find(|(_, r)| r.id == id)
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

fn settings(extra: &Value) -> Settings {
    let mut v = json!({
        "security": {"github_webhook_secret": SECRET, "allowed_github_events": ["pull_request", "push"]},
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

fn app() -> App<MemRepo> {
    App::new(&settings(&json!({})), MemRepo::default()).unwrap()
}

fn pr_payload(number: i64) -> String {
    json!({"action": "opened", "number": number, "pull_request": {"number": number}, "repository": {"full_name": "o/r"}})
        .to_string()
}

struct Delivery {
    event: Option<&'static str>,
    ua: Option<&'static str>,
    delivery: Option<String>,
    content_type: Option<&'static str>,
    signature: Option<String>,
    body: String,
}

impl Delivery {
    fn pr(delivery: &str, body: String) -> Self {
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

    fn request(&self) -> Request<Full<Bytes>> {
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

async fn send(app: &App<MemRepo>, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
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

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn stores_a_signed_pull_request_and_answers_with_the_event() {
    let repo = MemRepo::default();
    let app = App::new(&settings(&json!({})), repo.clone()).unwrap();
    let (status, body) = send(&app, Delivery::pr("d-1", pr_payload(7)).request()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Event received");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["delivery_id"], "d-1");
    assert_eq!(body["pull_request_number"], 7);
    for key in [
        "id",
        "action",
        "repository_full_name",
        "processed",
        "processing_error",
        "received_at",
        "processed_at",
    ] {
        assert!(body.get(key).is_some(), "missing {key}");
    }
    let rows: Vec<NewEvent> = repo
        .rows
        .lock()
        .unwrap()
        .iter()
        .map(|(e, _)| e.clone())
        .collect();
    assert_eq!(rows[0].payload, pr_payload(7), "raw bytes kept");
    assert!(
        rows[0]
            .headers
            .contains(&("X-GitHub-Hook-ID".to_owned(), "42".to_owned())),
        "{:?}",
        rows[0].headers
    );
    assert!(
        rows[0]
            .headers
            .iter()
            .any(|(k, _)| k == "X-Hub-Signature-256")
    );
    assert!(
        !rows[0]
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
    );
}

#[tokio::test]
async fn redelivery_is_idempotent_and_a_changed_body_conflicts() {
    let app = app();
    let (s1, b1) = send(&app, Delivery::pr("d-1", pr_payload(7)).request()).await;
    let (s2, b2) = send(&app, Delivery::pr("d-1", pr_payload(7)).request()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(b1["id"], b2["id"]);
    assert_eq!(b2["message"], "Event already received");
    let (s3, b3) = send(&app, Delivery::pr("d-1", pr_payload(8)).request()).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(b3["status"], "rejected");
}

#[tokio::test]
async fn checks_run_in_the_original_order() {
    let app = app();
    let body = pr_payload(1);
    // Everything wrong at once: the User-Agent check answers first.
    let mut d = Delivery::pr("d", body.clone());
    d.ua = Some("curl/8");
    d.event = Some("issues");
    d.signature = Some("sha256=00".into());
    d.delivery = None;
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Invalid User-Agent header"))
    );
    // Then the event type.
    let mut d = Delivery::pr("d", body.clone());
    d.event = Some("issues");
    d.signature = None;
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("Event type 'issues' not allowed")
        )
    );
    let mut d = Delivery::pr("d", body.clone());
    d.event = None;
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("Event type 'None' not allowed")
        )
    );
    // Then the signature.
    let mut d = Delivery::pr("d", body.clone());
    d.signature = Some(dispatcher_sig::sign(b"wrong", body.as_bytes()));
    d.delivery = None;
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Invalid webhook signature"))
    );
    let mut d = Delivery::pr("d", body.clone());
    d.signature = None;
    assert_eq!(send(&app, d.request()).await.0, StatusCode::UNAUTHORIZED);
    // Then the delivery id.
    let mut d = Delivery::pr("d", body.clone());
    d.delivery = None;
    d.content_type = Some("text/plain");
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("Missing X-GitHub-Delivery header")
        )
    );
    // Then the content type, then the payload.
    let mut d = Delivery::pr("d", body.clone());
    d.content_type = Some("application/x-www-form-urlencoded");
    assert_eq!(
        send(&app, d.request()).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let mut d = Delivery::pr("d", body);
    d.content_type = Some("application/json; charset=utf-8");
    assert_eq!(send(&app, d.request()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn signature_is_over_the_raw_bytes() {
    let app = app();
    let body = pr_payload(3);
    let mut d = Delivery::pr("d", body.clone());
    // Same JSON, different bytes: the signature no longer matches.
    d.body = body.replace(':', ": ");
    assert_eq!(send(&app, d.request()).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_payloads_are_rejected_with_reasons() {
    let app = app();
    for (body, expected) in [
        ("not json".to_owned(), "Invalid JSON payload"),
        ("[1,2,3]".to_owned(), "expected a JSON object"),
        (
            json!({"action": "opened", "repository": {"full_name": "o/r"}}).to_string(),
            "pull_request.number",
        ),
        (
            json!({"pull_request": {"number": 1}, "repository": {"full_name": "o/r"}}).to_string(),
            "action",
        ),
        (
            json!({"action": "opened", "pull_request": {"number": 1}}).to_string(),
            "repository.full_name",
        ),
    ] {
        let (s, b) = send(&app, Delivery::pr("d", body.clone()).request()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            b["message"].as_str().unwrap().contains(expected),
            "{body}: {b}"
        );
    }
}

#[tokio::test]
async fn ping_and_other_events_are_not_stored() {
    let app = app();
    let mut d = Delivery::pr(
        "p",
        json!({"zen": "Keep it logically awesome."}).to_string(),
    );
    d.event = Some("ping");
    d.signature = Some(dispatcher_sig::sign(SECRET.as_bytes(), d.body.as_bytes()));
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b),
        (StatusCode::OK, json!({"status": "ok", "message": "pong"}))
    );
    d.signature = Some(dispatcher_sig::sign(b"nope", d.body.as_bytes()));
    assert_eq!(
        send(&app, d.request()).await.0,
        StatusCode::UNAUTHORIZED,
        "a badly signed ping is rejected"
    );

    let mut d = Delivery::pr("push-1", json!({"ref": "refs/heads/main"}).to_string());
    d.event = Some("push");
    d.signature = Some(dispatcher_sig::sign(SECRET.as_bytes(), d.body.as_bytes()));
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
    let (_, list) = send(&app, get("/api/v1/events/status")).await;
    assert_eq!(list["total_count"], 0);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = app();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    let (s, b) = send(&app, Delivery::pr("d", big.clone()).request()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(b["status"], "rejected");
    // Without Content-Length (streamed body) the limit still holds.
    let mut request = Delivery::pr("d", big).request();
    request.headers_mut().remove("content-length");
    assert_eq!(send(&app, request).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn listing_detail_and_query_errors() {
    let app = app();
    for i in 1..=3 {
        send(
            &app,
            Delivery::pr(&format!("d{i}"), pr_payload(i)).request(),
        )
        .await;
    }
    let (s, b) = send(&app, get("/api/v1/events/status?page=1&page_size=500")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            b["status"].as_str(),
            b["page"].as_u64(),
            b["page_size"].as_u64()
        ),
        (Some("ok"), Some(1), Some(100))
    );
    assert_eq!(b["events"][0]["delivery_id"], "d3");
    let (s, b) = send(&app, get("/api/v1/events/status?filter=bogus=1")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("Unsupported filter key 'bogus'")
    );
    assert_eq!(
        send(&app, get("/api/v1/events/status?page=0")).await.0,
        StatusCode::BAD_REQUEST
    );

    let (s, b) = send(&app, get("/api/v1/events/2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["event"]["delivery_id"], "d2");
    assert_eq!(b["event"]["headers"]["X-GitHub-Event"], "pull_request");
    assert_eq!(b["event"]["event_type"], "pull_request");
    assert_eq!(
        send(&app, get("/api/v1/events/99")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, get("/api/v1/events/abc")).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = app();
    let (s, b) = send(&app, get("/nope")).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::NOT_FOUND, Some("rejected"))
    );
    let response = app.handle(get("/api/v1/webhooks/github-pipeline")).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let post = Request::post("/api/v1/status/ping")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&app, post).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn status_endpoints() {
    let app = app();
    assert_eq!(
        send(&app, get("/api/v1/status/ping")).await,
        (StatusCode::OK, json!({"status": "pong"}))
    );
    assert_eq!(
        send(&app, get("/api/v1/status/db")).await,
        (
            StatusCode::OK,
            json!({"status": "ok", "message": "Database is running"})
        )
    );
    let down = App::new(
        &settings(&json!({})),
        MemRepo {
            down: true,
            ..MemRepo::default()
        },
    )
    .unwrap();
    assert_eq!(
        send(&down, get("/api/v1/status/db")).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "error", "message": "Database health check failed"})
        )
    );
    let (s, b) = send(&down, Delivery::pr("d", pr_payload(1)).request()).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("error"))
    );
    assert!(
        !b["message"].as_str().unwrap().contains("refused"),
        "internals are not leaked: {b}"
    );
    assert_eq!(
        send(&down, get("/api/v1/status/ready")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send(&app, get("/api/v1/status/ready")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn api_tokens_guard_the_events_api_only() {
    let app = App::new(
        &settings(&json!({"api": {"tokens": ["t0ken"]}})),
        MemRepo::default(),
    )
    .unwrap();
    let (s, b) = send(&app, get("/api/v1/events/status")).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("rejected"))
    );
    let mut wrong = get("/api/v1/events/status");
    wrong
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let mut right = get("/api/v1/events/status");
    right
        .headers_mut()
        .insert("authorization", "Bearer t0ken".parse().unwrap());
    assert_eq!(send(&app, right).await.0, StatusCode::OK);
    let mut detail = get("/api/v1/events/1");
    detail
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(send(&app, detail).await.0, StatusCode::UNAUTHORIZED);
    // Intake and status never need a token.
    assert_eq!(
        send(&app, Delivery::pr("d", pr_payload(1)).request())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get("/api/v1/status/ping")).await.0,
        StatusCode::OK
    );
    assert_eq!(send(&app, get("/api/v1/status/db")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unsigned_mode_accepts_without_signature() {
    let s = settings(&json!({"security": {"verify_signatures": false}}));
    let app = App::new(&s, MemRepo::default()).unwrap();
    let mut d = Delivery::pr("d", pr_payload(1));
    d.signature = None;
    assert_eq!(send(&app, d.request()).await.0, StatusCode::OK);
}
