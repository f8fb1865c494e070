//! `POST /api/v1/webhooks/github-pipeline`: the checks, in the original
//! service's order (so status codes stay compatible), then a durable,
//! idempotent insert. The answer is sent only after the insert committed.
//!
//! The checks that need only headers run **before the body is read**, so a
//! hostile or broken sender is answered without costing a body buffer:
//!
//! | step | check | answer | before the body |
//! |---|---|---|---|
//! | 1 | declared `Content-Length` above `server.body_limit_bytes` | 413 | yes |
//! | 2 | `User-Agent` starts with `GitHub-Hookshot/` | 400 | yes |
//! | 3 | `X-GitHub-Event` allowed (`ping` exempt) | 400 | yes |
//! | 4 | `X-Hub-Signature-256` present and `sha256=` + 64 hex (when verifying) | 401 | yes |
//! | 5 | `X-GitHub-Delivery` present and at most 255 characters (not for `ping`) | 400 | yes |
//! | 6 | content type JSON (`pull_request` only) | 415 | yes |
//! | 7 | body fits in the global budget `server.max_buffered_bytes` | 503 + `Retry-After` | yes (per chunk without `Content-Length`) |
//! | 8 | body within the limit (without `Content-Length`) | 413 | while reading |
//! | 9 | signature over the raw bytes with any configured secret | 401 | after |
//! | 10 | `ping` → 200 `pong` | | after |
//! | 11 | payload: JSON object with `action`, `repository.full_name`, `pull_request.number`; for other allowed event types (`pull_request_review`, ...) a payload without them → 202 `ignored`, with them the event is stored like a `pull_request` | 400 | after |
//!
//! **Deviation from the original order**, only for requests wrong in two
//! ways at once: a signature that is well-formed but wrong (found only
//! after the body) used to win over a later header problem; now the header
//! problem answers first. So a wrong signature plus a missing or too long
//! delivery id is a 400 (was 401), and a wrong signature on a `pull_request`
//! with a non-JSON content type is a 415 (was 401). A missing or malformed
//! signature is still a 401 before either. For `ping` and allowed non-PR
//! events the outcome is unchanged except for the delivery id rule.

use dispatcher_core::intake::{
    NewEvent, github_header_spelling, is_forwardable_header, pull_request_fields,
};
use dispatcher_core::ports::{EventRepository, RecordOutcome};
use dispatcher_metrics::DeliveryOutcome;
use http::{HeaderMap, StatusCode};

use crate::App;
use crate::budget::Buffered;
use crate::error::ApiError;
use crate::response::{ApiResponse, json};
use crate::wire::{EventJson, IntakeAnswer};

/// The event type whose payload must name a pull request (400 otherwise);
/// other allowed types are stored only when theirs does.
const PULL_REQUEST: &str = "pull_request";

/// Longest accepted `X-GitHub-Delivery` (GitHub sends 36-character GUIDs).
pub const MAX_DELIVERY_ID_CHARS: usize = 255;

/// Bodies at least this large are verified on the blocking pool, so hashing
/// megabytes never stalls the workers serving other requests.
const VERIFY_INLINE_MAX: usize = 256 * 1024;

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// What the header checks found, for the checks after the body.
#[derive(Debug)]
pub(crate) struct Checked<'h> {
    event_type: &'h str,
    delivery_id: Option<&'h str>,
    /// The configuration the checks used; the rest of the delivery uses it too.
    live: std::sync::Arc<crate::Live>,
}

/// The checks that need only the headers (steps 2–6), run before the body is read.
pub(crate) fn check_headers<'h, R>(
    app: &App<R>,
    headers: &'h HeaderMap,
) -> Result<Checked<'h>, ApiError> {
    if !header(headers, "user-agent").is_some_and(|ua| ua.starts_with("GitHub-Hookshot/")) {
        return Err(ApiError::InvalidUserAgent);
    }
    // One snapshot of the configuration for the whole delivery, even if a
    // reload lands while its body is being read.
    let live = app.live();
    let event_type = header(headers, "x-github-event");
    let is_ping = event_type == Some("ping");
    let event_type = match event_type {
        Some(e) if is_ping || live.allowed_events.contains(e) => e,
        other => {
            return Err(ApiError::EventNotAllowed(
                other.unwrap_or("None").to_owned(),
            ));
        }
    };
    if live.verify_signatures
        && let Err(reason) =
            dispatcher_sig::check_header_syntax(header(headers, "x-hub-signature-256"))
    {
        // Debug only: App::handle logs the 401 once, in the request's span.
        tracing::debug!(%reason, "invalid signature header (before reading the body)");
        return Err(ApiError::InvalidSignature);
    }
    let delivery_id = header(headers, "x-github-delivery");
    if !is_ping {
        let Some(id) = delivery_id else {
            return Err(ApiError::MissingDelivery);
        };
        let length = id.chars().count();
        if length > MAX_DELIVERY_ID_CHARS {
            return Err(ApiError::DeliveryIdTooLong {
                length,
                max: MAX_DELIVERY_ID_CHARS,
            });
        }
    }
    if event_type == PULL_REQUEST {
        let content_type = header(headers, "content-type").unwrap_or("");
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
        }
    }
    Ok(Checked {
        event_type,
        delivery_id,
        live,
    })
}

/// Verifies the signature over the raw bytes; large bodies on the blocking pool.
async fn verify_signature(
    keys: &std::sync::Arc<dispatcher_sig::SigningKeys>,
    headers: &HeaderMap,
    body: Buffered,
) -> Result<Buffered, ApiError> {
    let signature = header(headers, "x-hub-signature-256").map(str::to_owned);
    let (body, verdict) = if body.bytes.len() < VERIFY_INLINE_MAX {
        let verdict = keys.verify(&body.bytes, signature.as_deref());
        (body, verdict)
    } else {
        let keys = std::sync::Arc::clone(keys);
        // The body (and its share of the budget) moves along and comes back.
        tokio::task::spawn_blocking(move || {
            let verdict = keys.verify(&body.bytes, signature.as_deref());
            (body, verdict)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("signature verification task failed: {e}")))?
    };
    match verdict {
        Ok(()) => Ok(body),
        Err(reason) => {
            // Debug only: App::handle logs the 401 once, in the request's span.
            tracing::debug!(%reason, body_bytes = body.bytes.len(), "invalid signature");
            Err(ApiError::InvalidSignature)
        }
    }
}

/// Handles one delivery that passed [`check_headers`] and whose body was
/// read within the limit and the budget (steps 9–11, then the insert).
pub(crate) async fn receive<R: EventRepository>(
    app: &App<R>,
    headers: &HeaderMap,
    checked: Checked<'_>,
    body: Buffered,
) -> Result<ApiResponse, ApiError> {
    let Checked {
        event_type,
        delivery_id,
        live,
    } = checked;
    let body = if live.verify_signatures {
        verify_signature(&live.keys, headers, body).await?
    } else {
        body
    };
    if event_type == "ping" {
        tracing::info!(
            hook_id = header(headers, "x-github-hook-id").unwrap_or("-"),
            "answered GitHub ping"
        );
        return Ok(with_outcome(
            json(
                StatusCode::OK,
                &serde_json::json!({"status": "ok", "message": "pong"}),
            ),
            DeliveryOutcome::Ping,
        ));
    }
    // check_headers required it for every event but ping.
    let delivery_id = delivery_id.ok_or(ApiError::MissingDelivery)?.to_owned();
    // The buffer keeps its share of the budget until the answer is built.
    let mut buffered = body;
    let body = buffered.take_bytes();
    let fields = match pull_request_fields(&body) {
        Ok(fields) => fields,
        // Other allowed event types (pull_request_review, ...) are stored and
        // matched like pull_request when their payload names a pull request,
        // as the original does; the rest are acknowledged and dropped.
        Err(_) if event_type != PULL_REQUEST => {
            tracing::info!(%delivery_id, event_type, "acknowledged an event without a pull request; not stored");
            return Ok(with_outcome(
                json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({"status": "ignored", "message": format!("Event type '{event_type}' carries no pull request; accepted but not dispatched")}),
                ),
                DeliveryOutcome::Ignored,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    // pull_request_fields validated the body as UTF-8 JSON.
    // Reuses the body's buffer when it is not shared (no copy of a large payload).
    let payload = String::from_utf8(Vec::from(body))
        .map_err(|e| ApiError::BadRequest(format!("Invalid JSON payload: {e}")))?;
    let forwarded = headers
        .iter()
        .filter(|(name, _)| is_forwardable_header(name.as_str()))
        .filter_map(|(name, value)| {
            Some((
                github_header_spelling(name.as_str()),
                value.to_str().ok()?.to_owned(),
            ))
        })
        .collect();
    let event = NewEvent {
        delivery_id: delivery_id.clone(),
        event_type: event_type.to_owned(),
        action: fields.action,
        repository_full_name: fields.repository_full_name,
        pull_request_number: fields.pull_request_number,
        labels: fields.labels,
        payload,
        headers: forwarded,
    };
    let (record, message, outcome) = match app.repo.record(event).await? {
        RecordOutcome::Created(record) => (record, "Event received", DeliveryOutcome::Accepted),
        RecordOutcome::AlreadyStored(record) => (
            record,
            "Event already received",
            DeliveryOutcome::Redelivered,
        ),
        RecordOutcome::Conflict(record) => {
            // Debug only: App::handle logs the 409 once, in the request's span.
            tracing::debug!(event_id = %record.id, "delivery id reused with a different payload");
            return Err(ApiError::DeliveryConflict(delivery_id));
        }
    };
    tracing::info!(
        %delivery_id, event_id = %record.id, event_uuid = %record.uuid,
        repo = %record.repository_full_name, pr = record.pull_request_number,
        action = %record.action, %message, "stored webhook"
    );
    Ok(with_outcome(
        json(
            StatusCode::OK,
            &IntakeAnswer {
                event: EventJson::from(&record),
                message,
            },
        ),
        outcome,
    ))
}

/// Marks a successful intake answer with its outcome, which
/// [`App::handle`](crate::App::handle) counts (errors are mapped by
/// [`delivery_outcome`]).
fn with_outcome(mut response: ApiResponse, outcome: DeliveryOutcome) -> ApiResponse {
    response.extensions_mut().insert(outcome);
    response
}

/// The `webhook_dispatcher_deliveries_total` outcome of an intake answer:
/// the mark [`receive`] put on a successful one, or the error's kind.
pub(crate) fn delivery_outcome(result: &Result<ApiResponse, ApiError>) -> DeliveryOutcome {
    match result {
        Ok(response) => response
            .extensions()
            .get::<DeliveryOutcome>()
            .copied()
            .unwrap_or(DeliveryOutcome::Accepted),
        Err(ApiError::InvalidSignature | ApiError::Unauthorized) => DeliveryOutcome::BadSignature,
        Err(ApiError::DeliveryConflict(_)) => DeliveryOutcome::Conflict,
        Err(ApiError::PayloadTooLarge { .. }) => DeliveryOutcome::TooLarge,
        Err(e) if e.status().is_client_error() && !matches!(e, ApiError::Timeout) => {
            DeliveryOutcome::BadRequest
        }
        Err(_) => DeliveryOutcome::Unavailable,
    }
}
