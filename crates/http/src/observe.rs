//! Request tracing: the span of each request and the one log line of each
//! error answer.
//!
//! Every request runs in an `http_request` span with `method`, `route` (the
//! route's pattern, ids replaced by `{id}`, so it groups requests),
//! `status` (recorded once the answer is built) and, for webhooks,
//! `delivery_id`. Every answer with a 4xx or 5xx status is logged exactly
//! once, by [`log_answer`] called from [`App::handle`](crate::App::handle):
//! 4xx at `info`, 500 at `error`, other 5xx (the server refusing by design:
//! busy, database unavailable, draining, stuck) at `warn`, with the reason.
//! Neither the body nor any header but the delivery id is logged, so no
//! secret or token can reach the log.

use std::borrow::Cow;

use http::StatusCode;

use crate::error::ApiError;
use crate::response::ApiResponse;
use crate::webhook::MAX_DELIVERY_ID_CHARS;

/// Why an answer that is not an [`ApiError`] carries an error status
/// (database health, readiness, liveness): put on the response as an
/// extension by the route, read by [`log_answer`].
#[derive(Debug, Clone)]
pub(crate) struct Reason(pub(crate) String);

/// Marks `response` with the reason of its error status.
pub(crate) fn with_reason(mut response: ApiResponse, reason: impl Into<String>) -> ApiResponse {
    response.extensions_mut().insert(Reason(reason.into()));
    response
}

/// The span of one request; `status` is recorded by [`log_answer`].
pub(crate) fn request_span(
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    let route = route_pattern(path);
    let span = tracing::info_span!(
        "http_request",
        %method,
        route = %route,
        status = tracing::field::Empty,
        delivery_id = tracing::field::Empty,
    );
    if route == crate::WEBHOOK_PATH
        && let Some(id) = headers
            .get("x-github-delivery")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    {
        // An oversized id is answered 400; only its start is worth a log field.
        let id: String = id.chars().take(MAX_DELIVERY_ID_CHARS).collect();
        span.record("delivery_id", id.as_str());
    }
    span
}

/// The route pattern of `path`: the path itself for fixed routes, with
/// every segment that is an id (a UUID or a number) replaced by `{id}`, so
/// a route's requests group under one value and no id becomes a label.
pub(crate) fn route_pattern(path: &str) -> Cow<'_, str> {
    let path = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    // As the router: whatever follows the prefix (but `status`) is an event id.
    if let Some(rest) = path.strip_prefix(EVENTS_PREFIX)
        && rest != "status"
        && !rest.contains('/')
    {
        return Cow::Borrowed("/api/v1/events/{id}");
    }
    if path
        .strip_prefix("/ui/events/")
        .is_some_and(|rest| !rest.contains('/'))
    {
        return Cow::Borrowed("/ui/events/{id}");
    }
    if let Some(rest) = path.strip_prefix("/api/v1/pools/") {
        return Cow::Borrowed(match rest.rsplit_once('/') {
            Some((_, "pause")) => "/api/v1/pools/{pool}/pause",
            Some((_, "resume")) => "/api/v1/pools/{pool}/resume",
            _ => "/api/v1/pools/{pool}",
        });
    }
    if !path.split('/').any(is_id) {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| if is_id(s) { "{id}" } else { s })
        .collect();
    Cow::Owned(segments.join("/"))
}

/// The prefix of the event detail route.
const EVENTS_PREFIX: &str = "/api/v1/events/";

/// A UUID or a number: ids in any other route that may come.
fn is_id(segment: &str) -> bool {
    !segment.is_empty()
        && (segment.bytes().all(|b| b.is_ascii_digit())
            || (segment.len() == 36 && segment.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')))
}

/// Records the answer's status on the request span and logs an error answer
/// once: the reason is the error's message (its detail for 5xx, which the
/// client does not see) or the [`Reason`] the route put on the response.
pub(crate) fn log_answer(span: &tracing::Span, error: Option<&ApiError>, response: &ApiResponse) {
    let status = response.status();
    span.record("status", status.as_u16());
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let reason: Cow<'_, str> = match (error, response.extensions().get::<Reason>()) {
        (Some(e), _) => Cow::Owned(e.to_string()),
        (None, Some(Reason(r))) => Cow::Borrowed(r),
        (None, None) => Cow::Borrowed(status.canonical_reason().unwrap_or("error")),
    };
    let code = status.as_u16();
    // The caller runs in the request's span: its fields are on this line.
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(status = code, reason = %reason, "request failed");
    } else if status.is_server_error() {
        tracing::warn!(status = code, reason = %reason, "request refused");
    } else {
        tracing::info!(status = code, reason = %reason, "request rejected");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_placeholders() {
        assert_eq!(
            route_pattern("/api/v1/events/6b7e0b1c-3f0a-4a8e-9b7d-1c2d3e4f5a6b"),
            "/api/v1/events/{id}"
        );
        assert_eq!(route_pattern("/api/v1/events/42/"), "/api/v1/events/{id}");
        assert_eq!(
            route_pattern("/api/v1/events/status"),
            "/api/v1/events/status"
        );
        assert_eq!(
            route_pattern("/api/v1/webhooks/github-pipeline/"),
            "/api/v1/webhooks/github-pipeline"
        );
        assert_eq!(
            route_pattern("/api/v1/events/not-a-uuid"),
            "/api/v1/events/{id}"
        );
        assert_eq!(
            route_pattern("/api/v2/things/7/runs"),
            "/api/v2/things/{id}/runs"
        );
        assert_eq!(route_pattern("/api/v1/pools/ns/p"), "/api/v1/pools/{pool}");
        assert_eq!(
            route_pattern("/api/v1/pools/ns/p%3Fa=b/pause"),
            "/api/v1/pools/{pool}/pause"
        );
        assert_eq!(route_pattern("/ui/events/not-a-uuid"), "/ui/events/{id}");
        assert_eq!(
            route_pattern("/ui/assets/dashboard.css"),
            "/ui/assets/dashboard.css"
        );
        assert_eq!(route_pattern("/"), "/");
        assert_eq!(route_pattern(""), "/");
    }
}
