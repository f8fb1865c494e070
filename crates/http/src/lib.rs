//! # dispatcher-http
//!
//! The Webhook Dispatcher's HTTP API on hyper 1.
//!
//! **Owns:** routing, the webhook checks in the documented order, JSON
//! answers (errors included, never HTML), the body limit, request timeouts,
//! bearer-token auth of the events API, and graceful connection shutdown.
//!
//! **Must not:** know Diesel or Kubernetes: it stores and reads through the
//! [`EventRepository`] port and reports the dispatcher through a
//! [`StatusSource`] closure.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/webhooks/github-pipeline` | intake (see [`webhook`]) |
//! | `GET /api/v1/events/status` | listing: `page`, `page_size`, `filter=k=v;k2=v2` |
//! | `GET /api/v1/events/{id}` | one event with headers and dispatches |
//! | `GET /api/v1/status/ping` | `{"status":"pong"}` |
//! | `GET /api/v1/status/db` | database health |
//! | `GET /api/v1/status/ready` | database and dispatcher health |
//!
//! ```no_run
//! # async fn demo(repo: impl dispatcher_core::ports::EventRepository, settings: &dispatcher_core::config::Settings) -> std::io::Result<()> {
//! use std::sync::Arc;
//! let app = Arc::new(dispatcher_http::App::new(settings, repo)?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! dispatcher_http::serve(listener, app, std::future::pending(), std::time::Duration::from_secs(30)).await
//! # }
//! ```

mod error;
mod events;
mod response;
mod server;
pub mod webhook;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dispatcher_core::config::Settings;
use dispatcher_core::ports::EventRepository;
use dispatcher_sig::{SigningKeys, TokenSet};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};

pub use error::ApiError;
pub use events::{DEFAULT_PAGE_SIZE, FILTER_KEYS, MAX_PAGE_SIZE, parse_query};
pub use response::ApiResponse;
pub use server::serve;

use response::json;

/// Request-handling settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest body accepted (413 beyond).
    pub body_limit: usize,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Time allowed to read request headers.
    pub header_read_timeout: Duration,
    /// Check `X-Hub-Signature-256`.
    pub verify_signatures: bool,
    /// Accepted `X-GitHub-Event` values.
    pub allowed_events: BTreeSet<String>,
}

/// How this replica's dispatcher is doing, for `/api/v1/status/ready`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DispatcherReport {
    /// `false` when something needs attention (e.g. a pool's Kubernetes state is unknown).
    pub healthy: bool,
    /// Details shown verbatim.
    pub details: serde_json::Value,
}

/// Produces the dispatcher report on demand.
pub type StatusSource = Arc<dyn Fn() -> DispatcherReport + Send + Sync>;

/// The application: configuration plus the storage port.
pub struct App<R> {
    repo: R,
    keys: SigningKeys,
    tokens: TokenSet,
    config: HttpConfig,
    status: StatusSource,
}

impl<R> std::fmt::Debug for App<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<R: EventRepository> App<R> {
    /// Builds the app from validated settings.
    pub fn new(settings: &Settings, repo: R) -> std::io::Result<Self> {
        let keys = SigningKeys::new(
            settings
                .security
                .webhook_secrets
                .iter()
                .map(|s| s.expose().as_bytes()),
        );
        let tokens = TokenSet::new(settings.api_tokens.iter().map(|t| t.expose().as_bytes()))
            .map_err(|_| std::io::Error::other("system random number generator failed"))?;
        let config = HttpConfig {
            body_limit: settings.server.body_limit_bytes,
            request_timeout: settings.server.request_timeout,
            header_read_timeout: settings.server.header_read_timeout,
            verify_signatures: settings.security.verify_signatures,
            allowed_events: settings.security.allowed_github_events.clone(),
        };
        let status: StatusSource = Arc::new(|| DispatcherReport {
            healthy: true,
            details: serde_json::json!({"role": "unknown"}),
        });
        Ok(Self {
            repo,
            keys,
            tokens,
            config,
            status,
        })
    }

    /// Sets the source of the dispatcher report.
    #[must_use]
    pub fn with_status_source(mut self, status: StatusSource) -> Self {
        self.status = status;
        self
    }

    /// The request-handling settings.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Serves one request. Never fails: every error becomes a JSON answer.
    pub async fn handle<B>(&self, request: Request<B>) -> ApiResponse
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let started = std::time::Instant::now();
        let result =
            match tokio::time::timeout(self.config.request_timeout, self.route(request)).await {
                Ok(r) => r,
                Err(_) => Err(ApiError::Timeout),
            };
        let response = result.unwrap_or_else(|e| {
            if e.status().is_server_error() {
                tracing::error!(%method, %path, error = %e, "request failed");
            }
            response::error(&e)
        });
        tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
        response
    }

    async fn route<B>(&self, request: Request<B>) -> Result<ApiResponse, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let method = request.method().clone();
        let allow = |allowed: &'static str| -> Result<(), ApiError> {
            if allowed.split(", ").any(|m| m == method.as_str()) {
                Ok(())
            } else {
                Err(ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    allowed,
                })
            }
        };
        match path.as_str() {
            "/api/v1/webhooks/github-pipeline" => {
                allow("POST")?;
                let (parts, body) = request.into_parts();
                let body = self.read_body(&parts.headers, body).await?;
                webhook::receive(self, &parts.headers, body).await
            }
            "/api/v1/status/ping" => {
                allow("GET")?;
                Ok(json(StatusCode::OK, &serde_json::json!({"status": "pong"})))
            }
            "/api/v1/status/db" => {
                allow("GET")?;
                Ok(match self.repo.ping().await {
                    Ok(()) => json(
                        StatusCode::OK,
                        &serde_json::json!({"status": "ok", "message": "Database is running"}),
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "database health check failed");
                        json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &serde_json::json!({"status": "error", "message": "Database health check failed"}),
                        )
                    }
                })
            }
            "/api/v1/status/ready" => {
                allow("GET")?;
                Ok(self.readiness().await)
            }
            "/api/v1/events/status" => {
                allow("GET")?;
                self.authorize(request.headers())?;
                events::list(self, request.uri().query()).await
            }
            p if p.starts_with("/api/v1/events/") => {
                allow("GET")?;
                self.authorize(request.headers())?;
                events::detail(self, &p["/api/v1/events/".len()..]).await
            }
            _ => Err(ApiError::NotFound(format!(
                "No route for {method} {}",
                request.uri().path()
            ))),
        }
    }

    async fn readiness(&self) -> ApiResponse {
        let db = self.repo.ping().await;
        let report = (self.status)();
        let status = match (&db, report.healthy) {
            (Err(_), _) => "error",
            (Ok(()), true) => "ok",
            (Ok(()), false) => "degraded",
        };
        // Only the database decides readiness: without it nothing can be
        // accepted; a degraded dispatcher still accepts and stores webhooks.
        let code = if db.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(
            code,
            &serde_json::json!({
                "status": status,
                "database": if db.is_ok() { "ok" } else { "unavailable" },
                "dispatcher": report.details,
            }),
        )
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        match presented {
            Some(token) if self.tokens.contains(token.as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }

    async fn read_body<B>(&self, headers: &http::HeaderMap, body: B) -> Result<Bytes, ApiError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let limit = self.config.body_limit;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(ApiError::PayloadTooLarge { limit })
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "Could not read request body: {e}"
            ))),
        }
    }
}
