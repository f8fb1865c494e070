//! The catch-up worker (`github.catch_up`): while this replica leads, asks
//! GitHub to redeliver missed webhook deliveries, once right after the term
//! starts and then every `interval` (longer when GitHub rate-limited the
//! pass). What a pass does is `dispatcher_core::catch_up::run_pass`; a guid
//! is claimed in the database before it is asked for, so ending the term
//! (which aborts this task) never makes it ask twice.

use std::sync::Arc;
use std::time::Instant;

use dispatcher_core::catch_up::{CatchUpPolicy, CatchUpStore, HookDeliveries, run_pass};
use dispatcher_metrics::Metrics;
use time::OffsetDateTime;

pub(crate) async fn catch_up_worker<G, S>(
    github: G,
    store: S,
    policy: CatchUpPolicy,
    metrics: Arc<Metrics>,
) where
    G: HookDeliveries,
    S: CatchUpStore,
{
    loop {
        let started = Instant::now();
        let report = run_pass(&github, &store, &policy, OffsetDateTime::now_utc()).await;
        metrics.catch_up_pass();
        for r in &report.redelivered {
            metrics.catch_up_redelivered(&r.hook);
            tracing::info!(
                hook = %r.hook,
                guid = %r.guid,
                event = %r.event,
                action = r.action.as_deref().unwrap_or(""),
                delivery_id = r.delivery_id,
                status_code = r.status_code,
                "catch-up: asked GitHub to redeliver a missed delivery"
            );
        }
        for e in &report.errors {
            metrics.catch_up_error(&e.hook);
            tracing::warn!(hook = %e.hook, error = %e.message, "catch-up failed for this hook; it is looked at again in the next pass");
        }
        let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            listed = report.listed,
            redelivered = report.redelivered.len(),
            errors = report.errors.len(),
            more = report.truncated,
            took_ms,
            "catch-up pass done"
        );
        let mut wait = policy.interval;
        if let Some(until) = report.paused_until {
            let pause = (until - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or_default();
            tracing::warn!(until = %until, "catch-up: GitHub rate limit; no calls before it ends");
            wait = wait.max(pause);
        }
        tokio::time::sleep(wait).await;
    }
}
