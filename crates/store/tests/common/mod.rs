//! Builders shared by the store's test binaries.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use dispatcher_core::config::PoolKey;
use dispatcher_core::domain::{DispatchState, EventId, PullRequestRef};
use dispatcher_core::intake::NewEvent;
use dispatcher_core::planner::NewDispatch;
use dispatcher_core::ports::RecordOutcome;
use dispatcher_store::{Database, LeaderOptions, LeaderSession};

/// A `pull_request` `opened` delivery of `o/r#pr`.
pub fn event(delivery: &str, pr: i64, payload: &str) -> NewEvent {
    NewEvent {
        delivery_id: delivery.to_owned(),
        event_type: "pull_request".to_owned(),
        action: "opened".to_owned(),
        repository_full_name: "o/r".to_owned(),
        pull_request_number: pr,
        labels: payload_labels(payload),
        payload: payload.to_owned(),
        headers: vec![
            ("X-GitHub-Event".to_owned(), "pull_request".to_owned()),
            ("X-GitHub-Delivery".to_owned(), delivery.to_owned()),
        ],
    }
}

/// The label names of a payload's `pull_request.labels` list, as intake
/// extracts them (payloads here are fragments, not whole deliveries).
fn payload_labels(payload: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    let labels = value.get("pull_request")?.get("labels")?.as_array()?;
    Some(
        labels
            .iter()
            .filter_map(|l| l.get("name")?.as_str().map(str::to_owned))
            .collect(),
    )
}

/// A dispatch of `event` for `item` in pool `ns/p`, queued at the event's place.
pub fn new_dispatch(event: EventId, pr: i64, item: &str, state: DispatchState) -> NewDispatch {
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
        state,
    }
}

/// The id of a delivery that made a new row (panics on anything else).
pub fn created(outcome: RecordOutcome) -> EventId {
    match outcome {
        RecordOutcome::Created(e) => e.id,
        other => panic!("expected a new row, got {other:?}"),
    }
}

/// This database's leader session (labels on or off); panics if another
/// holds the lock.
pub async fn lead(database: &Database, labels: bool) -> LeaderSession {
    database
        .try_lead(labels, LeaderOptions::default())
        .await
        .unwrap()
        .expect("leader")
}
