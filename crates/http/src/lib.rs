//! # dispatcher-http
//!
//! The Webhook Dispatcher's HTTP API on hyper 1.
//!
//! **Owns:** routing, the webhook checks in the documented order, JSON
//! answers (errors included, never HTML; only the dashboard's successful
//! pages are HTML), the body limit and the global
//! budget of bodies being buffered, request timeouts, the connection cap,
//! bearer-token auth of the events API, readiness and liveness, and the
//! rollout-friendly shutdown (see [`serve`]).
//!
//! **Must not:** know Diesel or Kubernetes: it stores and reads through the
//! [`EventRepository`] and [`OperatorStore`] ports and learns about the
//! dispatcher and the pools through closures ([`StatusSource`],
//! [`LivenessSource`], [`PoolStateSource`]).
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/webhooks/github-pipeline` | intake (see [`webhook`]: header checks before the body is read) |
//! | `GET /api/v1/events/status` | listing: `page`, `page_size`, `filter=k=v;k2=v2` |
//! | `GET /api/v1/events/{id}` | one event with headers and dispatches |
//! | `GET /api/v1/status/ping` | `{"status":"pong"}` |
//! | `GET /api/v1/status/db` | database health |
//! | `GET /api/v1/status/ready` | database and dispatcher health; 503 without a database or once shutdown began |
//! | `GET /api/v1/status/live` | `{"status":"ok"}`, or 503 when the [`LivenessSource`] reports the dispatch loop stuck |
//! | `GET /api/v1/events/{id}/explain` | matching, stored timeline, why it waits (see [`operate`]) |
//! | `POST /api/v1/events/{id}/replay`, `/cancel` | admin: replay a finished event, cancel waiting work |
//! | `GET /api/v1/pools`, `/api/v1/pools/{pool}` | pools with their queues |
//! | `POST /api/v1/pools/{pool}/pause`, `/resume` | admin: stop or restart dispatching into a pool |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text, see `dispatcher-metrics`); bearer `api.metrics_token` when set |
//! | `GET /api/v1/openapi.json` | the OpenAPI 3.1 document of every route (open; see [`ROUTES`]) |
//! | `GET /`, `/ui/events/{id}`, `/ui/search` | the read-only dashboard for people (HTML; `?fragment=1` for the refreshed part; see the `dashboard` module) |
//! | `GET /ui/assets/dashboard.css`, `/ui/assets/dashboard.js` | the dashboard's embedded assets |
//!
//! Every intake answer is counted once, in [`App::handle`], as
//! `webhook_dispatcher_deliveries_total{outcome}`; share the [`Metrics`] with
//! the dispatcher through [`App::with_metrics`]. Gauges that must be fresh
//! at each scrape (the database pool's) are set by a [`MetricsRefresh`]
//! right before `/metrics` encodes.
//!
//! **Tracing.** Each request runs in an `http_request` span (`method`,
//! `route` pattern, `status`, `delivery_id` for webhooks) and every 4xx/5xx
//! answer is logged once, in [`App::handle`], with its reason (see the
//! `observe` module); routes do not log their own errors.
//!
//! **Resource limits.** Bodies being received share `server.max_buffered_bytes`
//! (a body that does not fit is answered 503 with `Retry-After` at once, never
//! queued); at most `server.max_connections` connections are served at once,
//! further ones wait in the kernel's accept backlog (not refused) until one
//! closes. Idle keep-alive connections are closed after
//! `server.header_read_timeout`, so slots come back.
//!
//! ```no_run
//! # async fn demo(repo: impl dispatcher_core::ports::EventRepository + dispatcher_core::ports::OperatorStore, settings: &dispatcher_core::config::Settings) -> std::io::Result<()> {
//! use std::sync::Arc;
//! use dispatcher_http::{App, Liveness, ServeOptions};
//! let app = App::new(settings, repo)?.with_liveness_source(Arc::new(|| Liveness::Alive));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
//! let options = ServeOptions::from(&settings.server);
//! dispatcher_http::serve(listener, Arc::new(app), std::future::pending(), options).await
//! # }
//! ```

mod budget;
pub mod client;
mod dashboard;
mod error;
mod events;
mod observe;
mod openapi;
pub mod operate;
mod ops_wire;
mod response;
mod server;
pub mod webhook;
mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dispatcher_core::config::Settings;
use dispatcher_core::ports::{EventRepository, OperatorStore};
pub use dispatcher_metrics::Metrics;
use dispatcher_sig::{SigningKeys, TokenSet};
use http::{Request, StatusCode};
use tokio::sync::watch;
use tracing::Instrument;

use budget::BodyBudget;

pub use error::ApiError;
pub use events::{DEFAULT_PAGE_SIZE, FILTER_KEYS, MAX_PAGE_SIZE, parse_query};
pub use openapi::{OPENAPI_JSON, OPENAPI_PATH, ROUTES};
pub use response::ApiResponse;
pub use server::{ServeOptions, serve};

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
    /// Bytes all bodies being received may buffer together (503 beyond).
    pub max_buffered_bytes: usize,
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

/// What `/api/v1/status/live` says about this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Working: 200 `{"status":"ok"}`.
    Alive,
    /// Stuck (e.g. the dispatch loop made no progress for too long): 503
    /// `{"status":"error","message":<reason>}`, so the kubelet restarts it.
    Stuck(String),
}

/// Produces the liveness verdict on demand (cheap: probes call it often).
pub type LivenessSource = Arc<dyn Fn() -> Liveness + Send + Sync>;

/// This replica's view of a pool's PipelineRuns (its Kubernetes watch), for
/// the pools API and explanations. Cheap: it reads a cache.
pub type PoolStateSource = Arc<
    dyn Fn(&dispatcher_core::config::PoolSpec) -> dispatcher_core::ports::PoolState + Send + Sync,
>;

/// Bearer tokens with the names of who holds them.
#[derive(Debug, Clone)]
pub(crate) struct NamedTokens {
    pub(crate) set: TokenSet,
    names: Vec<String>,
}

impl NamedTokens {
    fn new(tokens: &[dispatcher_core::config::NamedToken]) -> std::io::Result<Self> {
        let set = TokenSet::new(tokens.iter().map(|t| t.token.expose().as_bytes()))
            .map_err(|_| std::io::Error::other("system random number generator failed"))?;
        Ok(Self {
            set,
            names: tokens.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// Who holds `presented`, if it is one of the tokens.
    fn holder(&self, presented: &str) -> Option<&str> {
        let i = self.set.position(presented.as_bytes())?;
        self.names.get(i).map(String::as_str)
    }
}

/// Sets gauges that must be current at each scrape (e.g. the database
/// pool's), called by `GET /metrics` right before encoding; keeps this crate
/// free of what it measures.
pub type MetricsRefresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What a configuration reload replaces at once: every request reads one
/// consistent snapshot of it ([`App::reload`]).
pub(crate) struct Live {
    /// The validated settings (items, pools, tuning...).
    pub(crate) settings: Arc<Settings>,
    /// Webhook secrets (several during a rotation).
    pub(crate) keys: Arc<SigningKeys>,
    /// `security.verify_signatures`.
    pub(crate) verify_signatures: bool,
    /// `security.allowed_github_events`.
    pub(crate) allowed_events: BTreeSet<String>,
    /// Read tokens.
    pub(crate) tokens: NamedTokens,
    /// Admin tokens.
    pub(crate) admin_tokens: NamedTokens,
    /// `api.metrics_token`.
    pub(crate) metrics_token: Option<TokenSet>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("keys", &self.keys)
            .field("verify_signatures", &self.verify_signatures)
            .finish_non_exhaustive()
    }
}

impl Live {
    fn new(settings: &Settings) -> std::io::Result<Self> {
        let keys = SigningKeys::new(
            settings
                .security
                .webhook_secrets
                .iter()
                .map(|s| s.expose().as_bytes()),
        );
        let metrics_token = settings
            .metrics_token
            .as_ref()
            .map(|t| TokenSet::new([t.expose().as_bytes()]))
            .transpose()
            .map_err(|_| std::io::Error::other("system random number generator failed"))?;
        Ok(Self {
            settings: Arc::new(settings.clone()),
            keys: Arc::new(keys),
            verify_signatures: settings.security.verify_signatures,
            allowed_events: settings.security.allowed_github_events.clone(),
            tokens: NamedTokens::new(&settings.api_tokens)?,
            admin_tokens: NamedTokens::new(&settings.admin_tokens)?,
            metrics_token,
        })
    }
}

/// The application: configuration plus the storage port.
pub struct App<R> {
    repo: R,
    /// Replaced whole by [`App::reload`]; requests take a snapshot.
    live: std::sync::RwLock<Arc<Live>>,
    /// Web address of pull requests: `<pr_base>/<owner>/<repo>/pull/<n>`
    /// (from `github.api_url`, which needs a restart).
    pr_base: String,
    pool_states: PoolStateSource,
    config: HttpConfig,
    status: StatusSource,
    liveness: LivenessSource,
    budget: BodyBudget,
    draining: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    metrics_refresh: Option<MetricsRefresh>,
}

impl<R> std::fmt::Debug for App<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("keys", &self.live().keys)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl<R> App<R> {
    /// Starts the shutdown: readiness answers 503 from now on and every
    /// answer carries `Connection: close`, so clients move to other
    /// replicas; requests are still served. [`serve`] calls this when its
    /// shutdown future completes. Idempotent.
    pub fn start_draining(&self) {
        self.draining
            .send_if_modified(|d| !std::mem::replace(d, true));
    }

    /// Whether [`start_draining`](Self::start_draining) was called.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// A receiver that sees the draining flag turn `true`
    /// (`wait_for(|d| *d)`), for whoever must react to the start of a shutdown.
    pub fn subscribe_draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Bytes of the body budget currently free (for metrics and tests).
    pub fn buffer_budget_available(&self) -> usize {
        self.budget.available()
    }

    /// Swaps in a reloaded configuration: items, filters, pools, webhook
    /// secrets, signature checking, allowed events and every token take
    /// effect for the next request; requests in progress finish with the
    /// snapshot they started with. The server's own settings (bind, port,
    /// limits, timeouts) stay as they were (they need a restart).
    pub fn reload(&self, settings: &Settings) -> std::io::Result<()> {
        let live = Arc::new(Live::new(settings)?);
        match self.live.write() {
            Ok(mut current) => *current = live,
            Err(poisoned) => *poisoned.into_inner() = live,
        }
        Ok(())
    }

    /// The configuration now in force (one consistent snapshot).
    pub(crate) fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(live) => Arc::clone(&live),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The settings now in force.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.live().settings)
    }
}

impl<R: EventRepository + OperatorStore> App<R> {
    /// Builds the app from validated settings.
    pub fn new(settings: &Settings, repo: R) -> std::io::Result<Self> {
        let config = HttpConfig {
            body_limit: settings.server.body_limit_bytes,
            request_timeout: settings.server.request_timeout,
            header_read_timeout: settings.server.header_read_timeout,
            max_buffered_bytes: settings.server.max_buffered_bytes,
        };
        let status: StatusSource = Arc::new(|| DispatcherReport {
            healthy: true,
            details: serde_json::json!({"role": "unknown"}),
        });
        Ok(Self {
            repo,
            live: std::sync::RwLock::new(Arc::new(Live::new(settings)?)),
            pr_base: pull_request_base(&settings.github_api_url),
            pool_states: Arc::new(|_| dispatcher_core::ports::PoolState::Unknown {
                reason: "no Kubernetes state in this process".to_owned(),
            }),
            budget: BodyBudget::new(config.max_buffered_bytes),
            config,
            status,
            liveness: Arc::new(|| Liveness::Alive),
            draining: watch::Sender::new(false),
            metrics: Arc::new(Metrics::default()),
            metrics_refresh: None,
        })
    }

    /// Sets the source of the dispatcher report.
    #[must_use]
    pub fn with_status_source(mut self, status: StatusSource) -> Self {
        self.status = status;
        self
    }

    /// Sets this replica's view of the pools' PipelineRuns, shown by the
    /// pools API and explanations (default: unknown).
    #[must_use]
    pub fn with_pool_states(mut self, states: PoolStateSource) -> Self {
        self.pool_states = states;
        self
    }

    /// Sets the source of the liveness verdict (default: always alive).
    #[must_use]
    pub fn with_liveness_source(mut self, liveness: LivenessSource) -> Self {
        self.liveness = liveness;
        self
    }

    /// Sets the metrics registry served at `/metrics` and counted into
    /// (default: a registry of its own). Hand the same one to the dispatcher.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sets what refreshes scrape-time gauges before `/metrics` encodes.
    #[must_use]
    pub fn with_metrics_refresh(mut self, refresh: MetricsRefresh) -> Self {
        self.metrics_refresh = Some(refresh);
        self
    }

    /// The metrics registry this app counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        let span = observe::request_span(&method, &path, request.headers());
        let started = std::time::Instant::now();
        let routed = tokio::time::timeout(self.config.request_timeout, self.route(request));
        let result = match routed.instrument(span.clone()).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout),
        };
        if method == http::Method::POST && path.trim_end_matches('/') == WEBHOOK_PATH {
            self.metrics.delivery(webhook::delivery_outcome(&result));
        }
        let (error, mut response) = match result {
            Ok(response) => (None, response),
            Err(e) => {
                let response = response::error(&e);
                (Some(e), response)
            }
        };
        span.in_scope(|| {
            observe::log_answer(&span, error.as_ref(), &response);
            tracing::debug!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "request"
            );
        });
        if self.is_draining() {
            // Shutting down: ask keep-alive clients to reconnect (to another replica).
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
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
            WEBHOOK_PATH => {
                allow("POST")?;
                let (parts, body) = request.into_parts();
                let declared = declared_length(&parts.headers);
                let limit = self.config.body_limit;
                if declared.is_some_and(|n| n > limit as u64) {
                    // Answered before any check, as the original (its body read came first).
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                let checked = webhook::check_headers(self, &parts.headers)?;
                let body = self.budget.read(declared, limit, body).await?;
                webhook::receive(self, &parts.headers, checked, body).await
            }
            "/metrics" => {
                allow("GET")?;
                self.authorize_metrics(request.headers())?;
                if let Some(refresh) = &self.metrics_refresh {
                    refresh(&self.metrics);
                }
                let mut response = ApiResponse::new(http_body_util::Full::new(Bytes::from(
                    self.metrics.encode(),
                )));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(dispatcher_metrics::CONTENT_TYPE),
                );
                Ok(response)
            }
            openapi::OPENAPI_PATH => {
                allow("GET")?;
                Ok(openapi::answer())
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
                    Err(e) => observe::with_reason(
                        json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &serde_json::json!({"status": "error", "message": "Database health check failed"}),
                        ),
                        format!("database health check failed: {e}"),
                    ),
                })
            }
            "/api/v1/status/ready" => {
                allow("GET")?;
                Ok(self.readiness().await)
            }
            "/api/v1/status/live" => {
                allow("GET")?;
                Ok(self.liveness())
            }
            "/api/v1/events/status" => {
                allow("GET")?;
                self.authorize(request.headers())?;
                events::list(self, request.uri().query()).await
            }
            "/api/v1/pools" => {
                allow("GET")?;
                self.authorize(request.headers())?;
                operate::list_pools(self).await
            }
            p if p.starts_with("/api/v1/pools/") => {
                let rest = &p["/api/v1/pools/".len()..];
                let action = rest
                    .rsplit_once('/')
                    .filter(|(_, a)| matches!(*a, "pause" | "resume"));
                match action {
                    Some((pool, action)) => {
                        allow("POST")?;
                        let actor = self.authorize_admin(request.headers())?;
                        let key = operate::pool_from_path(&self.live().settings, pool)?;
                        operate::set_paused(self, &key, action == "pause", &actor).await
                    }
                    None => {
                        allow("GET")?;
                        self.authorize(request.headers())?;
                        let key = operate::pool_from_path(&self.live().settings, rest)?;
                        operate::one_pool(self, &key).await
                    }
                }
            }
            p if p.starts_with("/api/v1/events/") => {
                let rest = &p["/api/v1/events/".len()..];
                match rest.split_once('/') {
                    None => {
                        allow("GET")?;
                        self.authorize(request.headers())?;
                        events::detail(self, rest).await
                    }
                    Some((id, "explain")) => {
                        allow("GET")?;
                        self.authorize(request.headers())?;
                        operate::explain(self, id, request.uri().query()).await
                    }
                    Some((id, "replay")) => {
                        allow("POST")?;
                        let actor = self.authorize_admin(request.headers())?;
                        operate::replay(self, id, request.uri().query(), &actor).await
                    }
                    Some((id, "cancel")) => {
                        allow("POST")?;
                        let actor = self.authorize_admin(request.headers())?;
                        operate::cancel(self, id, &actor).await
                    }
                    Some(_) => Err(ApiError::NotFound(format!(
                        "No route for {method} {}",
                        request.uri().path()
                    ))),
                }
            }
            p if dashboard::owns(p) => {
                dashboard::route(self, &method, p, request.uri().query(), request.headers()).await
            }
            _ => Err(ApiError::NotFound(format!(
                "No route for {method} {}",
                request.uri().path()
            ))),
        }
    }

    fn liveness(&self) -> ApiResponse {
        match (self.liveness)() {
            Liveness::Alive => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            Liveness::Stuck(reason) => observe::with_reason(
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &serde_json::json!({"status": "error", "message": reason}),
                ),
                format!("liveness: {reason}"),
            ),
        }
    }

    async fn readiness(&self) -> ApiResponse {
        let report = (self.status)();
        if self.is_draining() {
            // Out of the load balancer at once; intake still serves stragglers.
            let answer = json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({
                    "status": "draining",
                    "message": "Shutting down: this replica takes no new traffic",
                    "dispatcher": report.details,
                }),
            );
            return observe::with_reason(answer, "draining: shutting down");
        }
        let db = self.repo.ping().await;
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
        let answer = json(
            code,
            &serde_json::json!({
                "status": status,
                "database": if db.is_ok() { "ok" } else { "unavailable" },
                "dispatcher": report.details,
            }),
        );
        match db {
            Ok(()) => answer,
            Err(e) => observe::with_reason(answer, format!("not ready: {e}")),
        }
    }

    /// Reading: open while `api.tokens` is empty; otherwise a read or an
    /// admin token.
    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        let live = self.live();
        if live.tokens.set.is_empty() {
            return Ok(());
        }
        match bearer(headers) {
            Some(token)
                if live.tokens.holder(token).is_some()
                    || live.admin_tokens.holder(token).is_some() =>
            {
                Ok(())
            }
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// Acting: an admin token; returns the name of who holds it.
    fn authorize_admin(&self, headers: &http::HeaderMap) -> Result<String, ApiError> {
        let live = self.live();
        if live.admin_tokens.set.is_empty() {
            return Err(ApiError::Forbidden(
                "The admin API is off: configure api.admin_tokens".to_owned(),
            ));
        }
        let Some(token) = bearer(headers) else {
            return Err(ApiError::Unauthorized);
        };
        if let Some(name) = live.admin_tokens.holder(token) {
            return Ok(name.to_owned());
        }
        if live.tokens.holder(token).is_some() {
            return Err(ApiError::Forbidden(
                "This token can only read: actions need an admin token (api.admin_tokens)"
                    .to_owned(),
            ));
        }
        Err(ApiError::Unauthorized)
    }

    /// Wall clock of this replica (ages and estimates shown to people).
    pub(crate) fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    /// `/metrics` takes `api.metrics_token` only (not the events API tokens).
    fn authorize_metrics(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        let live = self.live();
        let Some(tokens) = &live.metrics_token else {
            return Ok(());
        };
        match bearer(headers) {
            Some(token) if tokens.contains(token.as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Where pull requests are on the web, from the GitHub API address:
/// `https://api.github.com` → `https://github.com`; GitHub Enterprise's
/// `https://host/api/v3` → `https://host`.
fn pull_request_base(api: &url::Url) -> String {
    let host = api.host_str().unwrap_or("github.com");
    if host == "api.github.com" {
        return "https://github.com".to_owned();
    }
    let mut base = api.clone();
    base.set_path("");
    base.set_query(None);
    base.as_str().trim_end_matches('/').to_owned()
}

/// The intake route.
const WEBHOOK_PATH: &str = "/api/v1/webhooks/github-pipeline";

/// The bearer token of the `Authorization` header, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// The request's `Content-Length`, if present and valid (hyper has already
/// refused invalid ones on real connections).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
