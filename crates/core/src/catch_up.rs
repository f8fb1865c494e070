//! Catch-up of missed deliveries (`github.catch_up`).
//!
//! GitHub does not redeliver a failed webhook by itself. While the
//! dispatcher (or its route) is down, GitHub records the deliveries as
//! failed (status code 0 or 5xx). The active replica lists each configured
//! hook's recent deliveries through GitHub's webhook deliveries API and asks
//! GitHub to redeliver those it misses, so they pass the normal signed
//! intake with their original `X-GitHub-Delivery`.
//!
//! The decisions live here ([`plan_hook`], [`run_pass`]); the listing and
//! the redelivery request are the [`HookDeliveries`] port (dispatcher-github),
//! the cursors and the record of what was asked are the [`CatchUpStore`]
//! port (dispatcher-store, which knows guids and ids, not GitHub).
//!
//! Rules of one hook's deliveries, looked at oldest first:
//! - only deliveries newer than the hook's stored cursor (the newest
//!   delivery id already looked at) and delivered after `now - max_age`;
//! - all attempts with the same guid count as one;
//! - a guid the database holds (`webhook_events.delivery_id`) is never
//!   redelivered, nor one asked for before (even if its redelivery has not
//!   arrived yet): a guid is asked for at most once;
//! - `ping` and events not in `security.allowed_github_events` are skipped;
//! - a guid one of whose attempts got a 2xx answer is skipped unless it is
//!   a `pull_request` (the dispatcher answers 2xx to a pull request only
//!   after storing it, so one missing from the database was lost; other
//!   allowed events are acknowledged and never stored);
//! - at most `max_per_pass` redeliveries per pass over all hooks; the
//!   cursor advances only over deliveries fully handled, so the rest are
//!   looked at in the next pass.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{CatchUpSection, ConfigError, GithubSection, Security, is_full_repo_name};
use crate::ports::{NotifyError, StoreError};
use crate::retention::RetentionPolicy;

/// Shortest `github.catch_up.interval`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Largest `github.catch_up.max_per_pass`.
pub const MAX_PER_PASS: u32 = 1000;
/// Longest `github.catch_up.max_age`: GitHub redelivers only deliveries of
/// the last three days.
pub const MAX_AGE: Duration = Duration::from_secs(72 * 3600);
/// Deliveries asked for per page of the listing (GitHub's maximum).
pub const PAGE_SIZE: u32 = 100;
/// Pages listed per hook and pass at most; older deliveries beyond them are
/// not looked at (the cursor moves past them).
pub const MAX_PAGES: usize = 10;

/// Whose webhook a hook is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookOwner {
    /// A repository's webhook (`owner/name`).
    Repository(String),
    /// An organisation's webhook.
    Organization(String),
}

/// One configured webhook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookRef {
    /// Its repository or organisation.
    pub owner: HookOwner,
    /// GitHub's id of the hook.
    pub hook_id: u64,
}

impl HookRef {
    /// A repository's hook.
    pub fn repository(name: impl Into<String>, hook_id: u64) -> Self {
        Self {
            owner: HookOwner::Repository(name.into()),
            hook_id,
        }
    }

    /// An organisation's hook.
    pub fn organization(login: impl Into<String>, hook_id: u64) -> Self {
        Self {
            owner: HookOwner::Organization(login.into()),
            hook_id,
        }
    }
}

/// `repos/o/r/hooks/123` or `orgs/o/hooks/456`: the key of its cursor, and
/// the `hook` label of metrics and logs.
impl fmt::Display for HookRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.owner {
            HookOwner::Repository(r) => write!(f, "repos/{r}/hooks/{}", self.hook_id),
            HookOwner::Organization(o) => write!(f, "orgs/{o}/hooks/{}", self.hook_id),
        }
    }
}

/// The validated `github.catch_up` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUpPolicy {
    /// Hooks looked at, in file order.
    pub hooks: Vec<HookRef>,
    /// Time between passes.
    pub interval: Duration,
    /// Redeliveries per pass, over all hooks.
    pub max_per_pass: u32,
    /// Oldest delivery looked at.
    pub max_age: Duration,
    /// Event types worth redelivering (`security.allowed_github_events`
    /// without `ping`).
    pub events: BTreeSet<String>,
}

pub(crate) fn validate(
    raw: &CatchUpSection,
    github: &GithubSection,
    security: &Security,
    retention: Option<&RetentionPolicy>,
    errors: &mut Vec<ConfigError>,
) -> CatchUpPolicy {
    if raw.hooks.is_empty() {
        errors.push(ConfigError::new(
            "github.catch_up.hooks",
            "must list at least one hook",
        ));
    }
    let mut hooks = Vec::new();
    for (i, hook) in raw.hooks.iter().enumerate() {
        let at = |key: &str| format!("github.catch_up.hooks[{i}]{key}");
        if hook.hook_id == 0 {
            errors.push(ConfigError::new(at(".hook_id"), "must be positive"));
        }
        let parsed = match (&hook.repository, &hook.organization) {
            (Some(r), None) if is_full_repo_name(r) => Some(HookRef::repository(r, hook.hook_id)),
            (Some(r), None) => {
                errors.push(ConfigError::new(
                    at(".repository"),
                    format!("must be owner/name (got '{r}')"),
                ));
                None
            }
            (None, Some(o))
                if !o.is_empty()
                    && o.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
            {
                Some(HookRef::organization(o, hook.hook_id))
            }
            (None, Some(o)) => {
                errors.push(ConfigError::new(
                    at(".organization"),
                    format!("must be an organisation's login (got '{o}')"),
                ));
                None
            }
            _ => {
                errors.push(ConfigError::new(
                    at(""),
                    "needs exactly one of repository or organization",
                ));
                None
            }
        };
        if let Some(parsed) = parsed {
            if hooks.contains(&parsed) {
                errors.push(ConfigError::new(
                    at(""),
                    format!("{parsed} is listed twice"),
                ));
            } else {
                hooks.push(parsed);
            }
        }
    }
    if raw.interval < MIN_INTERVAL {
        errors.push(ConfigError::new(
            "github.catch_up.interval",
            "must be at least 10s",
        ));
    }
    if raw.max_per_pass == 0 || raw.max_per_pass > MAX_PER_PASS {
        errors.push(ConfigError::new(
            "github.catch_up.max_per_pass",
            format!(
                "must be between 1 and {MAX_PER_PASS} (got {})",
                raw.max_per_pass
            ),
        ));
    }
    if raw.max_age.is_zero() || raw.max_age > MAX_AGE {
        errors.push(ConfigError::new(
            "github.catch_up.max_age",
            "must be positive and at most 72h (GitHub redelivers only the last three days)",
        ));
    }
    if let Some(retention) = retention
        && retention.max_age <= raw.max_age
    {
        errors.push(ConfigError::new(
            "github.catch_up.max_age",
            "must be shorter than retention.max_age: a pruned delivery would look missed",
        ));
    }
    if !github.labels_enabled() {
        errors.push(ConfigError::new(
            "github.catch_up",
            "needs github.token (or GITHUB_TOKEN) or github.app to call GitHub",
        ));
    }
    CatchUpPolicy {
        hooks,
        interval: raw.interval,
        max_per_pass: raw.max_per_pass,
        max_age: raw.max_age,
        events: security
            .allowed_github_events
            .iter()
            .filter(|e| *e != "ping")
            .cloned()
            .collect(),
    }
}

/// One delivery as GitHub lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDelivery {
    /// GitHub's id of this attempt (a redelivery gets a new one).
    pub id: i64,
    /// `X-GitHub-Delivery`, shared by all attempts of a delivery.
    pub guid: String,
    /// When GitHub delivered it.
    pub delivered_at: OffsetDateTime,
    /// Whether this attempt was a redelivery.
    pub redelivery: bool,
    /// The answer's HTTP status (0: no answer).
    pub status_code: u16,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's `action`, if any.
    pub action: Option<String>,
}

impl HookDelivery {
    fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// One page of a hook's deliveries, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryPage {
    /// The deliveries.
    pub deliveries: Vec<HookDelivery>,
    /// The cursor of the next (older) page, if there is one.
    pub next: Option<String>,
}

/// GitHub's webhook deliveries API.
pub trait HookDeliveries: Send + Sync {
    /// One page of `hook`'s deliveries, newest first, from `cursor` (`None`:
    /// the newest).
    fn list_deliveries(
        &self,
        hook: &HookRef,
        per_page: u32,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<DeliveryPage, NotifyError>> + Send;
    /// Asks GitHub to redeliver the delivery `delivery_id` of `hook`.
    fn redeliver(
        &self,
        hook: &HookRef,
        delivery_id: i64,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
}

/// What catch-up stores: a cursor per hook and the guids asked for.
pub trait CatchUpStore: Send + Sync {
    /// The newest delivery id already looked at for `hook` (its key).
    fn cursor(&self, hook: &str) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Moves `hook`'s cursor forward to `delivery_id` (never back).
    fn save_cursor(
        &self,
        hook: &str,
        delivery_id: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Which of `guids` are stored deliveries (`webhook_events.delivery_id`).
    fn held(
        &self,
        guids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;
    /// Which of `guids` were asked for already.
    fn asked(
        &self,
        guids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;
    /// Records that `guid` is asked for; false if it was already (another
    /// pass or replica got there first: do not ask again).
    fn claim(
        &self,
        hook: &str,
        guid: &str,
        delivery_id: i64,
        event: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Forgets a claim whose request failed, so a later pass asks again.
    fn release(&self, guid: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What to do with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Ask GitHub to redeliver it.
    Redeliver,
    /// The database holds its guid.
    Held,
    /// Its guid was asked for before.
    Asked,
    /// An attempt got a 2xx answer and it is not a pull request.
    Succeeded,
    /// `ping`, or an event type the intake does not accept.
    NotAllowed,
    /// A later attempt of a guid decided by an earlier one.
    SameGuid,
}

/// One delivery and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The delivery (the oldest attempt of its guid in the listing for
    /// [`Verdict::Redeliver`]).
    pub delivery: HookDelivery,
    /// What to do.
    pub verdict: Verdict,
}

/// The decisions for one hook, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookPlan {
    /// Every delivery to handle now, oldest first; the cursor may advance
    /// to the last one's id once all are handled.
    pub steps: Vec<Step>,
    /// Whether deliveries were left for a later pass (the budget ran out).
    pub truncated: bool,
}

impl HookPlan {
    /// The steps to redeliver.
    pub fn redeliveries(&self) -> impl Iterator<Item = &HookDelivery> {
        self.steps
            .iter()
            .filter(|s| s.verdict == Verdict::Redeliver)
            .map(|s| &s.delivery)
    }
}

/// Decides which of `listed` (any order, possibly with deliveries at or
/// before `cursor` or before `cutoff`, which are ignored) to redeliver,
/// given the guids the database holds and those asked before, at most
/// `budget` of them.
pub fn plan_hook(
    listed: &[HookDelivery],
    cursor: Option<i64>,
    cutoff: OffsetDateTime,
    held: &HashSet<String>,
    asked: &HashSet<String>,
    events: &BTreeSet<String>,
    budget: usize,
) -> HookPlan {
    let mut fresh: Vec<&HookDelivery> = listed
        .iter()
        .filter(|d| cursor.is_none_or(|c| d.id > c) && d.delivered_at >= cutoff)
        .collect();
    fresh.sort_by_key(|d| d.id);
    fresh.dedup_by_key(|d| d.id);
    let mut plan = HookPlan::default();
    let mut decided: HashSet<&str> = HashSet::new();
    let mut used = 0;
    for delivery in &fresh {
        let verdict = if !decided.insert(delivery.guid.as_str()) {
            Verdict::SameGuid
        } else if held.contains(&delivery.guid) {
            Verdict::Held
        } else if asked.contains(&delivery.guid) {
            Verdict::Asked
        } else if delivery.event == "ping" || !events.contains(&delivery.event) {
            Verdict::NotAllowed
        } else if delivery.event != "pull_request"
            && fresh
                .iter()
                .any(|d| d.guid == delivery.guid && d.succeeded())
        {
            Verdict::Succeeded
        } else {
            Verdict::Redeliver
        };
        if verdict == Verdict::Redeliver {
            if used == budget {
                plan.truncated = true;
                break;
            }
            used += 1;
        }
        plan.steps.push(Step {
            delivery: (*delivery).clone(),
            verdict,
        });
    }
    plan
}

/// One redelivery asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivered {
    /// The hook (its [`HookRef`] display).
    pub hook: String,
    /// The delivery's guid.
    pub guid: String,
    /// GitHub's id of the attempt redelivered.
    pub delivery_id: i64,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's action.
    pub action: Option<String>,
    /// The failed attempt's status code (0: no answer).
    pub status_code: u16,
}

/// A failure of one hook in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookError {
    /// The hook.
    pub hook: String,
    /// What failed (never a credential).
    pub message: String,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Redeliveries asked for, in order.
    pub redelivered: Vec<Redelivered>,
    /// Deliveries listed (all hooks, all pages).
    pub listed: usize,
    /// Failures; a failed hook is looked at again in the next pass.
    pub errors: Vec<HookError>,
    /// GitHub rate-limited the pass: no calls before this time.
    pub paused_until: Option<OffsetDateTime>,
    /// Deliveries left for the next pass (the budget ran out).
    pub truncated: bool,
}

/// One pass over every hook of `policy` at `now`: list, decide, claim and
/// ask for redeliveries, move the cursors. Stops at a rate limit.
pub async fn run_pass<G, S>(
    github: &G,
    store: &S,
    policy: &CatchUpPolicy,
    now: OffsetDateTime,
) -> CatchUpReport
where
    G: HookDeliveries,
    S: CatchUpStore,
{
    let mut report = CatchUpReport::default();
    let mut budget = usize::try_from(policy.max_per_pass).unwrap_or(usize::MAX);
    let cutoff = now - policy.max_age;
    for hook in &policy.hooks {
        let key = hook.to_string();
        let outcome = hook_pass(
            github,
            store,
            policy,
            hook,
            &key,
            cutoff,
            &mut budget,
            &mut report,
        )
        .await;
        if let Err(error) = outcome {
            report.errors.push(HookError {
                hook: key,
                message: error.message,
            });
            if let Some(at) = error.retry_at {
                report.paused_until = Some(at);
                break;
            }
        }
    }
    report
}

#[allow(clippy::too_many_arguments)]
async fn hook_pass<G, S>(
    github: &G,
    store: &S,
    policy: &CatchUpPolicy,
    hook: &HookRef,
    key: &str,
    cutoff: OffsetDateTime,
    budget: &mut usize,
    report: &mut CatchUpReport,
) -> Result<(), NotifyError>
where
    G: HookDeliveries,
    S: CatchUpStore,
{
    let store_error = |e: StoreError| NotifyError::new(format!("database: {e}"));
    let cursor = store.cursor(key).await.map_err(store_error)?;
    let mut listed = Vec::new();
    let mut page_cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = github
            .list_deliveries(hook, PAGE_SIZE, page_cursor.as_deref())
            .await?;
        let reached_known = page
            .deliveries
            .iter()
            .any(|d| cursor.is_some_and(|c| d.id <= c) || d.delivered_at < cutoff);
        report.listed += page.deliveries.len();
        listed.extend(page.deliveries);
        match page.next {
            Some(next) if !reached_known => page_cursor = Some(next),
            _ => break,
        }
    }
    let mut guids: Vec<String> = listed.iter().map(|d| d.guid.clone()).collect();
    guids.sort();
    guids.dedup();
    let held = store.held(&guids).await.map_err(store_error)?;
    let asked = store.asked(&guids).await.map_err(store_error)?;
    let plan = plan_hook(
        &listed,
        cursor,
        cutoff,
        &held,
        &asked,
        &policy.events,
        *budget,
    );
    report.truncated |= plan.truncated;
    // The cursor stops before the first delivery whose request failed.
    let mut advance_to = None;
    let mut failed: Option<NotifyError> = None;
    for step in &plan.steps {
        if step.verdict == Verdict::Redeliver {
            *budget = budget.saturating_sub(1);
            let d = &step.delivery;
            if store
                .claim(key, &d.guid, d.id, &d.event)
                .await
                .map_err(store_error)?
            {
                if let Err(error) = github.redeliver(hook, d.id).await {
                    store.release(&d.guid).await.map_err(store_error)?;
                    let rate_limited = error.retry_at.is_some();
                    if failed.is_none() {
                        failed = Some(NotifyError {
                            message: format!("redelivery of {}: {}", d.guid, error.message),
                            retry_at: error.retry_at,
                        });
                    }
                    if rate_limited {
                        break;
                    }
                    continue;
                }
                report.redelivered.push(Redelivered {
                    hook: key.to_owned(),
                    guid: d.guid.clone(),
                    delivery_id: d.id,
                    event: d.event.clone(),
                    action: d.action.clone(),
                    status_code: d.status_code,
                });
            }
        }
        if failed.is_none() {
            advance_to = Some(step.delivery.id);
        }
    }
    if let Some(id) = advance_to {
        store.save_cursor(key, id).await.map_err(store_error)?;
    }
    failed.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests;
