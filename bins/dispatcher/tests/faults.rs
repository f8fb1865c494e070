//! Fault drills: the real binary (often two replicas) against real
//! PostgreSQL and the fakes, while sessions are terminated, the database goes
//! away, processes are killed or frozen and the EventListener's answers are
//! lost. Each drill asserts the promise: every acknowledged delivery reaches a
//! final status, no PR is triggered twice, and the pool never holds more runs
//! than its capacity (runs are counted by the fake API server the moment the
//! listener creates them, visible to the dispatcher or not).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::world::*;
use support::*;

/// A plain SQL client for the drills (terminating backends, refusing connections).
async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// The same server's maintenance database.
fn admin_url(database_url: &str) -> String {
    let (server, _) = database_url.rsplit_once('/').unwrap();
    format!("{server}/postgres")
}

/// Every acknowledged delivery reached a final status.
async fn all_final(svc: &Service, total: usize) {
    svc.get_until("/api/v1/events/status?filter=processed=true", |l| {
        l["total_count"] == total
    })
    .await;
    let (_, open) = svc
        .get("/api/v1/events/status?filter=processed=false")
        .await;
    assert_eq!(open["total_count"], 0, "{open}");
}

async fn send_all(replicas: &[&Service], prs: std::ops::RangeInclusive<i64>) {
    for pr in prs {
        let url = &replicas[pr as usize % replicas.len()].url;
        let (status, body) = send_pr(url, &format!("d-{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_session_terminated_with_five_posts_in_flight() {
    session_terminated_with_posts_in_flight(false).await;
}

/// The same with incremental passes: the in-flight work is what they read.
#[tokio::test(flavor = "multi_thread")]
async fn leader_session_terminated_with_five_posts_in_flight_in_incremental_passes() {
    session_terminated_with_posts_in_flight(true).await;
}

async fn session_terminated_with_posts_in_flight(incremental: bool) {
    let world = World::with(WorldOptions {
        incremental,
        capacity: 5,
        trigger_timeout: "10s",
        ..WorldOptions::default()
    })
    .await;
    world.listener.hang(true);
    let mut a = world.replica().await;
    let mut b = world.replica().await;
    send_all(&[&a, &b], 1..=5).await;
    assert!(
        world.listener.wait_until(WAIT, |l| l.arrived() == 5).await,
        "five POSTs held open by the listener"
    );

    // The session holding the dispatcher lock is the leader's.
    let db = sql(world.db.url()).await;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'advisory' AND granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "exactly one leader session");
    let lost = |l: &str| l.contains("lost the database session");
    let noticed = tokio::select! {
        l = a.wait_log(lost) => l,
        l = b.wait_log(lost) => l,
    };
    assert!(noticed.is_some(), "the leader noticed");

    // The listener now answers the POSTs sent before the session died (and
    // creates their runs); nothing may be sent again.
    world.listener.hang(false);
    all_final(&a, 5).await;
    world.assert_never_twice();
    assert_eq!(world.dispatched_prs().len(), 5);

    // The system goes on dispatching normally.
    assert_eq!(world.listener.finish_runs(5), 5);
    send_all(&[&a, &b], 6..=8).await;
    world.wait_dispatched(8).await;
    all_final(&b, 8).await;
    world.assert_never_twice();
    world.assert_within_capacity();
}

#[tokio::test(flavor = "multi_thread")]
async fn database_restart_mid_burst() {
    let world = World::with(WorldOptions {
        capacity: 3,
        run_for: Some(Duration::from_millis(100)),
        ..WorldOptions::default()
    })
    .await;
    let mut a = world.replica().await;
    let b = world.replica().await;
    send_all(&[&a, &b], 1..=10).await;

    // A restart as the dispatcher sees one: every session of its database is
    // killed and new connections are refused until the server is back.
    let admin = sql(&admin_url(world.db.url())).await;
    let name = world.db.name();
    admin
        .execute(
            &format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false"),
            &[],
        )
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    let down = |l: &str| l.contains("cannot contend for the dispatcher lock");
    assert!(a.wait_log(down).await.is_some(), "the outage was seen");
    admin
        .execute(
            &format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"),
            &[],
        )
        .await
        .unwrap();

    send_all(&[&a, &b], 11..=20).await;
    world.drained(20).await;
    all_final(&a, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_the_listener_accepted_with_a_dispatch_label() {
    kill_9_after_accepted(false).await;
}

/// The same with incremental passes.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_the_listener_accepted_with_a_dispatch_label_in_incremental_passes() {
    kill_9_after_accepted(true).await;
}

async fn kill_9_after_accepted(incremental: bool) {
    let world = World::with(WorldOptions {
        incremental,
        capacity: 2,
        dispatch_label: true,
        ..WorldOptions::default()
    })
    .await;
    // The listener acts on every POST (its run exists) but its answer never arrives.
    world
        .listener
        .delay_answers(Some(Duration::from_secs(3600)));
    let mut first = world.replica().await;
    send_all(&[&first], 1..=2).await;
    world.wait_dispatched(2).await;
    first.kill9().await;
    world.listener.delay_answers(None);

    // The next replica confirms both from the runs carrying their dispatch ids.
    let next = world.replica().await;
    all_final(&next, 2).await;
    let detail = next
        .get_until("/api/v1/events/status?filter=status=processed", |l| {
            l["total_count"] == 2
        })
        .await;
    assert_eq!(detail["total_count"], 2);
    world.assert_never_twice();

    // Both runs still hold the pool: a third PR waits for a free slot.
    send_all(&[&next], 3..=3).await;
    assert_eq!(world.listener.finish_runs(1), 1);
    world.wait_dispatched(3).await;
    all_final(&next, 3).await;
    world.assert_never_twice();
    world.assert_within_capacity();
}

#[tokio::test(flavor = "multi_thread")]
async fn listener_creates_the_run_but_answers_after_the_trigger_timeout() {
    let world = World::with(WorldOptions {
        capacity: 2,
        trigger_timeout: "1s",
        ..WorldOptions::default()
    })
    .await;
    world.listener.delay_answers(Some(Duration::from_secs(3)));
    let svc = world.replica().await;
    send_all(&[&svc], 1..=1).await;
    world.wait_dispatched(1).await;
    // The POST times out; the slot stays reserved and the dispatch is
    // confirmed from the run the listener did create, without a second POST.
    all_final(&svc, 1).await;
    world.assert_never_twice();

    world.listener.delay_answers(None);
    send_all(&[&svc], 2..=3).await;
    world.wait_dispatched(2).await;
    assert_eq!(world.listener.finish_runs(2), 2);
    world.wait_dispatched(3).await;
    all_final(&svc, 3).await;
    world.assert_never_twice();
    world.assert_within_capacity();
}

#[tokio::test(flavor = "multi_thread")]
async fn frozen_leader_is_replaced_and_does_nothing_when_it_resumes() {
    let world = World::with(WorldOptions {
        capacity: 2,
        failover_timeout: "6s",
        ..WorldOptions::default()
    })
    .await;
    let a = world.replica().await;
    let b = world.replica().await;
    send_all(&[&a, &b], 1..=2).await;
    world.wait_dispatched(2).await;
    let (leader, standby) = if a.role().await == "leader" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(leader.role().await, "leader");

    leader.signal("STOP");
    // Work arrives at the standby and capacity frees up while the leader is frozen.
    send_all(&[&standby], 3..=4).await;
    assert_eq!(world.listener.finish_runs(2), 2);
    world.wait_dispatched(4).await;
    assert_eq!(standby.role().await, "leader");
    leader.signal("CONT");
    leader
        .get_until("/api/v1/status/ready", |r| {
            r["dispatcher"]["role"] == "standby"
        })
        .await;

    assert_eq!(world.listener.finish_runs(2), 2);
    send_all(&[&leader, &standby], 5..=6).await;
    world.wait_dispatched(6).await;
    all_final(&standby, 6).await;
    world.assert_never_twice();
    world.assert_within_capacity();
}

/// A TCP port that drops every connection until `open` is called, then
/// forwards to `target` (PostgreSQL coming up late).
struct LatePostgres {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl LatePostgres {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, opened) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*opened.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, open }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_unreachable_at_start_then_back() {
    let world = World::new(2, None).await;
    // The test database's address, reached through a port that refuses at first.
    let url: reqwest::Url = world.db.url().parse().unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
        .parse()
        .unwrap();
    let late = LatePostgres::start(target).await;
    let mut via_proxy = url.clone();
    via_proxy.set_port(Some(late.port)).unwrap();
    let svc = Service::start(
        &world.config(),
        via_proxy.as_str(),
        &[(
            "KUBECONFIG",
            world.dir.0.join("kubeconfig").display().to_string(),
        )],
    )
    .await;

    // Serving, not crash-looping; readiness says why it is not ready.
    let (status, ready) = svc.get("/api/v1/status/ready").await;
    assert_eq!(status, 503, "{ready}");
    let ready = svc
        .get_until("/api/v1/status/ready", |r| {
            r["dispatcher"]["problem"]
                .as_str()
                .is_some_and(|p| p.contains("applying database migrations"))
        })
        .await;
    assert_eq!(ready["dispatcher"]["role"], "starting", "{ready}");
    let (status, _) = send_pr(&svc.url, "d-early", "o/r", 1, "opened").await;
    assert!(status >= 500, "no database, no acknowledgement ({status})");

    late.open.send(true).unwrap();
    svc.get_until("/api/v1/status/ready", |r| {
        r["dispatcher"]["role"] == "leader"
    })
    .await;
    send_all(&[&svc], 2..=3).await;
    world.wait_dispatched(2).await;
    all_final(&svc, 2).await;
    world.assert_never_twice();
}
