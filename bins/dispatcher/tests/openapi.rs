//! End-to-end: a recorded run of the real binary drives every route the
//! OpenAPI document describes (intake outcomes and errors, listing, detail,
//! explain, pools, pause/resume, cancel, replay, the status routes, the
//! dashboard's pages, fragments and assets, readiness while draining, and a
//! replica without a database) and
//! validates every answer against the document it serves at
//! `/api/v1/openapi.json`: the status must be documented for the operation,
//! the media type too, and a JSON body must match the schema, with no field
//! the document does not name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::openapi::Spec;
use support::world::{PIPELINE, World, WorldOptions};
use support::{Service, delivery, delivery_with, http, pr_payload};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "alice-secret";
const READER: &str = "reader-secret";
const METRICS: &str = "metrics-secret";
const API: &str = r#"
api:
  tokens: ["reader-secret"]
  admin_tokens: [{name: alice, token: "alice-secret"}]
  metrics_token: "metrics-secret"
"#;
const WEBHOOK: &str = "/api/v1/webhooks/github-pipeline";
const UNKNOWN_EVENT: &str = "00000000-0000-4000-8000-000000000000";

/// Who a request is sent as.
#[derive(Clone, Copy)]
enum As {
    Nobody,
    Reader,
    Admin,
    Metrics,
}

/// Sends requests to one replica and checks every answer against the document.
struct Recorder<'s> {
    spec: &'s Spec,
    url: String,
}

impl Recorder<'_> {
    /// Sends `request` (built for `template`), expects `expect`, validates
    /// the answer and returns its body (JSON, or a string for text).
    async fn send(
        &self,
        method: &str,
        template: &str,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> Value {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.bytes().await.unwrap();
        self.record(method, template, status, &content_type, &body, expect)
    }

    fn record(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
        expect: u16,
    ) -> Value {
        let text = String::from_utf8_lossy(body);
        assert_eq!(status, expect, "{method} {template}: {text}");
        if let Err(errors) = self
            .spec
            .check(method, template, status, content_type, body)
        {
            panic!(
                "the answer does not match the document:\n  {}\nbody: {text}",
                errors.join("\n  ")
            );
        }
        serde_json::from_slice(body).unwrap_or_else(|_| Value::String(text.into_owned()))
    }

    fn request(&self, method: &str, path: &str, who: As) -> reqwest::RequestBuilder {
        let method: reqwest::Method = method.parse().unwrap();
        let request = http().request(method, format!("{}{path}", self.url));
        match who {
            As::Nobody => request,
            As::Reader => request.bearer_auth(READER),
            As::Admin => request.bearer_auth(ADMIN),
            As::Metrics => request.bearer_auth(METRICS),
        }
    }

    /// `method path` (the template with its values filled in, plus any query).
    async fn call(&self, method: &str, template: &str, path: &str, who: As, expect: u16) -> Value {
        let request = self.request(method, path, who);
        self.send(method, template, request, expect).await
    }

    async fn intake(&self, request: reqwest::RequestBuilder, expect: u16) -> Value {
        self.send("POST", WEBHOOK, request, expect).await
    }

    /// GETs `path` as a reader until `pred` holds (not recorded: waiting only).
    async fn until(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        loop {
            let body: Value = self
                .request("GET", path, As::Reader)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            if pred(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} never matched; last: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A dashboard page or asset answered 200: validated like any answer,
    /// and (HTML, CSS or script: only a string) not empty.
    async fn page(&self, template: &str, path: &str, who: As) -> String {
        let answer = self.call("GET", template, path, who, 200).await;
        let text = answer.as_str().unwrap_or_default().to_owned();
        assert!(!text.trim().is_empty(), "GET {path}: empty body");
        text
    }

    /// A delivery declaring a body over the limit, answered before it is sent.
    async fn too_large(&self) {
        let address = self.url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST {WEBHOOK} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: GitHub-Hookshot/e2e\r\n\
             X-GitHub-Event: pull_request\r\nX-GitHub-Delivery: big\r\n\
             Content-Type: application/json\r\nContent-Length: 30000000\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(support::WAIT, stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        self.record("POST", WEBHOOK, status, &content_type, body.as_bytes(), 413);
    }
}

fn pool_path() -> String {
    format!("/api/v1/pools/ns/{PIPELINE}")
}

fn finish_running(world: &World) {
    for run in world.kube.unfinished(PIPELINE) {
        world.kube.set_succeeded("ns", &run, "True", "Succeeded");
    }
}

/// Every dashboard operation on a server whose reading is protected: 200
/// for each (the shell without a token, the data with one, fragments), 400,
/// 401 (a fragment without a token), 404 (an unknown event) and 405.
async fn dashboard(api: &Recorder<'_>, ids: &[String]) {
    let home = "/";
    let event = "/ui/events/{id}";
    let search = "/ui/search";
    let css = "/ui/assets/dashboard.css";
    let js = "/ui/assets/dashboard.js";
    let first = format!("/ui/events/{}", ids[0]);
    let unknown = format!("/ui/events/{UNKNOWN_EVENT}");

    let shell = api.page(home, "/", As::Nobody).await;
    let rendered = api.page(home, "/", As::Reader).await;
    assert!(rendered.len() > shell.len(), "a token shows the data");
    api.page(home, "/?fragment=1", As::Admin).await;
    api.call("GET", home, "/?fragment=1", As::Nobody, 401).await;
    api.call("GET", home, "/?pr=x", As::Reader, 400).await;
    api.call("POST", home, "/", As::Admin, 405).await;

    api.page(event, &first, As::Reader).await;
    api.page(event, &first, As::Nobody).await;
    api.page(event, &format!("{first}?fragment=1"), As::Reader)
        .await;
    api.call(
        "GET",
        event,
        &format!("{first}?fragment=1"),
        As::Nobody,
        401,
    )
    .await;
    api.call("GET", event, &unknown, As::Reader, 404).await;
    api.call(
        "GET",
        event,
        &format!("{unknown}?fragment=1"),
        As::Reader,
        404,
    )
    .await;
    api.call("GET", event, "/ui/events/not-a-uuid", As::Reader, 404)
        .await;
    api.call("GET", event, &format!("{first}?pr=0"), As::Reader, 400)
        .await;
    api.call("DELETE", event, &first, As::Admin, 405).await;

    let found = api
        .page(search, "/ui/search?repository=o%2Fr&pr=1", As::Reader)
        .await;
    assert!(found.contains(&ids[0]), "the search finds PR 1's event");
    api.page(search, "/ui/search?repository=o%2Fr", As::Nobody)
        .await;
    api.page(search, "/ui/search?pr=2&fragment=1", As::Reader)
        .await;
    api.call("GET", search, "/ui/search?fragment=1", As::Nobody, 401)
        .await;
    api.call("GET", search, "/ui/search?pr=x", As::Reader, 400)
        .await;
    api.call("POST", search, search, As::Reader, 405).await;

    for asset in [css, js] {
        api.page(asset, &format!("{asset}?v=1"), As::Nobody).await;
        api.call("POST", asset, asset, As::Nobody, 405).await;
    }
}

async fn document(service: &Service) -> Spec {
    let (status, doc) = service.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    Spec::new(doc)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_of_a_recorded_run_matches_the_openapi_document() {
    let world = World::with(WorldOptions {
        capacity: 1,
        extra_yaml: API,
        allowed_events: "[pull_request, push]",
        ..WorldOptions::default()
    })
    .await;
    let mut service = world.replica().await;
    let spec = document(&service).await;
    let api = Recorder {
        spec: &spec,
        url: service.url.clone(),
    };
    let url = service.url.as_str();
    api.call(
        "GET",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        As::Nobody,
        200,
    )
    .await;

    // Intake: three PRs (one runs, two wait), a redelivery, a conflict, a
    // ping, an event without a pull request, and every refusal.
    let mut ids = Vec::new();
    for pr in 1..=3 {
        let body = pr_payload("o/r", pr, "opened");
        let answer = api
            .intake(delivery(url, &format!("d{pr}"), "pull_request", &body), 200)
            .await;
        assert_eq!(answer["message"], "Event received");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    let again = api
        .intake(
            delivery(url, "d1", "pull_request", &pr_payload("o/r", 1, "opened")),
            200,
        )
        .await;
    assert_eq!(again["message"], "Event already received");
    let other_body = pr_payload("o/r", 1, "synchronize");
    api.intake(delivery(url, "d1", "pull_request", &other_body), 409)
        .await;
    let ping = json!({"zen": "Keep it logically awesome.", "hook_id": 4242}).to_string();
    let pong = api.intake(delivery(url, "p1", "ping", &ping), 200).await;
    assert_eq!(pong["message"], "pong");
    let push = json!({"ref": "refs/heads/main", "repository": {"full_name": "o/r"}}).to_string();
    api.intake(delivery(url, "push-1", "push", &push), 202)
        .await;
    let body = pr_payload("o/r", 9, "opened");
    for (overrides, expect) in [
        (&[("user-agent", "curl/8")][..], 400),
        (&[("x-github-event", "issues")][..], 400),
        (&[("x-github-delivery", "")][..], 400),
        (
            &[(
                "x-hub-signature-256",
                "sha256=0000000000000000000000000000000000000000000000000000000000000000",
            )][..],
            401,
        ),
        (&[("content-type", "text/plain")][..], 415),
    ] {
        api.intake(
            delivery_with(url, "bad", "pull_request", &body, overrides),
            expect,
        )
        .await;
    }
    api.intake(
        delivery(url, "bad-payload", "pull_request", r#"{"action":"opened"}"#),
        400,
    )
    .await;
    api.too_large().await;
    api.call("GET", WEBHOOK, WEBHOOK, As::Nobody, 405).await;

    // Listing.
    let events = "/api/v1/events/status";
    let page = api.call("GET", events, events, As::Reader, 200).await;
    assert_eq!(page["total_count"], 3);
    api.call(
        "GET",
        events,
        &format!("{events}?page_size=1000&filter=status%3Dqueued"),
        As::Admin,
        200,
    )
    .await;
    api.call(
        "GET",
        events,
        &format!("{events}?filter=payload%3Dx"),
        As::Reader,
        400,
    )
    .await;
    api.call("GET", events, events, As::Nobody, 401).await;
    api.call("POST", events, events, As::Reader, 405).await;

    // PR 1 runs; PRs 2 and 3 wait because the pool is full.
    world.wait_dispatched(1).await;
    let pool = pool_path();
    api.until(&pool, |b| {
        b["pool"]["running"] == 1 && b["pool"]["queued"] == 2
    })
    .await;

    // Detail, explain, pools.
    let detail = "/api/v1/events/{id}";
    let one = api
        .call(
            "GET",
            detail,
            &format!("/api/v1/events/{}", ids[0]),
            As::Reader,
            200,
        )
        .await;
    assert!(!one["event"]["dispatches"].as_array().unwrap().is_empty());
    api.call(
        "GET",
        detail,
        &format!("/api/v1/events/{UNKNOWN_EVENT}"),
        As::Reader,
        404,
    )
    .await;
    api.call("GET", detail, "/api/v1/events/not-a-uuid", As::Reader, 404)
        .await;
    api.call(
        "GET",
        detail,
        &format!("/api/v1/events/{}", ids[0]),
        As::Nobody,
        401,
    )
    .await;
    api.call(
        "DELETE",
        detail,
        &format!("/api/v1/events/{}", ids[0]),
        As::Admin,
        405,
    )
    .await;
    let explain = "/api/v1/events/{id}/explain";
    let explained = api
        .call(
            "GET",
            explain,
            &format!("/api/v1/events/{}/explain", ids[2]),
            As::Reader,
            200,
        )
        .await;
    assert_eq!(explained["waiting"][0]["of"], 2, "{explained}");
    api.call(
        "GET",
        explain,
        &format!("/api/v1/events/{}/explain", ids[0]),
        As::Admin,
        200,
    )
    .await;
    let text = api
        .call(
            "GET",
            explain,
            &format!("/api/v1/events/{}/explain?format=text", ids[2]),
            As::Reader,
            200,
        )
        .await;
    assert!(text.as_str().unwrap().contains("Timeline:"), "{text}");
    api.call(
        "GET",
        explain,
        &format!("/api/v1/events/{}/explain?format=xml", ids[2]),
        As::Reader,
        400,
    )
    .await;
    api.call(
        "GET",
        explain,
        &format!("/api/v1/events/{UNKNOWN_EVENT}/explain"),
        As::Reader,
        404,
    )
    .await;
    api.call(
        "GET",
        explain,
        &format!("/api/v1/events/{}/explain", ids[2]),
        As::Nobody,
        401,
    )
    .await;
    api.call("GET", "/api/v1/pools", "/api/v1/pools", As::Reader, 200)
        .await;
    api.call("GET", "/api/v1/pools", "/api/v1/pools", As::Nobody, 401)
        .await;
    api.call("POST", "/api/v1/pools", "/api/v1/pools", As::Admin, 405)
        .await;
    let one_pool = "/api/v1/pools/{pool}";
    let shown = api.call("GET", one_pool, &pool, As::Reader, 200).await;
    assert_eq!(shown["pool"]["queue"][1]["reason"], "pool_full");
    api.call("GET", one_pool, "/api/v1/pools/ns/nope", As::Reader, 404)
        .await;
    api.call("GET", one_pool, &pool, As::Nobody, 401).await;

    // The dashboard: pages (rendered with a token, the shell without one,
    // fragments), its errors, and the embedded assets.
    dashboard(&api, &ids).await;

    // Pause (twice), refused to readers and strangers; replay and cancel.
    let pause = "/api/v1/pools/{pool}/pause";
    let resume = "/api/v1/pools/{pool}/resume";
    let paused = api
        .call("POST", pause, &format!("{pool}/pause"), As::Admin, 200)
        .await;
    assert_eq!(paused["changed"], true);
    let again = api
        .call("POST", pause, &format!("{pool}/pause"), As::Admin, 200)
        .await;
    assert_eq!(again["changed"], false);
    api.call("POST", pause, &format!("{pool}/pause"), As::Reader, 403)
        .await;
    api.call("POST", pause, &format!("{pool}/pause"), As::Nobody, 401)
        .await;
    api.call("POST", pause, "/api/v1/pools/ns/nope/pause", As::Admin, 404)
        .await;
    api.call("GET", pause, &format!("{pool}/pause"), As::Admin, 405)
        .await;
    let shown = api.call("GET", one_pool, &pool, As::Admin, 200).await;
    assert_eq!(shown["pool"]["paused_by"], "alice");
    let pools = api
        .call("GET", "/api/v1/pools", "/api/v1/pools", As::Reader, 200)
        .await;
    assert_eq!(pools["pools"][0]["paused"], true);

    let replay = "/api/v1/events/{id}/replay";
    let cancel = "/api/v1/events/{id}/cancel";
    api.call(
        "POST",
        replay,
        &format!("/api/v1/events/{}/replay", ids[1]),
        As::Admin,
        409,
    )
    .await;
    api.call(
        "POST",
        replay,
        &format!("/api/v1/events/{}/replay?force=maybe", ids[1]),
        As::Admin,
        400,
    )
    .await;
    api.call(
        "POST",
        replay,
        &format!("/api/v1/events/{UNKNOWN_EVENT}/replay"),
        As::Admin,
        404,
    )
    .await;
    api.call(
        "POST",
        replay,
        &format!("/api/v1/events/{}/replay", ids[1]),
        As::Reader,
        403,
    )
    .await;
    api.call(
        "POST",
        replay,
        &format!("/api/v1/events/{}/replay", ids[1]),
        As::Nobody,
        401,
    )
    .await;
    api.call(
        "GET",
        replay,
        &format!("/api/v1/events/{}/replay", ids[1]),
        As::Admin,
        405,
    )
    .await;
    let cancelled = api
        .call(
            "POST",
            cancel,
            &format!("/api/v1/events/{}/cancel", ids[2]),
            As::Admin,
            200,
        )
        .await;
    assert_eq!(cancelled["cancelled"].as_array().unwrap().len(), 1);
    api.call(
        "POST",
        cancel,
        &format!("/api/v1/events/{}/cancel", ids[2]),
        As::Admin,
        409,
    )
    .await;
    api.call(
        "POST",
        cancel,
        &format!("/api/v1/events/{UNKNOWN_EVENT}/cancel"),
        As::Admin,
        404,
    )
    .await;
    api.call(
        "POST",
        cancel,
        &format!("/api/v1/events/{}/cancel", ids[1]),
        As::Reader,
        403,
    )
    .await;
    api.call(
        "POST",
        cancel,
        &format!("/api/v1/events/{}/cancel", ids[1]),
        As::Nobody,
        401,
    )
    .await;
    api.call(
        "GET",
        cancel,
        &format!("/api/v1/events/{}/cancel", ids[1]),
        As::Admin,
        405,
    )
    .await;

    // Resume: PR 2 runs; then PR 1, finished, is replayed.
    let resumed = api
        .call("POST", resume, &format!("{pool}/resume"), As::Admin, 200)
        .await;
    assert_eq!(resumed["paused"], false);
    api.call("POST", resume, &format!("{pool}/resume"), As::Reader, 403)
        .await;
    api.call("POST", resume, &format!("{pool}/resume"), As::Nobody, 401)
        .await;
    api.call(
        "POST",
        resume,
        "/api/v1/pools/ns/nope/resume",
        As::Admin,
        404,
    )
    .await;
    finish_running(&world);
    world.wait_dispatched(2).await;
    finish_running(&world);
    let first = format!("/api/v1/events/{}", ids[0]);
    api.until(&first, |b| b["event"]["status"] == "processed")
        .await;
    let replayed = api
        .call(
            "POST",
            replay,
            &format!("/api/v1/events/{}/replay", ids[0]),
            As::Admin,
            200,
        )
        .await;
    assert_eq!(replayed["round"], 2);
    world.wait_dispatched(3).await;
    let story = api
        .call(
            "GET",
            explain,
            &format!("/api/v1/events/{}/explain", ids[0]),
            As::Reader,
            200,
        )
        .await;
    assert!(story["timeline"].as_array().unwrap().len() > 4, "{story}");
    let one = api.call("GET", detail, &first, As::Reader, 200).await;
    assert_eq!(one["event"]["dispatches"].as_array().unwrap().len(), 2);
    api.call("GET", events, events, As::Reader, 200).await;

    // The status routes and metrics.
    for (path, expect) in [
        ("/api/v1/status/ping", 200),
        ("/api/v1/status/db", 200),
        ("/api/v1/status/ready", 200),
        ("/api/v1/status/live", 200),
    ] {
        api.call("GET", path, path, As::Nobody, expect).await;
        api.call("POST", path, path, As::Nobody, 405).await;
    }
    let metrics = api
        .call("GET", "/metrics", "/metrics", As::Metrics, 200)
        .await;
    assert!(metrics.as_str().unwrap().contains("webhook_dispatcher_"));
    api.call("GET", "/metrics", "/metrics", As::Nobody, 401)
        .await;
    api.call("GET", "/metrics", "/metrics", As::Reader, 401)
        .await;
    api.call("POST", "/metrics", "/metrics", As::Metrics, 405)
        .await;
    api.call(
        "POST",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        As::Nobody,
        405,
    )
    .await;

    // Draining: readiness answers 503 from SIGTERM on; liveness stays 200.
    service.signal("TERM");
    let ready = "/api/v1/status/ready";
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let response = api.request("GET", ready, As::Nobody).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.bytes().await.unwrap();
        let answer = api.record("GET", ready, status, &content_type, &body, status);
        if status == 503 {
            assert_eq!(answer["status"], "draining");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never draining");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    api.call(
        "GET",
        "/api/v1/status/live",
        "/api/v1/status/live",
        As::Nobody,
        200,
    )
    .await;
    assert!(service.terminate_wait().await.success());

    // A replica without a database: 5xx answers, still JSON and documented.
    let config = world.config();
    let lost = Service::start(&config, "postgres://nobody@127.0.0.1:1/none", &[]).await;
    let api = Recorder {
        spec: &spec,
        url: lost.url.clone(),
    };
    api.call(
        "GET",
        "/api/v1/status/db",
        "/api/v1/status/db",
        As::Nobody,
        500,
    )
    .await;
    let not_ready = api.call("GET", ready, ready, As::Nobody, 503).await;
    assert_eq!(not_ready["status"], "error");
    api.call("GET", events, events, As::Reader, 503).await;
    let body = pr_payload("o/r", 5, "opened");
    api.intake(delivery(&lost.url, "d5", "pull_request", &body), 503)
        .await;
    api.call("GET", "/", "/?fragment=1", As::Reader, 503).await;
    api.page("/", "/", As::Nobody).await;

    // Every documented operation was driven.
    let driven: std::collections::BTreeSet<(String, String)> =
        spec.seen().into_iter().map(|(m, p, _)| (m, p)).collect();
    let missing: Vec<_> = spec
        .operations()
        .into_iter()
        .filter(|op| !driven.contains(op))
        .collect();
    assert!(missing.is_empty(), "never driven: {missing:?}");
    eprintln!(
        "answers checked (method, route, status): {:#?}",
        spec.seen()
    );
}

/// The validator catches what it claims to (so a passing run means something).
#[test]
fn the_validator_rejects_what_the_document_does_not_allow() {
    let spec = Spec::new(json!({
        "openapi": "3.1.0",
        "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/T"}}}}}}}},
        "components": {"schemas": {
            "T": {"type": "object", "required": ["a"], "additionalProperties": false,
                  "properties": {"a": {"type": ["integer", "null"]},
                                 "b": {"oneOf": [{"const": "x"}, {"type": "string", "format": "date-time"}]}}}
        }}
    }));
    let check = |status: u16, ct: &str, body: Value| {
        spec.check("GET", "/x", status, ct, body.to_string().as_bytes())
    };
    assert!(check(200, "application/json", json!({"a": 1, "b": "x"})).is_ok());
    assert!(
        check(
            200,
            "application/json",
            json!({"a": null, "b": "2026-12-02T10:00:00Z"})
        )
        .is_ok()
    );
    for bad in [
        json!({"a": 1.5}),
        json!({"b": "x"}),
        json!({"a": 1, "b": "y"}),
        json!({"a": 1, "c": 0}),
        json!([]),
    ] {
        assert!(
            check(200, "application/json", bad.clone()).is_err(),
            "{bad}"
        );
    }
    assert!(
        check(404, "application/json", json!({"a": 1})).is_err(),
        "undocumented status"
    );
    assert!(
        check(200, "text/plain", json!({"a": 1})).is_err(),
        "undocumented media type"
    );
    assert!(
        spec.check("POST", "/x", 200, "application/json", b"{}")
            .is_err()
    );
}
