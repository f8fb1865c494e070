//! End-to-end: the real binary, real PostgreSQL, webhook intake and the
//! events API (issue: foundation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;

use dispatcher_testdb::TestDatabase;
use serde_json::{Value, json};
use support::*;

/// No items: intake only (events are aborted by the engine, which is fine here).
const INTAKE_CONFIG: &str = r#"
security:
  github_webhook_secret: "${GITHUB_WEBHOOK_SECRET}"
  verify_signatures: true
  allowed_github_events: [pull_request, push]
server:
  bind: 127.0.0.1
  port: 0
  body_limit_bytes: 65536
"#;

async fn start(db: &TestDatabase, config: &str) -> Service {
    Service::start(config, db.url(), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_intake_outcome() {
    let db = TestDatabase::new();
    let svc = start(&db, INTAKE_CONFIG).await;
    let url = svc.url.clone();
    let body = pr_payload("o/r", 7, "opened");

    let (status, stored) = send_pr(&url, "d-1", "o/r", 7, "opened").await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        (stored["message"].as_str(), stored["delivery_id"].as_str()),
        (Some("Event received"), Some("d-1"))
    );
    assert_eq!(stored["pull_request_number"], 7);
    let (status, again) = send_pr(&url, "d-1", "o/r", 7, "opened").await;
    assert_eq!(
        (status, &again["id"]),
        (200, &stored["id"]),
        "redelivery returns the stored event"
    );
    let (status, conflict) = send_pr(&url, "d-1", "o/r", 7, "closed").await;
    assert_eq!(
        (status, conflict["status"].as_str()),
        (409, Some("rejected"))
    );

    let r = http()
        .post(format!("{url}/api/v1/webhooks/github-pipeline"))
        .header("User-Agent", "curl/8")
        .header("X-GitHub-Event", "pull_request")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Invalid User-Agent header"
    );

    let r = delivery(&url, "d-2", "issues", &body).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Event type 'issues' not allowed"
    );

    let r = delivery_with(
        &url,
        "d-3",
        "pull_request",
        &body,
        &[("x-hub-signature-256", "sha256=00")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["message"],
        "Invalid webhook signature"
    );

    let ping = json!({"zen": "Design for failure.", "hook_id": 1}).to_string();
    let r = delivery(&url, "p-1", "ping", &ping).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "ok", "message": "pong"})
    );

    let push = json!({"ref": "refs/heads/main"}).to_string();
    let r = delivery(&url, "push-1", "push", &push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");

    let r = delivery_with(
        &url,
        "d-4",
        "pull_request",
        &body,
        &[("x-github-delivery", "")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    let r = delivery_with(
        &url,
        "d-5",
        "pull_request",
        &body,
        &[("content-type", "text/plain")],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/json");

    let no_pr = json!({"action": "opened", "repository": {"full_name": "o/r"}}).to_string();
    let r = delivery(&url, "d-6", "pull_request", &no_pr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("pull_request.number")
    );

    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
    let r = delivery(&url, "d-7", "pull_request", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "rejected");

    let r = http()
        .get(format!("{url}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = http()
        .delete(format!("{url}/api/v1/events/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Only the one pull-request delivery was stored.
    let (_, list) = svc.get("/api/v1/events/status").await;
    assert_eq!(list["total_count"], 1, "{list}");
    // `id` is the event's v4 UUID as a string, the same in the intake
    // answer, the listing and the detail, and the key of the detail.
    let id = stored["id"].as_str().expect("id is a string");
    let uuid = uuid::Uuid::parse_str(id).expect("id is a UUID");
    assert_eq!(uuid.get_version_num(), 4, "{id}");
    assert_eq!(id, uuid.hyphenated().to_string(), "lower-case hyphenated");
    assert_eq!(list["events"][0]["id"], id);
    let (status, detail) = svc.get(&format!("/api/v1/events/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(detail["event"]["id"], id);
    assert_eq!(detail["event"]["headers"]["X-GitHub-Hook-ID"], "4242");
    assert_eq!(detail["event"]["headers"]["X-GitHub-Delivery"], "d-1");

    // An unknown UUID, the internal integer key or any non-UUID: 404 JSON.
    for unknown in [
        "3f1c2b4a-9d8e-4f7a-8b6c-5d4e3f2a1b0c",
        "1",
        "not-a-uuid",
        "%27%3B--",
    ] {
        let (status, body) = svc.get(&format!("/api/v1/events/{unknown}")).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (404, Some("rejected")),
            "{unknown}: {body}"
        );
    }

    assert_eq!(
        svc.get("/api/v1/status/ping").await,
        (200, json!({"status": "pong"}))
    );
    assert_eq!(
        svc.get("/api/v1/status/db").await,
        (
            200,
            json!({"status": "ok", "message": "Database is running"})
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_paginates_and_filters() {
    let db = TestDatabase::new();
    let svc = start(&db, INTAKE_CONFIG).await;
    for i in 1..=12 {
        let action = if i % 3 == 0 { "synchronize" } else { "opened" };
        let (status, _) = send_pr(&svc.url, &format!("d-{i}"), "o/r", 100 + i % 2, action).await;
        assert_eq!(status, 200);
    }
    let (status, page) = svc.get("/api/v1/events/status?page=2&page_size=5").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            page["page"].as_u64(),
            page["page_size"].as_u64(),
            page["total_count"].as_u64()
        ),
        (Some(2), Some(5), Some(12))
    );
    let ids: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-7", "d-6", "d-5", "d-4", "d-3"], "newest first");
    for key in [
        "id",
        "delivery_id",
        "action",
        "repository_full_name",
        "pull_request_number",
        "processed",
        "processing_error",
        "received_at",
        "processed_at",
        "status",
    ] {
        assert!(page["events"][0].get(key).is_some(), "missing {key}");
    }

    let (_, clamped) = svc.get("/api/v1/events/status?page_size=1000").await;
    assert_eq!(clamped["page_size"], 100);

    let (_, filtered) = svc
        .get("/api/v1/events/status?filter=action=synchronize;pull_request_number=101")
        .await;
    let ids: Vec<&str> = filtered["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-9", "d-3"]);
    // No item matches: every event ends `aborted`, which is final, so
    // `processed` is true (as in the original).
    svc.get_until(
        "/api/v1/events/status?filter=repository_full_name%3Do%2Fr%3Bprocessed%3Dtrue",
        |l| l["total_count"] == 12,
    )
    .await;

    for bad in [
        "filter=payload=x",
        "filter=status=bogus",
        "filter=pull_request_number=abc",
        "filter=processed=maybe",
        "page=0",
        "page_size=-1",
    ] {
        let (status, body) = svc.get(&format!("/api/v1/events/status?{bad}")).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (400, Some("rejected")),
            "{bad}: {body}"
        );
    }
    // Ids are UUIDs: the internal integer key and non-UUIDs name no event.
    for unknown in ["999999", "1", "abc", "00000000-0000-0000-0000-000000000000"] {
        let (status, body) = svc.get(&format!("/api/v1/events/{unknown}")).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (404, Some("rejected")),
            "{unknown}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_protect_the_events_api() {
    let db = TestDatabase::new();
    let config = format!(
        "{INTAKE_CONFIG}api:\n  tokens: [\"${{DISPATCHER_API_TOKEN}}\"]\n  metrics_token: \"${{METRICS_TOKEN}}\"\n"
    );
    let svc = Service::start(
        &config,
        db.url(),
        &[
            ("DISPATCHER_API_TOKEN", "op-token".to_owned()),
            ("METRICS_TOKEN", "scrape-token".to_owned()),
        ],
    )
    .await;
    // The start-up line: version and configuration summary, secrets only counted.
    let started = svc
        .logs()
        .into_iter()
        .find(|l| l.contains("starting the webhook dispatcher"))
        .expect("a start-up line");
    let line: Value = serde_json::from_str(&started).unwrap();
    assert_eq!(line["level"], "INFO", "{started}");
    assert_eq!(line["version"], env!("CARGO_PKG_VERSION"), "{started}");
    assert_eq!(line["api_tokens"], 1, "{started}");
    assert_eq!(line["metrics_token"], true, "{started}");
    assert_eq!(line["signatures_verified"], true, "{started}");
    assert_eq!(line["webhook_secrets"], 1, "{started}");
    assert!(line["max_attempts"].is_u64(), "{started}");
    for secret in [SECRET, "op-token", "scrape-token", db.url()] {
        assert!(!started.contains(secret), "{secret} in {started}");
    }
    let (status, stored) = send_pr(&svc.url, "d-1", "o/r", 1, "opened").await;
    assert_eq!(status, 200, "intake needs no token");
    let id = stored["id"].as_str().expect("a UUID string");
    assert_eq!(svc.get("/api/v1/status/ping").await.0, 200);
    assert_eq!(svc.get("/api/v1/status/db").await.0, 200);
    let (status, body) = svc.get("/api/v1/events/status").await;
    assert_eq!((status, body["status"].as_str()), (401, Some("rejected")));
    let r = http()
        .get(format!("{}/api/v1/events/status", svc.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(format!("{}/api/v1/events/status", svc.url))
        .bearer_auth("op-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}/api/v1/events/{id}", svc.url))
        .bearer_auth("op-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        !svc.logs()
            .iter()
            .any(|l| l.contains("op-token") || l.contains("scrape-token") || l.contains(SECRET)),
        "no secret in logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_deliveries_survive_kill_9() {
    let db = TestDatabase::new();
    let mut svc = start(&db, INTAKE_CONFIG).await;
    let url = svc.url.clone();
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let (status, _) =
                    send_pr(&url, &format!("burst-{i}"), "o/r", i + 1, "opened").await;
                (i, status)
            })
        })
        .collect();
    let mut acknowledged = HashSet::new();
    let mut other = Vec::new();
    for s in sends {
        let (i, status) = s.await.unwrap();
        if status == 200 {
            acknowledged.insert(format!("burst-{i}"));
        } else {
            other.push((i, status));
        }
    }
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    svc.kill9().await;

    let svc = start(&db, INTAKE_CONFIG).await;
    let mut stored = HashSet::new();
    for page in 1..=3 {
        let (_, body) = svc
            .get(&format!("/api/v1/events/status?page={page}&page_size=100"))
            .await;
        for e in body["events"].as_array().unwrap() {
            stored.insert(e["delivery_id"].as_str().unwrap().to_owned());
        }
    }
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_and_exits_zero() {
    let db = TestDatabase::new();
    let mut svc = start(&db, INTAKE_CONFIG).await;
    assert_eq!(send_pr(&svc.url, "d-1", "o/r", 1, "opened").await.0, 200);
    let status = svc.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(svc.logs().iter().any(|l| l.contains("SIGTERM received")));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readiness_off_while_intake_keeps_storing() {
    let db = TestDatabase::new();
    // The server section is last in INTAKE_CONFIG; the delay outlasts the test.
    let config = format!("{INTAKE_CONFIG}  shutdown_delay: 1h\n");
    let mut svc = start(&db, &config).await;
    assert_eq!(
        svc.get("/api/v1/status/live").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(svc.get("/api/v1/status/ready").await.0, 200);
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &svc.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    svc.wait_log(|l| l.contains("shutdown requested"))
        .await
        .expect("the server starts draining");

    let (status, ready) = svc.get("/api/v1/status/ready").await;
    assert_eq!((status, ready["status"].as_str()), (503, Some("draining")));
    let (status, stored) = send_pr(&svc.url, "late-1", "o/r", 3, "opened").await;
    assert_eq!(status, 200, "{stored}");
    let (_, list) = svc
        .get("/api/v1/events/status?filter=delivery_id=late-1")
        .await;
    assert_eq!(list["total_count"], 1, "{list}");
    assert_eq!(svc.get("/api/v1/status/live").await.0, 200);
    svc.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_and_migrate_commands() {
    let dir = TempDir::new("cli");
    let good = dir.0.join("good.yaml");
    std::fs::write(&good, INTAKE_CONFIG).unwrap();
    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "dispatcher:\n  items:\n    - name: x\n      events: [opened]\n      full_repository_name: o/r\n      callback_url: nope\n      capacity: {type: ocp_tekton, pipeline_name: p, max_capacity: -1, namespace: ns}\nsecurity: {verify_signatures: false}\n",
    )
    .unwrap();
    let run = |config: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        cmd.args(args)
            .env_clear()
            .env("WEBHOOK_DISPATCHER_CONFIG", config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&good, &["check-config"], &[("GITHUB_WEBHOOK_SECRET", "x")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&bad, &["check-config"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dispatcher.items[0].callback_url")
            && stderr.contains("dispatcher.items[0].capacity.max_capacity"),
        "{stderr}"
    );
    let out = run(&good, &["check-config"], &[]);
    assert!(!out.status.success(), "missing secret is an error");

    let db = TestDatabase::empty();
    let out = run(
        &good,
        &["migrate"],
        &[("GITHUB_WEBHOOK_SECRET", "x"), ("DATABASE_URL", db.url())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pending = dispatcher_store_pending(db.url()).await;
    assert!(pending.is_empty(), "{pending:?}");
    let out = run(&good, &["migrate"], &[("GITHUB_WEBHOOK_SECRET", "x")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[test]
fn the_original_command_line_keeps_working() {
    // The image links `webhook-dispatcher` to the binary; the original's
    // Deployment runs `webhook-dispatcher --verbose` with CONFIG_FILE set.
    let dir = TempDir::new("alias");
    let config = dir.0.join("dispatcher_config.yaml");
    std::fs::write(&config, INTAKE_CONFIG).unwrap();
    let alias = dir.0.join("webhook-dispatcher");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_dispatcher"), &alias).unwrap();
    let out = std::process::Command::new(&alias)
        .args(["--verbose", "check-config"])
        .env_clear()
        .env("CONFIG_FILE", &config)
        .env("GITHUB_WEBHOOK_SECRET", "x")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dispatcher_config.yaml: OK"));
}

async fn dispatcher_store_pending(url: &str) -> Vec<String> {
    dispatcher_store::pending_migrations(url, &dispatcher_store::ConnectionOptions::default())
        .await
        .unwrap()
}
