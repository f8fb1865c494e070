#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures_executor::block_on;
use time::OffsetDateTime;

use super::*;
use crate::config::{RawConfig, Settings};

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn delivery(id: i64, guid: &str, event: &str, status_code: u16) -> HookDelivery {
    HookDelivery {
        id,
        guid: guid.to_owned(),
        delivered_at: t0() + Duration::from_secs(u64::try_from(id).unwrap()),
        redelivery: false,
        status_code,
        event: event.to_owned(),
        action: Some("opened".to_owned()),
    }
}

fn events() -> BTreeSet<String> {
    ["pull_request", "push"].map(str::to_owned).into()
}

fn set(guids: &[&str]) -> HashSet<String> {
    guids.iter().map(|g| (*g).to_owned()).collect()
}

fn verdicts(plan: &HookPlan) -> Vec<(i64, Verdict)> {
    plan.steps
        .iter()
        .map(|s| (s.delivery.id, s.verdict))
        .collect()
}

#[test]
fn failed_deliveries_the_database_lacks_are_redelivered_oldest_first() {
    let listed = vec![
        delivery(9, "g9", "pull_request", 502),
        delivery(8, "g8", "ping", 0),
        delivery(7, "g7", "push", 200),
        delivery(6, "g6", "push", 0),
        delivery(5, "g5", "pull_request", 0),
        delivery(4, "g4", "pull_request", 502),
        delivery(3, "g3", "issues", 0),
        delivery(2, "g2", "pull_request", 202),
        delivery(1, "g1", "pull_request", 0),
    ];
    let plan = plan_hook(
        &listed,
        None,
        t0(),
        &set(&["g4"]),
        &set(&["g5"]),
        &events(),
        10,
    );
    use Verdict::*;
    assert_eq!(
        verdicts(&plan),
        [
            (1, Redeliver),
            // A 2xx pull request the database lacks was lost after all.
            (2, Redeliver),
            (3, NotAllowed),
            (4, Held),
            (5, Asked),
            (6, Redeliver),
            (7, Succeeded),
            (8, NotAllowed),
            (9, Redeliver),
        ]
    );
    assert!(!plan.truncated);
    assert_eq!(plan.redeliveries().count(), 4);
}

#[test]
fn the_cursor_the_window_attempts_and_the_budget_bound_a_plan() {
    let mut retried = delivery(6, "g3", "pull_request", 0);
    retried.redelivery = true;
    let listed = vec![
        delivery(7, "g7", "pull_request", 0),
        retried,
        delivery(5, "g5", "pull_request", 0),
        delivery(4, "g4", "pull_request", 0),
        delivery(3, "g3", "pull_request", 0),
        delivery(2, "g2", "pull_request", 0),
        delivery(1, "g1", "pull_request", 0),
    ];
    let none = HashSet::new();
    use Verdict::*;
    // Only after the cursor (2) and inside the window (from 3 on: both apply).
    let plan = plan_hook(
        &listed,
        Some(2),
        t0() + Duration::from_secs(3),
        &none,
        &none,
        &events(),
        10,
    );
    assert_eq!(
        verdicts(&plan),
        [
            (3, Redeliver),
            (4, Redeliver),
            (5, Redeliver),
            (6, SameGuid),
            (7, Redeliver)
        ]
    );
    let plan = plan_hook(
        &listed,
        None,
        t0() + Duration::from_secs(4),
        &none,
        &none,
        &events(),
        10,
    );
    assert_eq!(plan.steps[0].delivery.id, 4);
    // The budget stops before the first redelivery it cannot pay for.
    let plan = plan_hook(&listed, Some(2), t0(), &none, &none, &events(), 2);
    assert_eq!(verdicts(&plan), [(3, Redeliver), (4, Redeliver)]);
    assert!(plan.truncated);
    let plan = plan_hook(
        &listed,
        Some(2),
        t0(),
        &set(&["g3", "g4", "g5"]),
        &none,
        &events(),
        0,
    );
    assert_eq!(
        verdicts(&plan),
        [(3, Held), (4, Held), (5, Held), (6, SameGuid)]
    );
    assert!(plan.truncated);
}

/// GitHub in memory: deliveries per hook, newest first, pages of `page`.
#[derive(Default)]
struct Github {
    deliveries: BTreeMap<String, Vec<HookDelivery>>,
    page: usize,
    asked: Mutex<Vec<(String, i64)>>,
    fail: Mutex<Option<NotifyError>>,
    listings: Mutex<u32>,
}

impl HookDeliveries for Github {
    async fn list_deliveries(
        &self,
        hook: &HookRef,
        _per_page: u32,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, NotifyError> {
        *self.listings.lock().unwrap() += 1;
        let mut all = self
            .deliveries
            .get(&hook.to_string())
            .cloned()
            .unwrap_or_default();
        all.sort_by_key(|d| std::cmp::Reverse(d.id));
        let start: usize = cursor.map_or(0, |c| c.parse().unwrap());
        let end = (start + self.page).min(all.len());
        Ok(DeliveryPage {
            deliveries: all[start..end].to_vec(),
            next: (end < all.len()).then(|| end.to_string()),
        })
    }

    async fn redeliver(&self, hook: &HookRef, delivery_id: i64) -> Result<(), NotifyError> {
        if let Some(e) = self.fail.lock().unwrap().take() {
            return Err(e);
        }
        self.asked
            .lock()
            .unwrap()
            .push((hook.to_string(), delivery_id));
        Ok(())
    }
}

#[derive(Default)]
struct Store {
    cursors: Mutex<BTreeMap<String, i64>>,
    held: HashSet<String>,
    asked: Mutex<HashSet<String>>,
}

impl CatchUpStore for Store {
    async fn cursor(&self, hook: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.cursors.lock().unwrap().get(hook).copied())
    }
    async fn save_cursor(&self, hook: &str, id: i64) -> Result<(), StoreError> {
        let mut c = self.cursors.lock().unwrap();
        let e = c.entry(hook.to_owned()).or_insert(id);
        *e = (*e).max(id);
        Ok(())
    }
    async fn held(&self, guids: &[String]) -> Result<HashSet<String>, StoreError> {
        Ok(guids
            .iter()
            .filter(|g| self.held.contains(*g))
            .cloned()
            .collect())
    }
    async fn asked(&self, guids: &[String]) -> Result<HashSet<String>, StoreError> {
        let a = self.asked.lock().unwrap();
        Ok(guids.iter().filter(|g| a.contains(*g)).cloned().collect())
    }
    async fn claim(&self, _: &str, guid: &str, _: i64, _: &str) -> Result<bool, StoreError> {
        Ok(self.asked.lock().unwrap().insert(guid.to_owned()))
    }
    async fn release(&self, guid: &str) -> Result<(), StoreError> {
        self.asked.lock().unwrap().remove(guid);
        Ok(())
    }
}

fn policy(max_per_pass: u32) -> CatchUpPolicy {
    CatchUpPolicy {
        hooks: vec![HookRef::repository("o/r", 1), HookRef::organization("o", 2)],
        interval: Duration::from_secs(60),
        max_per_pass,
        max_age: Duration::from_secs(3600),
        events: events(),
    }
}

#[test]
fn passes_ask_each_missed_guid_once_and_resume_from_the_cursor() {
    let repo: Vec<_> = (1..=25)
        .map(|i| delivery(i, &format!("r{i}"), "pull_request", 0))
        .collect();
    let org = vec![
        delivery(100, "o1", "pull_request", 0),
        delivery(101, "held", "pull_request", 502),
    ];
    let github = Github {
        deliveries: BTreeMap::from([
            ("repos/o/r/hooks/1".to_owned(), repo),
            ("orgs/o/hooks/2".to_owned(), org),
        ]),
        page: 10,
        ..Github::default()
    };
    let store = Store {
        held: set(&["held"]),
        ..Store::default()
    };
    let now = t0() + Duration::from_secs(200);
    // 20 of the budget go to the repository's oldest, nothing to the org.
    let report = block_on(run_pass(&github, &store, &policy(20), now));
    assert_eq!(report.redelivered.len(), 20);
    assert_eq!(report.redelivered[0].guid, "r1");
    assert_eq!(report.redelivered[0].hook, "repos/o/r/hooks/1");
    assert!(report.truncated);
    assert_eq!(report.listed, 25 + 2, "three pages, then the org's one");
    assert_eq!(
        store.cursors.lock().unwrap().get("repos/o/r/hooks/1"),
        Some(&20)
    );
    assert_eq!(store.cursors.lock().unwrap().get("orgs/o/hooks/2"), None);
    // The next pass takes the rest and the org's missed one, never the held one.
    let report = block_on(run_pass(&github, &store, &policy(20), now));
    let guids: Vec<_> = report.redelivered.iter().map(|r| r.guid.as_str()).collect();
    assert_eq!(guids, ["r21", "r22", "r23", "r24", "r25", "o1"]);
    assert_eq!(
        store.cursors.lock().unwrap().get("orgs/o/hooks/2"),
        Some(&101)
    );
    // Listing stops at the cursor: one page per hook, nothing asked.
    *github.listings.lock().unwrap() = 0;
    let report = block_on(run_pass(&github, &store, &policy(20), now));
    assert!(report.redelivered.is_empty());
    assert_eq!(*github.listings.lock().unwrap(), 2);
    assert_eq!(github.asked.lock().unwrap().len(), 26, "each once");
}

#[test]
fn a_failed_request_is_asked_again_and_a_rate_limit_stops_the_pass() {
    let repo: Vec<_> = (1..=3)
        .map(|i| delivery(i, &format!("r{i}"), "pull_request", 0))
        .collect();
    let github = Github {
        deliveries: BTreeMap::from([
            ("repos/o/r/hooks/1".to_owned(), repo),
            (
                "orgs/o/hooks/2".to_owned(),
                vec![delivery(10, "o1", "pull_request", 0)],
            ),
        ]),
        page: 100,
        ..Github::default()
    };
    let store = Store::default();
    let now = t0() + Duration::from_secs(100);
    *github.fail.lock().unwrap() = Some(NotifyError::new("HTTP 502"));
    let report = block_on(run_pass(&github, &store, &policy(50), now));
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].message.contains("r1"),
        "{:?}",
        report.errors
    );
    let guids: Vec<_> = report.redelivered.iter().map(|r| r.guid.as_str()).collect();
    assert_eq!(guids, ["r2", "r3", "o1"]);
    assert_eq!(
        store.cursors.lock().unwrap().get("repos/o/r/hooks/1"),
        None,
        "stays before r1"
    );
    let report = block_on(run_pass(&github, &store, &policy(50), now));
    let guids: Vec<_> = report.redelivered.iter().map(|r| r.guid.as_str()).collect();
    assert_eq!(guids, ["r1"]);
    assert_eq!(
        store.cursors.lock().unwrap().get("repos/o/r/hooks/1"),
        Some(&3)
    );

    // A rate limit: the pass stops, the org is not looked at.
    let github = Github {
        page: 100,
        ..github
    };
    let store = Store::default();
    let until = now + Duration::from_secs(60);
    *github.fail.lock().unwrap() = Some(NotifyError::rate_limited("HTTP 429", until));
    *github.listings.lock().unwrap() = 0;
    let report = block_on(run_pass(&github, &store, &policy(50), now));
    assert_eq!(report.paused_until, Some(until));
    assert!(report.redelivered.is_empty());
    assert_eq!(*github.listings.lock().unwrap(), 1);
    assert!(
        store.asked.lock().unwrap().is_empty(),
        "the claim was released"
    );
}

#[allow(clippy::needless_pass_by_value)] // test inputs built inline
fn settings(catch_up: serde_json::Value, extra: serde_json::Value) -> Result<Settings, String> {
    let mut file = serde_json::json!({
        "security": {"verify_signatures": false},
        "github": {"token": "t", "catch_up": catch_up},
    });
    if let (Some(f), Some(e)) = (file.as_object_mut(), extra.as_object()) {
        f.extend(e.clone());
    }
    let raw: RawConfig = serde_json::from_value(file).map_err(|e| e.to_string())?;
    Settings::from_raw(raw).map_err(|e| e.to_string())
}

#[test]
fn the_section_is_validated() {
    let ok = settings(
        serde_json::json!({"hooks": [{"repository": "o/r", "hook_id": 1}, {"organization": "o", "hook_id": 2}]}),
        serde_json::json!({}),
    )
    .unwrap();
    let policy = ok.catch_up.unwrap();
    assert_eq!(
        policy.hooks,
        [HookRef::repository("o/r", 1), HookRef::organization("o", 2)]
    );
    assert_eq!(policy.interval, Duration::from_secs(300));
    assert_eq!(policy.max_per_pass, 50);
    assert_eq!(policy.max_age, Duration::from_secs(86_400));
    assert_eq!(policy.events, ["pull_request".to_owned()].into());
    assert_eq!(policy.hooks[1].to_string(), "orgs/o/hooks/2");

    let err = settings(
        serde_json::json!({
            "hooks": [{"repository": "o/r", "organization": "o", "hook_id": 0}, {"hook_id": 3}, {"repository": "x", "hook_id": 4}],
            "interval": "5s", "max_per_pass": 1001, "max_age": "4d"
        }),
        serde_json::json!({"retention": {"max_age": "1d"}}),
    )
    .unwrap_err();
    for part in [
        "hooks[0].hook_id",
        "hooks[0]: needs exactly one",
        "hooks[1]: needs exactly one",
        "hooks[2].repository",
        "catch_up.interval",
        "max_per_pass",
        "at most 72h",
        "shorter than retention.max_age",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    let err = settings(serde_json::json!({"hooks": []}), serde_json::json!({"github": {"catch_up": {"hooks": [{"repository": "o/r", "hook_id": 1}]}}}))
        .unwrap_err();
    assert!(err.contains("needs github.token"), "{err}");
    let err = settings(serde_json::json!({"hooks": []}), serde_json::json!({})).unwrap_err();
    assert!(err.contains("at least one hook"), "{err}");
    // Without the section nothing changes.
    let off = settings(serde_json::json!(null), serde_json::json!({})).unwrap();
    assert_eq!(off.catch_up, None);
}
