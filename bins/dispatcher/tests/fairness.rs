//! End-to-end: fair shared pools and priorities on the real binary. A pull
//! request labelled with a priority (by a later `labeled` delivery no item
//! matches) jumps the queue without preempting the running work, and the
//! pools API and explain show its priority and position; with
//! `round_robin_repository` two repositories sharing a pool take turns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::world::{PIPELINE, World, WorldOptions};
use support::{Service, WAIT, delivery, http, pr_payload_labelled, send_pr};

async fn get(service: &Service, path: &str) -> Value {
    let r = http()
        .get(format!("{}{path}", service.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

async fn get_until(service: &Service, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        every.tick().await;
        let body = get(service, path).await;
        if pred(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET {path} never matched; last: {body}"
        );
    }
}

fn pool_path() -> String {
    format!("/api/v1/pools/ns/{PIPELINE}")
}

fn queue(pool: &Value) -> Vec<(i64, i64, i64)> {
    pool["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["position"].as_i64().unwrap(),
                w["pull_request_number"].as_i64().unwrap(),
                w["priority"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn finish_running(world: &World) {
    for run in world.kube.unfinished(PIPELINE) {
        world.kube.set_succeeded("ns", &run, "True", "Succeeded");
    }
}

/// Finishes the one running PipelineRun and waits for the next dispatch.
async fn finish_one_then_next(world: &World, dispatched: usize) {
    let running = world.kube.unfinished(PIPELINE);
    assert_eq!(running.len(), 1, "capacity 1: {running:?}");
    world
        .kube
        .set_succeeded("ns", &running[0], "True", "Succeeded");
    world.wait_dispatched(dispatched).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_priority_label_jumps_the_queue_without_preempting() {
    priority_label_jumps(false).await;
}

/// The same with incremental passes (a pool ordered by labels reads all its waiting work).
#[tokio::test(flavor = "multi_thread")]
async fn a_priority_label_jumps_the_queue_without_preempting_in_incremental_passes() {
    priority_label_jumps(true).await;
}

async fn priority_label_jumps(incremental: bool) {
    let world = World::with(WorldOptions {
        incremental,
        capacity: 1,
        priority_labels: r#"[{label: "priority/critical", priority: 100}]"#,
        ..WorldOptions::default()
    })
    .await;
    let service = world.replica().await;
    let mut ids = Vec::new();
    for pr in 1..=3 {
        let (status, body) = send_pr(&service.url, &format!("d{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    world.wait_dispatched(1).await;
    let pool =
        get_until(&service, &pool_path(), |b| b["pool"]["queued"] == 2).await["pool"].clone();
    assert_eq!(pool["fairness"], "fifo");
    assert_eq!(queue(&pool), [(1, 2, 0), (2, 3, 0)]);

    // PR 3 is labelled: the `labeled` delivery matches no item (aborted),
    // but it carries the PR's labels now.
    let body = pr_payload_labelled("o/r", 3, "labeled", &["lgtm", "priority/critical"]);
    let r = delivery(&service.url, "d3-labeled", "pull_request", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pool = get_until(&service, &pool_path(), |b| {
        b["pool"]["queue"][0]["pull_request_number"] == 3
    })
    .await["pool"]
        .clone();
    assert_eq!(queue(&pool), [(1, 3, 100), (2, 2, 0)]);
    // Nothing was preempted: PR 1 still runs, alone.
    assert_eq!(pool["running"], 1);
    assert_eq!(world.kube.unfinished(PIPELINE).len(), 1);
    assert_eq!(world.dispatched_prs(), [1]);

    // Explain shows the priority and the position.
    let explained = get(&service, &format!("/api/v1/events/{}/explain", ids[2])).await;
    let waiting = &explained["waiting"][0];
    assert_eq!(waiting["priority"], 100, "{explained}");
    assert_eq!(waiting["position"], 1);
    assert_eq!(waiting["of"], 2);
    let text = http()
        .get(format!(
            "{}/api/v1/events/{}/explain?format=text",
            service.url, ids[2]
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("position 1 of 2 in pool ns/pipe (priority 100)"),
        "{text}"
    );

    finish_one_then_next(&world, 2).await;
    finish_one_then_next(&world, 3).await;
    finish_running(&world);
    assert_eq!(world.drained(3).await, [1, 3, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_sharing_a_pool_take_turns() {
    repositories_take_turns(false).await;
}

/// The same with incremental passes (a round-robin pool reads all its waiting work, with trigger history).
#[tokio::test(flavor = "multi_thread")]
async fn repositories_sharing_a_pool_take_turns_in_incremental_passes() {
    repositories_take_turns(true).await;
}

async fn repositories_take_turns(incremental: bool) {
    let world = World::with(WorldOptions {
        incremental,
        capacity: 1,
        fairness: "round_robin_repository",
        second_repository: Some("o/s"),
        ..WorldOptions::default()
    })
    .await;
    let service = world.replica().await;
    for pr in 1..=4 {
        let (status, body) = send_pr(&service.url, &format!("r{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
    }
    for pr in [11, 12] {
        let (status, body) = send_pr(&service.url, &format!("s{pr}"), "o/s", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
    }
    world.wait_dispatched(1).await;
    let pool =
        get_until(&service, &pool_path(), |b| b["pool"]["queued"] == 5).await["pool"].clone();
    assert_eq!(pool["fairness"], "round_robin_repository");
    // o/r had the first turn (PR 1): o/s goes next, then they alternate.
    let order: Vec<i64> = queue(&pool).iter().map(|(_, pr, _)| *pr).collect();
    assert_eq!(order, [11, 2, 12, 3, 4]);
    for n in 2..=6 {
        finish_one_then_next(&world, n).await;
    }
    finish_running(&world);
    assert_eq!(world.drained(6).await, [1, 11, 2, 12, 3, 4]);
}
