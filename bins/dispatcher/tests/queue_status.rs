//! End-to-end: queue position and estimated start on the pull request
//! (`github.queue_status`). Ten pull requests wait on a capacity-1 pool;
//! each carries a check run "Queued: Nth of M for pipe, …" that counts down
//! as the pool drains and completes as "Started"; a superseding push
//! completes the older commit's check with "Cancelled: superseded by <sha>",
//! an operator's cancel with "Cancelled". Commit statuses work the same way
//! (`pending` → `success`), and the `<pipeline>/queued` label is kept.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dispatcher_core::queue_status::ordinal;
use dispatcher_fakes::StatusUpdate;
use serde_json::{Value, json};
use support::world::{PIPELINE, World, WorldOptions};
use support::{WAIT, delivery, http};

const NAME: &str = "webhook-dispatcher/pipe";
const ADMIN: &str = "alice-secret";
const API: &str = r#"
api:
  tokens: ["reader-secret"]
  admin_tokens: [{name: alice, token: "alice-secret"}]
"#;

/// Sends a pull-request event whose head commit is `sha`; returns the stored event.
async fn send(url: &str, delivery_id: &str, number: i64, sha: &str, action: &str) -> Value {
    let body = json!({
        "action": action,
        "number": number,
        "pull_request": {"number": number, "title": format!("PR {number}"), "base": {"ref": "main"}, "head": {"sha": sha}},
        "repository": {"full_name": "o/r"},
    })
    .to_string();
    let r = delivery(url, delivery_id, "pull_request", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

fn latest(world: &World, sha: &str) -> Option<StatusUpdate> {
    world.github.latest_status("o/r", sha, NAME)
}

fn shows(world: &World, sha: &str, state: &str, text_start: &str) -> bool {
    latest(world, sha).is_some_and(|u| u.state == state && u.text.starts_with(text_start))
}

fn queued(position: usize, total: usize) -> String {
    format!(
        "Queued: {} of {total} for {PIPELINE},",
        ordinal(u32::try_from(position).unwrap())
    )
}

/// The place a "Queued: Nth of …" text names.
fn place(text: &str) -> Option<u32> {
    let digits: String = text
        .strip_prefix("Queued: ")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn wait_for(world: &World, what: &str, pred: impl Fn(&World) -> bool) {
    let ok = world.github.wait_until(WAIT, |_| pred(world)).await;
    assert!(ok, "{what}; updates: {:#?}", world.github.status_updates());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_runs_count_down_as_the_pool_drains_and_complete_when_superseded_or_cancelled() {
    let world = World::with(WorldOptions {
        capacity: 1,
        github_yaml: ", queue_status: check_run, queue_status_interval: 100ms",
        extra_yaml: API,
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    // Tests use the fake with a token; GitHub itself would refuse: a warning says so.
    assert!(
        svc.logs()
            .iter()
            .any(|l| l.contains("github.queue_status is check_run without github.app")),
        "{:?}",
        svc.logs()
    );

    // PR 100 takes the one slot at once: it never waits, so it gets no check run.
    send(&svc.url, "pr100", 100, "s100", "opened").await;
    world.wait_dispatched(1).await;
    let mut events = Vec::new();
    for i in 1..=10 {
        events.push(send(&svc.url, &format!("pr{i}"), i, &format!("s{i}-a"), "opened").await);
    }
    wait_for(&world, "ten PRs show their place of 10", |w| {
        (1..=10).all(|i| shows(w, &format!("s{i}-a"), "queued", &queued(i, 10)))
    })
    .await;
    assert_eq!(latest(&world, "s100"), None, "a PR that never waited");
    // The pools API (and explain) tell the same places.
    let (status, pool) = svc
        .get_as(
            &format!("/api/v1/pools/ns/{PIPELINE}"),
            Some("reader-secret"),
        )
        .await;
    assert_eq!(status, 200, "{pool}");
    let places: Vec<(i64, u64)> = pool["pool"]["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["pull_request_number"].as_i64().unwrap(),
                q["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(places, (1..=10).map(|i| (i, i as u64)).collect::<Vec<_>>());

    // A push to PR 5 supersedes its waiting commit; the new one keeps the place.
    send(&svc.url, "pr5-b", 5, "s5-b", "synchronize").await;
    wait_for(&world, "the superseded check is completed", |w| {
        shows(
            w,
            "s5-a",
            "completed/neutral",
            "Cancelled: superseded by s5-b",
        ) && shows(w, "s5-b", "queued", &queued(5, 10))
    })
    .await;

    // An operator cancels PR 7's waiting work: its check completes as cancelled.
    let id7 = events[6]["id"].as_str().unwrap();
    let r = http()
        .post(format!("{}/api/v1/events/{id7}/cancel", svc.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let order = [
        "s1-a", "s2-a", "s3-a", "s4-a", "s5-b", "s6-a", "s8-a", "s9-a", "s10-a",
    ];
    wait_for(
        &world,
        "the cancelled check is completed, the others move up",
        |w| {
            shows(w, "s7-a", "completed/neutral", "Cancelled")
                && order
                    .iter()
                    .enumerate()
                    .all(|(i, sha)| shows(w, sha, "queued", &queued(i + 1, order.len())))
        },
    )
    .await;

    // The pool drains one run at a time: each PR starts, the rest move up.
    for (k, sha) in order.iter().enumerate() {
        // "Started" is shown once the trigger is committed: wait for its run.
        world.wait_dispatched(1 + k).await;
        assert_eq!(world.listener.finish_runs(1), 1);
        wait_for(&world, &format!("{sha} started, the rest moved up"), |w| {
            shows(w, sha, "completed/neutral", "Started")
                && order[k + 1..].iter().enumerate().all(|(m, later)| {
                    shows(w, later, "queued", &queued(m + 1, order.len() - k - 1))
                })
        })
        .await;
    }
    world.assert_within_capacity();
    world.assert_never_twice();

    // Every PR's place only ever went down, on one check run per commit.
    let updates = world.github.status_updates();
    for sha in order.iter().chain(&["s5-a", "s7-a"]) {
        let mine: Vec<&StatusUpdate> = updates.iter().filter(|u| u.sha == *sha).collect();
        let places: Vec<u32> = mine.iter().filter_map(|u| place(&u.text)).collect();
        assert!(
            places.windows(2).all(|w| w[0] >= w[1]),
            "{sha} counted down: {places:?}"
        );
        assert!(mine.iter().all(|u| u.kind == "check_run" && u.name == NAME));
        let first = mine[0].check_run;
        assert!(
            mine.iter().all(|u| u.check_run == first),
            "{sha}: one check run, updated"
        );
        assert!(
            mine.iter().all(|u| u.text.chars().count() <= 140),
            "{mine:?}"
        );
    }
    // The label is kept beside the check run.
    assert!(
        world
            .github
            .calls()
            .iter()
            .any(|c| c.op == "add" && c.number == 1 && c.label == format!("{PIPELINE}/queued"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_statuses_go_pending_then_success() {
    let world = World::with(WorldOptions {
        capacity: 1,
        github_yaml: ", queue_status: commit_status, queue_status_interval: 100ms",
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    send(&svc.url, "pr1", 1, "c1", "opened").await;
    world.wait_dispatched(1).await;
    send(&svc.url, "pr2", 2, "c2", "opened").await;
    send(&svc.url, "pr3", 3, "c3", "opened").await;
    wait_for(&world, "two pending statuses", |w| {
        shows(w, "c2", "pending", &queued(1, 2)) && shows(w, "c3", "pending", &queued(2, 2))
    })
    .await;
    assert_eq!(world.listener.finish_runs(1), 1);
    wait_for(&world, "PR 2 started, PR 3 first", |w| {
        shows(w, "c2", "success", "Started") && shows(w, "c3", "pending", &queued(1, 1))
    })
    .await;
    // Superseded while waiting: the old commit's status is an error.
    send(&svc.url, "pr3-b", 3, "c3-b", "synchronize").await;
    wait_for(&world, "PR 3's old commit cancelled", |w| {
        shows(w, "c3", "error", "Cancelled: superseded by c3-b")
            && shows(w, "c3-b", "pending", &queued(1, 1))
    })
    .await;
    assert!(
        world
            .github
            .status_updates()
            .iter()
            .all(|u| u.kind == "commit_status" && u.name == NAME)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn off_shows_neither_label_nor_status() {
    let world = World::with(WorldOptions {
        capacity: 1,
        github_yaml: ", queue_status: off",
        ..WorldOptions::default()
    })
    .await;
    let svc = world.replica().await;
    send(&svc.url, "pr1", 1, "o1", "opened").await;
    world.wait_dispatched(1).await;
    let waiting = send(&svc.url, "pr2", 2, "o2", "opened").await;
    let id = waiting["id"].as_str().unwrap();
    svc.wait_event(id, |e| e["status"] == "queued").await;
    assert_eq!(world.listener.finish_runs(1), 1);
    world.wait_dispatched(2).await;
    svc.wait_event(id, |e| e["status"] == "processed").await;
    assert_eq!(world.github.calls(), [], "no label");
    assert_eq!(world.github.status_updates(), [], "no status");
}

/// With `cancel_on_close` on the item, closing a waiting pull request
/// clears its queue, completes its status "Cancelled" and takes its label
/// off; it never runs.
#[tokio::test(flavor = "multi_thread")]
async fn closing_a_pr_clears_its_queue_and_its_status() {
    let world = World::with(WorldOptions {
        capacity: 1,
        github_yaml: ", queue_status: commit_status, queue_status_interval: 100ms",
        ..WorldOptions::default()
    })
    .await;
    let config = world.config().replacen(
        "      callback_url:",
        "      cancel_on_close: true\n      callback_url:",
        1,
    );
    assert!(config.contains("cancel_on_close"), "{config}");
    let svc = world.replica_with(&config).await;
    send(&svc.url, "pr1", 1, "c1", "opened").await;
    world.wait_dispatched(1).await;
    send(&svc.url, "pr2", 2, "c2", "opened").await;
    wait_for(&world, "PR 2 waits", |w| {
        shows(w, "c2", "pending", &queued(1, 1))
    })
    .await;

    // No item matches `closed`: the event is aborted, PR 2's work cancelled.
    send(&svc.url, "pr2-closed", 2, "c2", "closed").await;
    wait_for(&world, "PR 2's status completed", |w| {
        shows(w, "c2", "error", "Cancelled")
    })
    .await;
    let label = format!("{PIPELINE}/queued");
    assert!(
        world
            .github
            .wait_until(WAIT, |g| g
                .calls()
                .iter()
                .any(|c| c.op == "remove" && c.number == 2 && c.label == label))
            .await,
        "{:?}",
        world.github.calls()
    );
    // PR 1's run finishing frees the slot; nothing of PR 2 takes it.
    assert_eq!(world.listener.finish_runs(1), 1);
    send(&svc.url, "pr3", 3, "c3", "opened").await;
    world.wait_dispatched(2).await;
    assert_eq!(world.dispatched_prs(), [1, 3]);
    world.assert_within_capacity();
}
