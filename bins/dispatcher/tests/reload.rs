//! End-to-end: live configuration reload on the real binary. Raising a
//! pool's capacity under a queue dispatches more at once (a change of the
//! file); a rotated webhook secret takes effect on SIGHUP; an invalid edit
//! changes nothing and is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::Value;
use support::world::{PIPELINE, World};
use support::{SECRET, Service, WAIT, delivery_with, pr_payload, send_pr};

/// Replaces the config file the way an editor or Kubernetes does: a new
/// file renamed over the old one.
fn rewrite(service: &Service, text: &str) {
    let tmp = service.config_path.with_extension("yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &service.config_path).unwrap();
}

async fn metric(service: &Service, name: &str) -> f64 {
    service
        .metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn wait_metric(service: &Service, name: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        every.tick().await;
        let value = metric(service, name).await;
        if value >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value}"
        );
    }
}

async fn signed_with(service: &Service, secret: &str, delivery: &str, pr: i64) -> u16 {
    let body = pr_payload("o/r", pr, "opened");
    let signature = dispatcher_sig::sign(secret.as_bytes(), body.as_bytes());
    delivery_with(
        &service.url,
        delivery,
        "pull_request",
        &body,
        &[("x-hub-signature-256", signature.as_str())],
    )
    .send()
    .await
    .unwrap()
    .status()
    .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn capacity_secret_and_a_bad_edit_reload_without_a_restart() {
    let world = World::new(1, None).await;
    let service = world.replica().await;
    for pr in 1..=4 {
        let (status, body) = send_pr(&service.url, &format!("d{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
    }
    world.wait_dispatched(1).await;
    service
        .get_until("/api/v1/pools", |b| b["pools"][0]["queued"] == 3)
        .await;

    // Capacity 1 → 3 under a queue of 3: two more run at once, without a restart.
    let raised = world.config().replace("max_capacity: 1", "max_capacity: 3");
    assert_ne!(raised, world.config());
    rewrite(&service, &raised);
    world.wait_dispatched(3).await;
    assert_eq!(world.kube.unfinished(PIPELINE).len(), 3);
    assert!(
        world.kube.max_unfinished(PIPELINE) <= 3,
        "the new capacity holds"
    );
    wait_metric(&service, "webhook_dispatcher_config_reloads_total", 1.0).await;
    let pools = service.get("/api/v1/pools").await.1;
    assert_eq!(pools["pools"][0]["capacity"], 3);
    let ready = service.get("/api/v1/status/ready").await.1;
    assert!(
        ready["dispatcher"]["config"]["reloaded_at"].is_string(),
        "{ready}"
    );

    // Rotate the webhook secret (SIGHUP): the old one stops working, the new one works.
    let rotated = raised.replace(
        "github_webhook_secret: \"${GITHUB_WEBHOOK_SECRET}\"",
        "github_webhook_secret: [\"rotated-secret\"]",
    );
    assert_ne!(rotated, raised);
    std::fs::write(&service.config_path, &rotated).unwrap();
    service.signal("HUP");
    wait_metric(&service, "webhook_dispatcher_config_reloads_total", 2.0).await;
    assert_eq!(signed_with(&service, SECRET, "old-secret", 10).await, 401);
    assert_eq!(
        signed_with(&service, "rotated-secret", "new-secret", 11).await,
        200
    );

    // An invalid edit: refused, reported, nothing changes.
    rewrite(
        &service,
        &rotated.replace("max_capacity: 3", "max_capacity: -2"),
    );
    wait_metric(
        &service,
        "webhook_dispatcher_config_reload_failures_total",
        1.0,
    )
    .await;
    let ready = service.get("/api/v1/status/ready").await.1;
    let error = ready["dispatcher"]["config"]["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(error.contains("max_capacity"), "{ready}");
    assert_eq!(
        ready["status"], "ok",
        "a bad edit does not take the replica out: {ready}"
    );
    let pools: Value = service.get("/api/v1/pools").await.1;
    assert_eq!(pools["pools"][0]["capacity"], 3);
    assert_eq!(
        signed_with(&service, "rotated-secret", "still-new", 12).await,
        200
    );
    assert_eq!(
        metric(&service, "webhook_dispatcher_config_reloads_total").await,
        2.0
    );
    assert!(world.kube.max_unfinished(PIPELINE) <= 3);
    world.assert_never_twice();
}
