//! The traits the engine and the HTTP layer talk to. Implementations live in
//! `dispatcher-store` (PostgreSQL), `dispatcher-capacity` (Kubernetes and the
//! EventListener) and `dispatcher-github`; tests use in-memory fakes.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;

use time::OffsetDateTime;
use url::Url;

use crate::config::PoolKey;
use crate::domain::{
    DispatchId, DispatchState, EventDetail, EventId, EventRecord, EventRef, EventStatus, EventUuid,
    PullRequestRef, TimelineEntry,
};
use crate::intake::NewEvent;
use crate::operate::QueueSnapshot;
use crate::planner::{DispatchOutcome, IntakePlan};

/// A boxed error from an adapter.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the storage port.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached in time (pool timeout, connection refused).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// This replica no longer holds the dispatcher lock; it must stop dispatching.
    #[error("lost the dispatcher lock")]
    LostLeadership,
    /// Any other database failure.
    #[error("database error: {0}")]
    Query(#[source] BoxError),
}

/// Result of storing a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new row was committed.
    Created(EventRecord),
    /// The same delivery (same id, same body) was stored before.
    AlreadyStored(EventRecord),
    /// The delivery id is stored with a different body; nothing changed.
    Conflict(EventRecord),
}

/// Filters of the events listing (an explicit allow-list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// `status=`.
    pub status: Option<EventStatus>,
    /// `repository_full_name=`.
    pub repository_full_name: Option<String>,
    /// `pull_request_number=`.
    pub pull_request_number: Option<i64>,
    /// `action=`.
    pub action: Option<String>,
    /// `delivery_id=`.
    pub delivery_id: Option<String>,
    /// `processed=`.
    pub processed: Option<bool>,
}

/// One page of the events listing, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventQuery {
    /// 1-based page.
    pub page: u32,
    /// Rows per page.
    pub page_size: u32,
    /// Filters.
    pub filter: EventFilter,
}

/// A page of events plus the total matching count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// Events of this page, newest first.
    pub events: Vec<EventRecord>,
    /// All events matching the filter.
    pub total_count: u64,
}

/// What the HTTP layer needs from storage (every replica uses it).
pub trait EventRepository: Send + Sync + 'static {
    /// Stores a delivery, idempotently on its delivery id; returns after commit.
    fn record(
        &self,
        event: NewEvent,
    ) -> impl Future<Output = Result<RecordOutcome, StoreError>> + Send;
    /// Lists events, newest first.
    fn list(
        &self,
        query: &EventQuery,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;
    /// One event with headers and dispatches, by its public UUID or its
    /// internal key; `None` when there is no such event.
    fn detail(
        &self,
        id: impl Into<EventRef> + Send,
    ) -> impl Future<Output = Result<Option<EventDetail>, StoreError>> + Send;
    /// Checks that the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A configured item a replay dispatches to (matched by the caller against
/// the current configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayTarget {
    /// Config item name.
    pub item: String,
    /// Its pool.
    pub pool: PoolKey,
    /// That pool's `<pipeline>/queued` label.
    pub queued_label: String,
}

/// An operator's replay of a finished event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The admin token's name.
    pub actor: String,
    /// Replay even though a newer event of the pull request exists for one
    /// of the targets (newest-wins then leaves the new round alone).
    pub force: bool,
    /// Where it goes now.
    pub targets: Vec<ReplayTarget>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// A new round of dispatches is queued.
    Replayed {
        /// The round's number (2 for the first replay).
        round: i32,
        /// The new dispatches, queued.
        dispatches: Vec<DispatchId>,
    },
    /// The event still has work open (pending, queued or in flight).
    NotFinished(EventStatus),
    /// A newer event of the same pull request exists for a target (and
    /// `force` was not set).
    NewerEventExists(EventUuid),
    /// Retention dropped the event's payload at this time: there is nothing
    /// to send again.
    PayloadDropped(OffsetDateTime),
}

/// What cancelling an event's waiting work did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// These queued dispatches are now cancelled.
    Cancelled(Vec<DispatchId>),
    /// Nothing of the event was waiting; its status is this.
    NothingWaiting(EventStatus),
}

/// What operators read and do; served by every replica. Writes wake the
/// active dispatcher.
pub trait OperatorStore: Send + Sync + 'static {
    /// The stored timeline of `event`, oldest first.
    fn timeline(
        &self,
        event: EventId,
    ) -> impl Future<Output = Result<Vec<TimelineEntry>, StoreError>> + Send;
    /// The raw payload of `event` (for explaining its matching); `None` when
    /// there is no such event or retention dropped its payload.
    fn payload(
        &self,
        event: EventId,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// The open work (with the `extras` asked for) and paused pools, read
    /// in one transaction.
    fn queue_snapshot(
        &self,
        reservation_timeout: std::time::Duration,
        extras: OpenExtras,
    ) -> impl Future<Output = Result<QueueSnapshot, StoreError>> + Send;
    /// Replays a finished event as a new round of dispatches (`None`: no such event).
    fn replay(
        &self,
        event: EventId,
        request: &ReplayRequest,
    ) -> impl Future<Output = Result<Option<ReplayOutcome>, StoreError>> + Send;
    /// Cancels the event's queued dispatches (`None`: no such event).
    fn cancel(
        &self,
        event: EventId,
        actor: &str,
    ) -> impl Future<Output = Result<Option<CancelOutcome>, StoreError>> + Send;
    /// Pauses or resumes `pool`; returns whether that changed anything.
    fn set_paused(
        &self,
        pool: &PoolKey,
        paused: bool,
        actor: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A rate-limit pause GitHub reported to a worker (labels, queue statuses):
/// nothing is read or sent until it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitPause {
    until: Option<OffsetDateTime>,
}

impl RateLimitPause {
    /// The pause's end while it still runs at `now`; a pause that ended is
    /// forgotten.
    pub fn running(&mut self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        match self.until {
            Some(until) if now < until => Some(until),
            _ => {
                self.until = None;
                None
            }
        }
    }

    /// The end of the last pause reported, if any.
    pub fn until(&self) -> Option<OffsetDateTime> {
        self.until
    }

    /// Records what the last pass reported (`None`: no pause).
    pub fn set(&mut self, until: Option<OffsetDateTime>) {
        self.until = until;
    }
}

/// A stored event that has not been matched against the config yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnplannedEvent {
    /// Event id.
    pub id: EventId,
    /// Payload `action`.
    pub action: String,
    /// Pull request.
    pub pr: PullRequestRef,
    /// Forwardable headers.
    pub headers: Vec<(String, String)>,
    /// The PR's labels in this payload (`None`: the payload had no list).
    pub labels: Option<Vec<String>>,
}

/// What [`DispatchStore::open_dispatches`] reads besides the dispatches.
/// Each extra costs a subquery per waiting dispatch, so it is read only
/// when some pool's order needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenExtras {
    /// Fill [`OpenDispatch::labels`] (some `dispatcher.priority_labels`).
    pub labels: bool,
    /// Fill [`OpenDispatch::recent_triggers`] (some pool is not `fifo`).
    pub recent_triggers: bool,
}

impl OpenExtras {
    /// The dispatches alone (every pool `fifo`, no priority labels).
    pub const NONE: Self = Self {
        labels: false,
        recent_triggers: false,
    };

    /// What the pools of `settings` need to be ordered.
    pub fn for_settings(settings: &crate::config::Settings) -> Self {
        Self {
            labels: !settings.priority_labels.is_empty(),
            recent_triggers: settings
                .pools
                .values()
                .any(|p| p.fairness != crate::config::Fairness::Fifo),
        }
    }
}

/// Whose `<pipeline>/queued` labels [`DispatchStore::reconcile_labels`]
/// brings in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelScope<'a> {
    /// Every pull request's.
    All,
    /// These pull requests' (the ones a pass changed work of).
    PullRequests(&'a [PullRequestRef]),
}

/// A dispatch that still needs the engine: queued, triggering or triggered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDispatch {
    /// Dispatch id.
    pub id: DispatchId,
    /// Its event.
    pub event_id: EventId,
    /// Config item name.
    pub item: String,
    /// Capacity pool.
    pub pool: PoolKey,
    /// Pull request.
    pub pr: PullRequestRef,
    /// Queued, Triggering or Triggered.
    pub state: DispatchState,
    /// FIFO key: the id of the first event of this PR's chain of superseding events.
    pub queue_position: i64,
    /// Attempts made.
    pub attempts: u32,
    /// Earliest next attempt (queued).
    pub next_attempt_at: OffsetDateTime,
    /// EventListener `eventID` (triggered).
    pub listener_event_id: Option<String>,
    /// When the in-flight POST started (triggering).
    pub trigger_started_at: Option<OffsetDateTime>,
    /// When the 202 arrived (triggered).
    pub triggered_at: Option<OffsetDateTime>,
    /// A dispatch for a newer event of the same PR and item exists (in any
    /// state). A queued dispatch with a newer sibling must not run. Only
    /// queued work needs it: stores may leave it `false` for the rest.
    pub has_newer: bool,
    /// The pull request's labels as of its newest stored event that had a
    /// label list (queued work, when [`OpenExtras::labels`]; for
    /// `dispatcher.priority_labels`).
    pub labels: Vec<String>,
    /// When the most recent triggers of this PR's repository in this pool
    /// started, newest first, at most [`crate::config::MAX_WEIGHT`] (queued
    /// work, when [`OpenExtras::recent_triggers`]; for
    /// `round_robin_repository` turns across passes).
    pub recent_triggers: Vec<OffsetDateTime>,
}

/// Everything needed to POST one dispatch to its EventListener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerJob {
    /// Dispatch id.
    pub dispatch: DispatchId,
    /// Its event.
    pub event_id: EventId,
    /// Config item name.
    pub item: String,
    /// Pull request (for logs).
    pub pr: PullRequestRef,
    /// Attempt number of this POST (1-based).
    pub attempt: u32,
    /// When the delivery was accepted (the event's `received_at`, on the
    /// database's clock), for `webhook_dispatcher_queue_wait_seconds`.
    pub accepted_at: OffsetDateTime,
    /// Raw payload, byte-exact.
    pub payload: String,
    /// Forwardable headers.
    pub headers: Vec<(String, String)>,
    /// Adopted from the original's database, whose payloads were
    /// re-serialized: GitHub's signature no longer matches the bytes, so the
    /// trigger signs them again (see [`TriggerRequest::resign`]).
    pub resign: bool,
}

/// What a pass reads first ([`DispatchStore::pass_reads`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReads {
    /// The open set (empty unless asked for).
    pub open: Vec<OpenDispatch>,
    /// The oldest unplanned events.
    pub unplanned: Vec<UnplannedEvent>,
    /// Pools an operator paused.
    pub paused: std::collections::BTreeSet<PoolKey>,
}

/// The storage the single active dispatcher works on. Every method is one
/// transaction, unless a pass transaction is open ([`DispatchStore::begin_pass`]);
/// implementations must fence writes so that a replica that lost the
/// dispatcher lock cannot change anything ([`StoreError::LostLeadership`]).
pub trait DispatchStore: Send {
    /// Opens the transaction every method joins until
    /// [`DispatchStore::commit_pass`] or [`DispatchStore::abort_pass`]: one
    /// pass is one commit instead of one per step (each a round trip or two,
    /// and a WAL flush, before the pass's POSTs can start). The commit waits
    /// for its WAL flush whenever the pass wrote more than intake, so every
    /// job returned by [`DispatchStore::begin_triggers`] is durable before
    /// its POST. Returns the database's clock, read in the same round trip:
    /// the pass's one reading of it. The default (a store without
    /// transactions) only reads the clock.
    fn begin_pass(&mut self) -> impl Future<Output = Result<OffsetDateTime, StoreError>> + Send {
        self.database_now()
    }
    /// What every pass reads first, together: the open set (when `open` asks
    /// for it, with those extras; a full pass), the first `unplanned_limit`
    /// unplanned events and the paused pools. A store that can pipeline
    /// statements sends them in one round trip; the default reads one after
    /// the other.
    fn pass_reads(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        open: Option<OpenExtras>,
        unplanned_limit: usize,
    ) -> impl Future<Output = Result<PassReads, StoreError>> + Send {
        async move {
            let open = match open {
                Some(extras) => self.open_dispatches(reservation_cutoff, extras).await?,
                None => Vec::new(),
            };
            Ok(PassReads {
                open,
                unplanned: self.unplanned_events(unplanned_limit).await?,
                paused: self.paused_pools().await?,
            })
        }
    }
    /// Commits the pass transaction (nothing if none is open).
    fn commit_pass(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Rolls the pass transaction back (nothing if none is open, or if a
    /// failed method already ended it).
    fn abort_pass(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// The database's clock. Every deadline the engine stores or compares is
    /// on this one clock, whichever replica computes it.
    fn database_now(&mut self) -> impl Future<Output = Result<OffsetDateTime, StoreError>> + Send;
    /// Which of `listener_event_ids` some dispatch has recorded (in any state).
    fn claimed_listener_event_ids(
        &mut self,
        listener_event_ids: &[String],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;
    /// Events not matched yet, oldest first (without payloads: most routing needs none).
    fn unplanned_events(
        &mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<UnplannedEvent>, StoreError>> + Send;
    /// Raw payloads of `ids`, for CEL filters.
    fn event_payloads(
        &mut self,
        ids: &[EventId],
    ) -> impl Future<Output = Result<std::collections::HashMap<EventId, String>, StoreError>> + Send;
    /// Queued and triggering dispatches, plus triggered ones newer than
    /// `reservation_cutoff`, with the `extras` asked for.
    fn open_dispatches(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        extras: OpenExtras,
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send;
    /// The open dispatches of `prs` (as [`DispatchStore::open_dispatches`]
    /// without extras), for newest-wins when planning their deliveries.
    fn open_of_prs(
        &mut self,
        reservation_cutoff: OffsetDateTime,
        prs: &[PullRequestRef],
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send {
        async move {
            let open = self
                .open_dispatches(reservation_cutoff, OpenExtras::NONE)
                .await?;
            Ok(crate::open_set::of_prs(open, prs))
        }
    }
    /// The work in flight: triggering dispatches and those triggered after
    /// `reservation_cutoff` ([`crate::open_set::in_flight`]).
    fn in_flight(
        &mut self,
        reservation_cutoff: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send {
        async move {
            let open = self
                .open_dispatches(reservation_cutoff, OpenExtras::NONE)
                .await?;
            Ok(crate::open_set::in_flight(open))
        }
    }
    /// The heads of the queues of `requests`' pools, with the `extras`
    /// asked for ([`crate::open_set::heads`]).
    fn queue_heads(
        &mut self,
        requests: &[crate::open_set::HeadRequest],
        now: OffsetDateTime,
        extras: OpenExtras,
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send {
        async move {
            let open = self.open_dispatches(now, extras).await?;
            Ok(crate::open_set::heads(open, requests, now))
        }
    }
    /// Queued dispatches whose `(item, pool)` is none of `placements`
    /// ([`crate::open_set::misplaced`]).
    fn misplaced(
        &mut self,
        placements: &[(String, PoolKey)],
        extras: OpenExtras,
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send {
        async move {
            let now = self.database_now().await?;
            let open = self.open_dispatches(now, extras).await?;
            Ok(crate::open_set::misplaced(open, placements))
        }
    }
    /// Waiting work per pool ([`crate::open_set::summary`]).
    fn queue_summary(
        &mut self,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<BTreeMap<PoolKey, crate::open_set::QueueSummary>, StoreError>> + Send
    {
        async move {
            let open = self.open_dispatches(now, OpenExtras::NONE).await?;
            Ok(crate::open_set::summary(&open, now))
        }
    }
    /// Applies matching results atomically: aborts, new dispatches, superseded
    /// ones. Returns the new dispatches that are queued.
    fn apply_intake(
        &mut self,
        plan: &IntakePlan,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<OpenDispatch>, StoreError>> + Send;
    /// Moves still-queued dispatches to `triggering` (one more attempt) and returns their payloads.
    fn begin_triggers(
        &mut self,
        ids: &[DispatchId],
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<Vec<TriggerJob>, StoreError>> + Send;
    /// Records outcomes atomically and refreshes the affected events' statuses.
    fn record_outcomes(
        &mut self,
        outcomes: &[DispatchOutcome],
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Pools an operator paused: they queue but trigger nothing.
    fn paused_pools(
        &mut self,
    ) -> impl Future<Output = Result<std::collections::BTreeSet<PoolKey>, StoreError>> + Send;
    /// Brings the wanted `<pipeline>/queued` labels of `scope` in line with
    /// the queue; returns how many changed.
    fn reconcile_labels(
        &mut self,
        now: OffsetDateTime,
        scope: LabelScope<'_>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Brings the wanted queue statuses (`github.queue_status`) in line with
    /// `wanted` (every waiting dispatch's text): new and changed ones are
    /// stored, and statuses whose dispatch no longer waits become "Started"
    /// or "Cancelled". Returns how many changed. Stores without queue
    /// statuses keep the default, which changes nothing.
    fn reconcile_queue_status(
        &mut self,
        wanted: &[crate::queue_status::WantedStatus],
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = (wanted, now);
        async { Ok(0) }
    }
    /// Work whose run may have to be cancelled: dispatches of `query`'s items
    /// with a newer event (superseded items: in flight, or confirmed with a
    /// running run) or a newer `closed` event of their PR (close items: also
    /// queued ones), and no run cancellation yet. The default finds nothing.
    fn cancel_candidates(
        &mut self,
        query: &CancelQuery,
    ) -> impl Future<Output = Result<Vec<CancelCandidate>, StoreError>> + Send {
        let _ = query;
        async { Ok(Vec::new()) }
    }
}

/// One PipelineRun of a pool, reduced to what matching it to a dispatch
/// (and estimating when waiting work starts) needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunView {
    /// `metadata.name`, shown in an event's timeline once the run is seen.
    pub name: Option<String>,
    /// Its `Succeeded` condition is final.
    pub finished: bool,
    /// `status.completionTime` of a finished run (for typical run durations).
    pub finished_at: Option<OffsetDateTime>,
    /// `triggers.tekton.dev/triggers-eventid`: the EventListener event that created it.
    pub event_id: Option<String>,
    /// Value of the pool's `dispatch_label` (the dispatch id the trigger
    /// carried in [`DISPATCH_HEADER`]), when the pool has one.
    pub dispatch_id: Option<String>,
    /// `metadata.creationTimestamp` (the Kubernetes API server's clock).
    pub created_at: Option<OffsetDateTime>,
}

/// What is known about one pool's PipelineRuns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolState {
    /// Kubernetes state is not known to be current: dispatch nothing (fail closed).
    Unknown {
        /// Why, for logs and readiness.
        reason: String,
    },
    /// Current state.
    Known {
        /// PipelineRuns in the pool that are not finished.
        running: u32,
        /// Every PipelineRun of the pool (pipeline label and annotation
        /// selector both match), finished or not.
        runs: Vec<RunView>,
    },
}

/// Source of pool usage (the Kubernetes watch).
pub trait CapacitySource: Send + Sync {
    /// Current state of `pool`; cheap, reads a cache.
    fn pool_state(&self, pool: &crate::config::PoolSpec) -> PoolState;
    /// Completes when some pool's usage or health may have changed since the
    /// last call (a change between calls is not lost).
    fn changed(&self) -> impl Future<Output = ()> + Send + '_;
}

/// Request header carrying the dispatch id on every trigger, so a
/// TriggerTemplate can copy it into a PipelineRun label (`capacity.dispatch_label`).
pub const DISPATCH_HEADER: &str = "X-Webhook-Dispatcher-Dispatch";

/// One POST to an EventListener.
#[derive(Debug, Clone, Copy)]
pub struct TriggerRequest<'a> {
    /// The dispatch, sent as [`DISPATCH_HEADER`].
    pub dispatch: DispatchId,
    /// `callback_url`.
    pub url: &'a Url,
    /// Raw payload, forwarded byte-for-byte.
    pub payload: &'a str,
    /// Forwardable headers.
    pub headers: &'a [(String, String)],
    /// Replace the forwarded signature with one computed over `payload`
    /// (the trigger's own secret); otherwise GitHub's headers go as received.
    pub resign: bool,
}

/// Why a trigger was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// The listener answered something other than 202.
    #[error("EventListener answered HTTP {status}: {body}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Start of the answer body.
        body: String,
    },
    /// The request never reached the listener (connection refused, DNS, TLS
    /// handshake, lease expired): retrying cannot run the PR twice.
    #[error("EventListener unreachable: {0}")]
    Transport(String),
    /// The request was sent but no complete answer came back (reset, closed):
    /// the listener may have created the PipelineRun.
    #[error("EventListener answer lost: {0}")]
    Unanswered(String),
    /// No answer within `dispatch.trigger_timeout`; the listener may have
    /// created the PipelineRun.
    #[error("EventListener did not answer within the trigger timeout")]
    Timeout,
}

impl TriggerError {
    /// Whether the listener may have acted on the request: then the slot
    /// stays reserved and the dispatch is retried only if no PipelineRun for
    /// it shows up by `reservation_timeout`.
    pub fn may_have_reached_listener(&self) -> bool {
        matches!(self, Self::Unanswered(_) | Self::Timeout)
    }
}

/// The EventListener client.
pub trait Trigger: Send + Sync {
    /// POSTs the delivery; `Ok(eventID)` on 202 (`None` if the answer had none).
    fn trigger(
        &self,
        request: TriggerRequest<'_>,
    ) -> impl Future<Output = Result<Option<String>, TriggerError>> + Send;
}

/// Contention for the single active dispatcher (a PostgreSQL advisory lock).
pub trait LeaderElection: Send + Sync + 'static {
    /// The session of the active replica.
    type Session: ActiveSession;
    /// `Some` when this replica now holds the lock; `None` when another does.
    fn try_lead(&self) -> impl Future<Output = Result<Option<Self::Session>, StoreError>> + Send;
}

/// The active replica's session: holds the lock, carries every engine write
/// (so a replica that lost the lock can change nothing) and hears wake-ups.
pub trait ActiveSession: DispatchStore + 'static {
    /// Proof of recent contact with the database.
    type Lease: Lease;
    /// Completes on the next wake-up (a stored delivery); an error means the
    /// session, and leadership with it, is gone.
    fn wait_for_wakeup(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// One cheap round trip that keeps the session (and the lease) alive.
    fn heartbeat(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A handle checked right before every trigger: a replica that resumes
    /// after a freeze longer than the database's idle timeout sends nothing.
    fn lease(&self) -> Self::Lease;
}

/// See [`ActiveSession::lease`].
pub trait Lease: Clone + Send + Sync + 'static {
    /// True while the session was confirmed alive recently enough that the
    /// database cannot have handed the lock to another replica.
    fn is_valid(&self) -> bool;
}

/// Wall clock, injectable for tests.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// One pending change of a pull-request label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTask {
    /// Pull request.
    pub pr: PullRequestRef,
    /// Label name, e.g. `operator-hosted-pipeline/queued`.
    pub label: String,
    /// Add (true) or remove (false).
    pub wanted: bool,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Storage of label intents.
pub trait LabelStore: Send {
    /// Label changes whose next attempt is due.
    fn due_label_tasks(
        &mut self,
        now: OffsetDateTime,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<LabelTask>, StoreError>> + Send;
    /// Records the result of one change (`retry_at` set on failure).
    fn finish_label_task(
        &mut self,
        task: &LabelTask,
        error: Option<String>,
        retry_at: Option<OffsetDateTime>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Earliest time a failed label change should be retried.
    fn next_label_retry(
        &mut self,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, StoreError>> + Send;
}

/// Why a GitHub call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NotifyError {
    /// What went wrong (never a credential).
    pub message: String,
    /// Set when GitHub rate-limited the call: make no calls before this time.
    pub retry_at: Option<OffsetDateTime>,
}

impl NotifyError {
    /// An ordinary failure, retried with the task's backoff.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry_at: None,
        }
    }

    /// A rate limit: no GitHub calls before `retry_at`.
    pub fn rate_limited(message: impl Into<String>, retry_at: OffsetDateTime) -> Self {
        Self {
            message: message.into(),
            retry_at: Some(retry_at),
        }
    }
}

/// Pull-request feedback on GitHub.
pub trait PrNotifier: Send + Sync {
    /// Adds `label` to the pull request.
    fn add_label(
        &self,
        pr: &PullRequestRef,
        label: &str,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
    /// Removes `label`; a label that is not there is success.
    fn remove_label(
        &self,
        pr: &PullRequestRef,
        label: &str,
    ) -> impl Future<Output = Result<(), NotifyError>> + Send;
}

/// Retention's storage (see [`crate::retention`]): each call is one short
/// transaction on the database's clock that never waits for a row another
/// transaction holds (those are skipped until the next batch or pass).
pub trait RetentionStore: Send + Sync {
    /// Deletes up to `limit` finished events that finished more than
    /// `older_than` ago (oldest first), with their dispatches and timelines,
    /// and the settled label rows of pull requests left without events.
    fn delete_finished(
        &self,
        older_than: std::time::Duration,
        limit: u32,
    ) -> impl Future<Output = Result<crate::retention::DeletedBatch, StoreError>> + Send;
    /// Drops the payloads of up to `limit` finished events that finished
    /// more than `older_than` ago, keeping their rows; returns how many.
    fn drop_payloads(
        &self,
        older_than: std::time::Duration,
        limit: u32,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// What a pass with `policy` would delete and drop now; changes nothing.
    fn preview(
        &self,
        policy: &crate::retention::RetentionPolicy,
    ) -> impl Future<Output = Result<crate::retention::RetentionPreview, StoreError>> + Send;
}

pub use crate::catch_up::{CatchUpStore, HookDeliveries};
/// Where a pull request's queue status stands (`github.queue_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusPhase {
    /// Waiting; the description holds its position and estimate.
    Queued,
    /// Dispatched: "Started".
    Started,
    /// Will not run from this place: superseded, closed or cancelled.
    Cancelled,
}

impl StatusPhase {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Cancelled => "cancelled",
        }
    }

    /// From the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "started" => Some(Self::Started),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }

    /// Started or cancelled: the status is complete.
    pub fn is_final(self) -> bool {
        self != Self::Queued
    }
}

/// One queue status GitHub should show but does not yet (or not in this
/// wording): a check run or commit status per (pull request, pipeline, head SHA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTask {
    /// Pull request.
    pub pr: PullRequestRef,
    /// Capacity pool (part of the stored key).
    pub pool: String,
    /// Its pipeline name (the check's name and the status context).
    pub pipeline: String,
    /// The pull request's head commit the status is on.
    pub head_sha: String,
    /// Wanted phase.
    pub phase: StatusPhase,
    /// Wanted text ("Queued: 3rd of 7 for …", "Started", "Cancelled: …").
    pub description: String,
    /// What GitHub shows now (`None`: nothing was sent yet).
    pub applied_phase: Option<StatusPhase>,
    /// The check run created for it (check runs only).
    pub check_run_id: Option<i64>,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Where a dispatch's PipelineRun lives and how it is found: stored with a
/// pending cancellation, so a config change cannot lose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTarget {
    /// Namespace of the pool's PipelineRuns.
    pub namespace: String,
    /// Tekton API version of the pool.
    pub api_version: crate::config::TektonApiVersion,
    /// The pool's `dispatch_label` (a run carries the dispatch id in it).
    pub dispatch_label: Option<String>,
}

/// A dispatch whose PipelineRun may have to be cancelled (`cancel_superseded`,
/// `cancel_on_close`): one that is queued, in flight, or confirmed with its
/// run still running, and has no cancellation yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelCandidate {
    /// Dispatch id.
    pub id: DispatchId,
    /// Its event.
    pub event_id: EventId,
    /// Config item name.
    pub item: String,
    /// Its pool.
    pub pool: PoolKey,
    /// Queued, Triggering, Triggered or Confirmed.
    pub state: DispatchState,
    /// The newest newer event of the same PR with a dispatch of the same item
    /// (`None` for a forced replay).
    pub newer_event: Option<EventId>,
    /// The newest `closed` event of the PR newer than this dispatch's event
    /// (`None` for a forced replay).
    pub closed_by: Option<EventId>,
}

/// What the engine asks the store for when some item cancels runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelQuery {
    /// Items with `cancel_superseded`.
    pub superseded_items: Vec<String>,
    /// Items with `cancel_on_close`.
    pub close_items: Vec<String>,
    /// `triggers-eventid`s of unfinished runs in pools whose state is known.
    pub running_event_ids: Vec<String>,
    /// Dispatch ids (the `dispatch_label` value) of those runs.
    pub running_dispatch_ids: Vec<i64>,
}

/// One pending run cancellation, due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCancelTask {
    /// The dispatch whose run is cancelled.
    pub dispatch: DispatchId,
    /// Its event (for the timeline).
    pub event_id: EventId,
    /// Its pool (for metrics and logs).
    pub pool: PoolKey,
    /// Why its run is cancelled.
    pub reason: crate::planner::CancelReason,
    /// Where its run is.
    pub target: RunTarget,
    /// The dispatch's current state.
    pub state: DispatchState,
    /// Whether its run was ever seen (`confirmed_at` is set).
    pub run_seen: bool,
    /// Its EventListener `eventID`, when known.
    pub listener_event_id: Option<String>,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// What pushing one status did: `Ok(check run id)` (when one was created)
/// or the error and when to retry.
pub type StatusOutcome = Result<Option<i64>, (String, OffsetDateTime)>;

/// Storage of wanted queue statuses (written by the leader's pass).
pub trait QueueStatusStore: Send {
    /// Statuses whose GitHub update is due: changed, not waiting for a
    /// retry, and for a position change not sent within `interval`
    /// (coalescing); final ones are due at once.
    fn due_status_tasks(
        &mut self,
        now: OffsetDateTime,
        interval: std::time::Duration,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StatusTask>, StoreError>> + Send;
    /// Records what GitHub now shows (`Ok(check run id)`) or a failure to
    /// retry at the given time.
    fn finish_status_task(
        &mut self,
        task: &StatusTask,
        result: StatusOutcome,
        now: OffsetDateTime,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// When the next status becomes due (a retry or the end of a coalescing window).
    fn next_status_due(
        &mut self,
        interval: std::time::Duration,
    ) -> impl Future<Output = Result<Option<OffsetDateTime>, StoreError>> + Send;
}

/// Shows queue statuses on GitHub (a check run or a commit status).
pub trait StatusNotifier: Send + Sync {
    /// Creates or updates the status of `task`; returns the check run's id
    /// when one was created (`None` for commit statuses or an update).
    fn publish_status(
        &self,
        task: &StatusTask,
    ) -> impl Future<Output = Result<Option<i64>, NotifyError>> + Send;
}

/// How one run cancellation ended, to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCancelResult {
    /// Done: `runs` were cancelled (empty: nothing was left running).
    Done {
        /// Names of the patched PipelineRuns.
        runs: Vec<String>,
    },
    /// Try again after `retry_in`.
    Retry {
        /// Why it failed.
        error: String,
        /// Delay before the next attempt (on the database clock).
        retry_in: std::time::Duration,
    },
    /// Given up after too many attempts.
    GaveUp {
        /// The last error.
        error: String,
    },
}

/// Storage of pending run cancellations (the active replica's cancel worker).
pub trait RunCancelStore: Send {
    /// Cancellations whose next attempt is due (database clock).
    fn due_run_cancels(
        &mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RunCancelTask>, StoreError>> + Send;
    /// Records one attempt's result (and its timeline entry).
    fn finish_run_cancel(
        &mut self,
        task: &RunCancelTask,
        result: &RunCancelResult,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Time until the earliest pending cancellation is due (`None`: none pending).
    fn next_run_cancel(
        &mut self,
    ) -> impl Future<Output = Result<Option<std::time::Duration>, StoreError>> + Send;
}

/// What cancelling one dispatch's run found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRunOutcome {
    /// These unfinished runs were patched to cancel.
    Cancelled(Vec<String>),
    /// Its runs exist but are all finished (or already being cancelled).
    NothingRunning,
    /// No run carries its eventID or dispatch label.
    NotFound,
}

/// Cancels PipelineRuns (`spec.status: CancelledRunFinally`, or
/// `PipelineRunCancelled` on `v1beta1`).
pub trait RunCanceller: Send + Sync {
    /// Cancels the runs in `target` labelled with `listener_event_id`
    /// (`triggers.tekton.dev/triggers-eventid`) or, with a `dispatch_label`,
    /// with `dispatch`.
    fn cancel_run(
        &self,
        target: &RunTarget,
        dispatch: DispatchId,
        listener_event_id: Option<&str>,
    ) -> impl Future<Output = Result<CancelRunOutcome, String>> + Send;
}
