//! Configuration: the file format ([`RawConfig`]), `${VAR}` expansion, the
//! environment overrides, and validation into [`Settings`], the checked form
//! every other crate uses.
//!
//! Loading files and reading the environment is the binary's job; this module
//! receives a parsed tree and an environment lookup function.

mod env;
mod expand;
mod model;
mod secret;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use url::Url;

pub use env::{EnvError, apply_env_overrides};
pub use expand::expand_env;
pub use model::*;
pub use secret::Secret;

use crate::rules::CelFilter;

/// One problem in the configuration, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path, e.g. `dispatcher.items[0].capacity.max_capacity`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// Parses an expanded config tree. Unknown keys are not errors (the original
/// service ignored them) but are returned so the caller can warn about typos.
pub fn parse(value: serde_json::Value) -> Result<(RawConfig, Vec<String>), ConfigErrors> {
    let mut unknown = Vec::new();
    let raw: RawConfig =
        serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
            .map_err(|e| ConfigErrors(vec![ConfigError::new("(file)", e.to_string())]))?;
    Ok((raw, unknown))
}

/// Tekton API version of the PipelineRun resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TektonApiVersion {
    /// `tekton.dev/v1` (Tekton Pipelines ≥ 0.44).
    V1,
    /// `tekton.dev/v1beta1` for old clusters.
    V1Beta1,
}

impl TektonApiVersion {
    /// The version segment of the API group path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V1Beta1 => "v1beta1",
        }
    }
}

/// Longest label name GitHub accepts, in characters.
pub const GITHUB_LABEL_MAX_CHARS: usize = 50;

const QUEUED_SUFFIX: &str = "/queued";

fn queued_label(pipeline_name: &str) -> String {
    format!("{pipeline_name}{QUEUED_SUFFIX}")
}

/// Identity of a capacity pool: `namespace/pipeline[?k=v,...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct PoolKey(pub String);

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pipeline pool: PipelineRuns of one Pipeline in one namespace, optionally
/// narrowed by annotations, limited to `max_capacity` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Stable identity, stored on dispatches.
    pub key: PoolKey,
    /// Namespace of the PipelineRuns.
    pub namespace: String,
    /// Value of the `tekton.dev/pipeline` label.
    pub pipeline_name: String,
    /// Annotations a PipelineRun must carry to count.
    pub annotation_selector: BTreeMap<String, String>,
    /// Which Tekton API serves the PipelineRuns.
    pub api_version: TektonApiVersion,
    /// Most PipelineRuns running at once.
    pub max_capacity: u32,
    /// PipelineRun label carrying the dispatch id (`capacity.dispatch_label`):
    /// when set, a run is matched to its dispatch exactly.
    pub dispatch_label: Option<String>,
    /// How waiting work of several repositories shares the pool
    /// (`capacity.fairness`, `capacity.weights`).
    pub fairness: Fairness,
}

/// Largest `capacity.weights` value: the order looks back this many
/// dispatches per repository (see [`crate::fairness`]).
pub const MAX_WEIGHT: u32 = 10;

/// `capacity.fairness` of a pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fairness {
    /// Oldest queue position first (the original's order).
    #[default]
    Fifo,
    /// Repositories take turns, each with its oldest waiting work.
    RoundRobinRepository {
        /// `owner/name` → turns per round (absent = 1).
        weights: BTreeMap<String, u32>,
    },
}

impl Fairness {
    /// The configured name: `fifo` or `round_robin_repository`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Fifo => "fifo",
            Self::RoundRobinRepository { .. } => "round_robin_repository",
        }
    }

    /// Turns per round of `repository` (1 unless weighted).
    pub fn weight(&self, repository: &str) -> u32 {
        match self {
            Self::Fifo => 1,
            Self::RoundRobinRepository { weights } => weights.get(repository).copied().unwrap_or(1),
        }
    }
}

/// `dispatcher.priority_labels`, validated: the priority of waiting work is
/// the highest priority among its pull request's labels (0 without one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriorityLabels {
    /// Lower-cased label → priority.
    by_label: BTreeMap<String, i32>,
}

impl PriorityLabels {
    /// From `(label, priority)` pairs (labels compared case-insensitively,
    /// as GitHub does).
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, i32)>) -> Self {
        Self {
            by_label: entries
                .into_iter()
                .map(|(l, p)| (l.trim().to_lowercase(), p))
                .collect(),
        }
    }

    /// No label carries a priority.
    pub fn is_empty(&self) -> bool {
        self.by_label.is_empty()
    }

    /// How many labels carry a priority.
    pub fn len(&self) -> usize {
        self.by_label.len()
    }

    /// The priority of a pull request with these labels.
    pub fn priority<S: AsRef<str>>(&self, labels: &[S]) -> i32 {
        if self.by_label.is_empty() {
            return 0;
        }
        labels
            .iter()
            .filter_map(|l| self.by_label.get(&l.as_ref().trim().to_lowercase()))
            .copied()
            .max()
            .unwrap_or(0)
    }
}

impl PoolSpec {
    /// `max_capacity: 0`: the pool dispatches nothing (the original's way of
    /// pausing a pipeline).
    pub fn is_paused(&self) -> bool {
        self.max_capacity == 0
    }

    /// The GitHub label put on pull requests waiting for this pool.
    pub fn queued_label(&self) -> String {
        queued_label(&self.pipeline_name)
    }

    fn key_for(namespace: &str, pipeline: &str, selector: &BTreeMap<String, String>) -> PoolKey {
        let mut key = format!("{namespace}/{pipeline}");
        if !selector.is_empty() {
            let parts: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            key.push('?');
            key.push_str(&parts.join(","));
        }
        PoolKey(key)
    }
}

/// A validated `dispatcher.items[]` entry.
#[derive(Debug, Clone)]
pub struct Item {
    /// Unique name.
    pub name: String,
    /// Pull-request actions that match.
    pub events: BTreeSet<String>,
    /// `owner/name`.
    pub repository: String,
    /// EventListener URL.
    pub callback_url: Url,
    /// The pool it dispatches into.
    pub pool: PoolKey,
    /// Optional CEL filter, compiled.
    pub filter: Option<CelFilter>,
    /// Cancel the run of an older event of the same PR when a newer one is planned.
    pub cancel_superseded: bool,
    /// Cancel waiting and running work of a PR when it is closed.
    pub cancel_on_close: bool,
}

/// Validated security settings.
#[derive(Debug, Clone)]
pub struct Security {
    /// Secrets tried in order; empty only when `verify_signatures` is false.
    pub webhook_secrets: Vec<Secret>,
    /// Whether signatures are checked.
    pub verify_signatures: bool,
    /// Accepted `X-GitHub-Event` values.
    pub allowed_github_events: BTreeSet<String>,
}

/// Retry and timing knobs of the dispatch engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchTuning {
    /// Trigger attempts before `failed`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_backoff_base: Duration,
    /// Largest retry delay.
    pub retry_backoff_max: Duration,
    /// Slot reservation after a 202 until the PipelineRun shows up.
    pub reservation_timeout: Duration,
    /// Safety pass interval.
    pub safety_pass_interval: Duration,
    /// EventListener POST timeout.
    pub trigger_timeout: Duration,
    /// Full relist interval of PipelineRuns.
    pub capacity_resync_interval: Duration,
    /// Age after which a pool's Kubernetes state is unknown.
    pub capacity_stale_after: Duration,
    /// Standby's leadership poll interval.
    pub leader_retry_interval: Duration,
    /// Pacing of passes: after a short burst, at most one starts per interval.
    pub min_pass_interval: Duration,
    /// Longest takeover time after the active replica stops answering.
    pub failover_timeout: Duration,
    /// Waiting dispatches above which passes are incremental.
    pub incremental_pass_above: u32,
}

impl DispatchTuning {
    /// `idle_session_timeout` of the active replica's database session:
    /// PostgreSQL ends a session silent this long, releasing the lock, so a
    /// standby can take over within [`Self::failover_timeout`].
    pub fn leader_idle_timeout(&self) -> Duration {
        self.failover_timeout * 2 / 3
    }

    /// How often the active replica proves it is alive when otherwise idle.
    pub fn heartbeat_interval(&self) -> Duration {
        self.leader_idle_timeout() / 4
    }

    /// Longest a single pass may take before the replica gives up leadership
    /// (a pass stuck on a stalled database must not hold the lock forever).
    /// Generous: a pass working through a large backlog makes progress
    /// batch by batch, and every statement has its own timeout anyway.
    pub fn pass_timeout(&self) -> Duration {
        self.failover_timeout * 2
    }

    /// How long before PostgreSQL may end the leader session the active
    /// replica stops counting on its lease (a trigger already on its way,
    /// timer slack).
    pub fn leader_lease_margin(&self) -> Duration {
        self.leader_idle_timeout() * 3 / 10
    }
}

impl Default for DispatchTuning {
    fn default() -> Self {
        let d = DispatchSection::default();
        Self {
            max_attempts: d.max_attempts,
            retry_backoff_base: d.retry_backoff_base,
            retry_backoff_max: d.retry_backoff_max,
            reservation_timeout: d.reservation_timeout,
            safety_pass_interval: d.safety_pass_interval,
            trigger_timeout: d.trigger_timeout,
            capacity_resync_interval: d.capacity_resync_interval,
            capacity_stale_after: d.capacity_stale_after,
            leader_retry_interval: d.leader_retry_interval,
            min_pass_interval: d.min_pass_interval,
            failover_timeout: d.failover_timeout,
            incremental_pass_above: d.incremental_pass_above,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The tracing filter directive for a `logging.level` / `LOG_LEVEL` value:
/// the original service's Python level names (`INFO`, `WARNING`, `CRITICAL`)
/// are mapped, empty means `info`, anything else is taken as a filter directive.
pub fn log_filter_directive(level: &str) -> String {
    match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn".to_owned(),
        "critical" | "fatal" => "error".to_owned(),
        "" => "info".to_owned(),
        other => other.to_owned(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Routes, in file order.
    pub items: Vec<Item>,
    /// Distinct capacity pools, keyed by [`PoolKey`].
    pub pools: BTreeMap<PoolKey, PoolSpec>,
    /// Signature settings.
    pub security: Security,
    /// HTTP listener.
    pub server: ServerSection,
    /// Database settings (URL possibly from the environment, see [`apply_env_overrides`]).
    pub database: DatabaseSection,
    /// GitHub API.
    pub github: GithubSection,
    /// Parsed `github.api_url`.
    pub github_api_url: Url,
    /// Read tokens of the API (`api.tokens`); empty = reading is open.
    pub api_tokens: Vec<NamedToken>,
    /// Admin tokens (`api.admin_tokens`): read and act; empty = no admin API.
    pub admin_tokens: Vec<NamedToken>,
    /// Bearer token required on `GET /metrics` (`api.metrics_token`); `None` = open.
    pub metrics_token: Option<Secret>,
    /// Engine tuning.
    pub dispatch: DispatchTuning,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_level: String,
    /// Local development aids (`dev:`); all off unless the file turns them on.
    pub dev: DevSection,
    /// Retention of finished events (`retention:`); `None` = keep everything.
    pub retention: Option<crate::retention::RetentionPolicy>,
    /// `dispatcher.priority_labels`.
    pub priority_labels: PriorityLabels,
    /// Catch-up of missed deliveries (`github.catch_up`); `None` = off.
    pub catch_up: Option<crate::catch_up::CatchUpPolicy>,
}

impl Settings {
    /// Validates a raw config, reporting every problem at once.
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut pools: BTreeMap<PoolKey, (PoolSpec, usize)> = BTreeMap::new();
        let mut items = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();

        for (i, raw_item) in raw.dispatcher.items.into_iter().enumerate() {
            let at = |f: &str| format!("dispatcher.items[{i}].{f}");
            if raw_item.name.trim().is_empty() {
                errors.push(ConfigError::new(at("name"), "must not be empty"));
            } else if let Some(first) = names.insert(raw_item.name.clone(), i) {
                errors.push(ConfigError::new(
                    at("name"),
                    format!(
                        "duplicate item name '{}' (also dispatcher.items[{first}])",
                        raw_item.name
                    ),
                ));
            }
            if raw_item.events.is_empty() {
                errors.push(ConfigError::new(
                    at("events"),
                    "must list at least one pull_request action",
                ));
            }
            if !is_full_repo_name(&raw_item.full_repository_name) {
                errors.push(ConfigError::new(
                    at("full_repository_name"),
                    format!(
                        "must be 'owner/name' (got '{}')",
                        raw_item.full_repository_name
                    ),
                ));
            }
            let callback_url = match parse_http_url(&raw_item.callback_url) {
                Ok(u) => Some(u),
                Err(m) => {
                    errors.push(ConfigError::new(at("callback_url"), m));
                    None
                }
            };
            let pool = validate_capacity(&raw_item.capacity, &at, &mut errors);
            let filter = match raw_item
                .filter
                .as_ref()
                .and_then(|f| f.cel_expression.as_deref())
            {
                Some(expr) if !expr.trim().is_empty() => match CelFilter::compile(expr) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        errors.push(ConfigError::new(at("filter.cel_expression"), e.to_string()));
                        None
                    }
                },
                _ => None,
            };
            let (Some(callback_url), Some(pool)) = (callback_url, pool) else {
                continue;
            };
            let key = pool.key.clone();
            match pools.get(&key) {
                Some((existing, first)) if existing.max_capacity != pool.max_capacity => {
                    errors.push(ConfigError::new(
                        at("capacity.max_capacity"),
                        format!(
                            "pool {key} is shared with dispatcher.items[{first}] which sets max_capacity {}; one pool has one limit (got {})",
                            existing.max_capacity, pool.max_capacity
                        ),
                    ));
                }
                Some((existing, first)) if existing.api_version != pool.api_version => {
                    errors.push(ConfigError::new(
                        at("capacity.api_version"),
                        format!(
                            "pool {key} is shared with dispatcher.items[{first}] which uses tekton.dev/{}; one pool has one API version (got {})",
                            existing.api_version.as_str(),
                            pool.api_version.as_str()
                        ),
                    ));
                }
                Some((existing, first)) if existing.fairness != pool.fairness => {
                    errors.push(ConfigError::new(
                        at("capacity.fairness"),
                        format!(
                            "pool {key} is shared with dispatcher.items[{first}] which sets fairness {} with other weights or another mode; one pool has one order (got {})",
                            existing.fairness.as_str(),
                            pool.fairness.as_str()
                        ),
                    ));
                }
                Some((existing, first)) if existing.dispatch_label != pool.dispatch_label => {
                    errors.push(ConfigError::new(
                        at("capacity.dispatch_label"),
                        format!(
                            "pool {key} is shared with dispatcher.items[{first}] which sets another dispatch_label; one pool has one label"
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    pools.insert(key.clone(), (pool, i));
                }
            }
            items.push(Item {
                name: raw_item.name,
                events: raw_item.events.into_iter().collect(),
                repository: raw_item.full_repository_name,
                callback_url,
                pool: key,
                filter,
                cancel_superseded: raw_item.cancel_superseded,
                cancel_on_close: raw_item.cancel_on_close,
            });
        }

        let priority_labels =
            validate_priority_labels(&raw.dispatcher.priority_labels, &mut errors);
        let security = validate_security(raw.security, &mut errors);
        validate_server(&raw.server, &mut errors);
        if raw.database.pool_size == 0 {
            errors.push(ConfigError::new("database.pool_size", "must be at least 1"));
        }
        validate_database_tls(&raw.database, &mut errors);
        let github_api_url = match parse_http_url(&raw.github.api_url) {
            Ok(u) => Some(u),
            Err(m) => {
                errors.push(ConfigError::new("github.api_url", m));
                None
            }
        };
        validate_github_app(&raw.github, &mut errors);
        validate_queue_status(&raw.github, &mut errors);
        let api_tokens = named_tokens("api.tokens", "reader", &raw.api.tokens, &mut errors);
        let admin_tokens = named_tokens(
            "api.admin_tokens",
            "admin",
            &raw.api.admin_tokens,
            &mut errors,
        );
        let dispatch = validate_dispatch(&raw.dispatch, &mut errors);
        validate_dev(&raw.dev, &mut errors);
        let retention = raw
            .retention
            .as_ref()
            .map(|r| crate::retention::validate(r, &mut errors));
        let catch_up = raw.github.catch_up.as_ref().map(|c| {
            crate::catch_up::validate(c, &raw.github, &security, retention.as_ref(), &mut errors)
        });
        let log_format = match raw.logging.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                errors.push(ConfigError::new(
                    "logging.format",
                    format!("must be 'text' or 'json' (got '{other}')"),
                ));
                LogFormat::Text
            }
        };

        match github_api_url {
            Some(github_api_url) if errors.is_empty() => Ok(Self {
                items,
                pools: pools.into_iter().map(|(k, (p, _))| (k, p)).collect(),
                security,
                server: raw.server,
                database: raw.database,
                github: raw.github,
                github_api_url,
                api_tokens,
                admin_tokens,
                metrics_token: raw.api.metrics_token.filter(|t| !t.expose().is_empty()),
                dispatch,
                log_format,
                log_level: raw.logging.level,
                dev: raw.dev,
                retention,
                priority_labels,
                catch_up,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The item called `name`, if configured.
    pub fn item(&self, name: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.name == name)
    }
}

pub(crate) fn is_full_repo_name(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a valid URL ('{s}'): {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("must be an http(s) URL with a host (got '{s}')"));
    }
    Ok(url)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes label key: `[prefix/]name`, the name at most 63 characters of
/// alphanumerics, `-`, `_`, `.` starting and ending alphanumeric; the prefix a
/// DNS subdomain.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns_label)
}

fn validate_capacity(
    raw: &RawCapacity,
    at: &dyn Fn(&str) -> String,
    errors: &mut Vec<ConfigError>,
) -> Option<PoolSpec> {
    let before = errors.len();
    if raw.kind != "ocp_tekton" {
        errors.push(ConfigError::new(
            at("capacity.type"),
            format!(
                "unknown capacity type '{}' (supported: ocp_tekton)",
                raw.kind
            ),
        ));
    }
    if !is_dns_label(&raw.pipeline_name) {
        errors.push(ConfigError::new(
            at("capacity.pipeline_name"),
            format!(
                "must be a Kubernetes object name (got '{}')",
                raw.pipeline_name
            ),
        ));
    } else {
        let label = queued_label(&raw.pipeline_name);
        let label_len = label.chars().count();
        if label_len > GITHUB_LABEL_MAX_CHARS {
            errors.push(ConfigError::new(
                at("capacity.pipeline_name"),
                format!(
                    "the pull-request label '{label}' would be {label_len} characters; GitHub allows at most {GITHUB_LABEL_MAX_CHARS} (so pipeline_name at most {} characters)",
                    GITHUB_LABEL_MAX_CHARS - QUEUED_SUFFIX.len()
                ),
            ));
        }
    }
    if !is_dns_label(&raw.namespace) {
        errors.push(ConfigError::new(
            at("capacity.namespace"),
            format!(
                "must be a Kubernetes namespace name (got '{}')",
                raw.namespace
            ),
        ));
    }
    // 0 is accepted, as the original does: the pool is paused (its events
    // queue, nothing is dispatched); start-up and readiness warn about it.
    let max_capacity = match u32::try_from(raw.max_capacity) {
        Ok(n) => n,
        Err(_) => {
            errors.push(ConfigError::new(
                at("capacity.max_capacity"),
                format!(
                    "must be 0 (paused) or a positive number (got {})",
                    raw.max_capacity
                ),
            ));
            0
        }
    };
    for key in raw.annotation_selector.keys() {
        if key.is_empty() {
            errors.push(ConfigError::new(
                at("capacity.annotation_selector"),
                "annotation names must not be empty",
            ));
        }
    }
    let dispatch_label = match raw.dispatch_label.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(label) if is_label_key(label) => Some(label.to_owned()),
        Some(label) => {
            errors.push(ConfigError::new(
                at("capacity.dispatch_label"),
                format!(
                    "must be a Kubernetes label key such as 'example.com/dispatch' (got '{label}')"
                ),
            ));
            None
        }
    };
    let api_version = match raw.api_version.as_str() {
        "v1" | "tekton.dev/v1" => TektonApiVersion::V1,
        "v1beta1" | "tekton.dev/v1beta1" => TektonApiVersion::V1Beta1,
        other => {
            errors.push(ConfigError::new(
                at("capacity.api_version"),
                format!("must be 'v1' or 'v1beta1' (got '{other}')"),
            ));
            TektonApiVersion::V1
        }
    };
    let fairness = match raw.fairness.as_deref().map(str::trim) {
        None | Some("fifo") => {
            if !raw.weights.is_empty() {
                errors.push(ConfigError::new(
                    at("capacity.weights"),
                    "only with capacity.fairness: round_robin_repository",
                ));
            }
            Fairness::Fifo
        }
        Some("round_robin_repository") => {
            let mut weights = BTreeMap::new();
            for (repo, w) in &raw.weights {
                if !is_full_repo_name(repo) {
                    errors.push(ConfigError::new(
                        at(&format!("capacity.weights.{repo}")),
                        format!("must name a repository as 'owner/name' (got '{repo}')"),
                    ));
                }
                match u32::try_from(*w) {
                    Ok(n) if (1..=MAX_WEIGHT).contains(&n) => {
                        weights.insert(repo.clone(), n);
                    }
                    _ => errors.push(ConfigError::new(
                        at(&format!("capacity.weights.{repo}")),
                        format!("must be between 1 and {MAX_WEIGHT} (got {w})"),
                    )),
                }
            }
            Fairness::RoundRobinRepository { weights }
        }
        Some(other) => {
            errors.push(ConfigError::new(
                at("capacity.fairness"),
                format!("must be 'fifo' or 'round_robin_repository' (got '{other}')"),
            ));
            Fairness::Fifo
        }
    };
    (errors.len() == before).then(|| PoolSpec {
        key: PoolSpec::key_for(&raw.namespace, &raw.pipeline_name, &raw.annotation_selector),
        namespace: raw.namespace.clone(),
        pipeline_name: raw.pipeline_name.clone(),
        annotation_selector: raw.annotation_selector.clone(),
        api_version,
        max_capacity,
        dispatch_label,
        fairness,
    })
}

fn validate_priority_labels(
    raw: &[RawPriorityLabel],
    errors: &mut Vec<ConfigError>,
) -> PriorityLabels {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, entry) in raw.iter().enumerate() {
        let label = entry.label.trim();
        if label.is_empty() {
            errors.push(ConfigError::new(
                format!("dispatcher.priority_labels[{i}].label"),
                "must not be empty",
            ));
        } else if let Some(first) = seen.insert(label.to_lowercase(), i) {
            errors.push(ConfigError::new(
                format!("dispatcher.priority_labels[{i}].label"),
                format!(
                    "duplicate label '{label}' (also dispatcher.priority_labels[{first}]; GitHub labels ignore case)"
                ),
            ));
        }
    }
    PriorityLabels::new(raw.iter().map(|e| (e.label.as_str(), e.priority)))
}

fn validate_security(raw: SecuritySection, errors: &mut Vec<ConfigError>) -> Security {
    let webhook_secrets = raw.github_webhook_secret.secrets();
    if raw.verify_signatures && webhook_secrets.is_empty() {
        errors.push(ConfigError::new(
            "security.github_webhook_secret",
            "required while security.verify_signatures is true (set it or GITHUB_WEBHOOK_SECRET)",
        ));
    }
    if raw.allowed_github_events.is_empty() {
        errors.push(ConfigError::new(
            "security.allowed_github_events",
            "must list at least one event type",
        ));
    }
    Security {
        webhook_secrets,
        verify_signatures: raw.verify_signatures,
        allowed_github_events: raw.allowed_github_events.into_iter().collect(),
    }
}

fn validate_server(raw: &ServerSection, errors: &mut Vec<ConfigError>) {
    if raw.body_limit_bytes == 0 {
        errors.push(ConfigError::new(
            "server.body_limit_bytes",
            "must be positive",
        ));
    }
    for (field, d) in [
        ("server.header_read_timeout", raw.header_read_timeout),
        ("server.request_timeout", raw.request_timeout),
    ] {
        if d.is_zero() {
            errors.push(ConfigError::new(field, "must be positive"));
        }
    }
    if raw.max_connections == 0 {
        errors.push(ConfigError::new(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    if raw.max_buffered_bytes < raw.body_limit_bytes {
        errors.push(ConfigError::new(
            "server.max_buffered_bytes",
            format!(
                "must be at least server.body_limit_bytes ({}), or a body at the limit could never be accepted (got {})",
                raw.body_limit_bytes, raw.max_buffered_bytes
            ),
        ));
    } else if u32::try_from(raw.max_buffered_bytes).is_err() {
        errors.push(ConfigError::new(
            "server.max_buffered_bytes",
            format!(
                "must be at most {} (4 GiB - 1) (got {})",
                u32::MAX,
                raw.max_buffered_bytes
            ),
        ));
    }
}

fn validate_dispatch(raw: &DispatchSection, errors: &mut Vec<ConfigError>) -> DispatchTuning {
    if raw.max_attempts == 0 {
        errors.push(ConfigError::new(
            "dispatch.max_attempts",
            "must be at least 1",
        ));
    }
    for (field, d) in [
        ("dispatch.retry_backoff_base", raw.retry_backoff_base),
        ("dispatch.retry_backoff_max", raw.retry_backoff_max),
        ("dispatch.reservation_timeout", raw.reservation_timeout),
        ("dispatch.safety_pass_interval", raw.safety_pass_interval),
        ("dispatch.trigger_timeout", raw.trigger_timeout),
        (
            "dispatch.capacity_resync_interval",
            raw.capacity_resync_interval,
        ),
        ("dispatch.capacity_stale_after", raw.capacity_stale_after),
        ("dispatch.leader_retry_interval", raw.leader_retry_interval),
    ] {
        if d.is_zero() {
            errors.push(ConfigError::new(field, "must be positive"));
        }
    }
    if raw.min_pass_interval > Duration::from_secs(1) {
        errors.push(ConfigError::new(
            "dispatch.min_pass_interval",
            "must be at most 1s: it delays every dispatch by up to this much",
        ));
    }
    if raw.retry_backoff_base > raw.retry_backoff_max {
        errors.push(ConfigError::new(
            "dispatch.retry_backoff_base",
            "must not exceed dispatch.retry_backoff_max",
        ));
    }
    if raw.capacity_stale_after <= raw.capacity_resync_interval {
        errors.push(ConfigError::new(
            "dispatch.capacity_stale_after",
            "must be longer than dispatch.capacity_resync_interval, or every pool would look stale between resyncs",
        ));
    }
    if raw.failover_timeout < Duration::from_secs(3) {
        errors.push(ConfigError::new(
            "dispatch.failover_timeout",
            "must be at least 3s: the active replica's heartbeat has to fit well inside it",
        ));
    } else if raw.leader_retry_interval * 3 > raw.failover_timeout {
        errors.push(ConfigError::new(
            "dispatch.leader_retry_interval",
            "must be at most a third of dispatch.failover_timeout",
        ));
    }
    if raw.reservation_timeout <= raw.trigger_timeout {
        errors.push(ConfigError::new(
            "dispatch.reservation_timeout",
            "must be longer than dispatch.trigger_timeout: a trigger whose answer was lost keeps its slot until then",
        ));
    }
    DispatchTuning {
        failover_timeout: raw.failover_timeout,
        max_attempts: raw.max_attempts,
        retry_backoff_base: raw.retry_backoff_base,
        retry_backoff_max: raw.retry_backoff_max,
        reservation_timeout: raw.reservation_timeout,
        safety_pass_interval: raw.safety_pass_interval,
        trigger_timeout: raw.trigger_timeout,
        capacity_resync_interval: raw.capacity_resync_interval,
        capacity_stale_after: raw.capacity_stale_after,
        leader_retry_interval: raw.leader_retry_interval,
        min_pass_interval: raw.min_pass_interval,
        incremental_pass_above: raw.incremental_pass_above,
    }
}

/// `database.ssl*`: a known mode, readable files, a key with a certificate.
fn validate_database_tls(raw: &DatabaseSection, errors: &mut Vec<ConfigError>) {
    const MODES: [&str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];
    if let Some(mode) = raw.sslmode.as_deref()
        && !MODES.contains(&mode)
    {
        errors.push(ConfigError::new(
            "database.sslmode",
            format!("must be one of {} (got '{mode}')", MODES.join(", ")),
        ));
    }
    let files = [
        ("database.sslrootcert", &raw.sslrootcert),
        ("database.sslcert", &raw.sslcert),
        ("database.sslkey", &raw.sslkey),
    ];
    for (field, path) in files {
        if let Some(path) = path
            && let Err(e) = std::fs::File::open(path)
        {
            errors.push(ConfigError::new(
                field,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    if raw.sslcert.is_some() != raw.sslkey.is_some() {
        errors.push(ConfigError::new(
            if raw.sslcert.is_some() {
                "database.sslkey"
            } else {
                "database.sslcert"
            },
            "database.sslcert and database.sslkey go together (mutual TLS)",
        ));
    }
}

fn validate_queue_status(raw: &GithubSection, errors: &mut Vec<ConfigError>) {
    if raw.queue_status_interval.is_zero() {
        errors.push(ConfigError::new(
            "github.queue_status_interval",
            "must be positive",
        ));
    }
}

fn validate_github_app(raw: &GithubSection, errors: &mut Vec<ConfigError>) {
    let Some(app) = &raw.app else {
        return;
    };
    if raw.token.as_ref().is_some_and(|t| !t.expose().is_empty()) {
        errors.push(ConfigError::new(
            "github.app",
            "github.app and github.token (or GITHUB_TOKEN) are exclusive: set one",
        ));
    }
    if app.app_id == 0 {
        errors.push(ConfigError::new("github.app.app_id", "must be positive"));
    }
    if app.installation_id == 0 {
        errors.push(ConfigError::new(
            "github.app.installation_id",
            "must be positive",
        ));
    }
    // Read here so a missing or unreadable key stops the start; whether it
    // is a usable RSA key is checked where it is parsed (dispatcher-github).
    match std::fs::read(&app.private_key_file) {
        Err(e) => errors.push(ConfigError::new(
            "github.app.private_key_file",
            format!("cannot read {}: {e}", app.private_key_file.display()),
        )),
        Ok(pem) if !pem.windows(11).any(|w| w == b"PRIVATE KEY") => {
            errors.push(ConfigError::new(
                "github.app.private_key_file",
                format!(
                    "{} holds no PEM private key (BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)",
                    app.private_key_file.display()
                ),
            ));
        }
        Ok(_) => {}
    }
}

fn validate_dev(raw: &DevSection, errors: &mut Vec<ConfigError>) {
    // Checked even while the simulation is off, so turning it on later
    // cannot surface a mistake that was in the file all along.
    if raw.run_duration.is_zero() {
        errors.push(ConfigError::new(
            "dev.run_duration",
            "must be positive: a simulated PipelineRun has to be seen running before it finishes",
        ));
    }
}

/// Builds a PostgreSQL URL from the original service's `POSTGRESQL_*` parts,
/// percent-encoding user, password and database name so any character works.
pub fn database_url_from_parts(
    user: &str,
    password: Option<&str>,
    host: &str,
    port: u16,
    database: &str,
) -> String {
    use std::fmt::Write;
    let enc = |s: &str| -> String {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
        out
    };
    let auth = match password {
        Some(p) if !p.is_empty() => format!("{}:{}", enc(user), enc(p)),
        _ => enc(user),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("postgres://{auth}@{host}:{port}/{}", enc(database))
}

/// A validated API token and the name of who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedToken {
    /// Who holds it: the configured name, or `<kind>-<n>` (1-based) for a
    /// plain entry.
    pub name: String,
    /// The bearer token.
    pub token: Secret,
}

fn named_tokens(
    field: &str,
    kind: &str,
    entries: &[model::TokenEntry],
    errors: &mut Vec<ConfigError>,
) -> Vec<NamedToken> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let (name, token) = match entry {
            model::TokenEntry::Plain(token) => (format!("{kind}-{}", i + 1), token),
            model::TokenEntry::Named { name, token } => (name.trim().to_owned(), token),
        };
        if token.expose().trim().is_empty() {
            errors.push(ConfigError::new(
                format!("{field}[{i}]"),
                "must not be empty",
            ));
        } else if name.is_empty() {
            errors.push(ConfigError::new(
                format!("{field}[{i}].name"),
                "must not be empty",
            ));
        } else {
            out.push(NamedToken {
                name,
                token: token.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
