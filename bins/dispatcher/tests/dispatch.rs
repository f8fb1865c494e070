//! End-to-end: the real binary dispatching into fake Tekton (EventListener +
//! Kubernetes API) with fake GitHub labels, on real PostgreSQL (issue:
//! dispatch engine).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use dispatcher_fakes::{FakeEventListener, FakeKube, TektonMode};
use dispatcher_testdb::TestDatabase;
use support::world::*;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn burst_of_30_prs_against_capacity_3() {
    burst_of_30_prs(false).await;
}

/// The same, every pass reading only work in flight and the heads of queues with room.
#[tokio::test(flavor = "multi_thread")]
async fn burst_of_30_prs_against_capacity_3_in_incremental_passes() {
    burst_of_30_prs(true).await;
}

async fn burst_of_30_prs(incremental: bool) {
    let world = World::with(WorldOptions {
        capacity: 3,
        run_for: Some(Duration::from_millis(100)),
        incremental,
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    for pr in 1..=30 {
        assert_eq!(
            send_pr(&svc.url, &format!("d-{pr}"), "o/r", pr, "opened")
                .await
                .0,
            200
        );
    }
    let prs = world.drained(30).await;
    // FIFO: a PR arrives at most (capacity - 1) places from its turn; only
    // triggers sent concurrently in one pass may swap.
    for (position, pr) in prs.iter().enumerate() {
        assert!(
            (position as i64 - (pr - 1)).abs() < 3,
            "PR {pr} dispatched at position {position}: {prs:?}"
        );
    }
    for r in world.listener.accepted() {
        assert!(r.signature_ok, "forwarded signature must verify");
        assert_eq!(r.header("x-github-event"), Some("pull_request"));
    }
    let (_, list) = svc
        .get("/api/v1/events/status?filter=status=processed&page_size=100")
        .await;
    assert_eq!(list["total_count"], 30, "{list}");
    assert!(
        list["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["processed"] == true)
    );

    // One Metrics shared by intake and dispatcher, served on the main port.
    let text = svc.metrics().await;
    let value = |prefix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(value("webhook_dispatcher_leader "), [1.0], "{text}");
    assert_eq!(
        value("webhook_dispatcher_pool_capacity{"),
        [3.0],
        "max_capacity of the one pool: {text}"
    );
    assert_eq!(
        value("webhook_dispatcher_deliveries_total{outcome=\"accepted\"}"),
        [30.0]
    );
    assert_eq!(
        value("webhook_dispatcher_triggers_total{pool=\"ns/pipe\",result=\"accepted\"}"),
        [30.0],
        "{text}"
    );
    // One queue wait per accepted trigger; PRs behind a full pool waited for runs of 100 ms.
    let accepted = value("webhook_dispatcher_triggers_total{pool=\"ns/pipe\",result=\"accepted\"}");
    assert_eq!(
        value("webhook_dispatcher_queue_wait_seconds_count{pool=\"ns/pipe\"}"),
        accepted,
        "{text}"
    );
    let waited = value("webhook_dispatcher_queue_wait_seconds_sum{pool=\"ns/pipe\"}");
    assert!(
        waited.len() == 1 && waited[0] > 0.0 && waited[0] < 30.0 * WAIT.as_secs_f64(),
        "{text}"
    );
    assert_eq!(
        value("webhook_dispatcher_queue_wait_seconds_bucket{le=\"+Inf\",pool=\"ns/pipe\"}"),
        accepted
    );
    // Every pass is timed: 30 triggers took at least a few passes.
    let passes = value("webhook_dispatcher_dispatch_pass_duration_seconds_count ");
    assert!(passes.len() == 1 && passes[0] >= 3.0, "{text}");
    // Pool gauges, read at scrape time: this scrape's own request holds no
    // connection, intake and the listing opened at least one (default pool of 10).
    let size = value("webhook_dispatcher_db_pool_size ");
    let in_use = value("webhook_dispatcher_db_pool_in_use ");
    assert!(size.len() == 1 && (1.0..=10.0).contains(&size[0]), "{text}");
    assert!(
        in_use.len() == 1 && in_use[0] >= 0.0 && in_use[0] <= size[0],
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn newest_event_wins_while_queued_and_labels_follow_the_queue() {
    newest_event_wins(false).await;
}

/// The same with incremental passes: labels of the PRs a pass changed.
#[tokio::test(flavor = "multi_thread")]
async fn newest_event_wins_while_queued_and_labels_follow_the_queue_in_incremental_passes() {
    newest_event_wins(true).await;
}

async fn newest_event_wins(incremental: bool) {
    let world = World::with(WorldOptions {
        capacity: 1,
        run_for: None,
        incremental,
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    let (_, first) = send_pr(&svc.url, "pr1-a", "o/r", 1, "opened").await;
    world.wait_dispatched(1).await;
    svc.wait_event(first["id"].as_str().unwrap(), |e| {
        e["status"] == "processed"
    })
    .await;

    let (_, older) = send_pr(&svc.url, "pr2-a", "o/r", 2, "opened").await;
    let older_id = older["id"].as_str().unwrap();
    svc.wait_event(older_id, |e| e["status"] == "queued").await;
    let label = format!("{PIPELINE}/queued");
    assert!(
        world
            .github
            .wait_until(WAIT, |g| g.labels("o/r", 2).contains(&label))
            .await,
        "queued label added"
    );

    let (_, newer) = send_pr(&svc.url, "pr2-b", "o/r", 2, "synchronize").await;
    let newer_id = newer["id"].as_str().unwrap();
    let cancelled = svc
        .wait_event(older_id, |e| e["status"] == "cancelled")
        .await;
    assert_eq!(
        cancelled["processing_error"],
        "Cancelled due to receiving a newer event for the same pull request"
    );
    // An event no item matches is aborted and cancels nothing.
    let (_, closed) = send_pr(&svc.url, "pr2-c", "o/r", 2, "closed").await;
    let aborted = svc
        .wait_event(closed["id"].as_str().unwrap(), |e| e["status"] == "aborted")
        .await;
    assert_eq!(aborted["processing_error"], "Unsupported event");
    svc.wait_event(newer_id, |e| e["status"] == "queued").await;

    assert_eq!(world.listener.finish_runs(1), 1);
    world.wait_dispatched(2).await;
    let dispatched = svc
        .wait_event(newer_id, |e| e["status"] == "processed")
        .await;
    assert_eq!(
        dispatched["dispatches"][0]["state"]
            .as_str()
            .map(|s| s == "triggered" || s == "confirmed"),
        Some(true)
    );
    assert!(dispatched["dispatches"][0]["listener_event_id"].is_string());
    let second = &world.listener.accepted()[1];
    assert_eq!(
        second.json()["action"],
        "synchronize",
        "the newest event ran, not the superseded one"
    );
    assert_eq!(world.dispatched_prs(), [1, 2]);

    assert!(
        world
            .github
            .wait_until(WAIT, |g| g.labels("o/r", 2).is_empty())
            .await,
        "queued label removed on dispatch"
    );
    let calls: Vec<(&str, i64)> = world
        .github
        .calls()
        .iter()
        .map(|c| (c.op, c.number))
        .collect();
    assert_eq!(
        calls,
        [("add", 2), ("remove", 2)],
        "PR 1 never waited, so it was never labelled"
    );
    // Confirmation: the PipelineRun with our eventID was seen.
    svc.wait_event(newer_id, |e| e["dispatches"][0]["state"] == "confirmed")
        .await;
}

/// `github.app` instead of a token: the binary signs a JWT with the app's
/// key, the fake checks it with the public key and issues an installation
/// token, and the queued label comes and goes with it.
#[tokio::test(flavor = "multi_thread")]
async fn labels_as_a_github_app() {
    let world = World::with(WorldOptions {
        capacity: 1,
        github_app: true,
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    send_pr(&svc.url, "app-1", "o/r", 1, "opened").await;
    world.wait_dispatched(1).await;
    send_pr(&svc.url, "app-2", "o/r", 2, "opened").await;
    let label = format!("{PIPELINE}/queued");
    assert!(
        world
            .github
            .wait_until(WAIT, |g| g.labels("o/r", 2).contains(&label))
            .await,
        "queued label added with the app's installation token"
    );
    assert_eq!(world.listener.finish_runs(1), 1);
    world.wait_dispatched(2).await;
    assert!(
        world
            .github
            .wait_until(WAIT, |g| g.labels("o/r", 2).is_empty())
            .await,
        "queued label removed"
    );
    let exchanges = world.github.exchanges();
    assert_eq!(
        exchanges.len(),
        1,
        "one token for both calls: {exchanges:?}"
    );
    assert_eq!(exchanges[0].status, 201);
    assert_eq!(exchanges[0].installation_id, INSTALLATION_ID.to_string());
    assert!(
        svc.logs().iter().all(|l| !l.contains("ghs_fake")),
        "the installation token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_failures_are_retried_then_failed() {
    let world = World::new(5, Some(Duration::from_millis(50))).await;
    let svc = world.replica().await;
    world.listener.fail_all(true);
    let (_, doomed) = send_pr(&svc.url, "d-1", "o/r", 1, "opened").await;
    let failed = svc
        .wait_event(doomed["id"].as_str().unwrap(), |e| e["status"] == "failed")
        .await;
    assert_eq!(world.listener.received().len(), 3, "max_attempts POSTs");
    assert_eq!(failed["dispatches"][0]["attempts"], 3);
    let error = failed["processing_error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("3 attempts"),
        "{error}"
    );
    assert_eq!(failed["processed"], true, "final, as in the original");

    world.listener.fail_all(false);
    world.listener.fail_next(2);
    let (_, flaky) = send_pr(&svc.url, "d-2", "o/r", 2, "opened").await;
    let ok = svc
        .wait_event(flaky["id"].as_str().unwrap(), |e| {
            e["status"] == "processed"
        })
        .await;
    assert_eq!(ok["dispatches"][0]["attempts"], 3);
    assert_eq!(world.dispatched_prs(), [2]);
}

async fn wait_pool_state(svc: &Service, state: &str) {
    svc.get_until("/api/v1/status/ready", |r| {
        r["dispatcher"]["pools"][0]["state"] == state
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_outage_blocks_dispatch_until_recovery() {
    let world = World::new(2, Some(Duration::from_millis(50))).await;
    let svc = world.replica().await;
    wait_pool_state(&svc, "known").await;
    world.kube.set_down(true);
    wait_pool_state(&svc, "unknown").await;
    let (_, ready) = svc.get("/api/v1/status/ready").await;
    assert_eq!(
        (ready["status"].as_str(), ready["database"].as_str()),
        (Some("degraded"), Some("ok"))
    );

    let (status, event) = send_pr(&svc.url, "d-1", "o/r", 1, "opened").await;
    assert_eq!(status, 200, "intake keeps working");
    let id = event["id"].as_str().unwrap();
    // Planned in a pass that could not dispatch: the pool is unknown, so it waits.
    svc.wait_event(id, |e| e["status"] == "queued").await;
    assert!(
        world.listener.received().is_empty(),
        "nothing dispatched while the API is down"
    );

    world.kube.set_down(false);
    svc.wait_event(id, |e| e["status"] == "processed").await;
    assert_eq!(world.dispatched_prs(), [1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_never_exceed_capacity_or_dispatch_twice() {
    two_replicas(false).await;
}

/// The same with incremental passes.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_never_exceed_capacity_or_dispatch_twice_in_incremental_passes() {
    two_replicas(true).await;
}

async fn two_replicas(incremental: bool) {
    let world = World::with(WorldOptions {
        capacity: 3,
        run_for: Some(Duration::from_millis(80)),
        incremental,
        ..WorldOptions::default()
    })
    .await;
    let a = world.replica().await;
    let b = world.replica().await;
    let sends: Vec<_> = (1..=30)
        .map(|pr| {
            let url = if pr % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            tokio::spawn(async move {
                send_pr(&url, &format!("d-{pr}"), "o/r", pr, "opened")
                    .await
                    .0
            })
        })
        .collect();
    for s in sends {
        assert_eq!(s.await.unwrap(), 200);
    }
    world.drained(30).await;
    let roles = [a.role().await, b.role().await];
    assert!(
        roles.contains(&"leader".to_owned()) && roles.contains(&"standby".to_owned()),
        "{roles:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_active_replica_loses_and_repeats_nothing() {
    killing_the_active_replica(false).await;
}

/// The same with incremental passes.
#[tokio::test(flavor = "multi_thread")]
async fn killing_the_active_replica_loses_and_repeats_nothing_in_incremental_passes() {
    killing_the_active_replica(true).await;
}

async fn killing_the_active_replica(incremental: bool) {
    let world = World::with(WorldOptions {
        capacity: 2,
        incremental,
        ..WorldOptions::default()
    })
    .await;
    let mut replicas = vec![world.replica().await, world.replica().await];
    for pr in 1..=8 {
        let url = &replicas[(pr % 2) as usize].url;
        assert_eq!(
            send_pr(url, &format!("d-{pr}"), "o/r", pr, "opened")
                .await
                .0,
            200
        );
    }
    world.wait_dispatched(2).await;

    let mut leader = None;
    for (i, r) in replicas.iter().enumerate() {
        if r.role().await == "leader" {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one replica leads");
    // Capacity is full and runs only finish when told: nothing is in flight.
    replicas[leader].kill9().await;
    let survivor = replicas.remove(1 - leader);

    let mut done = 2;
    while done < 8 {
        assert_eq!(world.listener.finish_runs(2), 2);
        done += 2;
        world.wait_dispatched(done).await;
    }
    world.listener.finish_runs(2);
    let prs = world.dispatched_prs();
    assert_eq!(prs.len(), 8, "{prs:?}");
    assert!(counts(&prs).values().all(|c| *c == 1), "repeated: {prs:?}");
    assert!(world.kube.max_unfinished(PIPELINE) <= 2);
    assert_eq!(survivor.role().await, "leader");
    // The last answers are recorded by the survivor's next pass.
    survivor
        .get_until("/api/v1/events/status?filter=processed=true", |l| {
            l["total_count"] == 8
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_event_listener_does_not_hold_up_other_pipelines() {
    install_crypto();
    let kube = FakeKube::start().await.unwrap();
    let tekton = |pipeline: &str| TektonMode {
        kube: kube.clone(),
        namespace: "ns".into(),
        pipeline: pipeline.into(),
        annotations: vec![],
        run_for: None,
        dispatch_label: None,
    };
    let stuck = FakeEventListener::start(Some(SECRET), Some(tekton("slow")))
        .await
        .unwrap();
    let healthy = FakeEventListener::start(Some(SECRET), Some(tekton("fast")))
        .await
        .unwrap();
    stuck.hang(true);
    let dir = TempDir::new("hang");
    std::fs::write(dir.0.join("kubeconfig"), kube.kubeconfig("ns")).unwrap();
    let item = |name: &str, repo: &str, pipeline: &str, url: &str| {
        format!(
            "    - {{name: {name}, events: [opened], full_repository_name: {repo}, callback_url: \"{url}\",\n       capacity: {{type: ocp_tekton, pipeline_name: {pipeline}, max_capacity: 2, namespace: ns}}}}\n"
        )
    };
    let config = format!(
        "dispatcher:\n  items:\n{}{}security: {{github_webhook_secret: \"${{GITHUB_WEBHOOK_SECRET}}\"}}\nserver: {{bind: 127.0.0.1, port: 0}}\n\
         dispatch: {{trigger_timeout: 10m, reservation_timeout: 20m, capacity_resync_interval: 300ms, capacity_stale_after: 5s}}\n",
        item("slow", "o/slow", "slow", &stuck.url()),
        item("fast", "o/fast", "fast", &healthy.url()),
    );
    let db = TestDatabase::new();
    let svc = Service::start(
        &config,
        db.url(),
        &[("KUBECONFIG", dir.0.join("kubeconfig").display().to_string())],
    )
    .await;

    send_pr(&svc.url, "d-slow", "o/slow", 1, "opened").await;
    assert!(
        stuck.wait_until(WAIT, |l| l.arrived() == 1).await,
        "the slow POST is in flight"
    );
    let (_, fast) = send_pr(&svc.url, "d-fast", "o/fast", 2, "opened").await;
    assert!(
        healthy.wait_until(WAIT, |l| l.accepted().len() == 1).await,
        "the other pipeline is not held up"
    );
    svc.wait_event(fast["id"].as_str().unwrap(), |e| e["status"] == "processed")
        .await;
    assert!(stuck.accepted().is_empty(), "still hanging");
    stuck.hang(false);
    assert!(stuck.wait_until(WAIT, |l| l.accepted().len() == 1).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_triggers_in_flight_and_records_them() {
    let world = World::new(2, None).await;
    world.listener.hang(true);
    let mut svc = world.replica().await;
    let (_, event) = send_pr(&svc.url, "d-1", "o/r", 1, "opened").await;
    assert!(world.listener.wait_until(WAIT, |l| l.arrived() == 1).await);

    let pid = svc.pid().to_string();
    let term = tokio::task::spawn_blocking(move || {
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
    });
    assert!(term.await.unwrap().unwrap().success());
    // Shutting down, the dispatcher still waits for the POST it sent.
    assert!(
        svc.wait_log(|l| l.contains("stopping the dispatcher"))
            .await
            .is_some()
    );
    world.listener.hang(false);
    let status = tokio::time::timeout(WAIT, svc.terminate_wait())
        .await
        .unwrap();
    assert!(status.success());

    // The next replica finds the trigger recorded: nothing to send again.
    let next = world.replica().await;
    next.wait_event(event["id"].as_str().unwrap(), |e| {
        e["status"] == "processed"
    })
    .await;
    assert_eq!(world.listener.received().len(), 1, "not sent twice");
}
