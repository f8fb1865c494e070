//! The HTTP layer against an in-memory repository: every intake outcome,
//! the check order, listing, auth and error shapes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

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
    assert_eq!(
        body["id"], "00000000-0000-4000-8000-000000000001",
        "id is the UUID string, not the internal key"
    );
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
    // Then the signature: missing or malformed (known before the body)...
    let mut d = Delivery::pr("d", body.clone());
    d.signature = Some("sha256=00".into());
    d.delivery = None;
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Invalid webhook signature"))
    );
    let mut d = Delivery::pr("d", body.clone());
    d.signature = None;
    assert_eq!(send(&app, d.request()).await.0, StatusCode::UNAUTHORIZED);
    // ...or well-formed but wrong (known only after the body).
    let mut d = Delivery::pr("d", body.clone());
    d.signature = Some(dispatcher_sig::sign(b"wrong", body.as_bytes()));
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Invalid webhook signature"))
    );
    // The documented deviation: a wrong (well-formed) signature cannot be
    // told before the body, so header problems after it in the original
    // order answer first (400 or 415 instead of 401).
    let mut d = Delivery::pr("d", body.clone());
    d.signature = Some(dispatcher_sig::sign(b"wrong", body.as_bytes()));
    d.delivery = None;
    assert_eq!(send(&app, d.request()).await.0, StatusCode::BAD_REQUEST);
    let mut d = Delivery::pr("d", body.clone());
    d.signature = Some(dispatcher_sig::sign(b"wrong", body.as_bytes()));
    d.content_type = Some("text/plain");
    assert_eq!(
        send(&app, d.request()).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
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

    // Another allowed event type naming a pull request is stored, as the original does.
    let review = json!({
        "action": "submitted", "review": {"state": "approved"},
        "pull_request": {"number": 7}, "repository": {"full_name": "o/r"},
    });
    let mut d = Delivery::pr("review-1", review.to_string());
    d.event = Some("pull_request_review");
    d.signature = Some(dispatcher_sig::sign(SECRET.as_bytes(), d.body.as_bytes()));
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["action"].as_str(), b["pull_request_number"].as_i64()),
        (Some("submitted"), Some(7))
    );
    let (_, list) = send(&app, get("/api/v1/events/status")).await;
    assert_eq!(list["total_count"], 1);
    // Without a pull request it is acknowledged and dropped.
    let mut d = Delivery::pr("review-2", json!({"action": "submitted"}).to_string());
    d.event = Some("pull_request_review");
    d.signature = Some(dispatcher_sig::sign(SECRET.as_bytes(), d.body.as_bytes()));
    let (s, b) = send(&app, d.request()).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::ACCEPTED, Some("ignored"))
    );
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
    // `id` is the event's UUID string, the key of the detail endpoint.
    let d2 = b["events"][1]["id"].as_str().unwrap().to_owned();
    assert_eq!(d2, "00000000-0000-4000-8000-000000000002");
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

    let (s, b) = send(&app, get(&format!("/api/v1/events/{d2}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["event"]["id"], d2.as_str());
    assert_eq!(b["event"]["delivery_id"], "d2");
    assert_eq!(b["event"]["headers"]["X-GitHub-Event"], "pull_request");
    assert_eq!(b["event"]["event_type"], "pull_request");
    // An unknown UUID, the internal integer key and anything that is not a
    // UUID all name no event: 404 JSON.
    for unknown in [
        "00000000-0000-4000-8000-000000000099",
        "2",
        "abc",
        "%20",
        "00000000-0000-4000-8000-00000000000g",
    ] {
        let (s, b) = send(&app, get(&format!("/api/v1/events/{unknown}"))).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{unknown}");
        assert_eq!(b["status"], "rejected", "{unknown}: {b}");
    }
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
async fn admin_tokens_act_read_tokens_only_read_and_names_reach_the_store() {
    let s = settings(&with_pool(json!({"api": {
        "tokens": ["reader-secret"],
        "admin_tokens": [{"name": "alice", "token": "alice-secret"}, "plain-admin"],
    }})));
    let pool = s.pools.keys().next().unwrap().0.clone();
    let repo = MemRepo::default();
    let app = App::new(&s, repo.clone()).unwrap();
    let pause = format!("/api/v1/pools/{pool}/pause");
    // No token, a wrong token: 401. A read token: 403, and it says why.
    assert_eq!(send(&app, post(&pause)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&app, with_bearer(post(&pause), "nope")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = send(&app, with_bearer(post(&pause), "reader-secret")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["message"].as_str().unwrap().contains("only read"));
    // Admin tokens act, under their names (a plain entry is `admin-<n>`).
    let (status, body) = send(&app, with_bearer(post(&pause), "alice-secret")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["paused"], true);
    let resume = format!("/api/v1/pools/{pool}/resume");
    assert_eq!(
        send(&app, with_bearer(post(&resume), "plain-admin"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(*repo.paused_by.lock().unwrap(), ["alice", "admin-2"]);
    // Admin tokens also read; read tokens read; GET on an action is a 405.
    for token in ["alice-secret", "reader-secret"] {
        let (status, body) = send(&app, with_bearer(get("/api/v1/pools"), token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["pools"][0]["pool"], pool.as_str());
    }
    assert_eq!(
        send(&app, with_bearer(get(&pause), "alice-secret")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // An unknown pool is a 404, a bad query a 400, never a 500.
    let (status, _) = send(
        &app,
        with_bearer(post("/api/v1/pools/ns/nope/pause"), "alice-secret"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let id = "00000000-0000-4000-8000-000000000001";
    let (status, _) = send(
        &app,
        with_bearer(
            post(&format!("/api/v1/events/{id}/replay?force=maybe")),
            "alice-secret",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn without_admin_tokens_the_admin_api_is_off_and_reading_stays_open() {
    let s = settings(&with_pool(json!({})));
    let pool = s.pools.keys().next().unwrap().0.clone();
    let app = App::new(&s, MemRepo::default()).unwrap();
    let (status, body) = send(&app, post(&format!("/api/v1/pools/{pool}/pause"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("api.admin_tokens")
    );
    assert_eq!(send(&app, get("/api/v1/pools")).await.0, StatusCode::OK);
    // With admin tokens but no read tokens, reading is still open.
    let s = settings(&with_pool(json!({"api": {"admin_tokens": ["a"]}})));
    let app = App::new(&s, MemRepo::default()).unwrap();
    assert_eq!(send(&app, get("/api/v1/pools")).await.0, StatusCode::OK);
    assert_eq!(
        send(&app, get("/api/v1/events/status")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unsigned_mode_accepts_without_signature() {
    let s = settings(&json!({"security": {"verify_signatures": false}}));
    let app = App::new(&s, MemRepo::default()).unwrap();
    let mut d = Delivery::pr("d", pr_payload(1));
    d.signature = None;
    assert_eq!(send(&app, d.request()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn delivery_ids_up_to_255_characters_are_accepted() {
    let repo = MemRepo::default();
    let app = App::new(&settings(&json!({})), repo.clone()).unwrap();
    let longest = "d".repeat(255);
    let (s, b) = send(&app, Delivery::pr(&longest, pr_payload(1)).request()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["delivery_id"], longest.as_str());
    let (s, b) = send(
        &app,
        Delivery::pr(&"d".repeat(256), pr_payload(2)).request(),
    )
    .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::BAD_REQUEST, Some("rejected"))
    );
    assert_eq!(
        b["message"],
        "X-GitHub-Delivery header too long (256 characters; at most 255)"
    );
    assert_eq!(repo.rows.lock().unwrap().len(), 1, "nothing stored for 256");
}

#[tokio::test]
async fn liveness_follows_its_source() {
    let app = app();
    assert_eq!(
        send(&app, get("/api/v1/status/live")).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let stuck = app.with_liveness_source(Arc::new(|| {
        Liveness::Stuck("dispatch loop made no progress for 120s".into())
    }));
    assert_eq!(
        send(&stuck, get("/api/v1/status/live")).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "error", "message": "dispatch loop made no progress for 120s"})
        )
    );
    // Readiness is about traffic, not liveness.
    assert_eq!(
        send(&stuck, get("/api/v1/status/ready")).await.0,
        StatusCode::OK
    );
    let post = Request::post("/api/v1/status/live")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&stuck, post).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

// ---- Over real connections: `serve` on 127.0.0.1 ----

/// A deadline so a broken server fails the test instead of hanging it
/// (never a measure of speed).
const WAIT: Duration = Duration::from_secs(60);

struct Served {
    app: Arc<App<MemRepo>>,
    address: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(app: App<MemRepo>, options: ServeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = Arc::new(app);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dispatcher_http::serve(
            listener,
            Arc::clone(&app),
            async move {
                let _ = rx.await;
            },
            options,
        ));
        Self {
            app,
            address,
            shutdown: Some(tx),
            task,
        }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.address).await.unwrap()
    }

    /// Sends the shutdown signal and waits until the app is draining.
    async fn begin_shutdown(&mut self) {
        let mut draining = self.app.subscribe_draining();
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(WAIT, draining.wait_for(|d| *d))
            .await
            .expect("draining starts")
            .unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer (after any `100 Continue`) from `stream`.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    tokio::time::timeout(WAIT, async {
        let mut buf = Vec::new();
        loop {
            let head = read_head(stream, &mut buf).await;
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
            if status == 100 {
                continue;
            }
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("content-length");
            while buf.len() < length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = serde_json::from_slice(&buf[..length])
                .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", &buf[..length]));
            return Answer {
                status,
                headers,
                body,
            };
        }
    })
    .await
    .expect("an answer within the deadline")
}

/// Reads up to the end of a response head; leaves what follows in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            buf.drain(..end + 4);
            return head;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before an answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request head of a webhook POST with `headers` (name, value).
fn post_head(content_length: usize, headers: &[(&str, String)]) -> String {
    let mut head = format!(
        "POST /api/v1/webhooks/github-pipeline HTTP/1.1\r\nHost: test\r\nContent-Length: {content_length}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The headers of a good signed delivery of `body`.
fn good_headers(delivery: &str, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("User-Agent", "GitHub-Hookshot/abc123".to_owned()),
        ("X-GitHub-Event", "pull_request".to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
        ("Content-Type", "application/json".to_owned()),
        (
            "X-Hub-Signature-256",
            dispatcher_sig::sign(SECRET.as_bytes(), body.as_bytes()),
        ),
    ]
}

fn without(mut headers: Vec<(&'static str, String)>, name: &str) -> Vec<(&'static str, String)> {
    headers.retain(|(k, _)| *k != name);
    headers
}

fn with(
    headers: Vec<(&'static str, String)>,
    name: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut headers = without(headers, name);
    headers.push((name, value.to_owned()));
    headers
}

async fn get_over(stream: &mut TcpStream, path: &str) -> Answer {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(stream).await
}

#[tokio::test]
async fn bad_headers_are_answered_before_the_body_is_sent() {
    let served = Served::start(app(), ServeOptions::default()).await;
    let body = pr_payload(1);
    let good = good_headers("d-1", &body);
    type Headers = Vec<(&'static str, String)>;
    // (what, declared length, headers, status, message prefix)
    let cases: Vec<(&str, usize, Headers, u16, &str)> = vec![
        (
            "declared length over the limit",
            10 * 1024 * 1024,
            good.clone(),
            413,
            "Payload too large",
        ),
        (
            "user agent",
            4000,
            with(good.clone(), "User-Agent", "curl/8"),
            400,
            "Invalid User-Agent header",
        ),
        (
            "event type",
            4000,
            with(good.clone(), "X-GitHub-Event", "issues"),
            400,
            "Event type 'issues' not allowed",
        ),
        (
            "missing signature",
            4000,
            without(good.clone(), "X-Hub-Signature-256"),
            401,
            "Invalid webhook signature",
        ),
        (
            "malformed signature",
            4000,
            with(good.clone(), "X-Hub-Signature-256", "sha256=abc"),
            401,
            "Invalid webhook signature",
        ),
        (
            "missing delivery id",
            4000,
            without(good.clone(), "X-GitHub-Delivery"),
            400,
            "Missing X-GitHub-Delivery header",
        ),
        (
            "delivery id over 255 characters",
            4000,
            with(good.clone(), "X-GitHub-Delivery", &"d".repeat(256)),
            400,
            "X-GitHub-Delivery header too long",
        ),
        (
            "content type",
            4000,
            with(good.clone(), "Content-Type", "text/plain"),
            415,
            "Unsupported Content-Type",
        ),
    ];
    for (what, length, headers, status, message) in cases {
        let mut stream = served.connect().await;
        // Headers only: the body is never sent, yet the answer comes.
        stream
            .write_all(post_head(length, &headers).as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status, status, "{what}: {:?}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        assert_eq!(answer.body["status"], "rejected", "{what}");
        assert!(
            answer.body["message"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{what}: {}",
            answer.body
        );
    }
    assert_eq!(
        served.app.buffer_budget_available(),
        128 * 1024 * 1024,
        "no budget was taken"
    );
    // The good headers alone get no answer until the body follows.
    let mut stream = served.connect().await;
    stream
        .write_all(post_head(body.len(), &good).as_bytes())
        .await
        .unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut stream).await.status, 200);
}

#[tokio::test]
async fn a_full_body_budget_answers_503_with_retry_after() {
    let app = App::new(
        &settings(&json!({"server": {"body_limit_bytes": 4096, "max_buffered_bytes": 4096}})),
        MemRepo::default(),
    )
    .unwrap();
    let served = Served::start(app, ServeOptions::default()).await;

    // A slow upload: headers announce 4000 bytes; nothing follows yet. The
    // 100 Continue proves the server took its budget and waits for the body.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(3990));
    assert_eq!(big.len(), 4000);
    let mut slow = served.connect().await;
    let mut headers = good_headers("slow", &big);
    headers.push(("Expect", "100-continue".to_owned()));
    slow.write_all(post_head(big.len(), &headers).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let continue_head = tokio::time::timeout(WAIT, read_head(&mut slow, &mut buf))
        .await
        .unwrap();
    assert!(continue_head.starts_with("HTTP/1.1 100"), "{continue_head}");
    assert_eq!(served.app.buffer_budget_available(), 96);

    // A second upload does not fit: 503 at once, with Retry-After, body unsent.
    let small = json!({"action": "opened", "pull_request": {"number": 2}, "repository": {"full_name": "o/r"}, "pad": "y".repeat(100)}).to_string();
    assert!(small.len() > 96);
    let mut second = served.connect().await;
    second
        .write_all(post_head(small.len(), &good_headers("second", &small)).as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut second).await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.body["status"], "error");
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("retry later"),
        "{}",
        answer.body
    );

    // The slow upload completes (its signature fails: its body is not a
    // pull request, which does not matter here) and returns the budget.
    slow.write_all(big.as_bytes()).await.unwrap();
    let answer = read_answer(&mut slow).await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(served.app.buffer_budget_available(), 4096);

    // Now the second one fits.
    let mut again = served.connect().await;
    again
        .write_all(post_head(small.len(), &good_headers("second", &small)).as_bytes())
        .await
        .unwrap();
    again.write_all(small.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut again).await.status, 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let served = Served::start(
        app(),
        ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        },
    )
    .await;
    let mut first = served.connect().await;
    assert_eq!(
        get_over(&mut first, "/api/v1/status/ping").await.status,
        200
    );

    // The second connection is made (the kernel's backlog holds it) but not served...
    let mut second = served.connect().await;
    second
        .write_all(b"GET /api/v1/status/ping HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // ...while the first keeps its slot (another round trip on it proves the
    // server is running meanwhile).
    assert_eq!(
        get_over(&mut first, "/api/v1/status/ping").await.status,
        200
    );
    let mut probe = [0u8; 1];
    assert!(
        matches!(second.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second connection must not be served while the first holds the only slot"
    );

    // Closing the first frees the slot: the second is served.
    drop(first);
    let answer = read_answer(&mut second).await;
    assert_eq!(
        (answer.status, answer.body),
        (200, json!({"status": "pong"}))
    );
}

#[tokio::test]
async fn readiness_fails_during_the_shutdown_delay_while_intake_still_serves() {
    let repo = MemRepo::default();
    let app = App::new(&settings(&json!({})), repo.clone()).unwrap();
    let mut served = Served::start(
        app,
        ServeOptions {
            // Longer than the test: it ends by aborting the server.
            shutdown_delay: Duration::from_secs(3600),
            ..ServeOptions::default()
        },
    )
    .await;
    let mut probe = served.connect().await;
    assert_eq!(
        get_over(&mut probe, "/api/v1/status/ready").await.status,
        200
    );

    served.begin_shutdown().await;

    let answer = get_over(&mut probe, "/api/v1/status/ready").await;
    assert_eq!(answer.status, 503, "{:?}", answer.body);
    assert_eq!(answer.body["status"], "draining");
    assert_eq!(
        answer.header("connection"),
        Some("close"),
        "clients are asked to move on"
    );
    // New connections are still accepted and webhooks still stored.
    let body = pr_payload(5);
    let mut stream = served.connect().await;
    stream
        .write_all(post_head(body.len(), &good_headers("late", &body)).as_bytes())
        .await
        .unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(
        (answer.status, answer.body["message"].as_str()),
        (200, Some("Event received"))
    );
    assert_eq!(repo.rows.lock().unwrap().len(), 1);
    // Liveness is unaffected: the kubelet must not kill a draining replica.
    let mut live = served.connect().await;
    assert_eq!(get_over(&mut live, "/api/v1/status/live").await.status, 200);
}

#[tokio::test]
async fn after_the_delay_the_listener_closes_and_requests_in_flight_finish() {
    let repo = MemRepo::default();
    let app = App::new(&settings(&json!({})), repo.clone()).unwrap();
    let mut served = Served::start(
        app,
        ServeOptions {
            shutdown_delay: Duration::ZERO,
            ..ServeOptions::default()
        },
    )
    .await;
    // A request in flight: headers sent, the server waits for the body.
    let body = pr_payload(9);
    let mut stream = served.connect().await;
    let mut headers = good_headers("in-flight", &body);
    headers.push(("Expect", "100-continue".to_owned()));
    stream
        .write_all(post_head(body.len(), &headers).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = tokio::time::timeout(WAIT, read_head(&mut stream, &mut buf))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");

    served.begin_shutdown().await;
    stream.write_all(body.as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(repo.rows.lock().unwrap().len(), 1);
    drop(stream);

    tokio::time::timeout(WAIT, &mut served.task)
        .await
        .expect("serve returns once the last connection closed")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(served.address).await.is_err(),
        "the listener is closed"
    );
}

/// The `/metrics` text (asserting 200 and the content type).
async fn metrics_text(app: &App<MemRepo>, request: Request<Full<Bytes>>) -> String {
    let response = app.handle(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one sample line (`name{labels}`) of an exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_count_each_intake_outcome() {
    let app = app();
    // One accepted delivery, then its redelivery.
    assert_eq!(
        send(&app, Delivery::pr("m-1", pr_payload(1)).request())
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, Delivery::pr("m-1", pr_payload(1)).request())
            .await
            .0,
        StatusCode::OK
    );
    // One bad signature.
    let mut bad = Delivery::pr("m-2", pr_payload(2));
    bad.signature = Some(dispatcher_sig::sign(b"nope", bad.body.as_bytes()));
    assert_eq!(send(&app, bad.request()).await.0, StatusCode::UNAUTHORIZED);
    // One ping.
    let mut ping = Delivery::pr("m-3", json!({"zen": "z"}).to_string());
    ping.event = Some("ping");
    ping.signature = Some(dispatcher_sig::sign(
        SECRET.as_bytes(),
        ping.body.as_bytes(),
    ));
    assert_eq!(send(&app, ping.request()).await.0, StatusCode::OK);
    // One ignored push.
    let mut push = Delivery::pr("m-4", json!({"ref": "refs/heads/main"}).to_string());
    push.event = Some("push");
    push.signature = Some(dispatcher_sig::sign(
        SECRET.as_bytes(),
        push.body.as_bytes(),
    ));
    assert_eq!(send(&app, push.request()).await.0, StatusCode::ACCEPTED);
    // One oversized body.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(5000));
    assert_eq!(
        send(&app, Delivery::pr("m-5", big).request()).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Other routes are not deliveries.
    assert_eq!(
        send(&app, get("/api/v1/status/ping")).await.0,
        StatusCode::OK
    );

    let text = metrics_text(&app, get("/metrics")).await;
    let count = |outcome: &str| {
        sample(
            &text,
            &format!("webhook_dispatcher_deliveries_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("accepted"), Some(1.0), "{text}");
    assert_eq!(count("redelivered"), Some(1.0));
    assert_eq!(count("bad_signature"), Some(1.0));
    assert_eq!(count("ping"), Some(1.0));
    assert_eq!(count("ignored"), Some(1.0));
    assert_eq!(count("too_large"), Some(1.0));
    for never in ["bad_request", "conflict", "unavailable"] {
        assert_eq!(count(never), None, "{never} never happened");
    }
    assert!(text.contains("# TYPE webhook_dispatcher_deliveries counter"));
    assert!(sample(&text, "webhook_dispatcher_build_info{version=\"0.1.0\"}") == Some(1.0));
    assert!(text.ends_with("# EOF\n"));

    // A changed body conflicts; a wrong content type is a bad request; a
    // database outage is unavailable.
    let mut changed = Delivery::pr("m-1", pr_payload(9));
    changed.signature = Some(dispatcher_sig::sign(
        SECRET.as_bytes(),
        changed.body.as_bytes(),
    ));
    assert_eq!(send(&app, changed.request()).await.0, StatusCode::CONFLICT);
    let mut form = Delivery::pr("m-6", pr_payload(6));
    form.content_type = Some("application/x-www-form-urlencoded");
    assert_eq!(
        send(&app, form.request()).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let down = App::new(
        &settings(&json!({})),
        MemRepo {
            down: true,
            ..MemRepo::default()
        },
    )
    .unwrap()
    .with_metrics(Arc::clone(app.metrics()));
    assert_eq!(
        send(&down, Delivery::pr("m-7", pr_payload(7)).request())
            .await
            .0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let text = metrics_text(&app, get("/metrics")).await;
    let count = |outcome: &str| {
        sample(
            &text,
            &format!("webhook_dispatcher_deliveries_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("conflict"), Some(1.0), "{text}");
    assert_eq!(count("bad_request"), Some(1.0));
    assert_eq!(count("unavailable"), Some(1.0));
    assert_eq!(count("accepted"), Some(1.0));
}

#[tokio::test]
async fn metrics_token_guards_metrics_only() {
    let guarded = App::new(
        &settings(&json!({"api": {"metrics_token": "m3trics", "tokens": ["t0ken"]}})),
        MemRepo::default(),
    )
    .unwrap();
    let (s, b) = send(&guarded, get("/metrics")).await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("rejected"))
    );
    let with = |token: &str| {
        let mut request = get("/metrics");
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    assert_eq!(
        send(&guarded, with("t0ken")).await.0,
        StatusCode::UNAUTHORIZED,
        "events tokens do not open /metrics"
    );
    let text = metrics_text(&guarded, with("m3trics")).await;
    assert!(text.contains("webhook_dispatcher_leader 0\n"), "{text}");
    // Without the setting /metrics is open.
    let open = app();
    metrics_text(&open, get("/metrics")).await;
    assert_eq!(
        send(
            &open,
            Request::post("/metrics")
                .body(Full::new(Bytes::new()))
                .unwrap()
        )
        .await
        .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

/// Log lines (JSON, one per event, with the current span) written while
/// the guard lives, on this thread.
#[tokio::test]
async fn metrics_refresh_runs_at_each_scrape() {
    let scrapes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&scrapes);
    let app = app().with_metrics_refresh(Arc::new(move |m: &dispatcher_http::Metrics| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        m.set_db_pool(n + 1, n);
    }));
    for n in 1..=2 {
        let text = metrics_text(&app, get("/metrics")).await;
        assert_eq!(
            sample(&text, "webhook_dispatcher_db_pool_in_use"),
            Some(n as f64),
            "{text}"
        );
        assert_eq!(
            sample(&text, "webhook_dispatcher_db_pool_size"),
            Some(n as f64 + 1.0)
        );
    }
}

#[tokio::test]
async fn a_payload_dropped_by_retention_explains_without_it_and_cannot_be_replayed() {
    let mut extra = with_pool(json!({"api": {"admin_tokens": ["admin"]}}));
    extra["dispatcher"]["items"][0]["filter"] =
        json!({"cel_expression": "body.pull_request.number == 7"});
    let repo = MemRepo::default();
    let app = App::new(&settings(&extra), repo.clone()).unwrap();
    let (status, body) = send(&app, Delivery::pr("d-1", pr_payload(7)).request()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    repo.rows.lock().unwrap()[0].0.payload = "null".to_owned();
    let explained = app.explain(&id).await.unwrap();
    match &explained.matching[0].filter {
        dispatcher_core::rules::FilterVerdict::Error(e) => {
            assert!(e.contains("payload is gone"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let (status, body) = send(&app, get(&format!("/api/v1/events/{id}/explain"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &app,
        with_bearer(post(&format!("/api/v1/events/{id}/replay")), "admin"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("payload was dropped by retention"),
        "{body}"
    );
}
