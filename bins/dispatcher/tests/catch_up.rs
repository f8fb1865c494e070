//! End-to-end catch-up of missed deliveries (`github.catch_up`) on the real
//! binary: during a 60 s outage GitHub "delivered" five pull-request events
//! that failed (no answer, or 502 from the route), plus one the dispatcher
//! had stored although GitHub saw it fail. After the restart the active
//! replica asks GitHub (the fake) to redeliver exactly the five, once each;
//! they pass the normal signed intake, are stored and dispatched once each.
//! The next pass, and a restart's first pass (reading the stored cursor
//! and requests), ask for nothing more; metrics and logs tell what was redelivered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use dispatcher_fakes::FakeDelivery;
use support::world::{GITHUB_TOKEN, World};
use support::{SECRET, Service, WAIT, pr_payload, send_pr};
use time::OffsetDateTime;

const HOOK: &str = "repos/o/r/hooks/4242";

fn catch_up_config(world: &World) -> String {
    let plain = format!("github: {{api_url: \"{}\"}}", world.github.url());
    let config = world.config();
    assert!(config.contains(&plain), "{config}");
    config.replace(
        &plain,
        &format!(
            "github:\n  api_url: \"{}\"\n  catch_up:\n    hooks: [{{repository: o/r, hook_id: 4242}}]\n    interval: 10s\n    max_per_pass: 50",
            world.github.url()
        ),
    )
}

async fn start(world: &World, config: &str) -> Service {
    let env = vec![
        (
            "KUBECONFIG",
            world.dir.0.join("kubeconfig").display().to_string(),
        ),
        ("GITHUB_TOKEN", GITHUB_TOKEN.to_owned()),
    ];
    Service::start(config, world.db.url(), &env).await
}

async fn count(world: &World, sql: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(world.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// A metric's value, 0 when absent.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `pred` holds (the deadline is WAIT).
async fn metrics_until(service: &Service, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = service.metrics().await;
        if pred(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never matched:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_caught_up_exactly_once() {
    let world = World::new(2, Some(Duration::from_millis(100))).await;

    // Before the outage: PR 100 is stored and dispatched.
    let mut before = world.replica().await;
    let (status, body) = send_pr(&before.url, "held-1", "o/r", 100, "opened").await;
    assert_eq!(status, 200, "{body}");
    world.wait_dispatched(1).await;
    assert!(before.terminate().await.success());

    // The outage, as GitHub recorded it: the stored one "failed" too (its
    // answer was lost), five PRs failed, and a ping and an event type the
    // intake does not accept failed as well.
    let outage_start = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let at = |s: u64| Some(outage_start + Duration::from_secs(s));
    let mut held = FakeDelivery::pull_request("held-1", &pr_payload("o/r", 100, "opened"), 502);
    held.delivered_at = at(1);
    world.github.add_delivery(HOOK, held);
    for pr in 1..=5_i64 {
        let status = if pr % 2 == 0 { 502 } else { 0 };
        let mut d = FakeDelivery::pull_request(
            &format!("missed-{pr}"),
            &pr_payload("o/r", pr, "opened"),
            status,
        );
        d.delivered_at = at(10 * u64::try_from(pr).unwrap());
        world.github.add_delivery(HOOK, d);
    }
    for (guid, event) in [("ping-1", "ping"), ("push-1", "push")] {
        let mut d = FakeDelivery::pull_request(guid, "{}", 0);
        d.event = event.to_owned();
        d.delivered_at = at(55);
        world.github.add_delivery(HOOK, d);
    }

    // After the restart the active replica catches up.
    let config = catch_up_config(&world);
    let mut after = start(&world, &config).await;
    world.github.set_delivery_target(
        &format!("{}/api/v1/webhooks/github-pipeline", after.url),
        SECRET,
    );
    assert!(
        world
            .github
            .wait_until(WAIT, |g| {
                let r = g.redelivery_requests();
                r.len() >= 5 && r.iter().all(|r| r.answered.is_some())
            })
            .await,
        "{:?}",
        world.github.redelivery_requests()
    );
    let requests = world.github.redelivery_requests();
    let mut guids: Vec<&str> = requests.iter().map(|r| r.guid.as_str()).collect();
    guids.sort_unstable();
    assert_eq!(
        guids,
        ["missed-1", "missed-2", "missed-3", "missed-4", "missed-5"]
    );
    assert!(
        requests.iter().all(|r| r.answered == Some(200)),
        "the intake stored each: {requests:?}"
    );
    let prs = world.drained(6).await;
    assert_eq!(prs[0], 100);
    assert_eq!(
        count(&world, "SELECT count(*) FROM webhook_events").await,
        6
    );
    assert_eq!(
        count(&world, "SELECT count(*) FROM catch_up_requests").await,
        5
    );
    let text = metrics_until(&after, |t| {
        sample(t, "webhook_dispatcher_catch_up_passes_total ") >= 1.0
    })
    .await;
    assert_eq!(
        sample(
            &text,
            &format!("webhook_dispatcher_catch_up_redelivered_total{{hook=\"{HOOK}\"}} ")
        ),
        5.0
    );
    let logs = after.logs();
    let started = logs
        .iter()
        .find(|l| l.contains("starting the webhook dispatcher"))
        .unwrap();
    assert!(
        started.contains("\"catch_up\":\"1 hooks, every 10s, at most 50 per pass"),
        "{started}"
    );
    let lines: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("asked GitHub to redeliver"))
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|l| l.contains("\"guid\":\"missed-")
        && l.contains("\"event\":\"pull_request\"")
        && l.contains(HOOK)));
    assert!(
        !logs.iter().any(|l| l.contains(GITHUB_TOKEN)),
        "no token in logs"
    );
    // The next pass of the same term (interval 10s) asks for nothing: the
    // redeliveries are listed now, held, and the cursor moved on.
    let listings = world.github.delivery_listings();
    let text = metrics_until(&after, |t| {
        sample(t, "webhook_dispatcher_catch_up_passes_total ") >= 2.0
    })
    .await;
    assert!(world.github.delivery_listings() > listings);
    assert_eq!(world.github.redelivery_requests().len(), 5);
    assert_eq!(
        sample(
            &text,
            &format!("webhook_dispatcher_catch_up_redelivered_total{{hook=\"{HOOK}\"}} ")
        ),
        5.0
    );
    assert!(after.terminate().await.success());

    // Another restart: its first pass lists the redeliveries (held now) and
    // asks for nothing.
    let listings = world.github.delivery_listings();
    let again = start(&world, &config).await;
    world.github.set_delivery_target(
        &format!("{}/api/v1/webhooks/github-pipeline", again.url),
        SECRET,
    );
    let text = metrics_until(&again, |t| {
        sample(t, "webhook_dispatcher_catch_up_passes_total ") >= 1.0
    })
    .await;
    assert!(world.github.delivery_listings() > listings);
    assert_eq!(world.github.redelivery_requests().len(), 5);
    assert_eq!(
        sample(
            &text,
            &format!("webhook_dispatcher_catch_up_redelivered_total{{hook=\"{HOOK}\"}} ")
        ),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("webhook_dispatcher_catch_up_errors_total{{hook=\"{HOOK}\"}} ")
        ),
        0.0
    );
    world.assert_never_twice();
    assert_eq!(world.dispatched_prs().len(), 6);
}

/// `dispatcher check-config --connect` lists one delivery of each hook.
#[tokio::test(flavor = "multi_thread")]
async fn check_connect_reads_each_hooks_deliveries() {
    let world = World::new(2, None).await;
    let path = world.dir.0.join("check.yaml");
    std::fs::write(&path, catch_up_config(&world)).unwrap();
    let run = || async { world.check_connect(&path).await.1 };
    let stdout = run().await;
    assert!(
        stdout.contains(&format!("✓ github hook {HOOK}: deliveries readable")),
        "{stdout}"
    );
    assert_eq!(world.github.delivery_listings(), 1);
    world.github.fail_deliveries_with(404);
    let stdout = run().await;
    assert!(
        stdout.contains(&format!("✗ github hook {HOOK}: cannot list deliveries"))
            && stdout.contains("404"),
        "{stdout}"
    );
    assert!(
        world.github.redelivery_requests().is_empty(),
        "nothing asked"
    );
}
