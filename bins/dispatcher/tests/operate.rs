//! End-to-end: an operator's day on the real binary. The pools API shows
//! the queue in order with reasons; explain tells one delivery's story from
//! its stored timeline; pause (surviving a restart), cancel, resume and
//! replay act, under the admin token's name; read tokens cannot act; and
//! `dispatcher explain` prints the same story.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::world::{PIPELINE, World, WorldOptions};
use support::{Service, http, send_pr};

const ADMIN: &str = "alice-secret";
const READER: &str = "reader-secret";
const API: &str = r#"
api:
  tokens: ["reader-secret"]
  admin_tokens: [{name: alice, token: "alice-secret"}]
"#;

async fn get(service: &Service, path: &str) -> Value {
    let (status, body) = service.get_as(path, Some(READER)).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn get_until(service: &Service, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    service.get_until_as(path, Some(READER), pred).await
}

async fn post(service: &Service, path: &str, token: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", service.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn pool_path() -> String {
    format!("/api/v1/pools/ns/{PIPELINE}")
}

fn messages(explained: &Value) -> Vec<String> {
    explained["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for a dispatch pass that started after now (readiness reports the last one).
async fn a_later_pass(service: &Service) {
    let before = get(service, "/api/v1/status/ready").await["dispatcher"]["last_pass_at"].clone();
    get_until(service, "/api/v1/status/ready", |b| {
        b["dispatcher"]["last_pass_at"] != before
    })
    .await;
}

fn finish_running(world: &World) {
    for run in world.kube.unfinished(PIPELINE) {
        world.kube.set_succeeded("ns", &run, "True", "Succeeded");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_sees_explains_pauses_cancels_resumes_and_replays() {
    let world = World::with(WorldOptions {
        capacity: 1,
        extra_yaml: API,
        ..WorldOptions::default()
    })
    .await;
    let mut service = world.replica().await;
    let mut ids = Vec::new();
    for pr in 1..=3 {
        let (status, body) = send_pr(&service.url, &format!("d{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    world.wait_dispatched(1).await;

    // The pool: one running, PRs 2 and 3 waiting in order because it is full.
    let pool = get_until(&service, &pool_path(), |b| {
        b["pool"]["running"] == 1 && b["pool"]["queued"] == 2
    })
    .await["pool"]
        .clone();
    assert_eq!(pool["capacity"], 1);
    assert_eq!(pool["kubernetes"]["known"], true);
    let queue = pool["queue"].as_array().unwrap();
    let order: Vec<(i64, i64, &str)> = queue
        .iter()
        .map(|w| {
            (
                w["position"].as_i64().unwrap(),
                w["pull_request_number"].as_i64().unwrap(),
                w["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [(1, 2, "pool_full"), (2, 3, "pool_full")]);
    // On the web next to the (here: fake) GitHub API.
    let url = queue[0]["pull_request_url"].as_str().unwrap();
    assert!(url.ends_with("/o/r/pull/2"), "{url}");

    // Explain PR 3: matched, queued, waiting at position 2 of 2 because the pool is full.
    let explained = get(&service, &format!("/api/v1/events/{}/explain", ids[2])).await;
    assert_eq!(explained["matching"][0]["item"], "ops");
    assert_eq!(explained["matching"][0]["matched"], true);
    assert_eq!(explained["matching"][0]["filter"], "no_filter");
    let said = messages(&explained);
    assert!(said[0].starts_with("received delivery d3"), "{said:?}");
    assert!(
        said.iter()
            .any(|m| m.starts_with("queued for ops at position")),
        "{said:?}"
    );
    assert_eq!(explained["waiting"][0]["position"], 2);
    assert_eq!(explained["waiting"][0]["of"], 2);
    assert_eq!(explained["waiting"][0]["reason"], "pool_full");

    // A read token cannot act; an admin token pauses, under its name.
    let (status, _) = post(&service, &format!("{}/pause", pool_path()), READER).await;
    assert_eq!(status, 403);
    let (status, body) = post(&service, &format!("{}/pause", pool_path()), ADMIN).await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, Value::Bool(true)),
        "{body}"
    );

    // The pause is stored: it survives a restart, and nothing runs while paused.
    service.terminate().await;
    let service = world.replica().await;
    finish_running(&world);
    get_until(&service, &pool_path(), |b| {
        b["pool"]["running"] == 0 && b["pool"]["paused"] == true
    })
    .await;
    a_later_pass(&service).await;
    a_later_pass(&service).await;
    assert_eq!(
        world.listener.accepted().len(),
        1,
        "a paused pool dispatched"
    );
    let pool = get(&service, &pool_path()).await["pool"].clone();
    assert_eq!(pool["paused_by"], "alice");
    assert_eq!(pool["queue"][0]["reason"], "paused");
    let (status, body) = post(
        &service,
        &format!("/api/v1/events/{}/replay", ids[1]),
        ADMIN,
    )
    .await;
    assert_eq!(status, 409, "PR 2 is still queued: {body}");

    // Cancel PR 3's waiting work; resume; PR 2 runs, PR 3 never does.
    let (status, body) = post(
        &service,
        &format!("/api/v1/events/{}/cancel", ids[2]),
        ADMIN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        &service,
        &format!("/api/v1/events/{}/cancel", ids[2]),
        ADMIN,
    )
    .await;
    assert_eq!(status, 409, "nothing left to cancel");
    let (status, _) = post(&service, &format!("{}/resume", pool_path()), ADMIN).await;
    assert_eq!(status, 200);
    world.wait_dispatched(2).await;
    assert_eq!(world.dispatched_prs(), [1, 2]);
    let explained = get(&service, &format!("/api/v1/events/{}/explain", ids[2])).await;
    assert_eq!(explained["event"]["status"], "cancelled");
    let said = messages(&explained);
    for expected in ["pool ns/pipe paused by alice", "cancelled by alice"] {
        assert!(said.iter().any(|m| m == expected), "{expected}: {said:?}");
    }

    // Replay PR 1 (finished): a second round runs once more.
    let (status, body) = post(
        &service,
        &format!("/api/v1/events/{}/replay", ids[0]),
        ADMIN,
    )
    .await;
    assert_eq!(
        (status, body["round"].clone()),
        (200, Value::from(2)),
        "{body}"
    );
    finish_running(&world);
    world.wait_dispatched(3).await;
    assert_eq!(world.dispatched_prs(), [1, 2, 1]);
    let explained = get_until(
        &service,
        &format!("/api/v1/events/{}/explain", ids[0]),
        |b| b["event"]["status"] == "processed",
    )
    .await;
    let said = messages(&explained);
    assert!(
        said.iter().any(|m| m == "replayed by alice as round 2"),
        "{said:?}"
    );
    let accepted = said.iter().filter(|m| m.contains("answered 202")).count();
    assert_eq!(accepted, 2, "{said:?}");

    // Newest wins: a newer event of PR 1 makes replaying the old one a 409, unless forced.
    let (status, newer) = send_pr(&service.url, "d1-sync", "o/r", 1, "synchronize").await;
    assert_eq!(status, 200);
    finish_running(&world);
    world.wait_dispatched(4).await;
    get_until(
        &service,
        &format!("/api/v1/events/{}", newer["id"].as_str().unwrap()),
        |b| b["event"]["status"] == "processed",
    )
    .await;
    let (status, body) = post(
        &service,
        &format!("/api/v1/events/{}/replay", ids[0]),
        ADMIN,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("force=true"));
    let (status, _) = post(
        &service,
        &format!("/api/v1/events/{}/replay?force=true", ids[0]),
        ADMIN,
    )
    .await;
    assert_eq!(status, 200);
    finish_running(&world);
    world.wait_dispatched(5).await;
    world.assert_within_capacity();

    // `dispatcher explain` tells the same story as text (with --url it reads no config).
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args(["explain", &ids[2], "--url", &service.url])
        .env_clear()
        .env("DISPATCHER_API_TOKEN", READER)
        .env("WEBHOOK_DISPATCHER_CONFIG", world.dir.0.join("absent.yaml"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in ["Timeline:", "cancelled by alice", "✓ ops"] {
        assert!(text.contains(expected), "{expected} in:\n{text}");
    }
    let missing = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .args([
            "explain",
            "00000000-0000-4000-8000-000000000000",
            "--url",
            &service.url,
        ])
        .env_clear()
        .env("DISPATCHER_API_TOKEN", READER)
        .env("WEBHOOK_DISPATCHER_CONFIG", world.dir.0.join("absent.yaml"))
        .output()
        .await
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
}
