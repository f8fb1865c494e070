//! JSON response helpers.

use crate::wire::ErrorBody;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::error::ApiError;

/// The response type of every route.
pub type ApiResponse = Response<Full<Bytes>>;

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> ApiResponse {
    let bytes = serde_json::to_vec(body)
        .unwrap_or_else(|_| br#"{"status":"error","message":"serialisation failed"}"#.to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A plain-text answer (UTF-8).
pub(crate) fn text(status: StatusCode, body: String) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The JSON answer for an error: `{"status": "rejected"|"error", "message": ...}`.
pub(crate) fn error(e: &ApiError) -> ApiResponse {
    let status = e.status();
    let kind = if status.is_client_error() {
        "rejected"
    } else {
        "error"
    };
    let mut response = json(
        status,
        &ErrorBody {
            status: kind,
            message: &e.public_message(),
        },
    );
    match e {
        ApiError::MethodNotAllowed { allowed, .. } => {
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static(allowed));
        }
        ApiError::Unauthorized => {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        _ => {}
    }
    if let Some(secs) = e.retry_after() {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}
