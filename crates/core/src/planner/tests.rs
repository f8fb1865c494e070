use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::config::{Settings, parse};
use crate::ports::PoolState::Known;

const NOW: OffsetDateTime = datetime!(2026-11-28 12:00 UTC);

/// The planner with no pool paused (most tests); shadows the glob import.
fn plan_dispatch(
    settings: &Settings,
    open: &[OpenDispatch],
    pools: &BTreeMap<PoolKey, PoolState>,
    claimed: &HashSet<String>,
    limits: DispatchLimits,
    now: OffsetDateTime,
) -> DispatchPlan {
    super::plan_dispatch(
        settings,
        open,
        pools,
        &std::collections::BTreeSet::new(),
        claimed,
        limits,
        now,
    )
}

fn limits() -> DispatchLimits {
    DispatchLimits {
        reservation_timeout: Duration::from_secs(120),
        in_flight_for: Duration::from_secs(15),
        max_attempts: 5,
    }
}

/// Two items on one repository: "a" in pool ns/pa (capacity `cap_a`), "b" in ns/pb (capacity 1).
fn settings(cap_a: u32) -> Settings {
    let item = |name: &str, pipeline: &str, cap: u32| {
        json!({
            "name": name, "events": ["opened", "synchronize"], "full_repository_name": "o/r",
            "callback_url": "http://el:8080",
            "capacity": {"type": "ocp_tekton", "pipeline_name": pipeline, "max_capacity": cap, "namespace": "ns"},
        })
    };
    let v = json!({
        "dispatcher": {"items": [item("a", "pa", cap_a), item("b", "pb", 1)]},
        "security": {"verify_signatures": false},
    });
    let (raw, _) = parse(v).expect("parses");
    Settings::from_raw(raw).expect("valid")
}

/// Like [`settings`], with `capacity.dispatch_label` on pool "pa".
fn settings_labelled(cap_a: u32) -> Settings {
    let v = json!({
        "dispatcher": {"items": [{
            "name": "a", "events": ["opened", "synchronize"], "full_repository_name": "o/r",
            "callback_url": "http://el:8080",
            "capacity": {"type": "ocp_tekton", "pipeline_name": "pa", "max_capacity": cap_a,
                         "namespace": "ns", "dispatch_label": "example.com/dispatch"},
        }]},
        "security": {"verify_signatures": false},
    });
    let (raw, _) = parse(v).expect("parses");
    Settings::from_raw(raw).expect("valid")
}

fn pool(name: &str) -> PoolKey {
    PoolKey(format!("ns/{name}"))
}

fn pr(n: i64) -> PullRequestRef {
    PullRequestRef {
        repository: "o/r".into(),
        number: n,
    }
}

fn matched(id: i64, pr_number: i64, items: &[&str]) -> MatchedEvent {
    MatchedEvent {
        id: EventId(id),
        pr: pr(pr_number),
        items: items
            .iter()
            .map(|i| MatchedItem {
                item: (*i).into(),
                pool: pool(&format!("p{i}")),
                queued_label: format!("p{i}/queued"),
            })
            .collect(),
    }
}

fn queued(id: i64, event: i64, pr_number: i64, item: &str, position: i64) -> OpenDispatch {
    OpenDispatch {
        id: DispatchId(id),
        event_id: EventId(event),
        item: item.into(),
        pool: pool(&format!("p{item}")),
        pr: pr(pr_number),
        state: DispatchState::Queued,
        queue_position: position,
        attempts: 0,
        next_attempt_at: NOW,
        listener_event_id: None,
        trigger_started_at: None,
        triggered_at: None,
        has_newer: false,
        labels: Vec::new(),
        recent_triggers: Vec::new(),
    }
}

fn known(running: u32, seen: &[&str]) -> PoolState {
    PoolState::Known {
        running,
        runs: seen
            .iter()
            .map(|s| RunView {
                event_id: Some((*s).to_owned()),
                dispatch_id: None,
                created_at: Some(NOW - Duration::from_secs(3600)),
                ..RunView::default()
            })
            .collect(),
    }
}

fn pools(a: PoolState, b: PoolState) -> BTreeMap<PoolKey, PoolState> {
    BTreeMap::from([(pool("pa"), a), (pool("pb"), b)])
}

#[test]
fn unmatched_events_are_aborted_and_supersede_nothing() {
    let open = [queued(1, 10, 7, "a", 10)];
    let plan = plan_intake(&[matched(11, 7, &[])], &open);
    assert_eq!(plan.aborted, [EventId(11)]);
    assert!(plan.superseded.is_empty());
    assert!(plan.new_dispatches.is_empty());
    assert_eq!(plan.planned, [EventId(11)]);
}

#[test]
fn newer_event_supersedes_and_keeps_the_queue_position() {
    let open = [queued(1, 10, 7, "a", 4)];
    let plan = plan_intake(&[matched(12, 7, &["a", "b"])], &open);
    assert_eq!(plan.superseded, [DispatchId(1)]);
    let positions: Vec<_> = plan
        .new_dispatches
        .iter()
        .map(|d| (d.item.as_str(), d.queue_position, d.state))
        .collect();
    assert_eq!(
        positions,
        [
            ("a", 4, DispatchState::Queued),
            ("b", 12, DispatchState::Queued)
        ]
    );
}

#[test]
fn within_one_batch_only_the_newest_stays_queued() {
    let plan = plan_intake(
        &[
            matched(21, 3, &["a"]),
            matched(20, 3, &["a"]),
            matched(22, 4, &["a"]),
        ],
        &[],
    );
    let rows: Vec<_> = plan
        .new_dispatches
        .iter()
        .map(|d| (d.event_id.0, d.queue_position, d.state))
        .collect();
    assert_eq!(
        rows,
        [
            (20, 20, DispatchState::Cancelled),
            (21, 20, DispatchState::Queued),
            (22, 22, DispatchState::Queued)
        ]
    );
}

#[test]
fn an_event_planned_after_a_newer_one_never_wins() {
    // Ids are assigned at insert, commits can land in another order.
    let open = [queued(1, 11, 7, "a", 11)];
    let plan = plan_intake(&[matched(10, 7, &["a"])], &open);
    assert!(plan.superseded.is_empty(), "the newer queued event stays");
    assert_eq!(plan.new_dispatches[0].state, DispatchState::Cancelled);

    let mut running = queued(1, 11, 7, "a", 11);
    running.state = DispatchState::Triggered;
    let plan = plan_intake(&[matched(10, 7, &["a"])], &[running]);
    assert_eq!(
        plan.new_dispatches[0].state,
        DispatchState::Cancelled,
        "nor runs after it"
    );
}

#[test]
fn queued_dispatches_with_a_newer_sibling_are_superseded() {
    let s = settings(3);
    let mut stale = queued(1, 10, 7, "a", 10);
    stale.has_newer = true;
    let plan = plan_dispatch(
        &s,
        &[stale, queued(2, 11, 7, "a", 11)],
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Superseded { id: DispatchId(1) }]
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
}

#[test]
fn a_paused_pool_queues_and_confirms_but_triggers_nothing() {
    let s = settings(2);
    let open = [queued(1, 10, 1, "a", 10), queued(2, 20, 2, "b", 20)];
    let paused: std::collections::BTreeSet<PoolKey> = [s
        .item("a")
        .map(|i| i.pool.clone())
        .unwrap_or_else(|| panic!("item a"))]
    .into();
    let plan = super::plan_dispatch(
        &s,
        &open,
        &pools(known(0, &[]), known(0, &[])),
        &paused,
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.trigger,
        [DispatchId(2)],
        "only the pool that is not paused triggers"
    );
    let a = plan.usage.iter().find(|u| paused.contains(&u.pool));
    assert_eq!(
        a.map(|u| (u.paused, u.waiting, u.left_waiting())),
        Some((true, 1, 1)),
        "a paused pool's work is left waiting"
    );
}

#[test]
fn in_flight_dispatches_are_never_superseded() {
    let mut running = queued(1, 10, 7, "a", 10);
    running.state = DispatchState::Triggered;
    let plan = plan_intake(&[matched(11, 7, &["a"])], &[running]);
    assert!(plan.superseded.is_empty());
    assert_eq!(plan.new_dispatches[0].queue_position, 11);
}

#[test]
fn fills_free_slots_oldest_first() {
    let s = settings(2);
    let open = [
        queued(3, 30, 3, "a", 30),
        queued(1, 10, 1, "a", 10),
        queued(2, 20, 2, "a", 5),
    ];
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2), DispatchId(1)]);
    let a = plan.usage.iter().find(|u| u.pool == pool("pa"));
    assert_eq!(a.map(PoolUsage::left_waiting), Some(1));
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(1, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
    let a = plan.usage.iter().find(|u| u.pool == pool("pa"));
    assert_eq!(
        a.map(|u| (u.waiting, u.starting, u.left_waiting())),
        Some((3, 1, 2)),
        "one slot free: one of three starts, two are left waiting"
    );
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(5, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert!(plan.trigger.is_empty());
}

#[test]
fn unknown_pool_state_dispatches_nothing() {
    let s = settings(5);
    let open = [queued(1, 10, 1, "a", 10), queued(2, 11, 1, "b", 11)];
    let plan = plan_dispatch(
        &s,
        &open,
        &pools(
            PoolState::Unknown {
                reason: "api down".into(),
            },
            known(0, &[]),
        ),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(2)]);
    let a = plan
        .usage
        .iter()
        .find(|u| u.pool == pool("pa"))
        .expect("usage of pa");
    assert_eq!(a.blocked.as_deref(), Some("api down"));
    assert_eq!(a.oldest_waiting, Some(NOW));
}

#[test]
fn usage_reports_when_the_oldest_queued_dispatch_began_waiting() {
    let s = settings(5);
    let mut older = queued(1, 10, 1, "a", 10);
    older.next_attempt_at = NOW - Duration::from_secs(30);
    let mut newer = queued(2, 11, 2, "a", 11);
    newer.next_attempt_at = NOW - Duration::from_secs(10);
    let plan = plan_dispatch(
        &s,
        &[newer, older],
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    let a = plan
        .usage
        .iter()
        .find(|u| u.pool == pool("pa"))
        .expect("usage of pa");
    assert_eq!(a.waiting, 2);
    assert_eq!(a.oldest_waiting, Some(NOW - Duration::from_secs(30)));
}

#[test]
fn reservations_hold_slots_until_seen_or_expired() {
    let s = settings(1);
    let mut triggered = queued(1, 10, 1, "a", 10);
    triggered.state = DispatchState::Triggered;
    triggered.listener_event_id = Some("ev-1".into());
    triggered.triggered_at = Some(NOW - Duration::from_secs(10));
    let open = [triggered.clone(), queued(2, 11, 2, "a", 11)];

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert!(plan.trigger.is_empty(), "reservation holds the only slot");
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(110)));

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(0, &["ev-1"]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Confirmed {
            id: DispatchId(1),
            listener_event_id: None,
            run: None,
        }]
    );
    assert_eq!(
        plan.trigger,
        [DispatchId(2)],
        "seen and already finished: slot is free"
    );

    let plan = plan_dispatch(
        &s,
        &open,
        &pools(known(1, &["ev-1"]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert!(
        plan.trigger.is_empty(),
        "seen and running: counted once, by Kubernetes"
    );

    let mut old = triggered;
    old.triggered_at = Some(NOW - Duration::from_secs(121));
    let plan = plan_dispatch(
        &s,
        &[old, queued(2, 11, 2, "a", 11)],
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.trigger,
        [DispatchId(2)],
        "expired reservation frees the slot"
    );
}

#[test]
fn orphaned_triggers_hold_their_slot_until_the_reservation_ends() {
    let s = settings(1);
    let mut t = queued(1, 10, 1, "a", 10);
    t.state = DispatchState::Triggering;
    t.attempts = 1;
    let plan_at = |t: &OpenDispatch, pools: BTreeMap<PoolKey, PoolState>| {
        plan_dispatch(
            &s,
            &[t.clone(), queued(2, 11, 2, "a", 11)],
            &pools,
            &HashSet::new(),
            limits(),
            NOW,
        )
    };
    // Still in flight.
    t.trigger_started_at = Some(NOW - Duration::from_secs(5));
    let plan = plan_at(&t, pools(known(0, &[]), known(0, &[])));
    assert!(plan.outcomes.is_empty() && plan.trigger.is_empty());
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(10)));
    // An orphan: its slot stays reserved until the reservation ends.
    t.trigger_started_at = Some(NOW - Duration::from_secs(16));
    let plan = plan_at(&t, pools(known(0, &[]), known(0, &[])));
    assert!(plan.outcomes.is_empty() && plan.trigger.is_empty());
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(104)));
    // Reservation over and no run: retried.
    t.trigger_started_at = Some(NOW - Duration::from_secs(120));
    let plan = plan_at(&t, pools(known(0, &[]), known(0, &[])));
    assert!(matches!(
        plan.outcomes[..],
        [DispatchOutcome::Retry {
            id: DispatchId(1),
            attempt: 1,
            ..
        }]
    ));
    // ...but never while Kubernetes is unknown: its run may exist unseen.
    let down = PoolState::Unknown {
        reason: "api down".into(),
    };
    let plan = plan_at(&t, pools(down, known(0, &[])));
    assert!(plan.outcomes.is_empty() && plan.trigger.is_empty());
}

fn run(event_id: &str, dispatch_id: Option<i64>, created: OffsetDateTime) -> RunView {
    RunView {
        event_id: Some(event_id.to_owned()),
        dispatch_id: dispatch_id.map(|d| d.to_string()),
        created_at: Some(created),
        ..RunView::default()
    }
}

fn orphan(id: i64, pr_number: i64, started: OffsetDateTime) -> OpenDispatch {
    let mut d = queued(id, id * 10, pr_number, "a", id * 10);
    d.state = DispatchState::Triggering;
    d.attempts = 1;
    d.trigger_started_at = Some(started);
    d
}

#[test]
fn orphans_are_matched_one_to_one_to_unclaimed_runs_created_after_them() {
    let s = settings(3);
    let t1 = NOW - Duration::from_secs(60);
    let t2 = NOW - Duration::from_secs(50);
    let open = [orphan(1, 1, t1), orphan(2, 2, t2)];
    let runs = vec![
        run("before", None, t1 - Duration::from_secs(1)),
        run("claimed", None, t1 + Duration::from_secs(1)),
        run("r1", None, t1 + Duration::from_secs(2)),
        run("r2", None, t2 + Duration::from_secs(1)),
    ];
    let states = pools(Known { running: 2, runs }, known(0, &[]));
    let candidates = orphan_candidates(&s, &open, &states, limits(), NOW);
    assert_eq!(candidates, ["claimed", "r1", "r2"]);
    let claimed = HashSet::from(["claimed".to_owned()]);
    let plan = plan_dispatch(&s, &open, &states, &claimed, limits(), NOW);
    assert_eq!(
        plan.outcomes,
        [
            DispatchOutcome::Confirmed {
                id: DispatchId(1),
                listener_event_id: Some("r1".into()),
                run: None,
            },
            DispatchOutcome::Confirmed {
                id: DispatchId(2),
                listener_event_id: Some("r2".into()),
                run: None,
            },
        ]
    );
}

#[test]
fn a_dispatch_label_confirms_exactly_and_disables_inference() {
    let s = settings_labelled(2);
    let started = NOW - Duration::from_secs(60);
    let open = [orphan(1, 1, started), orphan(2, 2, started)];
    let runs = vec![
        run("ev-x", Some(2), started + Duration::from_secs(1)),
        run("ev-y", None, started + Duration::from_secs(1)),
    ];
    let states = pools(Known { running: 1, runs }, known(0, &[]));
    assert!(orphan_candidates(&s, &open, &states, limits(), NOW).is_empty());
    let plan = plan_dispatch(&s, &open, &states, &HashSet::new(), limits(), NOW);
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Confirmed {
            id: DispatchId(2),
            listener_event_id: Some("ev-x".into()),
            run: None,
        }],
        "the run without the label is someone else's"
    );
}

#[test]
fn queued_work_follows_its_item_to_a_new_pool() {
    let s = settings(1);
    let mut d = queued(1, 10, 1, "a", 10);
    d.pool = PoolKey("ns/old-pipeline".into());
    let plan = plan_dispatch(
        &s,
        &[d],
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(
        plan.outcomes,
        [DispatchOutcome::Moved {
            id: DispatchId(1),
            pool: pool("pa"),
            queued_label: "pa/queued".into()
        }]
    );
    assert_eq!(plan.trigger, [DispatchId(1)]);
}

#[test]
fn trigger_outcomes_follow_the_answer() {
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff_base: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
    };
    let id = DispatchId(7);
    assert!(matches!(
        trigger_outcome(id, 1, Ok(None), policy, NOW),
        DispatchOutcome::Triggered {
            listener_event_id: None,
            ..
        }
    ));
    for lost in [
        TriggerError::Timeout,
        TriggerError::Unanswered("reset".into()),
    ] {
        assert!(
            matches!(
                trigger_outcome(id, 3, Err(lost), policy, NOW),
                DispatchOutcome::Unanswered { attempt: 3, .. }
            ),
            "a lost answer is never retried at once, even on the last attempt"
        );
    }
    let refused = || TriggerError::Rejected {
        status: 503,
        body: "busy".into(),
    };
    assert!(matches!(
        trigger_outcome(id, 2, Err(refused()), policy, NOW),
        DispatchOutcome::Retry { next_attempt_at, .. } if next_attempt_at > NOW
    ));
    assert!(matches!(
        trigger_outcome(id, 3, Err(refused()), policy, NOW),
        DispatchOutcome::Failed { attempt: 3, .. }
    ));
    assert!(matches!(
        trigger_outcome(
            id,
            1,
            Err(TriggerError::Transport("refused".into())),
            policy,
            NOW
        ),
        DispatchOutcome::Retry { .. }
    ));
}

#[test]
fn backoff_and_vanished_items() {
    let s = settings(3);
    let mut later = queued(1, 10, 1, "a", 10);
    later.next_attempt_at = NOW + Duration::from_secs(4);
    let gone = queued(2, 11, 2, "zzz", 11);
    let plan = plan_dispatch(
        &s,
        &[later, gone, queued(3, 12, 3, "a", 12)],
        &pools(known(0, &[]), known(0, &[])),
        &HashSet::new(),
        limits(),
        NOW,
    );
    assert_eq!(plan.trigger, [DispatchId(3)]);
    assert_eq!(plan.next_wakeup, Some(NOW + Duration::from_secs(4)));
    assert!(matches!(
        plan.outcomes[..],
        [DispatchOutcome::Failed {
            id: DispatchId(2),
            ..
        }]
    ));
}

// ---- property tests over a small in-memory model of the store ----

#[derive(Debug, Clone)]
enum Step {
    /// A new event for PR `pr` (1..=5) matching items by mask (bit0 = a, bit1 = b; 0 = unmatched).
    Event { pr: i64, mask: u8 },
    /// `n` running PipelineRuns of pool a finish (pool b's one always does).
    Finish { n: u32 },
    /// A dispatch pass.
    Pass,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (1i64..=5, 0u8..4).prop_map(|(pr, mask)| Step::Event { pr, mask }),
        (0u32..3).prop_map(|n| Step::Finish { n }),
        Just(Step::Pass),
    ]
}

#[derive(Default)]
struct Model {
    next_event: i64,
    next_dispatch: i64,
    dispatches: BTreeMap<i64, OpenDispatch>,
    events: Vec<MatchedEvent>,
    unplanned: Vec<MatchedEvent>,
    running: BTreeMap<PoolKey, u32>,
    dispatched: Vec<OpenDispatch>,
}

impl Model {
    fn open(&self) -> Vec<OpenDispatch> {
        self.dispatches
            .values()
            .filter(|d| d.state == DispatchState::Queued)
            .map(|d| {
                let mut d = d.clone();
                d.has_newer = self
                    .dispatches
                    .values()
                    .any(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id);
                d
            })
            .collect()
    }

    fn pass(&mut self, s: &Settings) -> Result<(), TestCaseError> {
        let plan = plan_intake(&self.unplanned, &self.open());
        self.unplanned.clear();
        for id in &plan.superseded {
            let d = self
                .dispatches
                .get_mut(&id.0)
                .ok_or_else(|| TestCaseError::fail("unknown dispatch"))?;
            prop_assert_eq!(
                d.state,
                DispatchState::Queued,
                "only queued dispatches are superseded"
            );
            d.state = DispatchState::Cancelled;
        }
        for nd in plan.new_dispatches {
            self.next_dispatch += 1;
            let d = OpenDispatch {
                id: DispatchId(self.next_dispatch),
                event_id: nd.event_id,
                item: nd.item,
                pool: nd.pool,
                pr: nd.pr,
                state: nd.state,
                queue_position: nd.queue_position,
                attempts: 0,
                next_attempt_at: NOW,
                listener_event_id: None,
                trigger_started_at: None,
                triggered_at: None,
                has_newer: false,
                labels: Vec::new(),
                recent_triggers: Vec::new(),
            };
            self.dispatches.insert(d.id.0, d);
        }
        let states: BTreeMap<PoolKey, PoolState> = s
            .pools
            .keys()
            .map(|k| (k.clone(), known(*self.running.get(k).unwrap_or(&0), &[])))
            .collect();
        let open = self.open();
        let plan = plan_dispatch(s, &open, &states, &HashSet::new(), limits(), NOW);

        // Never more than free capacity per pool.
        let mut per_pool: HashMap<&PoolKey, u32> = HashMap::new();
        for id in &plan.trigger {
            *per_pool.entry(&self.dispatches[&id.0].pool).or_default() += 1;
        }
        for (key, n) in &per_pool {
            let free = s.pools[*key]
                .max_capacity
                .saturating_sub(*self.running.get(*key).unwrap_or(&0));
            prop_assert!(*n <= free, "pool {key}: dispatched {n} with {free} free");
        }
        // Free slots go to the oldest waiting work of the pool, and none stay idle while work waits.
        for key in s.pools.keys() {
            let mut waiting: Vec<&OpenDispatch> = open.iter().filter(|d| &d.pool == key).collect();
            waiting.sort_by_key(|d| (d.queue_position, d.id));
            let chosen: Vec<DispatchId> = plan
                .trigger
                .iter()
                .copied()
                .filter(|id| &self.dispatches[&id.0].pool == key)
                .collect();
            let free = s.pools[key]
                .max_capacity
                .saturating_sub(*self.running.get(key).unwrap_or(&0))
                as usize;
            prop_assert_eq!(chosen.len(), free.min(waiting.len()));
            let expected: Vec<DispatchId> =
                waiting.iter().take(chosen.len()).map(|d| d.id).collect();
            prop_assert_eq!(chosen, expected);
        }
        for id in plan.trigger {
            let d = self
                .dispatches
                .get_mut(&id.0)
                .ok_or_else(|| TestCaseError::fail("unknown dispatch"))?;
            d.state = DispatchState::Confirmed;
            *self.running.entry(d.pool.clone()).or_default() += 1;
            self.dispatched.push(d.clone());
        }
        Ok(())
    }
}

proptest! {
    #[test]
    fn planner_properties(steps in proptest::collection::vec(step(), 1..60), cap in 1u32..4) {
        let s = settings(cap);
        let mut m = Model::default();
        for st in steps {
            match st {
                Step::Event { pr: number, mask } => {
                    m.next_event += 1;
                    let items: Vec<&str> =
                        [("a", 1u8), ("b", 2u8)].iter().filter(|(_, bit)| mask & bit != 0).map(|(i, _)| *i).collect();
                    let e = matched(m.next_event, number, &items);
                    m.events.push(e.clone());
                    m.unplanned.push(e);
                }
                Step::Finish { n } => {
                    let r = m.running.entry(pool("pa")).or_default();
                    *r = r.saturating_sub(n);
                    m.running.insert(pool("pb"), 0);
                }
                Step::Pass => m.pass(&s)?,
            }
        }
        m.pass(&s)?;

        // At most one queued dispatch per (PR, item), and it belongs to the newest matching event.
        let mut newest: HashMap<(i64, String), EventId> = HashMap::new();
        for e in &m.events {
            for it in &e.items {
                newest.insert((e.pr.number, it.item.clone()), e.id);
            }
        }
        let mut queued_keys = HashSet::new();
        for d in m.dispatches.values().filter(|d| d.state == DispatchState::Queued) {
            prop_assert!(queued_keys.insert((d.pr.number, d.item.clone())), "two queued for one key");
            prop_assert_eq!(newest[&(d.pr.number, d.item.clone())], d.event_id);
        }
        // An older event is never dispatched after a newer one of the same key.
        for d in &m.dispatched {
            let newer_first = m.dispatched.iter().any(|o| o.pr == d.pr && o.item == d.item && o.event_id > d.event_id && o.id < d.id);
            prop_assert!(!newer_first, "older event dispatched after a newer one");
        }
        // Unmatched events never cancel anything: every cancellation has a newer matching event.
        for d in m.dispatches.values().filter(|d| d.state == DispatchState::Cancelled) {
            let replaced = m.events.iter().any(|e| e.pr == d.pr && e.id > d.event_id && e.items.iter().any(|i| i.item == d.item));
            prop_assert!(replaced, "dispatch {:?} cancelled without a newer matching event", d.id);
        }
        // A superseding dispatch keeps its PR's place: its position is an earlier event of the same key.
        for d in m.dispatches.values() {
            prop_assert!(d.queue_position <= d.event_id.0);
            let same_key = m.events.iter().any(|e| e.id.0 == d.queue_position && e.pr == d.pr && e.items.iter().any(|i| i.item == d.item));
            prop_assert!(same_key, "position {} is not an event of {:?}", d.queue_position, d.pr);
        }
    }
}

// ---- property tests of open triggers: lost answers (item 3) and failing closed (item 5) ----

/// One dispatch of pool "pa" in a random state, and whether its run exists.
#[derive(Debug, Clone)]
struct OpenCase {
    state: u8,
    started_ago: u64,
    run: Option<(bool, u64)>,
}

fn open_case() -> impl Strategy<Value = OpenCase> {
    (
        0u8..3,
        0u64..200,
        proptest::option::of((any::<bool>(), 0u64..200)),
    )
        .prop_map(|(state, started_ago, run)| OpenCase {
            state,
            started_ago,
            run,
        })
}

proptest! {
    #[test]
    fn open_triggers_are_settled_safely(
        cases in proptest::collection::vec(open_case(), 0..8),
        foreign in proptest::collection::vec(0u64..200, 0..4),
        cap in 1u32..6,
        running in 0u32..4,
        labelled in any::<bool>(),
        known_state in any::<bool>(),
    ) {
        let s = if labelled { settings_labelled(cap) } else { settings(cap) };
        let secs = Duration::from_secs;
        let mut open = Vec::new();
        let mut runs = Vec::new();
        for (i, c) in cases.iter().enumerate() {
            let id = i as i64 + 1;
            let started = NOW - secs(c.started_ago);
            let mut d = queued(id, id, id, "a", id);
            match c.state {
                0 => {}
                1 => {
                    d.state = DispatchState::Triggering;
                    d.attempts = 1;
                    d.trigger_started_at = Some(started);
                }
                _ => {
                    d.state = DispatchState::Triggered;
                    d.attempts = 1;
                    d.trigger_started_at = Some(started);
                    d.triggered_at = Some(started);
                    d.listener_event_id = Some(format!("ev-{id}"));
                }
            }
            // A run exists only for a sent trigger, created after it was sent.
            if let (Some((with_label, after)), 1 | 2) = (c.run, c.state) {
                let created = started + secs(after.min(c.started_ago));
                runs.push(RunView {
                    event_id: Some(format!("ev-{id}")),
                    dispatch_id: (labelled && with_label).then(|| id.to_string()),
                    created_at: Some(created),
                    ..RunView::default()
                });
            }
            open.push(d);
        }
        for (n, ago) in foreign.iter().enumerate() {
            runs.push(run(&format!("foreign-{n}"), None, NOW - secs(*ago)));
        }
        let state = if known_state {
            Known { running, runs: runs.clone() }
        } else {
            PoolState::Unknown { reason: "api down".into() }
        };
        let states = BTreeMap::from([(pool("pa"), state)]);
        let plan = plan_dispatch(&s, &open, &states, &HashSet::new(), limits(), NOW);
        let by_id = |id: DispatchId| &open[(id.0 - 1) as usize];

        if !known_state {
            prop_assert!(plan.trigger.is_empty(), "nothing dispatched while Kubernetes is unknown");
            prop_assert!(
                plan.outcomes.iter().all(|o| !matches!(o, DispatchOutcome::Confirmed { .. } | DispatchOutcome::Retry { .. })),
                "nothing confirmed or retried blind: {:?}", plan.outcomes
            );
        }
        let mut confirmed_ids = HashSet::new();
        let mut settled = HashSet::new();
        for o in &plan.outcomes {
            let d = by_id(o.id());
            match o {
                DispatchOutcome::Retry { .. } => {
                    prop_assert_eq!(d.state, DispatchState::Triggering);
                    let started = d.trigger_started_at.unwrap_or(NOW);
                    prop_assert!(started + limits().reservation_timeout <= NOW, "an orphan is retried only after its reservation");
                    let own = runs.iter().any(|r| r.dispatch_id.as_deref() == Some(&d.id.to_string()));
                    prop_assert!(!own, "an orphan whose labelled run exists is never retried");
                }
                DispatchOutcome::Confirmed { listener_event_id, .. } => {
                    if let Some(ev) = listener_event_id {
                        prop_assert!(confirmed_ids.insert(ev.clone()), "one run confirms one dispatch");
                        prop_assert!(runs.iter().any(|r| r.event_id.as_deref() == Some(ev.as_str())));
                    }
                    settled.insert(d.id);
                }
                _ => {}
            }
        }
        // Capacity: new triggers fit beside running runs and every open
        // trigger that is not settled (reserved), whatever happened to answers.
        let reserved = open
            .iter()
            .filter(|d| !settled.contains(&d.id))
            .filter(|d| match d.state {
                DispatchState::Triggering => true,
                DispatchState::Triggered => d.triggered_at.is_some_and(|t| t + limits().reservation_timeout > NOW),
                _ => false,
            })
            .count() as u32;
        prop_assert!(
            plan.trigger.len() as u32 + running + reserved <= cap.max(running + reserved),
            "over capacity: {} new, {running} running, {reserved} reserved, cap {cap}", plan.trigger.len()
        );
    }
}

/// Two repositories sharing pool ns/shared (capacity `cap`): items "ra"
/// (o/a) and "rb" (o/b), with `fairness` (and weights) and priority labels.
fn shared_settings(cap: u32, capacity_extra: &serde_json::Value) -> Settings {
    let item = |name: &str, repo: &str| {
        let mut capacity = json!({"type": "ocp_tekton", "pipeline_name": "shared",
                                  "max_capacity": cap, "namespace": "ns"});
        if let (Some(c), Some(extra)) = (capacity.as_object_mut(), capacity_extra.as_object()) {
            c.extend(extra.clone());
        }
        json!({
            "name": name, "events": ["opened"], "full_repository_name": repo,
            "callback_url": "http://el:8080", "capacity": capacity,
        })
    };
    let v = json!({
        "dispatcher": {
            "items": [item("ra", "o/a"), item("rb", "o/b")],
            "priority_labels": [{"label": "priority/critical", "priority": 100}],
        },
        "security": {"verify_signatures": false},
    });
    let (raw, _) = parse(v).expect("parses");
    Settings::from_raw(raw).expect("valid")
}

fn shared_queued(id: i64, repo: &str) -> OpenDispatch {
    let item = if repo == "o/a" { "ra" } else { "rb" };
    OpenDispatch {
        pool: pool("shared"),
        pr: PullRequestRef {
            repository: repo.into(),
            number: id,
        },
        ..queued(id, id, id, item, id)
    }
}

/// Repository A has 10 PRs queued before B's 2: with capacity 1 draining one
/// by one, round robin serves B second and fourth; FIFO only after A's ten.
#[test]
fn round_robin_shares_a_pool_between_repositories() {
    fn drain(s: &Settings) -> Vec<i64> {
        let mut open: Vec<OpenDispatch> = (1..=10)
            .map(|i| shared_queued(i, "o/a"))
            .chain([shared_queued(11, "o/b"), shared_queued(12, "o/b")])
            .collect();
        let mut order = Vec::new();
        let mut clock = NOW;
        while !open.is_empty() {
            let states = BTreeMap::from([(pool("shared"), known(0, &[]))]);
            let plan = plan_dispatch(s, &open, &states, &HashSet::new(), limits(), clock);
            assert_eq!(plan.trigger.len(), 1, "capacity 1");
            let id = plan.trigger[0];
            // Triggered, run, finished: it leaves the open work; its start is
            // what the store reports as the repository's latest trigger.
            let i = open.iter().position(|d| d.id == id).expect("open");
            let done = open.remove(i);
            for d in open
                .iter_mut()
                .filter(|d| d.pr.repository == done.pr.repository)
            {
                d.recent_triggers.insert(0, clock);
            }
            clock += Duration::from_secs(60);
            order.push(id.0);
        }
        order
    }
    let rr = shared_settings(1, &json!({"fairness": "round_robin_repository"}));
    let got = drain(&rr);
    assert_eq!(got[..4], [1, 11, 2, 12]);
    let fifo = shared_settings(1, &json!({}));
    assert_eq!(drain(&fifo), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let weighted = shared_settings(
        1,
        &json!({"fairness": "round_robin_repository", "weights": {"o/a": 3}}),
    );
    assert_eq!(drain(&weighted)[..8], [1, 2, 3, 11, 4, 5, 6, 12]);
}

/// A PR labelled with a priority goes first among the waiting, but running
/// and reserved work keeps its slots: capacity is never exceeded.
#[test]
fn priorities_jump_the_queue_without_preempting() {
    let s = shared_settings(3, &json!({"fairness": "round_robin_repository"}));
    let mut open: Vec<OpenDispatch> = (1..=4).map(|i| shared_queued(i, "o/a")).collect();
    let mut urgent = shared_queued(9, "o/b");
    urgent.labels = vec!["priority/critical".into()];
    open.push(urgent);
    // One triggered (reserved), one running: one slot left.
    let mut reserved = shared_queued(20, "o/a");
    reserved.state = DispatchState::Triggered;
    reserved.triggered_at = Some(NOW);
    open.push(reserved);
    let states = BTreeMap::from([(pool("shared"), known(1, &[]))]);
    let plan = plan_dispatch(&s, &open, &states, &HashSet::new(), limits(), NOW);
    assert_eq!(plan.trigger, [DispatchId(9)]);
    assert!(plan.outcomes.is_empty(), "nothing running is touched");
    // Full: the priority PR waits like everyone else.
    let full = BTreeMap::from([(pool("shared"), known(2, &[]))]);
    assert_eq!(
        plan_dispatch(&s, &open, &full, &HashSet::new(), limits(), NOW).usage[0].reserved,
        1
    );
    let plan = plan_dispatch(&s, &open, &full, &HashSet::new(), limits(), NOW);
    assert!(plan.trigger.is_empty());
    // A priority PR waiting for a retry keeps its place but is not due yet.
    open[4].next_attempt_at = NOW + Duration::from_secs(30);
    let plan = plan_dispatch(&s, &open, &states, &HashSet::new(), limits(), NOW);
    assert_eq!(plan.trigger, [DispatchId(1)]);
}

/// Item "a" cancels superseded runs, item "b" cancels on close; "c" neither.
fn settings_cancelling() -> Settings {
    let item = |name: &str, pipeline: &str, extra: serde_json::Value| {
        let mut v = json!({
            "name": name, "events": ["opened", "synchronize"], "full_repository_name": "o/r",
            "callback_url": "http://el:8080",
            "capacity": {"type": "ocp_tekton", "pipeline_name": pipeline, "max_capacity": 1,
                         "namespace": "ns", "dispatch_label": "example.com/dispatch"},
        });
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let v = json!({
        "dispatcher": {"items": [
            item("a", "pa", json!({"cancel_superseded": true})),
            item("b", "pb", json!({"cancel_on_close": true})),
            item("c", "pc", json!({})),
        ]},
        "security": {"verify_signatures": false},
    });
    let (raw, unknown) = parse(v).expect("parses");
    assert!(unknown.is_empty(), "{unknown:?}");
    Settings::from_raw(raw).expect("valid")
}

fn candidate(
    id: i64,
    item: &str,
    state: DispatchState,
    newer: Option<i64>,
    closed: Option<i64>,
) -> CancelCandidate {
    CancelCandidate {
        id: DispatchId(id),
        event_id: EventId(id),
        item: item.to_owned(),
        pool: pool(&format!("p{item}")),
        state,
        newer_event: newer.map(EventId),
        closed_by: closed.map(EventId),
    }
}

#[test]
fn no_cancel_query_without_opt_in() {
    let pools = BTreeMap::new();
    assert_eq!(cancel_query(&settings(1), &pools), None);
    let s = settings_cancelling();
    let mut pools = BTreeMap::new();
    pools.insert(
        pool("pa"),
        Known {
            running: 1,
            runs: vec![
                RunView {
                    event_id: Some("ev-1".to_owned()),
                    dispatch_id: Some("11".to_owned()),
                    ..RunView::default()
                },
                RunView {
                    event_id: Some("ev-0".to_owned()),
                    finished: true,
                    ..RunView::default()
                },
            ],
        },
    );
    pools.insert(
        pool("pb"),
        PoolState::Unknown {
            reason: "down".to_owned(),
        },
    );
    let q = cancel_query(&s, &pools).expect("opted in");
    assert_eq!(q.superseded_items, vec!["a".to_owned()]);
    assert_eq!(q.close_items, vec!["b".to_owned()]);
    assert_eq!(q.running_event_ids, vec!["ev-1".to_owned()]);
    assert_eq!(q.running_dispatch_ids, vec![11]);
}

#[test]
fn run_cancels_follow_each_items_opt_in() {
    use DispatchState::{Confirmed, Queued, Triggered, Triggering};
    let s = settings_cancelling();
    let out = plan_run_cancels(
        &s,
        &[
            // cancel_superseded: in flight and running work, not queued (newest-wins does that).
            candidate(1, "a", Confirmed, Some(5), None),
            candidate(2, "a", Triggering, Some(5), None),
            candidate(3, "a", Queued, Some(5), None),
            // ... and not on close.
            candidate(4, "a", Triggered, None, Some(9)),
            // cancel_on_close: queued and running, not superseded.
            candidate(6, "b", Queued, None, Some(9)),
            candidate(7, "b", Confirmed, None, Some(9)),
            candidate(8, "b", Confirmed, Some(12), None),
            // A close before the event (a reopened PR) cancels nothing.
            candidate(10, "b", Queued, None, Some(9)),
            // Neither flag.
            candidate(11, "c", Confirmed, Some(12), Some(13)),
            // Unknown item.
            candidate(12, "gone", Confirmed, Some(13), Some(13)),
        ],
    );
    let got: Vec<(i64, CancelReason, i64)> = out
        .iter()
        .map(|o| match o {
            DispatchOutcome::CancelRun {
                id,
                reason,
                by_event,
                target,
            } => {
                assert_eq!(target.namespace, "ns");
                assert_eq!(
                    target.dispatch_label.as_deref(),
                    Some("example.com/dispatch")
                );
                (id.0, *reason, by_event.0)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, CancelReason::Superseded, 5),
            (2, CancelReason::Superseded, 5),
            (6, CancelReason::Closed, 9),
            (7, CancelReason::Closed, 9),
        ]
    );
}
