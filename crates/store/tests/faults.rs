//! The store under real faults: an unreachable server, a leader that stops
//! answering, a killed backend, values outside the vocabulary (one database
//! per test on the private PostgreSQL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::{Duration, Instant};

use diesel::sql_types::{BigInt, Int4};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchState, EventId, PullRequestRef};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::planner::{IntakePlan, NewDispatch};
use dispatcher_core::ports::{DispatchStore, EventFilter, EventQuery, EventRepository, StoreError};
use dispatcher_store::{ConnectionOptions, Database, LeaderOptions, LeaderSession, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;

mod common;
use common::created;

/// Upper bound of every wait in these tests.
const DEADLINE: Duration = Duration::from_secs(15);

fn db(url: &str) -> Database {
    Database::connect(url, PoolOptions::default()).expect("pool")
}

async fn admin(t: &TestDatabase) -> AsyncPgConnection {
    dispatcher_store::connect(t.url(), &ConnectionOptions::default())
        .await
        .expect("admin connection")
}

fn event(delivery: &str, pr: i64) -> NewEvent {
    NewEvent {
        delivery_id: delivery.to_owned(),
        event_type: "pull_request".to_owned(),
        action: "opened".to_owned(),
        repository_full_name: "o/r".to_owned(),
        pull_request_number: pr,
        labels: None,
        payload: "{}".to_owned(),
        headers: vec![],
    }
}

fn dispatch(event: EventId, item: &str) -> NewDispatch {
    NewDispatch {
        event_id: event,
        item: item.into(),
        pool: PoolKey("ns/p".into()),
        queued_label: "p/queued".into(),
        pr: PullRequestRef {
            repository: "o/r".into(),
            number: 1,
        },
        queue_position: event.0,
        state: DispatchState::Queued,
    }
}

fn plan(event: EventId, item: &str) -> IntakePlan {
    IntakePlan {
        planned: vec![event],
        new_dispatches: vec![dispatch(event, item)],
        ..IntakePlan::default()
    }
}

/// Polls `attempt` until it yields a value, failing after [`DEADLINE`].
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Leader settings scaled down so faults show within a second or two.
fn quick(idle: Duration, margin: Duration) -> LeaderOptions {
    LeaderOptions {
        idle_session_timeout: idle,
        heartbeat_interval: Duration::from_millis(200),
        lease_margin: margin,
    }
}

async fn lead(db: &Database, options: LeaderOptions) -> LeaderSession {
    db.try_lead(false, options)
        .await
        .unwrap()
        .expect("no other leader")
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_unavailable_not_a_query_error() {
    let refused = format!("postgres://dispatcher:secret@127.0.0.1:{}/x", closed_port());
    // Accepts TCP connections (backlog) but never answers the start-up message.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "postgres://dispatcher:secret@127.0.0.1:{}/x",
        silent.local_addr().unwrap().port()
    );
    let options = ConnectionOptions {
        connect_timeout: Duration::from_millis(300),
        ..ConnectionOptions::default()
    };
    for url in [&refused, &silent_url] {
        let started = Instant::now();
        let migrated = dispatcher_store::run_migrations(url, &options).await;
        assert!(
            matches!(migrated, Err(StoreError::Unavailable(_))),
            "run_migrations: {migrated:?}"
        );
        let pending = dispatcher_store::pending_migrations(url, &options).await;
        assert!(
            matches!(pending, Err(StoreError::Unavailable(_))),
            "{pending:?}"
        );
        let database = Database::connect(
            url,
            PoolOptions {
                connection: options,
                acquire_timeout: Duration::from_millis(500),
                ..PoolOptions::default()
            },
        )
        .expect("the pool is built without connecting");
        let lead = database.try_lead(false, LeaderOptions::default()).await;
        let Err(error) = lead else {
            panic!("try_lead succeeded without a server");
        };
        assert!(
            matches!(error, StoreError::Unavailable(_)),
            "try_lead: {error:?}"
        );
        assert!(!error.to_string().contains("secret"), "{error}");
        let ping = database.events().ping().await;
        assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "connecting is bounded"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_that_retrying_cannot_fix_is_a_query_error() {
    let t = TestDatabase::new();
    let missing = t.url().replace(t.name(), "no_such_database");
    let migrated = dispatcher_store::run_migrations(&missing, &ConnectionOptions::default()).await;
    assert!(
        matches!(migrated, Err(StoreError::Query(_))),
        "{migrated:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stops_answering_loses_the_lock_after_its_lease() {
    let t = TestDatabase::new();
    let (a, b) = (db(t.url()), db(t.url()));
    let options = quick(Duration::from_secs(1), Duration::from_millis(300));
    let mut frozen = lead(&a, options).await;
    let lease = frozen.lease();
    assert!(lease.is_valid());
    assert!(b.try_lead(false, options).await.unwrap().is_none());

    // No heartbeat: PostgreSQL ends the idle session on its own.
    let ended = tokio::time::timeout(DEADLINE, frozen.wait_for_wakeup()).await;
    assert!(
        matches!(ended, Ok(Err(StoreError::LostLeadership))),
        "session not ended by idle_session_timeout: {ended:?}"
    );
    let mut successor = eventually("the standby to take over", || async {
        b.try_lead(false, options).await.unwrap()
    })
    .await;
    // The old leader's lease ran out before anyone else could lead.
    assert!(!lease.is_valid());
    assert!(matches!(
        frozen.heartbeat().await,
        Err(StoreError::LostLeadership)
    ));
    assert!(matches!(
        frozen.unplanned_events(10).await,
        Err(StoreError::LostLeadership)
    ));
    assert!(successor.lease().is_valid());
    successor.heartbeat().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_heartbeats_keeps_the_lock() {
    let t = TestDatabase::new();
    let (a, b) = (db(t.url()), db(t.url()));
    let options = quick(Duration::from_secs(1), Duration::from_millis(300));
    let mut leader = lead(&a, options).await;
    let lease = leader.lease();
    let mut ticks = tokio::time::interval(leader.heartbeat_interval());
    // Three idle timeouts' worth of heartbeats.
    let until = Instant::now() + Duration::from_secs(3);
    let mut beats = 0;
    while Instant::now() < until {
        ticks.tick().await;
        leader.heartbeat().await.unwrap();
        assert!(lease.is_valid());
        beats += 1;
        if beats % 5 == 0 {
            assert!(
                b.try_lead(false, options).await.unwrap().is_none(),
                "the standby took over from a live leader"
            );
        }
    }
    assert!(beats >= 10, "only {beats} heartbeats");
    leader.unplanned_events(1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_backend_fails_the_next_write_and_the_lease() {
    let t = TestDatabase::new();
    let database = db(t.url());
    let e = created(database.events().record(event("a", 1)).await.unwrap());
    let mut leader = lead(&database, LeaderOptions::default()).await;
    let lease = leader.lease();
    assert!(lease.is_valid());

    let mut admin = admin(&t).await;
    let pid = leader.backend_pid();
    diesel::sql_query("SELECT pg_terminate_backend($1)")
        .bind::<Int4, _>(pid)
        .execute(&mut admin)
        .await
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let alive: Count =
            diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = $1")
                .bind::<Int4, _>(pid)
                .get_result(&mut admin)
                .await
                .unwrap();
        if alive.n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the terminated backend never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let now = OffsetDateTime::now_utc();
    let write = leader.apply_intake(&plan(e, "ops"), now).await;
    assert!(
        matches!(write, Err(StoreError::LostLeadership)),
        "write on a terminated session: {write:?}"
    );
    assert!(!lease.is_valid());
    assert!(!leader.lease().is_valid());
    assert!(matches!(
        leader.heartbeat().await,
        Err(StoreError::LostLeadership)
    ));
    let detail = database.events().detail(e).await.unwrap().unwrap();
    assert!(detail.dispatches.is_empty(), "nothing was written");
    // Another session can lead at once.
    lead(&db(t.url()), LeaderOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_runs_out_without_round_trips_and_comes_back_with_one() {
    let t = TestDatabase::new();
    let database = db(t.url());
    // Lease 1 s; the session itself lives 3 s without a round trip.
    let options = quick(Duration::from_secs(3), Duration::from_secs(2));
    let mut leader = lead(&database, options).await;
    let acquired = Instant::now();
    let lease = leader.lease();
    assert!(lease.is_valid());
    assert!(lease.remaining() <= Duration::from_secs(1));
    eventually("the lease to expire", || async {
        (!lease.is_valid()).then_some(())
    })
    .await;
    assert!(acquired.elapsed() <= Duration::from_millis(1500));
    assert_eq!(lease.remaining(), Duration::ZERO);
    // The session still holds the lock: one round trip renews the lease.
    leader.heartbeat().await.unwrap();
    assert!(lease.is_valid());
    // Drop releases leadership: the lease goes with it.
    drop(leader);
    assert!(!lease.is_valid());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_states_read_back_are_errors() {
    let t = TestDatabase::new();
    let database = db(t.url());
    let events = database.events();
    let e = created(events.record(event("a", 1)).await.unwrap());
    let other = created(events.record(event("b", 2)).await.unwrap());
    let mut leader = lead(&database, LeaderOptions::default()).await;
    let now = OffsetDateTime::now_utc();
    leader.apply_intake(&plan(e, "ops"), now).await.unwrap();

    let mut admin = admin(&t).await;
    admin
        .batch_execute(
            "ALTER TABLE dispatches DROP CONSTRAINT dispatches_state_check;
             ALTER TABLE webhook_events DROP CONSTRAINT webhook_events_status_check;
             UPDATE dispatches SET state = 'exploded';",
        )
        .await
        .unwrap();

    let detail = events.detail(e).await;
    assert!(matches!(detail, Err(StoreError::Query(_))), "{detail:?}");
    // The leader reads the event's dispatches to derive its status: the
    // transaction fails, and it is a query error, not a lost leadership.
    let mut second = plan(e, "docs");
    second.planned.clear();
    let write = leader.apply_intake(&second, now).await;
    let Err(StoreError::Query(error)) = write else {
        panic!("expected a query error, got {write:?}");
    };
    assert!(error.to_string().contains("exploded"), "{error}");
    assert!(leader.lease().is_valid(), "the session itself is fine");
    leader.heartbeat().await.unwrap();

    admin
        .batch_execute("UPDATE webhook_events SET status = 'weird'")
        .await
        .unwrap();
    let detail = events.detail(other).await;
    assert!(matches!(detail, Err(StoreError::Query(_))), "{detail:?}");
    let list = events
        .list(&EventQuery {
            page: 1,
            page_size: 10,
            filter: EventFilter::default(),
        })
        .await;
    assert!(matches!(list, Err(StoreError::Query(_))), "{list:?}");
}
