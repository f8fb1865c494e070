//! `POST /api/v1/webhooks/github-pipeline`: the checks, in the original
//! service's order (so status codes stay compatible), then a durable,
//! idempotent insert. The answer is sent only after the insert committed.

use bytes::Bytes;
use dispatcher_core::intake::{
    NewEvent, github_header_spelling, is_forwardable_header, pull_request_fields,
};
use dispatcher_core::ports::{EventRepository, RecordOutcome};
use http::{HeaderMap, StatusCode};

use crate::App;
use crate::error::ApiError;
use crate::response::{ApiResponse, json};

/// The only event type stored and dispatched.
const PULL_REQUEST: &str = "pull_request";

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Handles one delivery whose body was read within the limit.
pub(crate) async fn receive<R: EventRepository>(
    app: &App<R>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<ApiResponse, ApiError> {
    if !header(headers, "user-agent").is_some_and(|ua| ua.starts_with("GitHub-Hookshot/")) {
        return Err(ApiError::InvalidUserAgent);
    }
    let event_type = header(headers, "x-github-event");
    let is_ping = event_type == Some("ping");
    if !is_ping && !event_type.is_some_and(|e| app.config.allowed_events.contains(e)) {
        return Err(ApiError::EventNotAllowed(
            event_type.unwrap_or("None").to_owned(),
        ));
    }
    if app.config.verify_signatures
        && let Err(reason) = app
            .keys
            .verify(&body, header(headers, "x-hub-signature-256"))
    {
        tracing::warn!(
            delivery_id = header(headers, "x-github-delivery").unwrap_or("-"),
            %reason,
            "rejected webhook with invalid signature"
        );
        return Err(ApiError::InvalidSignature);
    }
    if is_ping {
        tracing::info!(
            hook_id = header(headers, "x-github-hook-id").unwrap_or("-"),
            "answered GitHub ping"
        );
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({"status": "ok", "message": "pong"}),
        ));
    }
    let delivery_id = header(headers, "x-github-delivery")
        .ok_or(ApiError::MissingDelivery)?
        .to_owned();
    let event_type = event_type.unwrap_or_default();
    if event_type != PULL_REQUEST {
        tracing::info!(%delivery_id, event_type, "acknowledged non-pull-request event without storing it");
        return Ok(json(
            StatusCode::ACCEPTED,
            &serde_json::json!({"status": "ignored", "message": format!("Event type '{event_type}' is accepted but not dispatched")}),
        ));
    }
    let content_type = header(headers, "content-type").unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(content_type.to_owned()));
    }
    let fields = pull_request_fields(&body)?;
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
        payload,
        headers: forwarded,
    };
    let (record, message) = match app.repo.record(event).await? {
        RecordOutcome::Created(record) => (record, "Event received"),
        RecordOutcome::AlreadyStored(record) => (record, "Event already received"),
        RecordOutcome::Conflict(record) => {
            tracing::warn!(%delivery_id, event_id = %record.id, "delivery id reused with a different payload");
            return Err(ApiError::DeliveryConflict(delivery_id));
        }
    };
    tracing::info!(
        %delivery_id, event_id = %record.id, repo = %record.repository_full_name,
        pr = record.pull_request_number, action = %record.action, %message, "stored webhook"
    );
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    if let Some(map) = body.as_object_mut() {
        map.insert("message".to_owned(), message.into());
    }
    Ok(json(StatusCode::OK, &body))
}
