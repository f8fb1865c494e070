//! End-to-end: the real binary with `dev.simulate_tekton` (issue: the whole
//! flow on a laptop): deliveries are queued, dispatched into the in-process
//! Tekton simulation and finished, with no Kubernetes or EventListener
//! outside the process; and the simulation is refused next to a real
//! Kubernetes configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dispatcher_testdb::TestDatabase;
use serde_json::Value;
use support::*;

/// Capacity 1 and 1 s runs: three PRs have to queue behind each other.
/// The `callback_url` is a port nothing listens on: every trigger must go to
/// the simulated listener instead.
const SIMULATED: &str = r#"
dispatcher:
  items:
    - name: sim
      events: [opened, synchronize]
      full_repository_name: o/r
      capacity:
        type: ocp_tekton
        pipeline_name: sim-pipe
        max_capacity: 1
        namespace: ns
        annotation_selector: {example.com/repository: o/r}
        dispatch_label: example.com/dispatch
      callback_url: "http://127.0.0.1:9/"
security:
  github_webhook_secret: "${GITHUB_WEBHOOK_SECRET}"
  allowed_github_events: [pull_request]
server: {bind: 127.0.0.1, port: 0}
dispatch:
  max_attempts: 2
  retry_backoff_base: 50ms
  retry_backoff_max: 200ms
  capacity_resync_interval: 300ms
  capacity_stale_after: 5s
  leader_retry_interval: 100ms
  safety_pass_interval: 5s
dev:
  simulate_tekton: true
  run_duration: 1s
"#;

#[tokio::test(flavor = "multi_thread")]
async fn simulated_tekton_queues_dispatches_and_finishes() {
    let db = TestDatabase::new();
    // The harness points KUBECONFIG at a missing file by default; the
    // simulation would (rightly) refuse it.
    let mut svc = Service::start(SIMULATED, db.url(), &[("KUBECONFIG", String::new())]).await;
    let warning = svc
        .wait_log(|l| l.contains("dev.simulate_tekton is ON"))
        .await
        .expect("the simulation is announced");
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");

    let mut ids = Vec::new();
    for pr in 1..=3 {
        let (status, event) = send_pr(&svc.url, &format!("sim-{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{event}");
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    // One slot, three PRs: some wait in the queue while a run is going.
    svc.get_until("/api/v1/events/status?filter=status=queued", |b| {
        b["total_count"].as_u64().is_some_and(|n| n >= 1)
    })
    .await;

    let mut listener_ids = Vec::new();
    for id in &ids {
        // `processed` comes with the 202; the run is seen (confirmed) a pass later.
        let event = svc
            .wait_event(id, |e| {
                e["status"] == "processed" && e["dispatches"][0]["confirmed_at"].is_string()
            })
            .await;
        let dispatches = event["dispatches"].as_array().unwrap();
        assert_eq!(dispatches.len(), 1, "{event}");
        let d = &dispatches[0];
        assert!(
            d["confirmed_at"].is_string(),
            "confirmed from its run: {event}"
        );
        assert_eq!(
            d["attempts"], 1,
            "the fake callback_url was never tried: {event}"
        );
        assert_eq!(d["pool"], "ns/sim-pipe?example.com/repository=o/r");
        listener_ids.push(d["listener_event_id"].as_str().unwrap().to_owned());
    }
    listener_ids.sort();
    listener_ids.dedup();
    assert_eq!(listener_ids.len(), 3, "one simulated trigger per PR");

    // The runs finish: the pool empties, its Kubernetes state stays known.
    let ready = svc
        .get_until("/api/v1/status/ready", |b| {
            b["dispatcher"]["pools"][0]["running"] == 0
                && b["dispatcher"]["pools"][0]["queued"] == 0
        })
        .await;
    assert_eq!(ready["dispatcher"]["pools"][0]["state"], "known", "{ready}");
    let (_, processed) = svc
        .get("/api/v1/events/status?filter=status=processed")
        .await;
    assert_eq!(processed["total_count"], 3, "{processed}");

    // One info line per simulated run.
    let runs: Vec<Value> = svc
        .logs()
        .iter()
        .filter(|l| l.contains("simulated PipelineRun started"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 3, "{runs:?}");
    assert!(
        runs.iter()
            .all(|r| r["level"] == "INFO" && r["pipeline"] == "sim-pipe")
    );
    assert!(svc.terminate().await.success());
}

#[test]
fn simulation_is_refused_with_a_real_kubernetes_configuration() {
    let dir = TempDir::new("sim-refused");
    let config = dir.0.join("config.yaml");
    std::fs::write(&config, SIMULATED).unwrap();
    for (var, value) in [
        ("KUBECONFIG", dir.0.join("kubeconfig").display().to_string()),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1".to_owned()),
    ] {
        for command in ["serve", "check-config"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
                .arg(command)
                .env_clear()
                .env("WEBHOOK_DISPATCHER_CONFIG", &config)
                .env("GITHUB_WEBHOOK_SECRET", SECRET)
                // Refused before any connection is attempted.
                .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
                .env(var, &value)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} with {var}: {stderr}");
            assert!(
                stderr.contains("dev.simulate_tekton") && stderr.contains(var),
                "{command} with {var}: {stderr}"
            );
        }
    }
    // Without them, check-config accepts the file and says the simulation is on.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .arg("check-config")
        .env_clear()
        .env("WEBHOOK_DISPATCHER_CONFIG", &config)
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dev.simulate_tekton: ON"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
