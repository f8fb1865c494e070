//! # dispatcher-metrics
//!
//! The Webhook Dispatcher's Prometheus metrics on `prometheus-client`.
//!
//! **Owns:** every metric name, help text and label set (one place, so the
//! names in dashboards and alerts change only here), the registry, and the
//! OpenMetrics text encoding served at `GET /metrics`.
//!
//! **Must not:** do I/O beyond encoding into a string, nor depend on any other
//! dispatcher crate: `dispatcher-http` counts deliveries, `dispatcher-runtime`
//! sets leadership, pool, trigger and queue-wait metrics, and the binary
//! creates one [`Metrics`], hands it to both and sets the database pool
//! gauges right before each scrape (`dispatcher_http::MetricsRefresh`, so
//! they are never stale).
//!
//! | metric | labels | set by |
//! |---|---|---|
//! | `webhook_dispatcher_deliveries_total` | `outcome` ([`DeliveryOutcome`]) | intake answer (http) |
//! | `webhook_dispatcher_leader` | | after each leadership change (runtime) |
//! | `webhook_dispatcher_pool_capacity` | `pool` | after each pass (runtime) |
//! | `webhook_dispatcher_pool_running` | `pool` | after each pass; absent while unknown |
//! | `webhook_dispatcher_pool_reserved` | `pool` | after each pass |
//! | `webhook_dispatcher_queue_depth` | `pool` | after each pass |
//! | `webhook_dispatcher_oldest_queued_seconds` | `pool` | after each pass: age of the oldest queued dispatch, 0 when none waits |
//! | `webhook_dispatcher_kubernetes_up` | `pool` | after each pass: 1 when the pool's PipelineRuns are known |
//! | `webhook_dispatcher_triggers_total` | `pool`, `result` ([`TriggerOutcome`]) | trigger results (runtime) |
//! | `webhook_dispatcher_trigger_duration_seconds` | `pool` | trigger results (histogram) |
//! | `webhook_dispatcher_queue_wait_seconds` | `pool` | each accepted trigger (histogram): from the delivery's acceptance (`received_at`) to the EventListener's 202, retries and waiting for capacity included |
//! | `webhook_dispatcher_dispatch_pass_duration_seconds` | | each dispatch pass of the active replica (runtime, histogram) |
//! | `webhook_dispatcher_db_pool_size` | | at scrape time: open connections of the database pool (leader session not included) |
//! | `webhook_dispatcher_db_pool_in_use` | | at scrape time: of those, checked out by a request or task |
//! | `webhook_dispatcher_events_finished_total` | `status` ([`FinishStatus`]) | after each pass and trigger recording (runtime): dispatch-level finishes the engine decided in this replica |
//! | `webhook_dispatcher_github_requests_total` | `result` ([`GithubResult`]) | label worker (runtime) |
//! | `webhook_dispatcher_config_reloads_total` | | each applied configuration reload (binary) |
//! | `webhook_dispatcher_config_reload_failures_total` | | each refused (invalid) reload; the running configuration stays |
//! | `webhook_dispatcher_retention_deleted_events_total` | | each retention pass (runtime, active replica): finished events deleted |
//! | `webhook_dispatcher_retention_dropped_payloads_total` | | each retention pass: payloads of finished events dropped |
//! | `webhook_dispatcher_retention_last_run_timestamp_seconds` | | end of the last retention pass that completed (Unix time); 0 until one did |
//! | `webhook_dispatcher_catch_up_redelivered_total` | `hook` | each catch-up pass (runtime, active replica): redeliveries asked of GitHub |
//! | `webhook_dispatcher_catch_up_errors_total` | `hook` | each catch-up pass: failed listings or redelivery requests (rate limits included) |
//! | `webhook_dispatcher_catch_up_passes_total` | | each catch-up pass that ran |
//! | `webhook_dispatcher_build_info` | `version` | always 1 |
//! | `webhook_dispatcher_runs_cancelled_total` | `pool`, `reason` (`superseded`, `closed`) | run-cancel worker (runtime, active replica): PipelineRuns patched to cancel (`cancel_superseded`, `cancel_on_close`) |
//! | `webhook_dispatcher_run_cancel_failures_total` | `pool` | run-cancel worker: failed cancel attempts (retried with backoff, or given up) |
//!
//! ```
//! use dispatcher_metrics::{DeliveryOutcome, Metrics};
//! let metrics = Metrics::new("1.2.3");
//! metrics.delivery(DeliveryOutcome::Accepted);
//! let text = metrics.encode();
//! assert!(text.contains("webhook_dispatcher_deliveries_total{outcome=\"accepted\"} 1"));
//! ```

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How the intake answered one webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryOutcome {
    /// Stored as a new event.
    Accepted,
    /// Already stored with the same payload (a redelivery).
    Redelivered,
    /// Allowed event type without a pull request: acknowledged, not stored.
    Ignored,
    /// GitHub `ping`.
    Ping,
    /// No configured secret produces the signature.
    BadSignature,
    /// Header, content type or payload checks failed.
    BadRequest,
    /// Delivery id already stored with a different payload.
    Conflict,
    /// Body over the limit.
    TooLarge,
    /// Not stored for a server-side reason (database, budget, timeout).
    Unavailable,
}

/// Result of one trigger (POST to an EventListener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerOutcome {
    /// The EventListener accepted it.
    Accepted,
    /// Failed; will be retried.
    Retry,
    /// Failed for good.
    Failed,
    /// No answer known (the task was lost or the request timed out).
    Unanswered,
}

/// How the engine finished a dispatch (or an event nothing matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishStatus {
    /// Accepted by its EventListener.
    Processed,
    /// Queued dispatch superseded by a newer event.
    Cancelled,
    /// Event no config item matched.
    Aborted,
    /// Ran out of trigger attempts.
    Failed,
}

/// Result of one GitHub API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GithubResult {
    /// Succeeded.
    Ok,
    /// Failed.
    Error,
    /// Refused by GitHub's rate limit.
    RateLimited,
}

/// Label values: the snake_case names of the variants.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values!(DeliveryOutcome {
    Accepted => "accepted",
    Redelivered => "redelivered",
    Ignored => "ignored",
    Ping => "ping",
    BadSignature => "bad_signature",
    BadRequest => "bad_request",
    Conflict => "conflict",
    TooLarge => "too_large",
    Unavailable => "unavailable",
});
label_values!(TriggerOutcome {
    Accepted => "accepted",
    Retry => "retry",
    Failed => "failed",
    Unanswered => "unanswered",
});
label_values!(FinishStatus {
    Processed => "processed",
    Cancelled => "cancelled",
    Aborted => "aborted",
    Failed => "failed",
});
label_values!(GithubResult {
    Ok => "ok",
    Error => "error",
    RateLimited => "rate_limited",
});

/// Per-pool usage after a pass (see [`Metrics::set_pool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGauges {
    /// `max_capacity`.
    pub capacity: u32,
    /// Unfinished PipelineRuns, `None` while Kubernetes' state is unknown.
    pub running: Option<u32>,
    /// Triggered dispatches not visible yet plus triggers in flight.
    pub reserved: u32,
    /// Queued dispatches.
    pub waiting: u32,
    /// Whole seconds the oldest queued dispatch has waited, 0 when none waits.
    pub oldest_queued_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: DeliveryOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RunCancelLabels {
    pool: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TriggerLabels {
    pool: String,
    result: TriggerOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FinishLabels {
    status: FinishStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GithubLabels {
    result: GithubResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn trigger_histogram() -> Histogram {
    // 10 ms .. ~41 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// Upper bounds of `webhook_dispatcher_queue_wait_seconds`: a free pool
/// answers within a second, a full one makes PRs wait minutes to hours
/// (pipelines run for tens of minutes), so the buckets span both.
const QUEUE_WAIT_BUCKETS: [f64; 17] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
    7200.0, 14400.0, 28800.0,
];

fn queue_wait_histogram() -> Histogram {
    Histogram::new(QUEUE_WAIT_BUCKETS)
}

/// The registry and every metric family. Cheap to update from any thread;
/// share it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    deliveries: Family<OutcomeLabels, Counter>,
    leader: Gauge,
    config_reloads: Counter,
    config_reload_failures: Counter,
    pool_capacity: Family<PoolLabels, Gauge>,
    pool_running: Family<PoolLabels, Gauge>,
    pool_reserved: Family<PoolLabels, Gauge>,
    queue_depth: Family<PoolLabels, Gauge>,
    oldest_queued: Family<PoolLabels, Gauge>,
    kubernetes_up: Family<PoolLabels, Gauge>,
    triggers: Family<TriggerLabels, Counter>,
    trigger_duration: HistogramFamily<PoolLabels>,
    queue_wait: HistogramFamily<PoolLabels>,
    pass_duration: Histogram,
    db_pool_size: Gauge,
    db_pool_in_use: Gauge,
    github_requests: Family<GithubLabels, Counter>,
    events_finished: Family<FinishLabels, Counter>,
    retention_deleted_events: Counter,
    retention_dropped_payloads: Counter,
    retention_last_run: Gauge,
    catch_up: CatchUpMetrics,
    runs_cancelled: Family<RunCancelLabels, Counter>,
    run_cancel_failures: Family<PoolLabels, Counter>,
}

impl Metrics {
    /// A registry with every metric registered; `webhook_dispatcher_build_info{version}` is 1.
    pub fn new(version: &str) -> Self {
        let mut registry = Registry::default();
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_deliveries",
            "Webhook deliveries by intake answer",
            deliveries.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "webhook_dispatcher_leader",
            "1 while this replica is the active dispatcher, 0 otherwise",
            leader.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "webhook_dispatcher_config_reloads",
            "Configuration reloads applied (SIGHUP or a change of the file)",
            config_reloads.clone(),
        );
        let config_reload_failures = Counter::default();
        registry.register(
            "webhook_dispatcher_config_reload_failures",
            "Configuration reloads refused (invalid file: the running configuration stays)",
            config_reload_failures.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<PoolLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let pool_capacity = gauge(
            &mut registry,
            "webhook_dispatcher_pool_capacity",
            "max_capacity of the pool",
        );
        let pool_running = gauge(
            &mut registry,
            "webhook_dispatcher_pool_running",
            "Unfinished PipelineRuns of the pool (absent while unknown)",
        );
        let pool_reserved = gauge(
            &mut registry,
            "webhook_dispatcher_pool_reserved",
            "Triggered dispatches whose PipelineRun is not visible yet, plus triggers in flight",
        );
        let queue_depth = gauge(
            &mut registry,
            "webhook_dispatcher_queue_depth",
            "Queued dispatches of the pool",
        );
        let oldest_queued = gauge(
            &mut registry,
            "webhook_dispatcher_oldest_queued_seconds",
            "Age of the oldest queued dispatch of the pool (since creation or the end of its retry backoff), 0 when none waits",
        );
        let kubernetes_up = gauge(
            &mut registry,
            "webhook_dispatcher_kubernetes_up",
            "1 when the pool's PipelineRuns are known from Kubernetes, 0 otherwise",
        );
        let triggers = Family::<TriggerLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_triggers",
            "Triggers (POSTs to EventListeners) by result",
            triggers.clone(),
        );
        let trigger_duration: HistogramFamily<PoolLabels> =
            Family::new_with_constructor(trigger_histogram);
        registry.register(
            "webhook_dispatcher_trigger_duration_seconds",
            "Time from sending a trigger to its result",
            trigger_duration.clone(),
        );
        let queue_wait: HistogramFamily<PoolLabels> =
            Family::new_with_constructor(queue_wait_histogram);
        registry.register(
            "webhook_dispatcher_queue_wait_seconds",
            "Time from a delivery's acceptance to the EventListener's 202 for its dispatch",
            queue_wait.clone(),
        );
        // 0.5 ms … 8 s: an idle pass takes a few ms, a pass over a deep
        // queue tens to hundreds.
        let pass_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register(
            "webhook_dispatcher_dispatch_pass_duration_seconds",
            "Time of one dispatch pass of the active replica (recording answers, planning, committing)",
            pass_duration.clone(),
        );
        let db_pool_size = Gauge::default();
        registry.register(
            "webhook_dispatcher_db_pool_size",
            "Open connections of the database pool (refreshed at scrape time)",
            db_pool_size.clone(),
        );
        let db_pool_in_use = Gauge::default();
        registry.register(
            "webhook_dispatcher_db_pool_in_use",
            "Database pool connections checked out (refreshed at scrape time)",
            db_pool_in_use.clone(),
        );
        let github_requests = Family::<GithubLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_github_requests",
            "GitHub API requests by result",
            github_requests.clone(),
        );
        let events_finished = Family::<FinishLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_events_finished",
            "Dispatch-level finishes the engine decided in this replica, by status",
            events_finished.clone(),
        );
        let retention_deleted_events = Counter::default();
        registry.register(
            "webhook_dispatcher_retention_deleted_events",
            "Finished events deleted by retention in this replica",
            retention_deleted_events.clone(),
        );
        let retention_dropped_payloads = Counter::default();
        registry.register(
            "webhook_dispatcher_retention_dropped_payloads",
            "Payloads of finished events dropped by retention in this replica",
            retention_dropped_payloads.clone(),
        );
        let retention_last_run = Gauge::default();
        registry.register(
            "webhook_dispatcher_retention_last_run_timestamp_seconds",
            "Unix time at which the last completed retention pass of this replica ended",
            retention_last_run.clone(),
        );
        let catch_up = CatchUpMetrics::register(&mut registry);
        let runs_cancelled = Family::<RunCancelLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_runs_cancelled",
            "PipelineRuns cancelled because a newer event superseded them or their pull request closed",
            runs_cancelled.clone(),
        );
        let run_cancel_failures = Family::<PoolLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_run_cancel_failures",
            "Failed attempts to cancel a PipelineRun (retried with backoff)",
            run_cancel_failures.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: version.to_owned(),
            })
            .set(1);
        registry.register(
            "webhook_dispatcher_build_info",
            "Always 1; the version label names the build",
            build_info,
        );
        Self {
            registry,
            deliveries,
            leader,
            config_reloads,
            config_reload_failures,
            pool_capacity,
            pool_running,
            pool_reserved,
            queue_depth,
            oldest_queued,
            kubernetes_up,
            triggers,
            trigger_duration,
            queue_wait,
            pass_duration,
            db_pool_size,
            db_pool_in_use,
            github_requests,
            events_finished,
            retention_deleted_events,
            retention_dropped_payloads,
            retention_last_run,
            catch_up,
            runs_cancelled,
            run_cancel_failures,
        }
    }

    /// Counts `runs` PipelineRuns of `pool` cancelled for `reason`.
    pub fn runs_cancelled(&self, pool: &str, reason: &str, runs: u64) {
        self.runs_cancelled
            .get_or_create(&RunCancelLabels {
                pool: pool.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(runs);
    }

    /// Counts one failed attempt to cancel a run of `pool`.
    pub fn run_cancel_failed(&self, pool: &str) {
        self.run_cancel_failures
            .get_or_create(&PoolLabels {
                pool: pool.to_owned(),
            })
            .inc();
    }

    /// Counts what a retention pass deleted and dropped (also the part a
    /// failed pass committed).
    pub fn retention(&self, deleted_events: u64, dropped_payloads: u64) {
        self.retention_deleted_events.inc_by(deleted_events);
        self.retention_dropped_payloads.inc_by(dropped_payloads);
    }

    /// Records that a retention pass completed at `unix_seconds`.
    pub fn retention_completed(&self, unix_seconds: i64) {
        self.retention_last_run.set(unix_seconds);
    }

    /// Counts one intake answer.
    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts one configuration reload: applied, or refused (invalid).
    pub fn config_reload(&self, applied: bool) {
        if applied {
            self.config_reloads.inc();
        } else {
            self.config_reload_failures.inc();
        }
    }

    /// Sets the leader gauge. Losing leadership also drops the pool gauges,
    /// which only the active replica knows.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        if !leading {
            for family in self.pool_families() {
                family.clear();
            }
        }
    }

    /// Sets the gauges of one pool (`pool` is the pool key, e.g. `ns/pipeline`).
    pub fn set_pool(&self, pool: &str, gauges: PoolGauges) {
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        self.pool_capacity
            .get_or_create(&labels)
            .set(i64::from(gauges.capacity));
        match gauges.running {
            Some(running) => {
                self.pool_running
                    .get_or_create(&labels)
                    .set(i64::from(running));
            }
            None => {
                self.pool_running.remove(&labels);
            }
        }
        self.pool_reserved
            .get_or_create(&labels)
            .set(i64::from(gauges.reserved));
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::from(gauges.waiting));
        self.oldest_queued
            .get_or_create(&labels)
            .set(i64::try_from(gauges.oldest_queued_secs).unwrap_or(i64::MAX));
        self.kubernetes_up
            .get_or_create(&labels)
            .set(i64::from(gauges.running.is_some()));
    }

    /// Counts one trigger result and, when known, how long it took.
    pub fn trigger(&self, pool: &str, result: TriggerOutcome, took: Option<Duration>) {
        self.triggers
            .get_or_create(&TriggerLabels {
                pool: pool.to_owned(),
                result,
            })
            .inc();
        if let Some(took) = took {
            self.trigger_duration
                .get_or_create(&PoolLabels {
                    pool: pool.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Observes one dispatch pass's duration.
    pub fn pass_finished(&self, took: Duration) {
        self.pass_duration.observe(took.as_secs_f64());
    }

    /// Observes how long a delivery waited, from its acceptance to the 202 of
    /// its dispatch's trigger (call once per accepted trigger).
    pub fn queue_wait(&self, pool: &str, waited: Duration) {
        self.queue_wait
            .get_or_create(&PoolLabels {
                pool: pool.to_owned(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Sets the database pool gauges: `size` open connections, `in_use` of
    /// them checked out. Meant to be called right before [`encode`](Self::encode)
    /// (the pool changes between any two scrapes).
    pub fn set_db_pool(&self, size: usize, in_use: usize) {
        self.db_pool_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
        self.db_pool_in_use
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }

    /// Counts one GitHub API request.
    pub fn github_request(&self, result: GithubResult) {
        self.github_requests
            .get_or_create(&GithubLabels { result })
            .inc();
    }

    /// Counts `count` finishes with `status` (nothing when `count` is 0).
    pub fn finished(&self, status: FinishStatus, count: usize) {
        if count > 0 {
            self.events_finished
                .get_or_create(&FinishLabels { status })
                .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        }
    }

    /// The OpenMetrics text of every metric (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    fn pool_families(&self) -> [&Family<PoolLabels, Gauge>; 6] {
        [
            &self.pool_capacity,
            &self.pool_running,
            &self.pool_reserved,
            &self.queue_depth,
            &self.oldest_queued,
            &self.kubernetes_up,
        ]
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(env!("CARGO_PKG_VERSION"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HookLabels {
    hook: String,
}

/// The catch-up of missed deliveries (`github.catch_up`).
#[derive(Debug)]
struct CatchUpMetrics {
    redelivered: Family<HookLabels, Counter>,
    errors: Family<HookLabels, Counter>,
    passes: Counter,
}

impl CatchUpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let redelivered = Family::<HookLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_catch_up_redelivered",
            "Redeliveries of missed webhook deliveries this replica asked GitHub for",
            redelivered.clone(),
        );
        let errors = Family::<HookLabels, Counter>::default();
        registry.register(
            "webhook_dispatcher_catch_up_errors",
            "Failed catch-up calls to GitHub (listing or redelivery request) or to the database",
            errors.clone(),
        );
        let passes = Counter::default();
        registry.register(
            "webhook_dispatcher_catch_up_passes",
            "Catch-up passes run by this replica",
            passes.clone(),
        );
        Self {
            redelivered,
            errors,
            passes,
        }
    }
}

impl Metrics {
    /// Counts one redelivery asked for `hook` (`repos/o/r/hooks/1`).
    pub fn catch_up_redelivered(&self, hook: &str) {
        self.catch_up
            .redelivered
            .get_or_create(&HookLabels {
                hook: hook.to_owned(),
            })
            .inc();
    }

    /// Counts one failure of the catch-up for `hook`.
    pub fn catch_up_error(&self, hook: &str) {
        self.catch_up
            .errors
            .get_or_create(&HookLabels {
                hook: hook.to_owned(),
            })
            .inc();
    }

    /// Counts one catch-up pass.
    pub fn catch_up_pass(&self) {
        self.catch_up.passes.inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]

    use super::*;

    #[test]
    fn pool_gauges_and_leader() {
        let m = Metrics::new("0.0.0");
        m.set_leader(true);
        m.set_pool(
            "ns/p?k=v",
            PoolGauges {
                capacity: 3,
                running: None,
                reserved: 1,
                waiting: 2,
                oldest_queued_secs: 7,
            },
        );
        m.trigger(
            "ns/p",
            TriggerOutcome::Retry,
            Some(Duration::from_millis(5)),
        );
        let text = m.encode();
        assert!(text.contains("webhook_dispatcher_leader 1\n"), "{text}");
        assert!(text.contains("webhook_dispatcher_pool_capacity{pool=\"ns/p?k=v\"} 3\n"));
        assert!(text.contains("webhook_dispatcher_kubernetes_up{pool=\"ns/p?k=v\"} 0\n"));
        assert!(text.contains("webhook_dispatcher_oldest_queued_seconds{pool=\"ns/p?k=v\"} 7\n"));
        assert!(!text.contains("webhook_dispatcher_pool_running{"));
        assert!(
            text.contains("webhook_dispatcher_triggers_total{pool=\"ns/p\",result=\"retry\"} 1\n")
        );
        assert!(text.contains("webhook_dispatcher_build_info{version=\"0.0.0\"} 1\n"));
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        let text = m.encode();
        assert!(
            text.contains("webhook_dispatcher_config_reloads_total 1\n"),
            "{text}"
        );
        assert!(text.contains("webhook_dispatcher_config_reload_failures_total 2\n"));
        assert!(text.ends_with("# EOF\n"));
        m.finished(FinishStatus::Processed, 2);
        m.finished(FinishStatus::Cancelled, 0);
        let text = m.encode();
        assert!(
            text.contains("webhook_dispatcher_events_finished_total{status=\"processed\"} 2\n"),
            "{text}"
        );
        assert!(!text.contains("status=\"cancelled\""));
        m.set_leader(false);
        let text = m.encode();
        assert!(text.contains("webhook_dispatcher_leader 0\n"));
        assert!(!text.contains("webhook_dispatcher_pool_capacity{"));
        assert!(!text.contains("webhook_dispatcher_oldest_queued_seconds{"));
    }

    /// The value of the sample line starting with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no sample {prefix} in {text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unreadable sample {line}"))
    }

    #[test]
    fn queue_wait_histogram_counts_and_buckets() {
        let m = Metrics::new("0.0.0");
        m.queue_wait("ns/p", Duration::from_millis(300));
        m.queue_wait("ns/p", Duration::from_secs(90));
        m.queue_wait("ns/p", Duration::from_secs(5 * 3600));
        m.queue_wait("ns/q", Duration::from_secs(1));
        let text = m.encode();
        let p = "webhook_dispatcher_queue_wait_seconds";
        assert!(text.contains(&format!("# TYPE {p} histogram\n")), "{text}");
        assert_eq!(sample(&text, &format!("{p}_count{{pool=\"ns/p\"}}")), 3.0);
        assert_eq!(sample(&text, &format!("{p}_count{{pool=\"ns/q\"}}")), 1.0);
        let sum = sample(&text, &format!("{p}_sum{{pool=\"ns/p\"}}"));
        assert!((sum - (0.3 + 90.0 + 18000.0)).abs() < 1e-6, "{sum}");
        // Buckets are cumulative: seconds at the low end, hours at the high end.
        let bucket = |le: &str| sample(&text, &format!("{p}_bucket{{le=\"{le}\",pool=\"ns/p\"}}"));
        assert_eq!(bucket("0.25"), 0.0);
        assert_eq!(bucket("0.5"), 1.0);
        assert_eq!(bucket("60.0"), 1.0);
        assert_eq!(bucket("120.0"), 2.0);
        assert_eq!(bucket("14400.0"), 2.0);
        assert_eq!(bucket("28800.0"), 3.0);
        assert_eq!(bucket("+Inf"), 3.0);
    }

    #[test]
    fn db_pool_gauges_show_the_last_values_set() {
        let m = Metrics::new("0.0.0");
        let text = m.encode();
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_size "), 0.0);
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_in_use "), 0.0);
        m.set_db_pool(4, 1);
        let text = m.encode();
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_size "), 4.0);
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_in_use "), 1.0);
        // Not a pool gauge: it stays when leadership is lost.
        m.set_leader(false);
        m.set_db_pool(2, 0);
        let text = m.encode();
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_size "), 2.0);
        assert_eq!(sample(&text, "webhook_dispatcher_db_pool_in_use "), 0.0);
    }

    #[test]
    fn retention_counts_and_last_run() {
        let m = Metrics::new("0.0.0");
        let text = m.encode();
        assert_eq!(
            sample(&text, "webhook_dispatcher_retention_deleted_events_total "),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                "webhook_dispatcher_retention_last_run_timestamp_seconds "
            ),
            0.0
        );
        m.retention(5, 2);
        m.retention(1, 0);
        m.retention_completed(1_800_000_000);
        let text = m.encode();
        assert_eq!(
            sample(&text, "webhook_dispatcher_retention_deleted_events_total "),
            6.0
        );
        assert_eq!(
            sample(
                &text,
                "webhook_dispatcher_retention_dropped_payloads_total "
            ),
            2.0
        );
        assert_eq!(
            sample(
                &text,
                "webhook_dispatcher_retention_last_run_timestamp_seconds "
            ),
            1_800_000_000.0
        );
    }

    #[test]
    fn catch_up_counts_per_hook() {
        let m = Metrics::new("0.0.0");
        m.catch_up_redelivered("repos/o/r/hooks/1");
        m.catch_up_redelivered("repos/o/r/hooks/1");
        m.catch_up_error("orgs/o/hooks/2");
        m.catch_up_pass();
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "webhook_dispatcher_catch_up_redelivered_total{hook=\"repos/o/r/hooks/1\"} "
            ),
            2.0
        );
        assert_eq!(
            sample(
                &text,
                "webhook_dispatcher_catch_up_errors_total{hook=\"orgs/o/hooks/2\"} "
            ),
            1.0
        );
        assert_eq!(
            sample(&text, "webhook_dispatcher_catch_up_passes_total "),
            1.0
        );
    }
}
