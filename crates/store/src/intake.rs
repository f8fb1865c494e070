//! Group commit of intake: concurrent deliveries are stored by one
//! multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING` per round trip.
//!
//! Requests hand their delivery to one task per [`Database`](crate::Database)
//! and wait for their own answer. The task sends at most
//! [`IN_FLIGHT`] batches at once; a batch takes everything that queued up
//! while the previous ones were on their way (up to [`MAX_ROWS`] rows and
//! [`MAX_BYTES`] of payload). So a lone request goes at once, with no
//! waiting window, and under load each commit (each WAL flush) carries many
//! rows: the batching comes from the database's own latency, not a timer.
//!
//! Per row the answer is exactly what a single insert would give: a new row
//! is `Created` only after its statement committed; a delivery id that is
//! already stored (also earlier in the same batch) is looked up and answered
//! `AlreadyStored` or `Conflict` by comparing the bodies byte for byte. A
//! batch that fails as a whole (one row PostgreSQL refuses) is retried row by
//! row on the same connection, so one bad delivery never fails its
//! neighbours and no row is acknowledged that is not stored.

use std::collections::HashMap;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{Array, Bool, Text};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::ports::{RecordOutcome, StoreError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error;
use crate::events::{EventRow, NewRow};
use crate::prepared::Prepared;
use crate::schema::webhook_events;
use crate::wakeup::Wakeups;

/// Batches on their way to PostgreSQL at once. Two keep the server busy
/// while the next batch gathers; more only split the same rows thinner.
pub(crate) const IN_FLIGHT: usize = 2;
/// Most rows in one statement (9 parameters each, far below the limit of
/// 65,535; the gain flattens long before).
pub(crate) const MAX_ROWS: usize = 128;
/// Most payload bytes in one statement (a lone larger delivery still goes,
/// alone).
pub(crate) const MAX_BYTES: usize = 8 << 20;

type Answer = oneshot::Sender<Result<RecordOutcome, StoreError>>;

struct Pending {
    event: NewEvent,
    answer: Answer,
}

/// The handle requests use; the task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct IntakeBatches {
    queue: Option<mpsc::UnboundedSender<Pending>>,
}

impl IntakeBatches {
    /// Starts the batching task on the current tokio runtime (without one,
    /// every delivery is inserted on its own).
    pub(crate) fn start(pool: Pool<AsyncPgConnection>, wakeups: Wakeups) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self { queue: None };
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        runtime.spawn(gather(receiver, pool, wakeups));
        Self { queue: Some(queue) }
    }

    /// Stores one delivery with whatever else is waiting; answers once the
    /// row is durable (or known to exist).
    pub(crate) async fn record(
        &self,
        event: NewEvent,
        pool: &Pool<AsyncPgConnection>,
        wakeups: &Wakeups,
    ) -> Result<RecordOutcome, StoreError> {
        let event = match &self.queue {
            Some(queue) => {
                let (answer, answered) = oneshot::channel();
                match queue.send(Pending { event, answer }) {
                    Ok(()) => {
                        return answered.await.unwrap_or_else(|_| {
                            // The task's runtime ended under it (a test's
                            // runtime, or shutdown): the row's fate is unknown.
                            Err(StoreError::Unavailable("intake stopped".into()))
                        });
                    }
                    // The task is gone (its runtime ended): insert directly.
                    Err(mpsc::error::SendError(pending)) => pending.event,
                }
            }
            None => event,
        };
        let mut conn = pool.get().await.map_err(error::pool)?;
        let outcome = store_batch(&mut conn, std::slice::from_ref(&event))
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Query("no answer for the delivery".into())));
        if matches!(outcome, Ok(RecordOutcome::Created(_))) {
            wakeups.wake();
        }
        outcome
    }
}

/// Takes what queued up whenever a batch slot is free.
async fn gather(
    mut receiver: mpsc::UnboundedReceiver<Pending>,
    pool: Pool<AsyncPgConnection>,
    wakeups: Wakeups,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut waiting: Vec<Pending> = Vec::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        if waiting.is_empty() && receiver.recv_many(&mut waiting, MAX_ROWS).await == 0 {
            return; // every handle dropped
        }
        if waiting.len() < MAX_ROWS {
            // Whatever else arrived meanwhile, without waiting for more.
            while waiting.len() < MAX_ROWS {
                match receiver.try_recv() {
                    Ok(p) => waiting.push(p),
                    Err(_) => break,
                }
            }
        }
        let batch = take_batch(&mut waiting);
        let (pool, wakeups) = (pool.clone(), wakeups.clone());
        tokio::spawn(async move {
            send_batch(&pool, &wakeups, batch).await;
            drop(slot);
        });
    }
}

/// The first rows of `waiting` up to [`MAX_ROWS`] and [`MAX_BYTES`] (at
/// least one); the rest wait for the next slot.
fn take_batch(waiting: &mut Vec<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let mut take = 0;
    for p in waiting.iter().take(MAX_ROWS) {
        bytes += p.event.payload.len();
        if take > 0 && bytes > MAX_BYTES {
            break;
        }
        take += 1;
    }
    let rest = waiting.split_off(take);
    std::mem::replace(waiting, rest)
}

async fn send_batch(pool: &Pool<AsyncPgConnection>, wakeups: &Wakeups, batch: Vec<Pending>) {
    let (events, answers): (Vec<NewEvent>, Vec<Answer>) =
        batch.into_iter().map(|p| (p.event, p.answer)).unzip();
    let outcomes = match pool.get().await {
        Ok(mut conn) => store_batch(&mut conn, &events).await,
        Err(e) => {
            let e = error::pool(e);
            events.iter().map(|_| Err(same_error(&e))).collect()
        }
    };
    if outcomes
        .iter()
        .any(|o| matches!(o, Ok(RecordOutcome::Created(_))))
    {
        wakeups.wake();
    }
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // A request that went away (client gone) still had its row stored.
        let _ = answer.send(outcome);
    }
}

/// Stores `events` in one statement; one outcome per event, in order.
pub(crate) async fn store_batch(
    conn: &mut AsyncPgConnection,
    events: &[NewEvent],
) -> Vec<Result<RecordOutcome, StoreError>> {
    let rows: Vec<NewRow<'_>> = events.iter().map(NewRow::from_event).collect();
    let inserted: Vec<EventRow> = match diesel::insert_into(webhook_events::table)
        .values(&rows)
        // The unique index is partial (older duplicates adopted from the
        // original's database are outside it): name the same predicate.
        .on_conflict(webhook_events::delivery_id)
        .filter_target(diesel::dsl::not(webhook_events::superseded_duplicate))
        .do_nothing()
        .returning(EventRow::as_returning())
        .get_results(conn)
        .await
    {
        Ok(inserted) => inserted,
        Err(e) if events.len() > 1 && !error::is_connection_lost(&e) => {
            // One row PostgreSQL refuses fails the statement: find it by
            // storing each row on its own (nothing of the batch was stored).
            let mut outcomes = Vec::with_capacity(events.len());
            for event in events {
                let mut one = Box::pin(store_batch(conn, std::slice::from_ref(event))).await;
                outcomes.push(one.pop().unwrap_or_else(|| {
                    Err(StoreError::Query("no answer for the delivery".into()))
                }));
            }
            return outcomes;
        }
        Err(e) => {
            let e = error::query(e);
            return events.iter().map(|_| Err(same_error(&e))).collect();
        }
    };
    let mut created: HashMap<String, EventRow> = inserted
        .into_iter()
        .map(|row| (row.delivery_id.clone(), row))
        .collect();
    let mut outcomes: Vec<Option<Result<RecordOutcome, StoreError>>> = events
        .iter()
        .map(|e| {
            created
                .remove(&e.delivery_id)
                .map(|row| Ok(RecordOutcome::Created(row.into())))
        })
        .collect();
    let stored_before: Vec<&str> = events
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(e, _)| e.delivery_id.as_str())
        .collect();
    if !stored_before.is_empty() {
        match existing(conn, &stored_before).await {
            Ok(found) => {
                for (event, outcome) in events.iter().zip(outcomes.iter_mut()) {
                    if outcome.is_some() {
                        continue;
                    }
                    *outcome = Some(match found.get(&event.delivery_id) {
                        Some(stored) if stored.same_as(&event.payload) => {
                            Ok(RecordOutcome::AlreadyStored(stored.event.clone().into()))
                        }
                        Some(stored) => Ok(RecordOutcome::Conflict(stored.event.clone().into())),
                        // Deleted between the two statements (retention).
                        None => Err(StoreError::Query(
                            format!("delivery {} vanished while stored", event.delivery_id).into(),
                        )),
                    });
                }
            }
            Err(e) => {
                for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                    *outcome = Some(Err(same_error(&e)));
                }
            }
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Query("no answer for the delivery".into()))))
        .collect()
}

#[derive(QueryableByName)]
struct Existing {
    #[diesel(embed)]
    event: EventRow,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    payload_text: Option<String>,
    #[diesel(sql_type = Bool)]
    payload_dropped: bool,
}

impl Existing {
    /// The same body as stored; a payload dropped by retention cannot be
    /// compared, and counts as the same.
    fn same_as(&self, payload: &str) -> bool {
        self.payload_dropped || self.payload_text.as_deref() == Some(payload)
    }
}

/// The stored rows of `delivery_ids`, by delivery id.
async fn existing(
    conn: &mut AsyncPgConnection,
    delivery_ids: &[&str],
) -> Result<HashMap<String, Existing>, StoreError> {
    let rows: Vec<Existing> = Prepared(diesel::sql_query(
        "SELECT id, uuid, delivery_id, action, repository_full_name, pull_request_number, processed,
                processing_error, received_at, processed_at, status,
                payload::text AS payload_text, payload_dropped_at IS NOT NULL AS payload_dropped
           FROM webhook_events WHERE delivery_id = ANY($1) AND NOT superseded_duplicate",
    )
    .bind::<Array<Text>, _>(delivery_ids))
    .load(conn)
    .await
    .map_err(error::query)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.event.delivery_id.clone(), r))
        .collect())
}

/// One failure answered to every row it concerns (the error itself is not
/// `Clone`; its kind and text are what callers use).
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(cause) => StoreError::Unavailable(cause.to_string().into()),
        StoreError::LostLeadership => StoreError::LostLeadership,
        StoreError::Query(cause) => StoreError::Query(cause.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use dispatcher_testdb::TestDatabase;

    use super::*;
    use crate::{Database, PoolOptions};

    fn event(delivery: &str, payload: &str) -> NewEvent {
        NewEvent {
            delivery_id: delivery.to_owned(),
            event_type: "pull_request".to_owned(),
            action: "opened".to_owned(),
            repository_full_name: "o/r".to_owned(),
            pull_request_number: 1,
            labels: None,
            payload: payload.to_owned(),
            headers: Vec::new(),
        }
    }

    fn kind(outcome: &Result<RecordOutcome, StoreError>) -> &'static str {
        match outcome {
            Ok(RecordOutcome::Created(_)) => "created",
            Ok(RecordOutcome::AlreadyStored(_)) => "stored",
            Ok(RecordOutcome::Conflict(_)) => "conflict",
            Err(_) => "error",
        }
    }

    async fn stored(db: &Database) -> Vec<String> {
        let mut conn = db.conn().await.unwrap();
        webhook_events::table
            .select(webhook_events::delivery_id)
            .order(webhook_events::id)
            .load(&mut conn)
            .await
            .unwrap()
    }

    /// One statement answers each row as a single insert would, duplicates
    /// inside the batch included.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_answers_every_row_exactly() {
        let t = TestDatabase::new();
        let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
        let mut conn = db.conn().await.unwrap();
        let first = store_batch(&mut conn, &[event("old", r#"{"v":1}"#)]).await;
        assert_eq!(kind(&first[0]), "created");

        let batch = [
            event("a", r#"{"v":1}"#),
            event("old", r#"{"v":1}"#),  // redelivery of an earlier row
            event("old", r#"{"v": 1}"#), // same id, other bytes
            event("b", r#"{"v":2}"#),
            event("b", r#"{"v":2}"#), // redelivered within the batch
            event("c", r#"{"v":3}"#),
            event("c", r#"{"v":"x"}"#), // conflicting within the batch
        ];
        let outcomes = store_batch(&mut conn, &batch).await;
        let kinds: Vec<&str> = outcomes.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "created", "stored", "conflict", "created", "stored", "created", "conflict"
            ]
        );
        let ids: Vec<i64> = outcomes
            .iter()
            .map(|o| match o {
                Ok(
                    RecordOutcome::Created(r)
                    | RecordOutcome::AlreadyStored(r)
                    | RecordOutcome::Conflict(r),
                ) => r.id.0,
                Err(e) => panic!("{e}"),
            })
            .collect();
        assert_eq!(ids[3], ids[4], "the redelivery answers the row of its twin");
        assert_eq!(ids[5], ids[6]);
        assert_eq!(stored(&db).await, ["old", "a", "b", "c"]);
    }

    /// A row PostgreSQL refuses (a NUL byte cannot be stored as text) fails
    /// only itself: its neighbours are stored and acknowledged.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_row_fails_alone() {
        let t = TestDatabase::new();
        let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
        let mut conn = db.conn().await.unwrap();
        let batch = [
            event("a", r#"{"v":1}"#),
            event("bad", "{\"v\":\"\0\"}"),
            event("b", r#"{"v":2}"#),
        ];
        let kinds: Vec<&str> = store_batch(&mut conn, &batch)
            .await
            .iter()
            .map(kind)
            .collect();
        assert_eq!(kinds, ["created", "error", "created"]);
        assert_eq!(stored(&db).await, ["a", "b"]);
    }

    /// Concurrent requests through the batching task: every one answered,
    /// each delivery stored once.
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_requests_are_each_answered() {
        let t = TestDatabase::new();
        let db = Database::connect(t.url(), PoolOptions::default()).unwrap();
        let requests = (0..200).map(|i| {
            let db = db.clone();
            // Every delivery twice: one row each, one created and one stored.
            let delivery = format!("d{}", i / 2);
            async move { db.record_event(event(&delivery, r#"{"v":1}"#)).await }
        });
        let outcomes = futures_util::future::join_all(requests).await;
        let created = outcomes.iter().filter(|o| kind(o) == "created").count();
        let again = outcomes.iter().filter(|o| kind(o) == "stored").count();
        assert_eq!((created, again), (100, 100));
        assert_eq!(stored(&db).await.len(), 100);
    }

    #[test]
    fn batches_are_bounded_by_rows_and_bytes() {
        let pending = |bytes: usize| Pending {
            event: event("x", &" ".repeat(bytes)),
            answer: oneshot::channel().0,
        };
        let mut waiting: Vec<Pending> = (0..MAX_ROWS + 5).map(|_| pending(10)).collect();
        assert_eq!(take_batch(&mut waiting).len(), MAX_ROWS);
        assert_eq!(waiting.len(), 5);

        let mut waiting = vec![pending(MAX_BYTES + 1), pending(1), pending(1)];
        assert_eq!(
            take_batch(&mut waiting).len(),
            1,
            "a large delivery goes alone"
        );
        let mut waiting = vec![pending(MAX_BYTES / 2), pending(MAX_BYTES / 2), pending(1)];
        assert_eq!(take_batch(&mut waiting).len(), 2);
        assert_eq!(waiting.len(), 1);
    }
}
