//! The engine: one dispatch pass over the ports. It reads open work, asks the
//! planner for decisions, and applies them: record, trigger, record again.
//!
//! The runtime drives it through [`Engine::pass`]: it records what the
//! EventListeners answered since the last pass, commits the pass's
//! decisions (all in one store transaction) and hands back the triggers to
//! send; the caller POSTs each job with [`send_trigger`], concurrently,
//! without holding up later passes, and hands the answers to the next pass.
//! [`Engine::plan_pass`] (no answers) and [`Engine::record_triggers`]
//! (answers alone, at shutdown) are the two halves.
//!
//! Ordering is what makes a pass crash-safe: a dispatch is committed as
//! `triggering` *before* its POST and as `triggered` soon after the 202, so
//! a restarted dispatcher never re-sends an accepted trigger. A trigger whose
//! answer never got recorded (crash, lost connection, timeout) keeps its slot
//! until its PipelineRun shows up or `reservation_timeout` passes (see
//! [`crate::planner::plan_dispatch`]).
//!
//! Every state change a pass or a trigger answer decides is logged once, at
//! `info` or above, by the `journal` submodule, with its reason and the
//! fields `event`, `dispatch`, `pool`, `item`, `repo`, `pr` (and `attempt`).
//! Nothing else logs these changes: the store applies them silently and the
//! runtime wraps passes and triggers in spans.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use url::Url;

use crate::config::{PoolKey, Settings};
use crate::domain::{DispatchState, EventId, PullRequestRef};
use crate::fairness::refresh_after_intake;
use crate::open_set::{self, QueueSummary};
use crate::planner::{
    DispatchLimits, DispatchOutcome, MatchedEvent, MatchedItem, PoolUsage, RetryPolicy,
    cancel_query, orphan_candidates, plan_dispatch, plan_intake, plan_run_cancels, trigger_outcome,
};
use crate::ports::{
    CapacitySource, DispatchStore, LabelScope, OpenDispatch, OpenExtras, PassReads, PoolState,
    StoreError, Trigger, TriggerError, TriggerJob, TriggerRequest,
};
use crate::rules::{EventFacts, match_items, needs_payload};

/// Events matched per store round trip.
const PLAN_BATCH: usize = 500;
/// Passes that may fail to record kept outcomes before they are dropped.
const MAX_RECORD_REPLAYS: u32 = 3;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Events matched against the config.
    pub planned: usize,
    /// Events no item matched.
    pub aborted: usize,
    /// Queued dispatches cancelled by newer events.
    pub superseded: usize,
    /// Dispatches accepted by their EventListener.
    pub triggered: usize,
    /// Failed attempts that will be retried.
    pub retried: usize,
    /// Dispatches that ran out of attempts.
    pub failed: usize,
    /// Dispatches whose PipelineRun appeared.
    pub confirmed: usize,
    /// Label intents changed.
    pub labels_changed: u64,
    /// Queue statuses changed (`github.queue_status`).
    pub statuses_changed: u64,
    /// Dispatches whose work was cancelled by their item's `cancel_superseded`
    /// or `cancel_on_close` (queued ones, and runs to cancel).
    pub run_cancels: usize,
    /// Pool usage at planning time.
    pub usage: Vec<PoolUsage>,
    /// When to run again if nothing else wakes the engine.
    pub next_wakeup: Option<OffsetDateTime>,
    /// The database clock this pass planned with (also the `triggering`
    /// time of the jobs it returned); `None` before a pass ran.
    pub now: Option<OffsetDateTime>,
}

/// What recording a batch of trigger results did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerReport {
    /// Accepted by their EventListener.
    pub triggered: usize,
    /// Failed attempts that will be retried.
    pub retried: usize,
    /// Out of attempts.
    pub failed: usize,
    /// Sent, answer lost: slot kept until the run shows up or the reservation ends.
    pub unanswered: usize,
    /// The earliest retry.
    pub next_wakeup: Option<OffsetDateTime>,
}

/// The answer to one trigger, as the runtime hands it back.
pub type TriggerResult = (TriggerJob, Result<Option<String>, TriggerError>);

/// POSTs one job to its EventListener (`url`: its item's `callback_url`,
/// `None` when the item is no longer configured).
pub async fn send_trigger<T: Trigger>(
    trigger: &T,
    url: Option<&Url>,
    job: &TriggerJob,
) -> Result<Option<String>, TriggerError> {
    match url {
        Some(url) => {
            trigger
                .trigger(TriggerRequest {
                    dispatch: job.dispatch,
                    url,
                    payload: &job.payload,
                    headers: &job.headers,
                    resign: job.resign,
                })
                .await
        }
        None => Err(TriggerError::Transport(format!(
            "item '{}' is no longer configured",
            job.item
        ))),
    }
}

fn earliest(a: Option<OffsetDateTime>, b: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The dispatch engine of the active replica. It outlives leadership terms:
/// outcomes it could not record (the session died with POSTs in flight) are
/// recorded first thing by the next pass, in whichever term that is.
#[derive(Debug)]
pub struct Engine {
    settings: Arc<Settings>,
    limits: DispatchLimits,
    retry: RetryPolicy,
    /// Outcomes of POSTs already sent that are not recorded yet.
    unrecorded: Vec<DispatchOutcome>,
    /// Consecutive failures to record `unrecorded` on their own.
    unrecorded_failures: u32,
    /// Whether passes write queue statuses (`github.queue_status` with
    /// GitHub credentials); fixed at start like the status worker, so a
    /// reload never leaves statuses nobody completes.
    queue_status: bool,
    /// Waiting work per pool as last counted: decides whether passes are
    /// incremental and fills their usage. `None` until the first pass.
    summary: Option<Summary>,
    /// Whether queued work was checked against the items' pools since the
    /// start or the last reload.
    placements_checked: bool,
    /// Pull requests whose work changed since their labels were reconciled.
    label_prs: BTreeSet<PullRequestRef>,
    /// When every PR's labels were last reconciled.
    labels_reconciled_at: Option<OffsetDateTime>,
    /// When queue statuses were last reconciled.
    statuses_reconciled_at: Option<OffsetDateTime>,
}

/// How often an incremental pass counts the waiting work again (for
/// metrics, readiness and retries in backoff): counting 100,000 waiting
/// dispatches takes ~30 ms.
const SUMMARY_EVERY: Duration = Duration::seconds(5);
/// How often an incremental pass reconciles every PR's labels, not only
/// those it changed work of.
const LABELS_ALL_EVERY: Duration = Duration::seconds(30);

/// Waiting work per pool, as counted by the store or a full pass.
#[derive(Debug, Clone)]
struct Summary {
    at: OffsetDateTime,
    by_pool: BTreeMap<PoolKey, QueueSummary>,
}

impl Summary {
    async fn read<S: DispatchStore>(
        store: &mut S,
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            at: now,
            by_pool: store.queue_summary(now).await?,
        })
    }

    fn from_usage(usage: &[PoolUsage], now: OffsetDateTime) -> Self {
        let by_pool: BTreeMap<PoolKey, QueueSummary> = usage
            .iter()
            .map(|u| {
                (
                    u.pool.clone(),
                    QueueSummary {
                        waiting: u.waiting,
                        oldest_waiting: u.oldest_waiting,
                        next_retry: None,
                    },
                )
            })
            .collect();
        Self { at: now, by_pool }
    }

    /// Waiting dispatches in all pools.
    fn total(&self) -> u64 {
        self.by_pool.values().map(|s| u64::from(s.waiting)).sum()
    }

    /// An incremental plan saw only the heads of queues: its counts come
    /// from here (at most [`SUMMARY_EVERY`] old, never below what the pass
    /// saw), and so does the wake-up for retries in backoff.
    fn complete(&self, plan: &mut crate::planner::DispatchPlan, now: OffsetDateTime) {
        for u in &mut plan.usage {
            let Some(s) = self.by_pool.get(&u.pool) else {
                continue;
            };
            u.waiting = u.waiting.max(s.waiting);
            u.oldest_waiting = match (u.oldest_waiting, s.oldest_waiting) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(retry) = s.next_retry.filter(|t| *t > now) {
                plan.next_wakeup = earliest(plan.next_wakeup, Some(retry));
            }
        }
    }
}

/// What an engine remembers of its passes besides the database, saved
/// before a pass and put back if the pass's transaction rolls back (so work
/// it did not commit is done again: a placement check, a label reconcile).
struct Bookkeeping {
    placements_checked: bool,
    labels_reconciled_at: Option<OffsetDateTime>,
    statuses_reconciled_at: Option<OffsetDateTime>,
}

impl Bookkeeping {
    fn of(engine: &Engine) -> Self {
        Self {
            placements_checked: engine.placements_checked,
            labels_reconciled_at: engine.labels_reconciled_at,
            statuses_reconciled_at: engine.statuses_reconciled_at,
        }
    }

    /// (The PRs whose labels to reconcile need nothing: they are cleared
    /// only once a pass commits.)
    fn restore(self, engine: &mut Engine) {
        engine.placements_checked = self.placements_checked;
        engine.labels_reconciled_at = self.labels_reconciled_at;
        engine.statuses_reconciled_at = self.statuses_reconciled_at;
    }
}

impl Engine {
    /// An engine for `settings`.
    pub fn new(settings: Arc<Settings>) -> Self {
        let d = &settings.dispatch;
        let limits = DispatchLimits::from(d);
        let retry = RetryPolicy {
            max_attempts: d.max_attempts,
            backoff_base: d.retry_backoff_base,
            backoff_max: d.retry_backoff_max,
        };
        Self {
            limits,
            retry,
            unrecorded: Vec::new(),
            unrecorded_failures: 0,
            queue_status: settings.github.queue_status.posts_status()
                && settings.github.labels_enabled(),
            settings,
            summary: None,
            placements_checked: false,
            label_prs: BTreeSet::new(),
            labels_reconciled_at: None,
            statuses_reconciled_at: None,
        }
    }

    /// The configuration in use.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Uses `settings` from the next pass on (a configuration reload):
    /// items, filters, pools, capacities and the retry and reservation
    /// tuning. Work already decided is not revisited; queued work whose
    /// item moved to another pool follows it (the planner's `Moved`), and
    /// outcomes kept from earlier are still recorded.
    pub fn reload(&mut self, settings: Arc<Settings>) {
        let kept = std::mem::take(&mut self.unrecorded);
        let failures = self.unrecorded_failures;
        let queue_status = self.queue_status;
        let summary = self.summary.take();
        let label_prs = std::mem::take(&mut self.label_prs);
        *self = Self::new(settings);
        self.queue_status = queue_status;
        self.summary = summary;
        self.label_prs = label_prs;
        self.unrecorded = kept;
        self.unrecorded_failures = failures;
    }

    /// Whether `settings` is the configuration in use (the same value, not
    /// an equal one).
    pub fn uses(&self, settings: &Arc<Settings>) -> bool {
        Arc::ptr_eq(&self.settings, settings)
    }

    /// The EventListener URL of a job's item.
    pub fn callback_url(&self, job: &TriggerJob) -> Option<&Url> {
        self.settings.item(&job.item).map(|i| &i.callback_url)
    }

    /// Outcomes waiting to be recorded (kept across leadership terms).
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.len()
    }

    /// Keeps the results of POSTs that finished after the session was lost;
    /// the next pass records them (each write is guarded by state and attempt,
    /// so a result a newer leader has overtaken changes nothing).
    pub fn carry_over(&mut self, results: Vec<TriggerResult>, now: OffsetDateTime) {
        self.keep_outcomes(results, now);
    }

    /// Decides the outcomes of `results` at `now` and keeps them for the
    /// next recording; returns what they were.
    fn keep_outcomes(&mut self, results: Vec<TriggerResult>, now: OffsetDateTime) -> TriggerReport {
        let mut report = TriggerReport::default();
        self.label_prs
            .extend(results.iter().map(|(job, _)| job.pr.clone()));
        let outcomes: Vec<DispatchOutcome> = results
            .into_iter()
            .map(|(job, result)| self.outcome(&job, result, now, &mut report))
            .collect();
        self.unrecorded.extend(outcomes);
        report
    }

    /// Plans a pass and commits its decisions; returns the triggers to send.
    /// Each returned job is committed as `triggering` (counted against its
    /// pool). The caller POSTs them, concurrently and without holding up later
    /// passes, and hands the results to [`Engine::record_triggers`] or to the
    /// next [`Engine::pass`]. Every time used is the database's clock.
    pub async fn plan_pass<S, C>(
        &mut self,
        store: &mut S,
        capacity: &C,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
    {
        self.pass(store, capacity, Vec::new()).await
    }

    /// Records `answers` (results of POSTs from earlier passes, and any kept
    /// from before), then plans a pass, all in one store transaction
    /// ([`DispatchStore::begin_pass`]): the round trips between a delivery
    /// and its POST are what its latency is made of. The report counts the
    /// answers too. If the pass fails, nothing of it is kept: what it decided
    /// is decided again, and the answers are recorded first thing next time,
    /// in a transaction of their own (so a pass that keeps failing for
    /// another reason never costs them).
    pub async fn pass<S, C>(
        &mut self,
        store: &mut S,
        capacity: &C,
        answers: Vec<TriggerResult>,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
    {
        // Outcomes kept from a failed pass or a lost session go on their
        // own first, so they never depend on the rest of a pass succeeding;
        // `answers` join the pass's transaction.
        if let Err(e) = self.record_unrecorded(store).await {
            self.carry_over(answers, OffsetDateTime::now_utc());
            return Err(e);
        }
        let saved = Bookkeeping::of(self);
        let result = self.pass_once(store, capacity, answers).await;
        if result.is_err() {
            saved.restore(self);
        }
        result
    }

    async fn pass_once<S, C>(
        &mut self,
        store: &mut S,
        capacity: &C,
        answers: Vec<TriggerResult>,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
    {
        // One reading of the database clock per pass, with its BEGIN (a few
        // ms stale by the end of it, which every deadline tolerates).
        let now = match store.begin_pass().await {
            Ok(now) => now,
            Err(e) => {
                store.abort_pass().await;
                self.carry_over(answers, OffsetDateTime::now_utc());
                return Err(e);
            }
        };
        // Kept until the commit: a failed pass records them next time.
        let answered = self.keep_outcomes(answers, now);
        let committed = match self.plan_in_pass(store, capacity, now).await {
            Ok(planned) => store.commit_pass().await.map(|()| planned),
            Err(e) => Err(e),
        };
        let planned = match committed {
            Ok(planned) => planned,
            Err(e) => {
                // Whatever is left open goes (a no-op once the store ended it).
                store.abort_pass().await;
                return Err(e);
            }
        };
        self.unrecorded.clear();
        self.unrecorded_failures = 0;
        // Reconciled in this pass's transaction: only now are they done.
        self.label_prs.clear();
        let (mut report, jobs) = planned;
        report.triggered += answered.triggered;
        report.retried += answered.retried;
        report.failed += answered.failed;
        report.next_wakeup = earliest(report.next_wakeup, answered.next_wakeup);
        Ok((report, jobs))
    }

    /// The pass itself, inside the store's pass transaction, at `now`.
    async fn plan_in_pass<S, C>(
        &mut self,
        store: &mut S,
        capacity: &C,
        now: OffsetDateTime,
    ) -> Result<(PassReport, Vec<TriggerJob>), StoreError>
    where
        S: DispatchStore,
        C: CapacitySource,
    {
        let mut report = PassReport::default();
        if !self.unrecorded.is_empty() {
            store.record_outcomes(&self.unrecorded, now).await?;
        }
        report.now = Some(now);
        let extras = OpenExtras::for_settings(&self.settings);
        let cutoff = now - self.limits.reservation_timeout;
        if self.summary.is_none() {
            self.summary = Some(Summary::read(store, now).await?);
        }
        let incremental = self.incremental();
        // A full pass reads the open set once, before intake, and keeps it
        // current; an incremental one reads what it needs where it needs it.
        let PassReads {
            mut open,
            unplanned,
            paused,
        } = store
            .pass_reads(cutoff, (!incremental).then_some(extras), PLAN_BATCH)
            .await?;
        let mut first_batch = Some(unplanned);
        loop {
            let events = match first_batch.take() {
                Some(events) => events,
                None => store.unplanned_events(PLAN_BATCH).await?,
            };
            if events.is_empty() {
                break;
            }
            let batch_len = events.len();
            let wanted: Vec<EventId> = events
                .iter()
                .filter(|e| needs_payload(&self.settings, &e.pr.repository, &e.action))
                .map(|e| e.id)
                .collect();
            let payloads = if wanted.is_empty() {
                HashMap::new()
            } else {
                store.event_payloads(&wanted).await?
            };
            let matched: Vec<MatchedEvent> = events
                .iter()
                .map(|e| self.match_event(e, payloads.get(&e.id).map_or(&[][..], |p| p.as_bytes())))
                .collect();
            let of_prs;
            let known: &[OpenDispatch] = if incremental {
                let mut prs: Vec<PullRequestRef> = events.iter().map(|e| e.pr.clone()).collect();
                prs.sort();
                prs.dedup();
                of_prs = store.open_of_prs(cutoff, &prs).await?;
                &of_prs
            } else {
                &open
            };
            let plan = plan_intake(&matched, known);
            report.planned += plan.planned.len();
            report.aborted += plan.aborted.len();
            report.superseded += plan.superseded.len()
                + plan
                    .new_dispatches
                    .iter()
                    .filter(|d| d.state == DispatchState::Cancelled)
                    .count();
            let created = store.apply_intake(&plan, now).await?;
            journal::intake(&plan, &events, &matched, known, &created);
            self.label_prs.extend(events.iter().map(|e| e.pr.clone()));
            if !incremental {
                open.retain(|d| !plan.superseded.contains(&d.id));
                open.extend(created);
                refresh_after_intake(&mut open, &events, extras);
            }
            if batch_len < PLAN_BATCH {
                break;
            }
        }

        // Kubernetes is read once, after intake: every decision below uses one view.
        let pools: BTreeMap<PoolKey, PoolState> = self
            .settings
            .pools
            .values()
            .map(|p| (p.key.clone(), capacity.pool_state(p)))
            .collect();
        // Opt-in cancellation of superseded and closed work, before planning:
        // a cancelled queued dispatch is not triggered; one in flight or
        // running keeps its slot until its run is seen finished.
        if let Some(query) = cancel_query(&self.settings, &pools) {
            let candidates = store.cancel_candidates(&query).await?;
            let cancels = plan_run_cancels(&self.settings, &candidates);
            if !cancels.is_empty() {
                journal::cancels(&cancels, &candidates);
                store.record_outcomes(&cancels, now).await?;
                report.run_cancels += cancels.len();
                let queued: HashSet<crate::domain::DispatchId> = candidates
                    .iter()
                    .filter(|c| c.state == DispatchState::Queued)
                    .map(|c| c.id)
                    .filter(|id| cancels.iter().any(|o| o.id() == *id))
                    .collect();
                open.retain(|d| !queued.contains(&d.id));
            }
        }
        if incremental {
            // Read after intake and cancellations: they are already applied.
            open = self
                .read_incremental(store, &pools, &paused, cutoff, now, extras)
                .await?;
        }
        self.placements_checked = true;
        let candidates = orphan_candidates(&self.settings, &open, &pools, self.limits, now);
        let claimed = if candidates.is_empty() {
            HashSet::new()
        } else {
            store.claimed_listener_event_ids(&candidates).await?
        };
        let mut plan = plan_dispatch(
            &self.settings,
            &open,
            &pools,
            &paused,
            &claimed,
            self.limits,
            now,
        );
        for outcome in &plan.outcomes {
            match outcome {
                DispatchOutcome::Confirmed { .. } => report.confirmed += 1,
                DispatchOutcome::Failed { .. } => report.failed += 1,
                DispatchOutcome::Retry { .. } => report.retried += 1,
                DispatchOutcome::Superseded { .. } => report.superseded += 1,
                DispatchOutcome::Moved { .. }
                | DispatchOutcome::CancelRun { .. }
                | DispatchOutcome::Triggered { .. }
                | DispatchOutcome::Unanswered { .. } => {}
            }
            journal::planned(outcome, &open);
        }
        if !plan.outcomes.is_empty() {
            store.record_outcomes(&plan.outcomes, now).await?;
            let by_id: HashMap<crate::domain::DispatchId, &PullRequestRef> =
                open.iter().map(|d| (d.id, &d.pr)).collect();
            self.label_prs.extend(
                plan.outcomes
                    .iter()
                    .filter_map(|o| by_id.get(&o.id()).map(|pr| (*pr).clone())),
            );
        }
        if incremental {
            // Counted before this pass's triggers start, as a full pass counts.
            if self
                .summary
                .as_ref()
                .is_none_or(|s| s.at + SUMMARY_EVERY <= now)
            {
                self.summary = Some(Summary::read(store, now).await?);
            }
            if let Some(summary) = &self.summary {
                summary.complete(&mut plan, now);
            }
            // A head superseded by a newer event took a slot's place in this
            // pass's read: look again at once for the work behind it.
            if plan
                .outcomes
                .iter()
                .any(|o| matches!(o, DispatchOutcome::Superseded { .. }))
            {
                plan.next_wakeup = Some(now);
            }
        } else {
            self.summary = Some(Summary::from_usage(&plan.usage, now));
        }
        for u in &plan.usage {
            if let Some(reason) = &u.blocked
                && u.waiting > 0
            {
                tracing::warn!(pool = %u.pool, waiting = u.waiting, %reason, "pool state unknown; dispatching nothing for it");
            }
        }
        let jobs = if plan.trigger.is_empty() {
            Vec::new()
        } else {
            store.begin_triggers(&plan.trigger, now).await?
        };
        for job in &jobs {
            journal::triggering(&self.settings, job);
        }
        self.label_prs.extend(jobs.iter().map(|j| j.pr.clone()));
        report.usage = plan.usage;
        report.next_wakeup = plan.next_wakeup;
        report.labels_changed = self.reconcile_labels(store, incremental, now).await?;
        report.statuses_changed = self
            .reconcile_queue_status(store, incremental, &pools, &paused, now)
            .await?;
        Ok((report, jobs))
    }

    /// With `github.queue_status: check_run | commit_status` (and GitHub
    /// credentials): the queue as it stands after this pass's triggers, in
    /// the explain API's positions and estimates, becomes the wanted statuses.
    /// Over a deep queue (incremental passes) at most every
    /// [`SUMMARY_EVERY`]: every waiting PR's position needs the whole open
    /// set, and the status worker sends at most one update per
    /// `queue_status_interval` anyway.
    async fn reconcile_queue_status<S: DispatchStore>(
        &mut self,
        store: &mut S,
        incremental: bool,
        pools: &BTreeMap<PoolKey, PoolState>,
        paused: &std::collections::BTreeSet<PoolKey>,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        if !self.queue_status {
            return Ok(0);
        }
        if incremental
            && self
                .statuses_reconciled_at
                .is_some_and(|at| at + SUMMARY_EVERY > now)
        {
            return Ok(0);
        }
        self.statuses_reconciled_at = Some(now);
        // The pool order may need labels and trigger history (fairness).
        let open = store
            .open_dispatches(
                now - self.limits.reservation_timeout,
                OpenExtras::for_settings(&self.settings),
            )
            .await?;
        let wanted =
            crate::queue_status::wanted_statuses(&self.settings, &open, pools, paused, now);
        store.reconcile_queue_status(&wanted, now).await
    }

    /// Whether this pass reads only what can change (a deep queue).
    fn incremental(&self) -> bool {
        let above = self.settings.dispatch.incremental_pass_above;
        above == 0
            || self
                .summary
                .as_ref()
                .is_some_and(|s| s.total() > u64::from(above))
    }

    /// The open work an incremental pass plans with: everything in flight,
    /// the heads of the queues of pools with room and, first thing in a term
    /// or after a reload, queued work whose item left its pool.
    async fn read_incremental<S: DispatchStore>(
        &self,
        store: &mut S,
        pools: &BTreeMap<PoolKey, PoolState>,
        paused: &std::collections::BTreeSet<PoolKey>,
        cutoff: OffsetDateTime,
        now: OffsetDateTime,
        extras: OpenExtras,
    ) -> Result<Vec<OpenDispatch>, StoreError> {
        let mut open = store.in_flight(cutoff).await?;
        // The planner over the work in flight alone says which pools have
        // free slots, and how many (without the claimed eventIDs it may
        // infer more orphans' runs: more free slots, never fewer).
        let in_flight_usage = plan_dispatch(
            &self.settings,
            &open,
            pools,
            paused,
            &HashSet::new(),
            self.limits,
            now,
        )
        .usage;
        let requests = open_set::head_requests(&self.settings, &in_flight_usage);
        if !requests.is_empty() {
            open.extend(store.queue_heads(&requests, now, extras).await?);
        }
        if !self.placements_checked {
            let seen: HashSet<crate::domain::DispatchId> = open.iter().map(|d| d.id).collect();
            let misplaced = store
                .misplaced(&open_set::placements(&self.settings), extras)
                .await?;
            open.extend(misplaced.into_iter().filter(|d| !seen.contains(&d.id)));
        }
        Ok(open)
    }

    /// `<pipeline>/queued` labels: every PR's on a full pass (and now and
    /// then on incremental ones, for changes made outside passes: operator
    /// actions), otherwise only the PRs whose work changed since.
    async fn reconcile_labels<S: DispatchStore>(
        &mut self,
        store: &mut S,
        incremental: bool,
        now: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let all_due = !incremental
            || self
                .labels_reconciled_at
                .is_none_or(|at| at + LABELS_ALL_EVERY <= now);
        let changed = if all_due {
            let changed = store.reconcile_labels(now, LabelScope::All).await?;
            self.labels_reconciled_at = Some(now);
            changed
        } else if self.label_prs.is_empty() {
            0
        } else {
            let prs: Vec<PullRequestRef> = self.label_prs.iter().cloned().collect();
            store
                .reconcile_labels(now, LabelScope::PullRequests(&prs))
                .await?
        };
        Ok(changed)
    }

    /// Records the outcomes kept from a failed pass or recording, or from a
    /// lost session, in a transaction of their own. Outcomes the database
    /// itself keeps refusing would stop every later pass: after
    /// [`MAX_RECORD_REPLAYS`] such refusals they are dropped, and their
    /// dispatches stay `triggering`, settled as orphans (confirmed from
    /// their runs, or retried).
    async fn record_unrecorded<S: DispatchStore>(
        &mut self,
        store: &mut S,
    ) -> Result<(), StoreError> {
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let recorded = match store.database_now().await {
            Ok(now) => store.record_outcomes(&self.unrecorded, now).await,
            Err(e) => Err(e),
        };
        match recorded {
            Ok(()) => {
                tracing::info!(
                    outcomes = self.unrecorded.len(),
                    "recorded trigger outcomes kept from earlier"
                );
            }
            Err(StoreError::Query(e)) if self.unrecorded_failures + 1 >= MAX_RECORD_REPLAYS => {
                tracing::error!(
                    error = %e, outcomes = self.unrecorded.len(),
                    "giving up recording trigger outcomes; their dispatches will be settled as orphans"
                );
            }
            Err(e) => {
                self.unrecorded_failures += 1;
                return Err(e);
            }
        }
        self.unrecorded.clear();
        self.unrecorded_failures = 0;
        Ok(())
    }

    /// Records the results of POSTs started by [`Engine::plan_pass`]. If
    /// recording fails, the outcomes are kept and recorded first by the next
    /// pass.
    pub async fn record_triggers<S>(
        &mut self,
        store: &mut S,
        results: Vec<TriggerResult>,
    ) -> Result<TriggerReport, StoreError>
    where
        S: DispatchStore,
    {
        let mut report = TriggerReport::default();
        // Kept ones first (at shutdown this is the process's last chance).
        if let Err(e) = self.record_unrecorded(store).await {
            self.carry_over(results, OffsetDateTime::now_utc());
            return Err(e);
        }
        if results.is_empty() {
            return Ok(report);
        }
        let done = match store.database_now().await {
            Ok(now) => now,
            Err(e) => {
                self.carry_over(results, OffsetDateTime::now_utc());
                return Err(e);
            }
        };
        self.label_prs
            .extend(results.iter().map(|(job, _)| job.pr.clone()));
        let outcomes: Vec<DispatchOutcome> = results
            .into_iter()
            .map(|(job, result)| self.outcome(&job, result, done, &mut report))
            .collect();
        if let Err(e) = store.record_outcomes(&outcomes, done).await {
            self.unrecorded.extend(outcomes);
            return Err(e);
        }
        Ok(report)
    }

    fn outcome(
        &self,
        job: &TriggerJob,
        result: Result<Option<String>, TriggerError>,
        done: OffsetDateTime,
        report: &mut TriggerReport,
    ) -> DispatchOutcome {
        let outcome = trigger_outcome(job.dispatch, job.attempt, result, self.retry, done);
        match &outcome {
            DispatchOutcome::Triggered { .. } => report.triggered += 1,
            DispatchOutcome::Unanswered { .. } => report.unanswered += 1,
            DispatchOutcome::Failed { .. } => report.failed += 1,
            DispatchOutcome::Retry {
                next_attempt_at, ..
            } => {
                report.retried += 1;
                report.next_wakeup = earliest(report.next_wakeup, Some(*next_attempt_at));
            }
            DispatchOutcome::Confirmed { .. }
            | DispatchOutcome::Superseded { .. }
            | DispatchOutcome::Moved { .. }
            | DispatchOutcome::CancelRun { .. } => {}
        }
        // Logged when decided: an outcome carried over to a later term is not logged again.
        journal::answered(&self.settings, job, &outcome);
        outcome
    }

    fn match_event(&self, e: &crate::ports::UnplannedEvent, payload: &[u8]) -> MatchedEvent {
        let facts = EventFacts {
            action: &e.action,
            repository: &e.pr.repository,
            payload,
            headers: &e.headers,
        };
        let matches = match_items(&self.settings, &facts);
        for p in &matches.problems {
            tracing::warn!(
                event_id = %e.id, repo = %e.pr.repository, pr = e.pr.number, item = %p.item, error = %p.error,
                "CEL filter could not be evaluated; treating as no match"
            );
        }
        MatchedEvent {
            id: e.id,
            pr: e.pr.clone(),
            items: matches
                .items
                .iter()
                .filter_map(|item| {
                    let pool = self.settings.pools.get(&item.pool)?;
                    Some(MatchedItem {
                        item: item.name.clone(),
                        pool: pool.key.clone(),
                        queued_label: pool.queued_label(),
                    })
                })
                .collect(),
        }
    }
}

/// The same tests with every pass incremental (the file is meant to be
/// loaded twice: `build` in it tells the two runs apart).
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "engine/tests.rs"]
mod incremental_tests;
mod journal;
#[cfg(test)]
mod test_log;
#[cfg(test)]
mod tests;
