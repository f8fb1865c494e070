//! Settling triggers whose answer was lost, through a [`LeaderSession`] on
//! real PostgreSQL (one database per test):
//!
//! * `database_now` is the server's clock, and `claimed_listener_event_ids`
//!   answers exactly the given eventIDs some dispatch holds, in any state;
//! * `record_outcomes` applies `Confirmed` (also from `triggering`, keeping
//!   the run's eventID), `Unanswered` and `Moved` only to the states (and
//!   attempts) they are meant for;
//! * `apply_intake` cancels a delivery that is older than an event of the
//!   same PR and item that already has a dispatch, even a finished one;
//! * the `listener_event_id` index migration applies to a database holding
//!   data, and reverts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{
    DispatchId, DispatchState, EventId, EventStatus, PullRequestRef, TimelineKind,
};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::planner::{DispatchOutcome, IntakePlan, NewDispatch};
use dispatcher_core::ports::{
    DispatchStore, EventRepository, OpenExtras, OperatorStore, RecordOutcome,
};
use dispatcher_store::{ConnectionOptions, Database, LeaderOptions, LeaderSession, PoolOptions};
use dispatcher_testdb::TestDatabase;
use time::OffsetDateTime;

/// One dispatch row as stored (state as text, so any spelling reads back).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    pool: String,
    #[diesel(sql_type = Text)]
    queued_label: String,
    #[diesel(sql_type = Int4)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    listener_event_id: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    triggered_at: Option<OffsetDateTime>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    confirmed_at: Option<OffsetDateTime>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<OffsetDateTime>,
}

/// A leader session plus a plain connection to look at the rows.
struct Fixture {
    _test: TestDatabase,
    database: Database,
    leader: LeaderSession,
    admin: AsyncPgConnection,
    next_pr: i64,
}

impl Fixture {
    async fn new() -> Self {
        let test = TestDatabase::new();
        let database = Database::connect(test.url(), PoolOptions::default()).expect("pool");
        let leader = database
            .try_lead(false, LeaderOptions::default())
            .await
            .unwrap()
            .expect("no other leader");
        let admin = dispatcher_store::connect(test.url(), &ConnectionOptions::default())
            .await
            .unwrap();
        Self {
            _test: test,
            database,
            leader,
            admin,
            next_pr: 100,
        }
    }

    async fn event(&self, delivery: &str, pr: i64) -> EventId {
        let stored = self
            .database
            .events()
            .record(NewEvent {
                delivery_id: delivery.to_owned(),
                event_type: "pull_request".to_owned(),
                action: "opened".to_owned(),
                repository_full_name: "o/r".to_owned(),
                pull_request_number: pr,
                labels: None,
                payload: format!("{{\"pr\":{pr}}}"),
                headers: vec![],
            })
            .await
            .unwrap();
        match stored {
            RecordOutcome::Created(e) => e.id,
            other => panic!("expected a new row, got {other:?}"),
        }
    }

    async fn row(&mut self, id: DispatchId) -> Row {
        diesel::sql_query(
            "SELECT state, pool, queued_label, attempts, last_error, listener_event_id,
                    triggered_at, confirmed_at, finished_at
               FROM dispatches WHERE id = $1",
        )
        .bind::<Int8, _>(id.0)
        .get_result(&mut self.admin)
        .await
        .unwrap()
    }

    async fn status(&self, event: EventId) -> (EventStatus, bool) {
        let detail = self
            .database
            .events()
            .detail(event)
            .await
            .unwrap()
            .expect("event");
        (detail.event.status, detail.event.processed)
    }

    async fn record(&mut self, outcome: DispatchOutcome, now: OffsetDateTime) {
        self.leader.record_outcomes(&[outcome], now).await.unwrap();
    }

    /// A dispatch of item `ops` for a new event on a PR of its own, brought
    /// into `state` through the leader (triggered ones hold `ev-<id>`).
    async fn dispatch(
        &mut self,
        state: DispatchState,
        now: OffsetDateTime,
    ) -> (EventId, DispatchId) {
        self.next_pr += 1;
        let pr = self.next_pr;
        let event = self.event(&format!("d-{pr}"), pr).await;
        let plan = IntakePlan {
            planned: vec![event],
            new_dispatches: vec![new_dispatch(event, pr, "ops")],
            ..IntakePlan::default()
        };
        let created = self.leader.apply_intake(&plan, now).await.unwrap();
        assert_eq!(created.len(), 1);
        let id = created[0].id;
        if state == DispatchState::Queued {
            return (event, id);
        }
        if state == DispatchState::Cancelled {
            self.record(DispatchOutcome::Superseded { id }, now).await;
            return (event, id);
        }
        let jobs = self.leader.begin_triggers(&[id], now).await.unwrap();
        assert_eq!(jobs.len(), 1);
        match state {
            DispatchState::Triggering => {}
            DispatchState::Failed => {
                self.record(
                    DispatchOutcome::Failed {
                        id,
                        attempt: 1,
                        error: "gave up".into(),
                    },
                    now,
                )
                .await;
            }
            DispatchState::Triggered | DispatchState::Confirmed => {
                self.record(
                    DispatchOutcome::Triggered {
                        id,
                        attempt: 1,
                        listener_event_id: Some(format!("ev-{id}")),
                    },
                    now,
                )
                .await;
                if state == DispatchState::Confirmed {
                    self.record(
                        DispatchOutcome::Confirmed {
                            id,
                            listener_event_id: None,
                            run: None,
                        },
                        now,
                    )
                    .await;
                }
            }
            DispatchState::Queued | DispatchState::Cancelled => unreachable!(),
        }
        assert_eq!(self.row(id).await.state, state.as_str());
        (event, id)
    }
}

fn new_dispatch(event: EventId, pr: i64, item: &str) -> NewDispatch {
    NewDispatch {
        event_id: event,
        item: item.into(),
        pool: PoolKey("ns/p".into()),
        queued_label: "p/queued".into(),
        pr: PullRequestRef {
            repository: "o/r".into(),
            number: pr,
        },
        queue_position: event.0,
        state: DispatchState::Queued,
    }
}

/// Now, in whole seconds (PostgreSQL keeps microseconds: equality is exact).
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn database_now_is_the_servers_clock() {
    let mut f = Fixture::new().await;
    let clock = |sql: &'static str| diesel::select(diesel::dsl::sql::<Timestamptz>(sql));
    let before: OffsetDateTime = clock("now()").get_result(&mut f.admin).await.unwrap();
    let now = f.leader.database_now().await.unwrap();
    let after: OffsetDateTime = clock("clock_timestamp()")
        .get_result(&mut f.admin)
        .await
        .unwrap();
    assert!(
        before <= now && now <= after,
        "database_now {now} is not between the server's {before} and {after}"
    );
    // Not frozen at the session's transaction start: a later call is later.
    let later = f.leader.database_now().await.unwrap();
    assert!(later >= now);
}

#[tokio::test(flavor = "multi_thread")]
async fn claimed_listener_event_ids_are_exactly_those_held_by_some_dispatch() {
    let mut f = Fixture::new().await;
    let now = whole_seconds(OffsetDateTime::now_utc());
    let (_, triggered) = f.dispatch(DispatchState::Triggered, now).await;
    let (_, confirmed) = f.dispatch(DispatchState::Confirmed, now).await;
    let (_, failed) = f.dispatch(DispatchState::Failed, now).await;
    let (_, queued) = f.dispatch(DispatchState::Queued, now).await;
    // A failed dispatch can hold an eventID too (a retry that later ran out).
    diesel::sql_query("UPDATE dispatches SET listener_event_id = 'ev-failed' WHERE id = $1")
        .bind::<Int8, _>(failed.0)
        .execute(&mut f.admin)
        .await
        .unwrap();

    let asked: Vec<String> = [
        format!("ev-{triggered}"),
        format!("ev-{confirmed}"),
        "ev-failed".to_owned(),
        format!("ev-{queued}"),
        "ev-unknown".to_owned(),
        format!("ev-{triggered}"),
        String::new(),
    ]
    .into();
    let claimed = f.leader.claimed_listener_event_ids(&asked).await.unwrap();
    let expected: HashSet<String> = [
        format!("ev-{triggered}"),
        format!("ev-{confirmed}"),
        "ev-failed".to_owned(),
    ]
    .into();
    assert_eq!(claimed, expected);
    assert!(
        f.leader
            .claimed_listener_event_ids(&[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.leader
            .claimed_listener_event_ids(&["ev-unknown".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmed_from_triggering_keeps_the_runs_event_id() {
    let mut f = Fixture::new().await;
    let sent = whole_seconds(OffsetDateTime::now_utc());
    let now = sent + Duration::from_secs(30);
    let (event, id) = f.dispatch(DispatchState::Triggering, sent).await;
    assert_eq!(f.status(event).await, (EventStatus::Queued, false));

    f.record(
        DispatchOutcome::Confirmed {
            id,
            listener_event_id: Some("run-ev-1".into()),
            run: None,
        },
        now,
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(row.state, "confirmed");
    assert_eq!(row.listener_event_id.as_deref(), Some("run-ev-1"));
    assert_eq!(row.triggered_at, Some(now), "a trigger time is recorded");
    assert_eq!(row.confirmed_at, Some(now));
    assert_eq!(row.attempts, 1);
    assert_eq!(f.status(event).await, (EventStatus::Processed, true));
    // The run is claimed now: no orphan can be matched to it again.
    let claimed = f
        .leader
        .claimed_listener_event_ids(&["run-ev-1".to_owned()])
        .await
        .unwrap();
    assert!(claimed.contains("run-ev-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmed_on_a_triggered_dispatch_keeps_its_own_event_id() {
    let mut f = Fixture::new().await;
    let sent = whole_seconds(OffsetDateTime::now_utc());
    let now = sent + Duration::from_secs(30);
    let (event, id) = f.dispatch(DispatchState::Triggered, sent).await;
    f.record(
        DispatchOutcome::Confirmed {
            id,
            listener_event_id: Some("run-ev-other".into()),
            run: None,
        },
        now,
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(row.state, "confirmed");
    assert_eq!(row.listener_event_id, Some(format!("ev-{id}")));
    assert_eq!(row.triggered_at, Some(sent), "the 202's time is kept");
    assert_eq!(row.confirmed_at, Some(now));
    assert_eq!(f.status(event).await, (EventStatus::Processed, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn confirmed_changes_nothing_on_queued_or_finished_dispatches() {
    let mut f = Fixture::new().await;
    let sent = whole_seconds(OffsetDateTime::now_utc());
    let now = sent + Duration::from_secs(30);
    for state in [
        DispatchState::Queued,
        DispatchState::Confirmed,
        DispatchState::Failed,
        DispatchState::Cancelled,
    ] {
        let (event, id) = f.dispatch(state, sent).await;
        let before = f.row(id).await;
        let status = f.status(event).await;
        f.record(
            DispatchOutcome::Confirmed {
                id,
                listener_event_id: Some(format!("run-for-{id}")),
                run: None,
            },
            now,
        )
        .await;
        assert_eq!(f.row(id).await, before, "{state} dispatch changed");
        assert_eq!(f.status(event).await, status, "{state} event changed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unanswered_records_the_error_only_for_its_state_and_attempt() {
    let mut f = Fixture::new().await;
    let now = whole_seconds(OffsetDateTime::now_utc());
    let (event, id) = f.dispatch(DispatchState::Triggering, now).await;
    let before = f.row(id).await;

    // Another attempt's answer: nothing changes.
    f.record(
        DispatchOutcome::Unanswered {
            id,
            attempt: 2,
            error: "stale".into(),
        },
        now,
    )
    .await;
    assert_eq!(f.row(id).await, before);

    f.record(
        DispatchOutcome::Unanswered {
            id,
            attempt: 1,
            error: "EventListener did not answer".into(),
        },
        now,
    )
    .await;
    let row = f.row(id).await;
    assert_eq!(
        row,
        Row {
            last_error: Some("EventListener did not answer".into()),
            ..before
        },
        "still triggering (holding its slot), with the error recorded"
    );
    assert_eq!(f.status(event).await, (EventStatus::Queued, false));

    // Not triggering any more (re-queued for a retry, or accepted): same attempt, no change.
    let (_, requeued) = f.dispatch(DispatchState::Triggering, now).await;
    f.record(
        DispatchOutcome::Retry {
            id: requeued,
            attempt: 1,
            next_attempt_at: now,
            error: "HTTP 503".into(),
        },
        now,
    )
    .await;
    let (_, triggered) = f.dispatch(DispatchState::Triggered, now).await;
    for id in [requeued, triggered] {
        let before = f.row(id).await;
        assert_eq!(before.attempts, 1);
        f.record(
            DispatchOutcome::Unanswered {
                id,
                attempt: 1,
                error: "late".into(),
            },
            now,
        )
        .await;
        assert_eq!(f.row(id).await, before, "{} dispatch changed", before.state);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn moved_changes_the_pool_of_queued_dispatches_only() {
    let mut f = Fixture::new().await;
    let now = whole_seconds(OffsetDateTime::now_utc());
    let (_, queued) = f.dispatch(DispatchState::Queued, now).await;
    let (_, triggering) = f.dispatch(DispatchState::Triggering, now).await;
    let moved = |id| DispatchOutcome::Moved {
        id,
        pool: PoolKey("ns/q".into()),
        queued_label: "q/queued".into(),
    };

    let before = f.row(queued).await;
    f.record(moved(queued), now).await;
    assert_eq!(
        f.row(queued).await,
        Row {
            pool: "ns/q".into(),
            queued_label: "q/queued".into(),
            ..before
        }
    );
    let open = f
        .leader
        .open_dispatches(now, OpenExtras::NONE)
        .await
        .unwrap();
    let listed = open.iter().find(|d| d.id == queued).expect("still open");
    assert_eq!(
        (listed.pool.0.as_str(), listed.state),
        ("ns/q", DispatchState::Queued)
    );

    let before = f.row(triggering).await;
    f.record(moved(triggering), now).await;
    assert_eq!(
        f.row(triggering).await,
        before,
        "an in-flight trigger stays where its slot is"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_older_than_an_already_dispatched_event_is_cancelled() {
    for finished in [DispatchState::Confirmed, DispatchState::Failed] {
        let mut f = Fixture::new().await;
        let now = whole_seconds(OffsetDateTime::now_utc());
        // Ids are assigned at insert; the older deliveries commit (are planned) last.
        let stale = f.event("stale", 1).await;
        let other_item = f.event("other-item", 1).await;
        let other_pr = f.event("other-pr", 2).await;
        let newer = f.event("newer", 1).await;

        // The newest event of PR 1 is planned, triggered and finished first.
        let plan = IntakePlan {
            planned: vec![newer],
            new_dispatches: vec![new_dispatch(newer, 1, "ops")],
            ..IntakePlan::default()
        };
        let done = f.leader.apply_intake(&plan, now).await.unwrap()[0].id;
        f.leader.begin_triggers(&[done], now).await.unwrap();
        let finish = if finished == DispatchState::Confirmed {
            DispatchOutcome::Triggered {
                id: done,
                attempt: 1,
                listener_event_id: Some("ev-newer".into()),
            }
        } else {
            DispatchOutcome::Failed {
                id: done,
                attempt: 1,
                error: "gave up".into(),
            }
        };
        f.record(finish, now).await;
        if finished == DispatchState::Confirmed {
            f.record(
                DispatchOutcome::Confirmed {
                    id: done,
                    listener_event_id: None,
                    run: None,
                },
                now,
            )
            .await;
        }
        assert_eq!(f.row(done).await.state, finished.as_str());
        assert!(
            f.leader
                .open_dispatches(now, OpenExtras::NONE)
                .await
                .unwrap()
                .is_empty(),
            "the newer event has no open work left"
        );

        // The planner sees no open work for PR 1 and queues the late ones.
        let late = IntakePlan {
            planned: vec![stale, other_item, other_pr],
            new_dispatches: vec![
                new_dispatch(stale, 1, "ops"),
                new_dispatch(other_item, 1, "docs"),
                new_dispatch(other_pr, 2, "ops"),
            ],
            ..IntakePlan::default()
        };
        let queued = f.leader.apply_intake(&late, now).await.unwrap();
        let mut work: Vec<(EventId, &str)> = queued
            .iter()
            .map(|d| (d.event_id, d.item.as_str()))
            .collect();
        work.sort_unstable();
        assert_eq!(
            work,
            [(other_item, "docs"), (other_pr, "ops")],
            "newer {finished}: only the other item and the other PR are queued work"
        );
        assert!(queued.iter().all(|d| d.state == DispatchState::Queued));

        let detail = f.database.events().detail(stale).await.unwrap().unwrap();
        assert_eq!(detail.event.status, EventStatus::Cancelled);
        assert!(
            detail.event.processed,
            "cancelled is final: processed, as in the original"
        );
        assert_eq!(detail.dispatches.len(), 1);
        let cancelled = &detail.dispatches[0];
        assert_eq!(cancelled.state, DispatchState::Cancelled);
        assert!(cancelled.finished_at.is_some());
        // Never handed out as work later either.
        let open: Vec<DispatchId> = f
            .leader
            .open_dispatches(now, OpenExtras::NONE)
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert!(!open.contains(&cancelled.id));
        assert!(
            f.leader
                .begin_triggers(&[cancelled.id], now)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(f.row(cancelled.id).await.state, "cancelled");

        for unaffected in [other_item, other_pr] {
            assert_eq!(f.status(unaffected).await, (EventStatus::Queued, false));
        }
        // The finished newer dispatch is untouched.
        assert_eq!(f.row(done).await.state, finished.as_str());
    }
}

/// Synchronous diesel (its migration harness), apart from the async tests.
mod migration {
    use diesel::connection::SimpleConnection;
    use diesel::sql_types::{Int8, Nullable, Text};
    use diesel::{Connection, QueryableByName, RunQueryDsl};
    use diesel_async::AsyncPgConnection;
    use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
    use diesel_migrations::MigrationHarness;
    use dispatcher_store::MIGRATIONS;
    use dispatcher_testdb::TestDatabase;

    #[test]
    fn listener_event_id_index_applies_on_a_database_holding_data() {
        let t = TestDatabase::empty();
        let url = t.url().to_owned();
        std::thread::spawn(move || {
            let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url).unwrap();
            // Everything before the index.
            loop {
                let pending = conn.pending_migrations(MIGRATIONS).unwrap();
                let next = pending.into_iter().next().expect("the index migration is pending");
                if next.name().to_string().contains("listener_event_id_index") {
                    break;
                }
                conn.run_next_migration(MIGRATIONS).unwrap();
            }
            // Rows with and without eventIDs, the same eventID twice, every state.
            conn.batch_execute(
                "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload)
                 VALUES ('d1', 'pull_request', 'opened', 'o/r', 1, '{}'),
                        ('d2', 'pull_request', 'opened', 'o/r', 2, '{}');
                 INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name, pull_request_number, state, queue_position, listener_event_id)
                 SELECT e.id, v.item, 'ns/p', 'p/queued', 'o/r', e.pull_request_number, v.state, e.id, v.ev
                   FROM (VALUES ('d1', 'a', 'queued', NULL),
                                ('d1', 'b', 'triggered', 'ev-1'),
                                ('d1', 'c', 'confirmed', 'ev-2'),
                                ('d2', 'a', 'failed', 'ev-2'),
                                ('d2', 'b', 'triggering', NULL)) AS v(delivery, item, state, ev)
                   JOIN webhook_events e ON e.delivery_id = v.delivery;",
            )
            .unwrap();

            #[derive(QueryableByName)]
            struct Index {
                #[diesel(sql_type = Text)]
                indexdef: String,
            }
            #[derive(QueryableByName, Debug, PartialEq, Eq)]
            struct Held {
                #[diesel(sql_type = Text)]
                item_name: String,
                #[diesel(sql_type = Nullable<Text>)]
                listener_event_id: Option<String>,
            }
            let index = |conn: &mut AsyncConnectionWrapper<AsyncPgConnection>| -> Vec<Index> {
                diesel::sql_query(
                    "SELECT indexdef FROM pg_indexes
                      WHERE tablename = 'dispatches' AND indexname = 'dispatches_listener_event_id_idx'",
                )
                .load(conn)
                .unwrap()
            };
            let held = |conn: &mut AsyncConnectionWrapper<AsyncPgConnection>| -> Vec<Held> {
                diesel::sql_query(
                    "SELECT item_name, listener_event_id FROM dispatches ORDER BY event_id, item_name",
                )
                .load(conn)
                .unwrap()
            };
            let rows = held(&mut conn);
            assert_eq!(rows.len(), 5);
            assert!(index(&mut conn).is_empty());

            let version = conn.run_next_migration(MIGRATIONS).unwrap();
            assert_eq!(version.to_string(), "20261202000003");
            let created = index(&mut conn);
            assert_eq!(created.len(), 1, "the index exists");
            let def = &created[0].indexdef;
            assert!(
                def.contains("(listener_event_id)") && def.contains("IS NOT NULL"),
                "a partial index on listener_event_id: {def}"
            );
            assert!(!def.contains("UNIQUE"), "an eventID may repeat: {def}");
            assert_eq!(held(&mut conn), rows, "the data is untouched");

            // The lookup it serves still answers the same.
            #[derive(QueryableByName)]
            struct Count {
                #[diesel(sql_type = Int8)]
                n: i64,
            }
            let count: Count = diesel::sql_query(
                "SELECT count(*) AS n FROM dispatches WHERE listener_event_id = ANY(ARRAY['ev-1', 'ev-2', 'ev-x'])",
            )
            .get_result(&mut conn)
            .unwrap();
            assert_eq!(count.n, 3);

            // Reverting drops only the index; applying again works on the same data.
            conn.revert_last_migration(MIGRATIONS).unwrap();
            assert!(index(&mut conn).is_empty());
            assert_eq!(held(&mut conn), rows);
            conn.run_pending_migrations(MIGRATIONS).unwrap();
            assert_eq!(index(&mut conn).len(), 1);
            assert_eq!(held(&mut conn), rows);
        })
        .join()
        .unwrap();
    }
}

/// The timeline facts of `event`, as (dispatch, kind) in order.
async fn facts(f: &Fixture, event: EventId) -> Vec<(Option<DispatchId>, TimelineKind)> {
    f.database
        .events()
        .timeline(event)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| matches!(t.kind, TimelineKind::Accepted | TimelineKind::Confirmed))
        .map(|t| (t.dispatch, t.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_and_confirmations_of_many_dispatches_are_recorded_together_exactly() {
    let mut f = Fixture::new().await;
    let sent = whole_seconds(OffsetDateTime::now_utc());
    let now = sent + Duration::from_secs(30);
    let (e1, answered) = f.dispatch(DispatchState::Triggering, sent).await;
    let (e2, stale) = f.dispatch(DispatchState::Triggering, sent).await;
    let (e3, confirmed) = f.dispatch(DispatchState::Triggered, sent).await;
    let (e4, lost_answer) = f.dispatch(DispatchState::Triggering, sent).await;
    let (e5, finished) = f.dispatch(DispatchState::Failed, sent).await;
    let finished_before = f.row(finished).await;
    let stale_before = f.row(stale).await;

    f.leader
        .record_outcomes(
            &[
                DispatchOutcome::Triggered {
                    id: answered,
                    attempt: 1,
                    listener_event_id: Some("ev-answered".into()),
                },
                DispatchOutcome::Confirmed {
                    id: confirmed,
                    listener_event_id: Some("run-ev-other".into()),
                    run: Some("run-3".into()),
                },
                DispatchOutcome::Triggered {
                    id: stale,
                    attempt: 7,
                    listener_event_id: Some("ev-stale".into()),
                },
                DispatchOutcome::Confirmed {
                    id: lost_answer,
                    listener_event_id: Some("run-ev-4".into()),
                    run: Some("run-4".into()),
                },
                DispatchOutcome::Confirmed {
                    id: finished,
                    listener_event_id: Some("run-ev-5".into()),
                    run: Some("run-5".into()),
                },
            ],
            now,
        )
        .await
        .unwrap();

    let row = f.row(answered).await;
    assert_eq!(
        (row.state.as_str(), row.listener_event_id.as_deref()),
        ("triggered", Some("ev-answered"))
    );
    assert_eq!(row.triggered_at, Some(now));
    assert_eq!(f.row(stale).await, stale_before, "another attempt's answer");
    let row = f.row(confirmed).await;
    assert_eq!(row.state, "confirmed");
    assert_eq!(row.listener_event_id, Some(format!("ev-{confirmed}")));
    assert_eq!(row.triggered_at, Some(sent));
    let row = f.row(lost_answer).await;
    assert_eq!(
        (row.state.as_str(), row.listener_event_id.as_deref()),
        ("confirmed", Some("run-ev-4"))
    );
    assert_eq!(row.triggered_at, Some(now));
    assert_eq!(f.row(finished).await, finished_before);

    assert_eq!(f.status(e1).await, (EventStatus::Processed, true));
    assert_eq!(f.status(e2).await, (EventStatus::Queued, false));
    assert_eq!(f.status(e4).await, (EventStatus::Processed, true));
    // A fact for each change, none for what did not change.
    assert_eq!(
        facts(&f, e1).await,
        vec![(Some(answered), TimelineKind::Accepted)]
    );
    assert!(facts(&f, e2).await.is_empty());
    assert_eq!(
        facts(&f, e3).await,
        vec![
            (Some(confirmed), TimelineKind::Accepted),
            (Some(confirmed), TimelineKind::Confirmed)
        ]
    );
    assert_eq!(
        facts(&f, e4).await,
        vec![(Some(lost_answer), TimelineKind::Confirmed)]
    );
    assert!(facts(&f, e5).await.is_empty());
    // And `begin_triggers` wrote what each trigger was, with its attempt.
    let sent: Vec<_> = f
        .database
        .events()
        .timeline(e1)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.kind == TimelineKind::TriggerSent)
        .map(|t| (t.dispatch, t.detail))
        .collect();
    assert_eq!(
        sent,
        vec![(Some(answered), serde_json::json!({"attempt": 1}))]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_and_a_confirmation_of_one_dispatch_apply_in_their_order() {
    let mut f = Fixture::new().await;
    let sent = whole_seconds(OffsetDateTime::now_utc());
    let now = sent + Duration::from_secs(30);
    let (event, id) = f.dispatch(DispatchState::Triggering, sent).await;
    f.leader
        .record_outcomes(
            &[
                DispatchOutcome::Triggered {
                    id,
                    attempt: 1,
                    listener_event_id: Some("ev-own".into()),
                },
                DispatchOutcome::Confirmed {
                    id,
                    listener_event_id: Some("run-ev".into()),
                    run: None,
                },
            ],
            now,
        )
        .await
        .unwrap();
    let row = f.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.listener_event_id.as_deref()),
        ("confirmed", Some("ev-own")),
        "the 202 first, then its run"
    );
    assert_eq!(
        facts(&f, event).await,
        vec![
            (Some(id), TimelineKind::Accepted),
            (Some(id), TimelineKind::Confirmed)
        ]
    );

    // The other way round: the run is seen first (it claims its eventID),
    // and the late 202 then finds nothing in flight to change.
    let (event, id) = f.dispatch(DispatchState::Triggering, sent).await;
    f.leader
        .record_outcomes(
            &[
                DispatchOutcome::Confirmed {
                    id,
                    listener_event_id: Some("run-ev".into()),
                    run: None,
                },
                DispatchOutcome::Triggered {
                    id,
                    attempt: 1,
                    listener_event_id: Some("ev-own".into()),
                },
            ],
            now,
        )
        .await
        .unwrap();
    let row = f.row(id).await;
    assert_eq!(
        (row.state.as_str(), row.listener_event_id.as_deref()),
        ("confirmed", Some("run-ev")),
        "the run first, then a 202 too late to matter"
    );
    assert_eq!(
        facts(&f, event).await,
        vec![(Some(id), TimelineKind::Confirmed)]
    );
}
