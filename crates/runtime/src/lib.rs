//! # dispatcher-runtime
//!
//! The Webhook Dispatcher's async orchestration, embeddable in any tokio
//! program.
//!
//! **Owns:** contending for leadership (one active dispatcher among the
//! replicas), the active replica's loop (passes on wake-ups, PipelineRun
//! changes, deadlines and a slow safety timer; a heartbeat while idle; a
//! timeout on every pass), trigger tasks in a [`tokio::task::JoinSet`] whose
//! outcomes survive a lost session and are recorded in the next term, the
//! label worker, the retention worker, the catch-up worker, shutdown that records POSTs already sent, and the status
//! snapshot behind readiness and liveness.
//!
//! **Must not:** depend on a concrete adapter (PostgreSQL, Kubernetes,
//! GitHub, hyper): it drives the `dispatcher-core` ports and engine only, so
//! it is the one production path the engine tests also exercise, and an
//! operator tool can plug in its own adapters. Decisions (what to trigger,
//! retry or cancel) belong to `dispatcher-core`'s planner, not here.
//!
//! ```no_run
//! # async fn demo<L, C, T>(settings: std::sync::Arc<dispatcher_core::config::Settings>, election: L, capacity: std::sync::Arc<C>, trigger: T)
//! # where L: dispatcher_core::ports::LeaderElection, C: dispatcher_core::ports::CapacitySource + 'static, T: dispatcher_core::ports::Trigger + Clone + 'static {
//! use dispatcher_runtime::Runtime;
//!
//! let runtime = Runtime::new(settings, election, capacity, trigger);
//! let status = runtime.status(); // readiness, liveness
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(runtime.run(stopped));
//! // ... later, on SIGTERM:
//! let _ = stop.send(true);
//! let _ = task.await;
//! # }
//! ```
//!
//! `examples/embedded.rs` runs the intake HTTP service and the dispatcher
//! with the production adapters inside another program.

mod cancels;
mod catch_up;
mod labels;
mod leader;
mod pacing;
mod queue_status;
mod retention;
mod status;
mod triggers;
mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dispatcher_core::config::Settings;
use dispatcher_core::ports::{
    CapacitySource, LabelStore, LeaderElection, PrNotifier, QueueStatusStore, RetentionStore,
    RunCancelStore, RunCanceller, StatusNotifier, Trigger,
};
use dispatcher_core::retention::RetentionPolicy;
use dispatcher_metrics::Metrics;
use tokio::sync::{Notify, watch};

pub use status::{DispatcherStatus, Role};

/// Starts a label worker for one leadership term; it is woken through the
/// `Notify` when label intents changed and counts its GitHub requests.
type LabelWorkerFactory = Arc<
    dyn Fn(Arc<Notify>, Arc<Metrics>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync,
>;

/// Starts the retention worker for one leadership term.
type RetentionWorkerFactory =
    Arc<dyn Fn(Arc<Metrics>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Starts the catch-up worker for one leadership term.
type CatchUpWorkerFactory = RetentionWorkerFactory;
/// Starts the run-cancel worker for one leadership term.
type CancelWorkerFactory =
    Arc<dyn Fn(Arc<Metrics>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A start-up step retried until it succeeds (see [`Runtime::with_preparation`]).
pub(crate) type Preparation =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The dispatcher of one replica: contends for leadership and, while it
/// leads, dispatches. Build it with [`Runtime::new`], add optional parts,
/// then [`Runtime::run`] it.
pub struct Runtime<L, C, T> {
    settings: Arc<Settings>,
    election: L,
    capacity: Arc<C>,
    trigger: T,
    labels: Option<LabelWorkerFactory>,
    statuses: Option<LabelWorkerFactory>,
    retention: Option<RetentionWorkerFactory>,
    catch_up: Option<CatchUpWorkerFactory>,
    run_cancels: Option<CancelWorkerFactory>,
    preparation: Option<(String, Preparation)>,
    status: Arc<DispatcherStatus>,
    metrics: Arc<Metrics>,
    updates: Option<watch::Receiver<Arc<Settings>>>,
}

impl<L, C, T> std::fmt::Debug for Runtime<L, C, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("status", &self.status)
            .field("labels", &self.labels.is_some())
            .field("retention", &self.retention.is_some())
            .finish_non_exhaustive()
    }
}

impl<L, C, T> Runtime<L, C, T>
where
    L: LeaderElection,
    C: CapacitySource + 'static,
    T: Trigger + Clone + 'static,
{
    /// A dispatcher over the given ports: leader election and the active
    /// session's store, pool usage, and the EventListener client.
    pub fn new(settings: Arc<Settings>, election: L, capacity: Arc<C>, trigger: T) -> Self {
        let status = DispatcherStatus::new(&settings);
        Self {
            settings,
            election,
            capacity,
            trigger,
            labels: None,
            statuses: None,
            retention: None,
            catch_up: None,
            run_cancels: None,
            preparation: None,
            status,
            metrics: Arc::new(Metrics::default()),
            updates: None,
        }
    }

    /// Follows configuration reloads: each new value sent on the channel is
    /// used from the next pass on (which it triggers at once), so a raised
    /// capacity is used within milliseconds. Items, filters, pools,
    /// capacities and the retry, reservation and pass tuning reload;
    /// `failover_timeout` and the timings derived from it are fixed when a
    /// leadership term starts.
    #[must_use]
    pub fn with_settings_updates(mut self, updates: watch::Receiver<Arc<Settings>>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// A step to finish before contending for leadership, such as applying
    /// database migrations: retried every `dispatch.leader_retry_interval`
    /// (at least 1 s) until it succeeds, with readiness showing
    /// "`what`: <error>" meanwhile, so a database that is not up yet delays
    /// dispatching instead of crashing the process.
    #[must_use]
    pub fn with_preparation<F, Fut>(mut self, what: impl Into<String>, step: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.preparation = Some((what.into(), Box::new(move || Box::pin(step()))));
        self
    }

    /// Sets the metrics registry the runtime updates: the leader gauge on
    /// every change of role, the pool gauges after each pass (default: a
    /// registry of its own). Share it with the HTTP app that serves `/metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Pushes `<pipeline>/queued` labels to pull requests while leading.
    #[must_use]
    pub fn with_labels<S, N>(mut self, store: S, notifier: N) -> Self
    where
        S: LabelStore + Clone + Sync + 'static,
        N: PrNotifier + Clone + 'static,
    {
        self.labels = Some(Arc::new(move |wake, metrics| {
            let notifier = labels::Counted {
                inner: notifier.clone(),
                metrics,
            };
            Box::pin(labels::label_worker(store.clone(), notifier, wake))
        }));
        self
    }

    /// Shows each waiting pull request's queue position and estimated start
    /// as a check run or commit status while leading (`github.queue_status`),
    /// one position update per `interval` at most.
    #[must_use]
    pub fn with_queue_status<S, N>(mut self, store: S, notifier: N, interval: Duration) -> Self
    where
        S: QueueStatusStore + Clone + Sync + 'static,
        N: StatusNotifier + Clone + 'static,
    {
        self.statuses = Some(Arc::new(move |wake, metrics| {
            let notifier = queue_status::Counted {
                inner: notifier.clone(),
                metrics,
            };
            Box::pin(queue_status::status_worker(
                store.clone(),
                notifier,
                wake,
                interval,
            ))
        }));
        self
    }

    /// Deletes old finished events while leading (`retention:`): a pass
    /// shortly after each term starts, then every `policy.interval`.
    #[must_use]
    pub fn with_retention<S>(mut self, store: S, policy: RetentionPolicy) -> Self
    where
        S: RetentionStore + Clone + 'static,
    {
        self.retention = Some(Arc::new(move |metrics| {
            Box::pin(retention::retention_worker(store.clone(), policy, metrics))
        }));
        self
    }

    /// Asks GitHub to redeliver missed webhook deliveries while leading
    /// (`github.catch_up`): a pass right after each term starts, then every
    /// `policy.interval`.
    #[must_use]
    pub fn with_catch_up<G, S>(
        mut self,
        github: G,
        store: S,
        policy: dispatcher_core::catch_up::CatchUpPolicy,
    ) -> Self
    where
        G: dispatcher_core::catch_up::HookDeliveries + Clone + 'static,
        S: dispatcher_core::catch_up::CatchUpStore + Clone + 'static,
    {
        self.catch_up = Some(Arc::new(move |metrics| {
            Box::pin(catch_up::catch_up_worker(
                github.clone(),
                store.clone(),
                policy.clone(),
                metrics,
            ))
        }));
        self
    }

    /// Cancels the PipelineRuns of work cancelled by `cancel_superseded` or
    /// `cancel_on_close` while leading: pending cancellations are retried
    /// with backoff beside the engine, never blocking dispatching.
    #[must_use]
    pub fn with_run_cancels<S, K>(mut self, store: S, canceller: Arc<K>) -> Self
    where
        S: RunCancelStore + Clone + Sync + 'static,
        K: RunCanceller + 'static,
    {
        self.run_cancels = Some(Arc::new(move |metrics| {
            Box::pin(cancels::cancel_worker(
                store.clone(),
                Arc::clone(&canceller),
                metrics,
            ))
        }));
        self
    }

    /// The status snapshot this runtime keeps current (role, passes, pools,
    /// liveness). Clone it before [`Runtime::run`] consumes the runtime.
    pub fn status(&self) -> Arc<DispatcherStatus> {
        Arc::clone(&self.status)
    }

    /// Runs until `shutdown` turns true: contends for leadership, dispatches
    /// while leading, and on shutdown stops starting triggers, waits for the
    /// POSTs already sent (bounded by `dispatch.trigger_timeout`) and records
    /// them.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        leader::run(self, shutdown).await;
    }
}
