//! Every error answer of the API, and the one place that maps it to an HTTP
//! status and a JSON body. Nothing answers HTML, not even 404 or 405.

use dispatcher_core::intake::PayloadError;
use dispatcher_core::ports::StoreError;
use http::StatusCode;

/// `Retry-After` of a 503 for a full body budget: bodies in flight finish
/// within about a second on a healthy network.
const RETRY_AFTER_BUSY_SECS: u64 = 1;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body larger than `server.body_limit_bytes`.
    #[error("Payload too large (limit {limit} bytes)")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// `User-Agent` does not start with `GitHub-Hookshot/`.
    #[error("Invalid User-Agent header")]
    InvalidUserAgent,
    /// `X-GitHub-Event` missing (`None`) or not allowed.
    #[error("Event type '{0}' not allowed")]
    EventNotAllowed(String),
    /// No configured secret produces the signature.
    #[error("Invalid webhook signature")]
    InvalidSignature,
    /// `X-GitHub-Delivery` missing or empty.
    #[error("Missing X-GitHub-Delivery header")]
    MissingDelivery,
    /// `X-GitHub-Delivery` longer than [`MAX_DELIVERY_ID_CHARS`](crate::webhook::MAX_DELIVERY_ID_CHARS).
    #[error("X-GitHub-Delivery header too long ({length} characters; at most {max})")]
    DeliveryIdTooLong {
        /// Length of the value received.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// Content type is not JSON.
    #[error("Unsupported Content-Type '{0}': expected application/json")]
    UnsupportedMediaType(String),
    /// Body is not a usable pull-request payload.
    #[error("{0}")]
    InvalidPayload(#[from] PayloadError),
    /// Delivery id stored with a different body.
    #[error("Delivery '{0}' was already received with a different payload")]
    DeliveryConflict(String),
    /// Missing or wrong bearer token.
    #[error("Missing or invalid bearer token")]
    Unauthorized,
    /// A valid token without the right (a read token on the admin API, or
    /// the admin API is not configured).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the resource's state (replay of an event
    /// still running, cancel with nothing waiting...).
    #[error("{0}")]
    Conflict(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// Route exists, method does not.
    #[error("Method {method} not allowed (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The methods the route accepts.
        allowed: &'static str,
    },
    /// Bad query parameters or path values.
    #[error("{0}")]
    BadRequest(String),
    /// The request took longer than `server.request_timeout`.
    #[error("Request timed out")]
    Timeout,
    /// The body does not fit in `server.max_buffered_bytes` now (503 with `Retry-After`).
    #[error("Server busy receiving other webhook bodies, retry later")]
    Busy,
    /// A bug or a lost task; the detail goes to the log only.
    #[error("{0}")]
    Internal(String),
    /// Storage failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl ApiError {
    /// Seconds a client should wait before retrying (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Busy => Some(RETRY_AFTER_BUSY_SECS),
            _ => None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidUserAgent
            | Self::EventNotAllowed(_)
            | Self::MissingDelivery
            | Self::DeliveryIdTooLong { .. }
            | Self::InvalidPayload(_)
            | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidSignature | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::DeliveryConflict(_) | Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message shown to the client. Server-side failures do not leak
    /// internals; the detail goes to the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::Store(StoreError::Unavailable(_)) => {
                "Database unavailable, retry later".to_owned()
            }
            Self::Store(_) | Self::Internal(_) => "Internal server error".to_owned(),
            other => other.to_string(),
        }
    }
}
