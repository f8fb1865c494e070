//! JSON shapes of the operators' API (see [`crate::operate`]).

use dispatcher_core::domain::{TimelineEntry, rfc3339};
use dispatcher_core::operate::{PoolOverview, QueuedWork, WaitReason};
use dispatcher_core::rules::{FilterVerdict, ItemVerdict};
use dispatcher_core::timeline::describe;
use serde::Serialize;
use time::OffsetDateTime;

use crate::operate::reason_code;
use crate::wire::EventJson;

/// `GET /api/v1/events/{id}/explain`.
#[derive(Debug, Serialize)]
pub(crate) struct ExplainAnswer<'a> {
    pub(crate) status: &'static str,
    pub(crate) event: EventJson<'a>,
    pub(crate) matching_note: &'static str,
    pub(crate) matching: Vec<VerdictJson<'a>>,
    pub(crate) timeline: Vec<TimelineJson<'a>>,
    pub(crate) waiting: Vec<QueuedJson<'a>>,
}

/// One item's verdict.
#[derive(Debug, Serialize)]
pub(crate) struct VerdictJson<'a> {
    item: &'a str,
    matched: bool,
    repository: bool,
    action: bool,
    /// `no_filter`, `not_evaluated`, `true`, `false` or `error`.
    filter: &'static str,
    filter_error: Option<&'a str>,
}

pub(crate) fn verdict_json(v: &ItemVerdict) -> VerdictJson<'_> {
    let (filter, filter_error) = match &v.filter {
        FilterVerdict::NoFilter => ("no_filter", None),
        FilterVerdict::NotEvaluated => ("not_evaluated", None),
        FilterVerdict::True => ("true", None),
        FilterVerdict::False => ("false", None),
        FilterVerdict::Error(e) => ("error", Some(e.as_str())),
    };
    VerdictJson {
        item: &v.item,
        matched: v.matched(),
        repository: v.repository,
        action: v.action,
        filter,
        filter_error,
    }
}

/// One timeline entry.
#[derive(Debug, Serialize)]
pub(crate) struct TimelineJson<'a> {
    at: String,
    dispatch_id: Option<i64>,
    kind: &'static str,
    message: String,
    actor: Option<&'a str>,
    detail: &'a serde_json::Value,
}

pub(crate) fn timeline_json(e: &TimelineEntry) -> TimelineJson<'_> {
    TimelineJson {
        at: rfc3339::format(e.at),
        dispatch_id: e.dispatch.map(|d| d.0),
        kind: e.kind.as_str(),
        message: describe(e),
        actor: e.actor.as_deref(),
        detail: &e.detail,
    }
}

/// One queued dispatch.
#[derive(Debug, Serialize)]
pub(crate) struct QueuedJson<'a> {
    pool: &'a str,
    position: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    of: Option<u32>,
    dispatch_id: i64,
    event_id: Option<String>,
    item: &'a str,
    repository: &'a str,
    pull_request_number: i64,
    pull_request_url: String,
    /// From `dispatcher.priority_labels` and the PR's labels (0 without).
    priority: i32,
    queued_at: Option<String>,
    wait_seconds: Option<f64>,
    /// `starting`, `pool_full`, `retry_later`, `paused`, `kubernetes_unknown`.
    reason: &'static str,
    message: String,
    next_attempt_at: Option<String>,
    estimated_start: Option<String>,
    last_error: Option<&'a str>,
}

pub(crate) fn queued_json<'a>(
    pool: &'a str,
    of: Option<u32>,
    w: &'a QueuedWork,
    now: OffsetDateTime,
    pr_base: &str,
) -> QueuedJson<'a> {
    QueuedJson {
        pool,
        position: w.position,
        of,
        dispatch_id: w.dispatch.0,
        event_id: w.event.map(|e| e.to_string()),
        item: &w.item,
        repository: &w.pr.repository,
        pull_request_number: w.pr.number,
        pull_request_url: format!("{pr_base}/{}/pull/{}", w.pr.repository, w.pr.number),
        priority: w.priority,
        queued_at: w.queued_at.map(rfc3339::format),
        wait_seconds: w.queued_at.map(|t| seconds(now - t)),
        reason: reason_code(&w.reason),
        message: w.reason.to_string(),
        next_attempt_at: match &w.reason {
            WaitReason::RetryAt { at } => Some(rfc3339::format(*at)),
            _ => None,
        },
        estimated_start: w.estimated_start.map(rfc3339::format),
        last_error: w.last_error.as_deref(),
    }
}

fn seconds(d: time::Duration) -> f64 {
    (d.as_seconds_f64().max(0.0) * 10.0).round() / 10.0
}

/// `GET /api/v1/pools`.
#[derive(Debug, Serialize)]
pub(crate) struct PoolsAnswer<'a> {
    pub(crate) status: &'static str,
    pub(crate) pools: Vec<PoolJson<'a>>,
}

/// Kubernetes state of a pool.
#[derive(Debug, Serialize)]
struct KubernetesJson<'a> {
    known: bool,
    reason: Option<&'a str>,
}

/// One pool.
#[derive(Debug, Serialize)]
pub(crate) struct PoolJson<'a> {
    pool: &'a str,
    namespace: &'a str,
    pipeline: &'a str,
    annotation_selector: &'a std::collections::BTreeMap<String, String>,
    /// `fifo` or `round_robin_repository`.
    fairness: &'static str,
    capacity: u32,
    running: Option<u32>,
    reserved: u32,
    free: Option<u32>,
    queued: usize,
    paused: bool,
    paused_by: Option<&'a str>,
    paused_at: Option<String>,
    kubernetes: KubernetesJson<'a>,
    oldest_wait_seconds: Option<f64>,
    typical_run_seconds: Option<f64>,
    queue: Vec<QueuedJson<'a>>,
}

pub(crate) fn pool_json<'a>(
    p: &'a PoolOverview,
    now: OffsetDateTime,
    pr_base: &str,
) -> PoolJson<'a> {
    let u = &p.usage;
    PoolJson {
        pool: &p.spec.key.0,
        namespace: &p.spec.namespace,
        pipeline: &p.spec.pipeline_name,
        annotation_selector: &p.spec.annotation_selector,
        fairness: p.spec.fairness.as_str(),
        capacity: u.max_capacity,
        running: u.running,
        reserved: u.reserved,
        free: u
            .running
            .map(|r| u.max_capacity.saturating_sub(r.saturating_add(u.reserved))),
        queued: p.queue.len(),
        paused: p.paused.is_some(),
        paused_by: p.paused.as_ref().map(|x| x.by.as_str()),
        paused_at: p.paused.as_ref().map(|x| rfc3339::format(x.at)),
        kubernetes: KubernetesJson {
            known: u.blocked.is_none(),
            reason: u.blocked.as_deref(),
        },
        oldest_wait_seconds: p.oldest_wait.map(|d| d.as_secs_f64()),
        typical_run_seconds: p.typical_run.map(|d| d.as_secs_f64()),
        queue: p
            .queue
            .iter()
            .map(|w| queued_json(&p.spec.key.0, None, w, now, pr_base))
            .collect(),
    }
}
