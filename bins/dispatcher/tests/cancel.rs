//! End-to-end: cancelling superseded and closed work (`cancel_superseded`,
//! `cancel_on_close` per item) with the real binary against the fakes: the
//! run of an older event is cancelled by patching `spec.status`, its slot is
//! counted until the fake Tekton finishes it, and the newer event starts
//! then, never over capacity; closing a PR clears its queue and cancels its
//! running work.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::world::*;
use support::*;

const READER: &str = "reader-secret";
const API: &str = r#"
api:
  tokens: ["reader-secret"]
"#;

/// The world's config with both flags on its one item.
fn cancelling_config(world: &World) -> String {
    let config = world.config().replacen(
        "      callback_url:",
        "      cancel_superseded: true\n      cancel_on_close: true\n      callback_url:",
        1,
    );
    assert!(config.contains("cancel_on_close"), "{config}");
    config
}

/// The world's replica with both flags on its one item.
async fn replica(world: &World) -> Service {
    world.replica_with(&cancelling_config(world)).await
}

async fn world(capacity: u32) -> World {
    let world = World::with(WorldOptions {
        capacity,
        extra_yaml: API,
        ..WorldOptions::default()
    })
    .await;
    // Long enough that a slot freed too early would show as an overshoot.
    world.kube.set_cancel_delay(Duration::from_millis(700));
    world
}

async fn event(svc: &Service, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    svc.get_until_as(&format!("/api/v1/events/{id}"), Some(READER), |b| {
        pred(&b["event"])
    })
    .await["event"]
        .clone()
}

/// The kinds of the event's timeline, once `kind` is among them.
async fn timeline_with(svc: &Service, id: &str, kind: &str) -> Vec<(String, String)> {
    let explained = svc
        .get_until_as(&format!("/api/v1/events/{id}/explain"), Some(READER), |b| {
            b["timeline"]
                .as_array()
                .is_some_and(|t| t.iter().any(|e| e["kind"] == kind))
        })
        .await;
    explained["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Polls `/metrics` (the worker counts right after recording) until every line shows.
async fn metrics_with(svc: &Service, lines: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = svc.metrics().await;
        if lines.iter().all(|l| text.contains(l)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines:?} not in {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn id(body: &Value) -> String {
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_cancels_the_running_run_and_the_new_one_starts_when_its_slot_frees() {
    let world = world(1).await;
    let svc = replica(&world).await;
    let (_, first) = send_pr(&svc.url, "c1-a", "o/r", 1, "opened").await;
    world.wait_dispatched(1).await;
    let first = id(&first);
    // Its run is seen (confirmed) and running.
    event(&svc, &first, |e| e["dispatches"][0]["state"] == "confirmed").await;
    let running = world.kube.unfinished(PIPELINE);
    assert_eq!(running.len(), 1);

    let (_, newer) = send_pr(&svc.url, "c1-b", "o/r", 1, "synchronize").await;
    let newer = id(&newer);
    let cancelled = event(&svc, &first, |e| e["status"] == "cancelled").await;
    assert_eq!(cancelled["dispatches"][0]["state"], "cancelled");
    // The run is patched, then finishes; only then does the newer one start.
    assert!(
        world
            .kube
            .wait_until(WAIT, |k| k.patches().iter().any(|p| p.1 == running[0]
                && p.2
                    == serde_json::json!({"spec": {"status": "CancelledRunFinally"}})
                && p.3 == 200))
            .await,
        "{:?}",
        world.kube.patches()
    );
    world.wait_dispatched(2).await;
    event(&svc, &newer, |e| e["status"] == "processed").await;
    world.assert_within_capacity();
    let second = &world.listener.accepted()[1];
    assert_eq!(second.json()["action"], "synchronize");

    let told = timeline_with(&svc, &first, "run_cancelled").await;
    let requested = told
        .iter()
        .find(|(k, _)| k == "run_cancel_requested")
        .expect("requested");
    assert!(
        requested.1.contains(&newer) && requested.1.contains("being cancelled"),
        "{told:?}"
    );
    let done = told.iter().find(|(k, _)| k == "run_cancelled").unwrap();
    assert!(done.1.contains(&running[0]), "{told:?}");
    metrics_with(
        &svc,
        &["webhook_dispatcher_runs_cancelled_total{pool=\"ns/pipe\",reason=\"superseded\"} 1\n"],
    )
    .await;

    // The newer run finishes normally; nothing else runs.
    world.listener.finish_runs(1);
    assert!(
        world
            .kube
            .wait_until(WAIT, |k| k.unfinished(PIPELINE).is_empty())
            .await
    );
    world.assert_within_capacity();
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_a_pr_clears_its_queue_and_cancels_its_run_with_retries() {
    let world = world(1).await;
    let svc = replica(&world).await;
    let (_, one) = send_pr(&svc.url, "k1", "o/r", 1, "opened").await;
    world.wait_dispatched(1).await;
    let one = id(&one);
    event(&svc, &one, |e| e["dispatches"][0]["state"] == "confirmed").await;
    let (_, two) = send_pr(&svc.url, "k2", "o/r", 2, "opened").await;
    let (_, three) = send_pr(&svc.url, "k3", "o/r", 3, "opened").await;
    let (two, three) = (id(&two), id(&three));
    event(&svc, &two, |e| e["status"] == "queued").await;
    event(&svc, &three, |e| e["status"] == "queued").await;

    // Closing PR 2 (no item matches `closed`: aborted) clears its queue.
    let (_, closed2) = send_pr(&svc.url, "k2-closed", "o/r", 2, "closed").await;
    event(&svc, &id(&closed2), |e| e["status"] == "aborted").await;
    let cleared = event(&svc, &two, |e| e["status"] == "cancelled").await;
    assert_eq!(cleared["dispatches"][0]["state"], "cancelled");
    let told = timeline_with(&svc, &two, "run_cancel_requested").await;
    assert!(
        told.iter().any(|(k, m)| k == "run_cancel_requested"
            && m.contains("closed")
            && m.contains("waiting")),
        "{told:?}"
    );

    // Closing PR 1 cancels its running run; the API refuses twice first.
    world.kube.refuse_patches(&[403, 409]);
    let running = world.kube.unfinished(PIPELINE);
    send_pr(&svc.url, "k1-closed", "o/r", 1, "closed").await;
    event(&svc, &one, |e| e["status"] == "cancelled").await;
    assert!(
        world
            .kube
            .wait_until(WAIT, |k| k
                .patches()
                .iter()
                .any(|p| p.1 == running[0] && p.3 == 200))
            .await
    );
    let statuses: Vec<u16> = world.kube.patches().iter().map(|p| p.3).collect();
    assert_eq!(statuses, [403, 409, 200]);
    // PR 3 runs once PR 1's run has finished; PR 2 never runs.
    world.wait_dispatched(2).await;
    event(&svc, &three, |e| e["status"] == "processed").await;
    assert_eq!(world.dispatched_prs(), [1, 3]);
    world.assert_within_capacity();
    let told = timeline_with(&svc, &one, "run_cancelled").await;
    assert!(
        told.iter().any(|(k, _)| k == "run_cancel_failed"),
        "{told:?}"
    );
    metrics_with(
        &svc,
        &[
            "webhook_dispatcher_runs_cancelled_total{pool=\"ns/pipe\",reason=\"closed\"} 1\n",
            "webhook_dispatcher_run_cancel_failures_total{pool=\"ns/pipe\"} 2\n",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_while_the_trigger_is_in_flight_keeps_its_slot_until_its_run_is_cancelled() {
    let world = World::with(WorldOptions {
        capacity: 1,
        extra_yaml: API,
        dispatch_label: true,
        trigger_timeout: "20s",
        ..WorldOptions::default()
    })
    .await;
    world.kube.set_cancel_delay(Duration::from_millis(700));
    let svc = replica(&world).await;
    // The listener holds the POST: the dispatch stays `triggering`, no run yet.
    world.listener.hang(true);
    let (_, first) = send_pr(&svc.url, "f1-a", "o/r", 1, "opened").await;
    let first = id(&first);
    assert!(world.listener.wait_until(WAIT, |l| l.arrived() == 1).await);
    let (_, newer) = send_pr(&svc.url, "f1-b", "o/r", 1, "synchronize").await;
    let newer = id(&newer);
    let told = timeline_with(&svc, &first, "run_cancel_requested").await;
    assert!(told.iter().any(|(_, m)| m.contains(&newer)), "{told:?}");
    // Still in flight, holding the slot: the newer event waits.
    let held = event(&svc, &first, |e| {
        e["dispatches"][0]["state"] == "triggering"
    })
    .await;
    assert_eq!(held["status"], "queued", "{held}");
    event(&svc, &newer, |e| e["status"] == "queued").await;
    assert_eq!(world.listener.arrived(), 1);

    // The answer comes, its run appears: it is cancelled, then the newer one runs.
    world.listener.hang(false);
    event(&svc, &first, |e| e["dispatches"][0]["state"] == "cancelled").await;
    assert!(
        world
            .kube
            .wait_until(WAIT, |k| k.patches().iter().any(|p| p.3 == 200))
            .await
    );
    world.wait_dispatched(2).await;
    event(&svc, &newer, |e| e["status"] == "processed").await;
    world.assert_within_capacity();
    assert_eq!(world.dispatched_prs(), [1, 1]);
    assert_eq!(world.listener.accepted()[1].json()["action"], "synchronize");
    timeline_with(&svc, &first, "run_cancelled").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_connect_asks_for_patch_only_when_cancelling() {
    let world = world(1).await;
    let config = world.dir.0.join("check.yaml");
    std::fs::write(&config, cancelling_config(&world)).unwrap();
    let run = || world.check_connect(&config);
    let (code, stdout) = run().await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("✓ kubernetes ns: can patch pipelineruns"),
        "{stdout}"
    );
    let mut verbs: Vec<String> = world
        .kube
        .access_reviews()
        .into_iter()
        .map(|r| r.1)
        .collect();
    verbs.sort();
    assert_eq!(verbs, ["list", "patch", "watch"]);
    world.kube.forbid_namespace("ns", true);
    let (code, stdout) = run().await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("✗ kubernetes ns: cannot patch pipelineruns"),
        "{stdout}"
    );
}
