//! End-to-end retention on the real binary: `dispatcher prune --dry-run`
//! prints what would go and changes nothing; `prune` is refused without a
//! `retention` section; the active replica prunes old finished events by
//! itself shortly after it starts leading, counted in `/metrics` and logged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;
use std::time::Duration;

use support::world::{GITHUB_TOKEN, World};
use support::{SECRET, Service, TempDir, WAIT, send_pr};

const ADMIN: &str = "admin-token";
const RETENTION: &str =
    "retention: {max_age: 1s, payload_max_age: 500ms, interval: 1m, batch_size: 1}\n";

/// Runs `dispatcher prune [args]` with `config`.
async fn prune(world: &World, config: &str, args: &[&str]) -> Output {
    let dir = TempDir::new("prune");
    let path = dir.0.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .arg("prune")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WEBHOOK_DISPATCHER_CONFIG", &path)
        .env("DATABASE_URL", world.db.url())
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .output()
        .await
        .unwrap()
}

async fn count_events(world: &World) -> i64 {
    let (client, connection) = tokio_postgres::connect(world.db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_one("SELECT count(*) FROM webhook_events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_shows_what_goes_and_the_leader_prunes_it() {
    let world = World::new(2, Some(Duration::from_millis(100))).await;
    // Two PRs run and finish under a replica without retention.
    let mut plain = world.replica().await;
    let mut ids = Vec::new();
    for pr in [1, 2] {
        let (status, body) = send_pr(&plain.url, &format!("d{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        plain
            .get_until(&format!("/api/v1/events/{id}"), |b| {
                b["event"]["status"] == "processed"
                    && b["event"]["dispatches"][0]["state"] == "confirmed"
            })
            .await;
    }
    assert!(plain.terminate().await.success());

    // Without a retention section nothing is pruned.
    let refused = prune(&world, &world.config(), &["--dry-run"]).await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("retention is off"), "{stderr}");

    // The dry run, once both finished more than max_age ago.
    let config = format!("{}{RETENTION}", world.config());
    let deadline = tokio::time::Instant::now() + WAIT;
    let shown = loop {
        let out = prune(&world, &config, &["--dry-run"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.contains(": 2 would be deleted (processed 2)") {
            break stdout;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stdout}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        shown.contains("retention: max_age 1s, payload_max_age 500ms, batch_size 1"),
        "{shown}"
    );
    assert!(shown.contains("oldest finished "), "{shown}");
    assert!(
        shown.contains("payloads of events finished before "),
        "{shown}"
    );
    assert!(shown.contains("dry run: nothing was changed"), "{shown}");
    assert_eq!(
        count_events(&world).await,
        2,
        "the dry run deleted something"
    );

    let env = [
        (
            "KUBECONFIG",
            world.dir.0.join("kubeconfig").display().to_string(),
        ),
        ("GITHUB_TOKEN", GITHUB_TOKEN.to_owned()),
    ];

    // One pass now that keeps the events but drops their payloads.
    let keep = format!(
        "{}retention: {{max_age: 30d, payload_max_age: 1s}}\napi: {{admin_tokens: [{ADMIN}]}}\n",
        world.config()
    );
    let out = prune(&world, &keep, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("deleted 0 finished event(s) (0 label row(s)) and dropped 2 payload(s)"),
        "{stdout}"
    );
    // The event still explains itself; a replay is refused with the reason.
    let mut kept = Service::start(&keep, world.db.url(), &env).await;
    let (status, explained) = kept
        .get(&format!("/api/v1/events/{}/explain", ids[0]))
        .await;
    assert_eq!(status, 200, "{explained}");
    let r = support::http()
        .post(format!("{}/api/v1/events/{}/replay", kept.url, ids[0]))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("payload was dropped by retention"),
        "{body}"
    );
    assert!(kept.terminate().await.success());

    // A replica with retention prunes them shortly after it starts leading.
    let mut pruning = Service::start(&config, world.db.url(), &env).await;
    let line = pruning
        .wait_log(|l| l.contains("old finished events pruned"))
        .await
        .unwrap_or_else(|| panic!("no retention pass logged:\n{}", pruning.logs().join("\n")));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["deleted_events"], 2, "{line}");
    // batch_size 1: two full delete batches, a short one, one payload batch.
    assert_eq!(v["batches"], 4, "{line}");
    assert_eq!(count_events(&world).await, 0);
    let (status, _) = pruning.get(&format!("/api/v1/events/{}", ids[0])).await;
    assert_eq!(status, 404);
    let metrics = pruning.metrics().await;
    assert!(
        metrics.contains("webhook_dispatcher_retention_deleted_events_total 2\n"),
        "{metrics}"
    );
    assert!(pruning.terminate().await.success());
}
