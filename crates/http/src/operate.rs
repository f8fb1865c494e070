//! The operators' API: explain a delivery, see the pools and their queues,
//! replay or cancel an event, pause or resume a pool.
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /api/v1/events/{id}/explain` | read | matching per item, the stored timeline, why waiting work waits (`?format=text`: the same as text) |
//! | `GET /api/v1/pools`, `GET /api/v1/pools/{pool}` | read | capacity, running, reserved, queue with positions and estimated starts, pause, Kubernetes state |
//! | `POST /api/v1/events/{id}/replay[?force=true]` | admin | a new round of dispatches for a finished event |
//! | `POST /api/v1/events/{id}/cancel` | admin | cancels the event's waiting dispatches |
//! | `POST /api/v1/pools/{pool}/pause`, `/resume` | admin | paused pools queue but dispatch nothing |
//!
//! `{pool}` is the pool key (`namespace/pipeline`, plus `?k=v` when it has
//! an annotation selector), percent-encoded where needed (`?` as `%3F`).

use std::collections::BTreeMap;

use dispatcher_core::config::{PoolKey, Settings};
use dispatcher_core::domain::{EventDetail, EventUuid, TimelineEntry, TimelineKind, rfc3339};
use dispatcher_core::operate::{PoolOverview, QueuedWork, WaitReason, overview};
use dispatcher_core::ports::{
    CancelOutcome, EventRepository, OpenExtras, OperatorStore, PoolState, ReplayOutcome,
    ReplayRequest, ReplayTarget,
};
use dispatcher_core::rules::{EventFacts, FilterVerdict, ItemVerdict, explain_items};
use dispatcher_core::timeline::{describe, fact};
use http::StatusCode;
use time::OffsetDateTime;

use crate::App;
use crate::error::ApiError;
use crate::ops_wire::{
    ExplainAnswer, PoolJson, PoolsAnswer, pool_json, queued_json, timeline_json, verdict_json,
};
use crate::response::{ApiResponse, json, text};

/// Everything `explain` says about one event.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The event with its dispatches.
    pub detail: EventDetail,
    /// Each configured item's verdict (against the configuration running now).
    pub matching: Vec<ItemVerdict>,
    /// The timeline: stored entries plus `received` and `finished` from the event row.
    pub timeline: Vec<TimelineEntry>,
    /// The event's waiting dispatches, as their pools' queues show them.
    pub waiting: Vec<(PoolKey, u32, QueuedWork)>,
}

/// The filter verdict of an event whose payload retention dropped.
const PAYLOAD_DROPPED: &str =
    "the payload is gone (dropped by retention): the filter cannot be evaluated";

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("Event {id} not found"))
}

impl<R: EventRepository + OperatorStore> App<R> {
    /// Every pool's overview, from the stored queue and this replica's
    /// view of Kubernetes.
    pub async fn pools(&self) -> Result<Vec<PoolOverview>, ApiError> {
        let settings = self.settings();
        let snapshot = self
            .repo
            .queue_snapshot(
                settings.dispatch.reservation_timeout,
                OpenExtras::for_settings(&settings),
            )
            .await?;
        let states: BTreeMap<PoolKey, PoolState> = settings
            .pools
            .values()
            .map(|p| (p.key.clone(), (self.pool_states)(p)))
            .collect();
        Ok(overview(&settings, &snapshot, &states))
    }

    /// The explanation of one event (by its public id).
    pub async fn explain(&self, id: &str) -> Result<Explanation, ApiError> {
        let Matching {
            detail, matching, ..
        } = self.matching(id).await?;
        let event = &detail.event;
        let mut timeline = vec![TimelineEntry {
            at: event.received_at,
            dispatch: None,
            kind: TimelineKind::Received,
            detail: serde_json::json!({
                fact::DELIVERY_ID: event.delivery_id,
                fact::ACTION: event.action,
            }),
            actor: None,
        }];
        timeline.extend(self.repo.timeline(event.id).await?);
        if let Some(at) = event.processed_at {
            timeline.push(TimelineEntry {
                at,
                dispatch: None,
                kind: TimelineKind::Finished,
                detail: serde_json::json!({ fact::STATUS: event.status.as_str() }),
                actor: None,
            });
        }
        // Stable: entries written at the same instant keep their order. The
        // delivery stays first: a pass reads the database clock once, before
        // it picks up the deliveries committed meanwhile, so their first
        // entries may carry a time just before `received_at`.
        timeline[1..].sort_by_key(|e| e.at);
        let mut waiting = Vec::new();
        if detail
            .dispatches
            .iter()
            .any(|d| d.state == dispatcher_core::domain::DispatchState::Queued)
        {
            for pool in self.pools().await? {
                let of = u32::try_from(pool.queue.len()).unwrap_or(u32::MAX);
                for work in pool.queue {
                    if detail.dispatches.iter().any(|d| d.id == work.dispatch) {
                        waiting.push((pool.spec.key.clone(), of, work));
                    }
                }
            }
        }
        Ok(Explanation {
            detail,
            matching,
            timeline,
            waiting,
        })
    }

    /// One event (by its public id) and every configured item's verdict on
    /// it, against the configuration running now: what explain shows and
    /// what a replay dispatches to.
    async fn matching(&self, id: &str) -> Result<Matching, ApiError> {
        let uuid: EventUuid = id.parse().map_err(|_| not_found(id))?;
        let detail = self.repo.detail(uuid).await?.ok_or_else(|| not_found(id))?;
        let event = &detail.event;
        let payload = self.repo.payload(event.id).await?;
        let mut matching = explain_items(
            &self.settings(),
            &EventFacts {
                action: &event.action,
                repository: &event.repository_full_name,
                payload: payload.as_deref().unwrap_or_default().as_bytes(),
                headers: &detail.headers,
            },
        );
        if payload.is_none() {
            for verdict in &mut matching {
                if let FilterVerdict::Error(e) = &mut verdict.filter {
                    PAYLOAD_DROPPED.clone_into(e);
                }
            }
        }
        Ok(Matching {
            detail,
            matching,
            has_payload: payload.is_some(),
        })
    }
}

/// See [`App::matching`].
struct Matching {
    detail: EventDetail,
    matching: Vec<ItemVerdict>,
    /// Retention has not dropped the payload.
    has_payload: bool,
}

/// `GET /api/v1/events/{id}/explain`.
pub(crate) async fn explain<R: EventRepository + OperatorStore>(
    app: &App<R>,
    id: &str,
    query: Option<&str>,
) -> Result<ApiResponse, ApiError> {
    let as_text = match single_param(query, "format")? {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "format must be json or text, not '{other}'"
            )));
        }
    };
    let explanation = app.explain(id).await?;
    if as_text {
        return Ok(text(StatusCode::OK, explain_text(&explanation, app.now())));
    }
    Ok(json(
        StatusCode::OK,
        &ExplainAnswer {
            status: "ok",
            event: crate::wire::EventJson::from(&explanation.detail.event),
            matching_note: "evaluated against the configuration running now",
            matching: explanation.matching.iter().map(verdict_json).collect(),
            timeline: explanation.timeline.iter().map(timeline_json).collect(),
            waiting: explanation
                .waiting
                .iter()
                .map(|(pool, of, w)| queued_json(&pool.0, Some(*of), w, app.now(), &app.pr_base))
                .collect(),
        },
    ))
}

/// The explanation as text (`dispatcher explain`, `?format=text`).
pub fn explain_text(e: &Explanation, now: OffsetDateTime) -> String {
    use std::fmt::Write as _;
    let ev = &e.detail.event;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Event {} (delivery {}): {} {}#{}, status {}",
        ev.uuid,
        ev.delivery_id,
        ev.action,
        ev.repository_full_name,
        ev.pull_request_number,
        ev.status
    );
    let _ = writeln!(out, "\nMatching (against the configuration running now):");
    if e.matching.is_empty() {
        let _ = writeln!(out, "  no items configured");
    }
    for v in &e.matching {
        let filter = match &v.filter {
            FilterVerdict::NoFilter => "no filter".to_owned(),
            FilterVerdict::NotEvaluated => "filter not evaluated".to_owned(),
            FilterVerdict::True => "filter true".to_owned(),
            FilterVerdict::False => "filter false".to_owned(),
            FilterVerdict::Error(err) => format!("filter error: {err}"),
        };
        let _ = writeln!(
            out,
            "  {} {}: repository {}, action {}, {}",
            if v.matched() { "✓" } else { "✗" },
            v.item,
            yes_no(v.repository),
            yes_no(v.action),
            filter
        );
    }
    let _ = writeln!(out, "\nTimeline:");
    for entry in &e.timeline {
        let who = entry
            .dispatch
            .map(|d| format!(" [dispatch {d}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}{} {}",
            rfc3339::format(entry.at),
            who,
            describe(entry)
        );
    }
    if !e.waiting.is_empty() {
        let _ = writeln!(out, "\nWaiting now:");
        for (pool, of, w) in &e.waiting {
            let _ = writeln!(
                out,
                "  dispatch {} ({}): position {} of {} in pool {}{}: {}{}",
                w.dispatch,
                w.item,
                w.position,
                of,
                pool,
                if w.priority == 0 {
                    String::new()
                } else {
                    format!(" (priority {})", w.priority)
                },
                w.reason,
                w.estimated_start.map_or_else(String::new, |t| format!(
                    "; estimated start {}",
                    estimate_text(t, now)
                ))
            );
        }
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "matches" } else { "differs" }
}

/// `in 5m (2026-12-02T10:00:00Z)`, or `now`.
pub(crate) fn estimate_text(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (t - now).whole_seconds();
    if secs <= 0 {
        return "now".to_owned();
    }
    let rel = if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    };
    format!("in {rel} ({})", rfc3339::format(t))
}

/// `GET /api/v1/pools`.
pub(crate) async fn list_pools<R: EventRepository + OperatorStore>(
    app: &App<R>,
) -> Result<ApiResponse, ApiError> {
    let now = app.now();
    let overviews = app.pools().await?;
    let pools: Vec<PoolJson<'_>> = overviews
        .iter()
        .map(|p| pool_json(p, now, &app.pr_base))
        .collect();
    Ok(json(
        StatusCode::OK,
        &PoolsAnswer {
            status: "ok",
            pools,
        },
    ))
}

/// `GET /api/v1/pools/{pool}`.
pub(crate) async fn one_pool<R: EventRepository + OperatorStore>(
    app: &App<R>,
    key: &PoolKey,
) -> Result<ApiResponse, ApiError> {
    let now = app.now();
    let overviews = app.pools().await?;
    let pool = overviews
        .iter()
        .find(|p| &p.spec.key == key)
        .ok_or_else(|| unknown_pool(key))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "pool": pool_json(pool, now, &app.pr_base)}),
    ))
}

fn unknown_pool(key: &PoolKey) -> ApiError {
    ApiError::NotFound(format!("Pool {key} is not configured"))
}

/// The pool a request path names (percent-decoded), if it is configured.
pub(crate) fn pool_from_path(settings: &Settings, raw: &str) -> Result<PoolKey, ApiError> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::BadRequest("pool must be UTF-8".to_owned()))?;
    let key = PoolKey(decoded.into_owned());
    if settings.pools.contains_key(&key) {
        Ok(key)
    } else {
        Err(unknown_pool(&key))
    }
}

/// `POST /api/v1/pools/{pool}/pause` and `/resume`.
pub(crate) async fn set_paused<R: EventRepository + OperatorStore>(
    app: &App<R>,
    key: &PoolKey,
    paused: bool,
    actor: &str,
) -> Result<ApiResponse, ApiError> {
    let changed = app.repo.set_paused(key, paused, actor).await?;
    let verb = if paused { "paused" } else { "resumed" };
    if changed {
        tracing::info!(pool = %key, actor, action = verb, "admin: pool {verb}");
    }
    let message = match (changed, paused) {
        (true, _) => format!("Pool {key} {verb}"),
        (false, true) => format!("Pool {key} was already paused"),
        (false, false) => format!("Pool {key} was not paused"),
    };
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "message": message, "pool": key.0, "paused": paused, "changed": changed}),
    ))
}

fn payload_dropped(id: &str) -> ApiError {
    ApiError::Conflict(format!(
        "Event {id} cannot be replayed: its payload was dropped by retention (retention.payload_max_age)"
    ))
}

/// `POST /api/v1/events/{id}/replay`.
pub(crate) async fn replay<R: EventRepository + OperatorStore>(
    app: &App<R>,
    id: &str,
    query: Option<&str>,
    actor: &str,
) -> Result<ApiResponse, ApiError> {
    let force = match single_param(query, "force")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "force must be true or false, not '{other}'"
            )));
        }
    };
    // The matching only: a replay needs neither the timeline nor the queue.
    let Matching {
        detail,
        matching,
        has_payload,
    } = app.matching(id).await?;
    let event = &detail.event;
    let settings = app.settings();
    if !has_payload {
        return Err(payload_dropped(id));
    }
    let targets: Vec<ReplayTarget> = matching
        .iter()
        .filter(|v| v.matched())
        .filter_map(|v| {
            let item = settings.item(&v.item)?;
            let pool = settings.pools.get(&item.pool)?;
            Some(ReplayTarget {
                item: item.name.clone(),
                pool: pool.key.clone(),
                queued_label: pool.queued_label(),
            })
        })
        .collect();
    if targets.is_empty() {
        return Err(ApiError::Conflict(format!(
            "Event {id} matches no configured item now: nothing to replay"
        )));
    }
    let request = ReplayRequest {
        actor: actor.to_owned(),
        force,
        targets,
    };
    match app.repo.replay(event.id, &request).await? {
        None => Err(not_found(id)),
        Some(ReplayOutcome::NotFinished(status)) => Err(ApiError::Conflict(format!(
            "Event {id} is {status}: only finished events (processed, failed, cancelled, aborted) can be replayed"
        ))),
        Some(ReplayOutcome::PayloadDropped(_)) => Err(payload_dropped(id)),
        Some(ReplayOutcome::NewerEventExists(newer)) => Err(ApiError::Conflict(format!(
            "A newer event ({newer}) of this pull request exists: newest wins. Replay with ?force=true to run this one anyway"
        ))),
        Some(ReplayOutcome::Replayed { round, dispatches }) => {
            tracing::info!(event = %event.uuid, repo = %event.repository_full_name, pr = event.pull_request_number, actor, round, force, "admin: event replayed");
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "message": format!("Event {id} replayed as round {round}"),
                    "round": round,
                    "dispatches": dispatches.iter().map(|d| d.0).collect::<Vec<_>>(),
                }),
            ))
        }
    }
}

/// `POST /api/v1/events/{id}/cancel`.
pub(crate) async fn cancel<R: EventRepository + OperatorStore>(
    app: &App<R>,
    id: &str,
    actor: &str,
) -> Result<ApiResponse, ApiError> {
    let uuid: EventUuid = id.parse().map_err(|_| not_found(id))?;
    let detail = app.repo.detail(uuid).await?.ok_or_else(|| not_found(id))?;
    match app.repo.cancel(detail.event.id, actor).await? {
        None => Err(not_found(id)),
        Some(CancelOutcome::NothingWaiting(status)) => Err(ApiError::Conflict(format!(
            "Nothing of event {id} is waiting (status {status}): only queued work can be cancelled"
        ))),
        Some(CancelOutcome::Cancelled(ids)) => {
            let event = &detail.event;
            tracing::info!(event = %event.uuid, repo = %event.repository_full_name, pr = event.pull_request_number, actor, dispatches = ids.len(), "admin: waiting dispatches cancelled");
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "status": "ok",
                    "message": format!("Cancelled {} waiting dispatch(es) of event {id}", ids.len()),
                    "cancelled": ids.iter().map(|d| d.0).collect::<Vec<_>>(),
                }),
            ))
        }
    }
}

/// The value of `name` in `query`; any other parameter is a 400.
fn single_param<'q>(query: Option<&'q str>, name: &str) -> Result<Option<&'q str>, ApiError> {
    let mut value = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some((k, v)) if k == name => value = Some(v),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown query parameter '{pair}' (allowed: {name})"
                )));
            }
        }
    }
    Ok(value)
}

/// A short reason code for a wait (API field `reason`).
pub(crate) fn reason_code(reason: &WaitReason) -> &'static str {
    match reason {
        WaitReason::Paused { .. } => "paused",
        WaitReason::KubernetesUnknown { .. } => "kubernetes_unknown",
        WaitReason::RetryAt { .. } => "retry_later",
        WaitReason::PoolFull { .. } => "pool_full",
        WaitReason::Starting => "starting",
    }
}
