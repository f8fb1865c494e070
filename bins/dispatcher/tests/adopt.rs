//! Adopting the Python dispatcher's database (issue 7): the real binary
//! starts on it, converts it at start and dispatches its open events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::world::{World, WorldOptions};
use support::{SECRET, delivery};

const ID: &str = "00000000-0000-4000-8000-00000000000";

fn status_of(list: &Value, id: &str) -> String {
    list["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {list}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_originals_database_is_adopted_at_start_and_its_open_events_dispatched() {
    let world = World::with(WorldOptions {
        capacity: 3,
        run_for: Some(Duration::from_millis(200)),
        original_database: true,
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    let path = "/api/v1/events/status?page_size=100";
    let list = svc.get_until(path, |b| b["total_count"] == 7).await;
    for (n, status) in [
        (1, "processed"),
        (2, "cancelled"),
        (3, "aborted"),
        (4, "cancelled"),
    ] {
        assert_eq!(status_of(&list, &format!("{ID}{n}")), status, "{list}");
    }

    // The open ones (PRs 4, 5, 6) run exactly once, re-signed so the
    // listener's GitHub interceptor accepts them.
    let mut prs = world.drained(3).await;
    prs.sort_unstable();
    assert_eq!(prs, [4, 5, 6]);
    let received = world.listener.received();
    assert!(received.iter().all(|r| r.signature_ok && r.status == 202));
    let list = svc
        .get_until(path, |b| {
            b["events"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["processed"] == true))
        })
        .await;
    for n in [5, 6, 7] {
        assert_eq!(status_of(&list, &format!("{ID}{n}")), "processed", "{list}");
    }

    // A redelivery of the duplicated id resolves to its newest row.
    let body = r#"{"action": "opened", "number": 4, "pull_request": {"number": 4}, "repository": {"full_name": "o/r"}}"#;
    let r = delivery(&svc.url, "d-dup", "pull_request", body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["id"], format!("{ID}5"), "{answer}");
    let r = delivery(&svc.url, "d-dup", "pull_request", &body.replace(": ", ":"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);

    // `dispatcher migrate` again changes nothing.
    let before = svc.get(path).await.1;
    let config = world.dir.0.join("config.yaml");
    std::fs::write(&config, world.config()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .arg("migrate")
        .env_clear()
        .env("WEBHOOK_DISPATCHER_CONFIG", &config)
        .env("DATABASE_URL", world.db.url())
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("applied migration"));
    assert_eq!(svc.get(path).await.1, before);
    assert_eq!(
        world.listener.received().len(),
        3,
        "nothing dispatched again"
    );
}
