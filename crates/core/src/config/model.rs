//! The configuration file as written by operators: the original service's
//! format plus optional sections, all with defaults. Nothing here is
//! validated; see [`super::Settings`] for the checked form.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawConfig {
    /// `dispatcher.items[]` from the original format.
    pub dispatcher: DispatcherSection,
    /// Signature checks and the event-type allow-list.
    pub security: SecuritySection,
    /// HTTP listener.
    pub server: ServerSection,
    /// PostgreSQL connection.
    pub database: DatabaseSection,
    /// GitHub API used for PR labels.
    pub github: GithubSection,
    /// Authentication of the status and admin endpoints.
    pub api: ApiSection,
    /// Dispatch engine tuning.
    pub dispatch: DispatchSection,
    /// Log output.
    pub logging: LoggingSection,
    /// Local development aids (all off by default).
    pub dev: DevSection,
    /// Deleting old finished events; absent = keep everything (the original's behaviour).
    pub retention: Option<RetentionSection>,
}

/// `dispatcher:` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct DispatcherSection {
    /// One entry per (repository, pipeline) route.
    pub items: Vec<RawItem>,
    /// Pull-request labels that move waiting work ahead in its pool.
    pub priority_labels: Vec<RawPriorityLabel>,
}

/// One `dispatcher.priority_labels[]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawPriorityLabel {
    /// The pull-request label (GitHub's names: compared case-insensitively).
    pub label: String,
    /// Higher is dispatched first; PRs without a listed label have 0.
    pub priority: i32,
}

/// One `dispatcher.items[]` entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawItem {
    /// Unique, human-readable name.
    pub name: String,
    /// Pull-request actions that trigger this item.
    pub events: Vec<String>,
    /// `owner/name` of the repository.
    pub full_repository_name: String,
    /// Tekton EventListener URL.
    pub callback_url: String,
    /// Capacity pool of the pipeline.
    pub capacity: RawCapacity,
    /// Optional CEL filter.
    pub filter: Option<RawFilter>,
    /// Cancel the PipelineRun of an older event of the same pull request
    /// when a newer one is planned for this item (off by default).
    pub cancel_superseded: bool,
    /// Cancel this item's waiting and running work of a pull request when it
    /// is closed, merged or not (off by default).
    pub cancel_on_close: bool,
}

/// `capacity:` of an item.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawCapacity {
    /// Only `ocp_tekton` exists.
    #[serde(rename = "type")]
    pub kind: String,
    /// Tekton `Pipeline` name (label `tekton.dev/pipeline`).
    pub pipeline_name: String,
    /// Maximum concurrently running PipelineRuns.
    pub max_capacity: i64,
    /// Namespace of the PipelineRuns.
    pub namespace: String,
    /// PipelineRun annotations that narrow the pool.
    pub annotation_selector: BTreeMap<String, String>,
    /// Tekton API version: `v1` (default) or `v1beta1`.
    pub api_version: String,
    /// PipelineRun label into which the pool's TriggerTemplate copies the
    /// `X-Webhook-Dispatcher-Dispatch` header (optional; see deploy/tekton).
    pub dispatch_label: Option<String>,
    /// `fifo` (default) or `round_robin_repository`.
    pub fairness: Option<String>,
    /// `owner/name: N`: turns per round under `round_robin_repository`.
    pub weights: BTreeMap<String, i64>,
}

impl Default for RawCapacity {
    fn default() -> Self {
        Self {
            kind: String::new(),
            pipeline_name: String::new(),
            max_capacity: 0,
            namespace: String::new(),
            annotation_selector: BTreeMap::new(),
            api_version: "v1".to_owned(),
            dispatch_label: None,
            fairness: None,
            weights: BTreeMap::new(),
        }
    }
}

/// `filter:` of an item.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawFilter {
    /// CEL over `body` and `headers`.
    pub cel_expression: Option<String>,
}

/// `security:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SecuritySection {
    /// One secret or a list (rotation: any one matches).
    pub github_webhook_secret: SecretList,
    /// Reject deliveries without a valid signature.
    pub verify_signatures: bool,
    /// `X-GitHub-Event` values accepted (`ping` is always answered).
    pub allowed_github_events: Vec<String>,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            github_webhook_secret: SecretList::default(),
            verify_signatures: true,
            allowed_github_events: vec!["pull_request".to_owned()],
        }
    }
}

/// A secret given as one string or as a list of strings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SecretList {
    /// Not configured.
    #[default]
    None,
    /// `github_webhook_secret: "..."`.
    One(Secret),
    /// `github_webhook_secret: ["new", "old"]`.
    Many(Vec<Secret>),
}

impl SecretList {
    /// The non-empty secrets, in configured order.
    pub fn secrets(&self) -> Vec<Secret> {
        let all: Vec<Secret> = match self {
            Self::None => Vec::new(),
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        };
        all.into_iter().filter(|s| !s.expose().is_empty()).collect()
    }
}

/// `server:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerSection {
    /// Address to bind.
    pub bind: IpAddr,
    /// Port (`DISPATCHER_PORT` overrides).
    pub port: u16,
    /// Largest accepted request body in bytes (GitHub caps payloads at 25 MiB).
    pub body_limit_bytes: usize,
    /// Time allowed to read a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request, body included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time given to in-flight requests once the listener has stopped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Time between SIGTERM and closing the listener: readiness answers 503
    /// at once so load balancers stop sending, while intake keeps serving
    /// whatever still arrives.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Bytes all webhook bodies being received may buffer together; a body
    /// that does not fit is answered 503 with `Retry-After` at once.
    pub max_buffered_bytes: usize,
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: 5000,
            body_limit_bytes: 25 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            shutdown_delay: Duration::from_secs(5),
            max_buffered_bytes: 128 * 1024 * 1024,
            max_connections: 1024,
        }
    }
}

/// `database:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseSection {
    /// `postgres://...` (`DATABASE_URL` or `POSTGRESQL_*` override).
    pub url: Option<Secret>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Time allowed to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a request waits for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// TLS: `disable`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`, as libpq. These four keys override the same
    /// parameters of the URL.
    pub sslmode: Option<String>,
    /// CA certificate(s) (PEM) that must have signed the server's certificate.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `sslkey`.
    pub sslcert: Option<PathBuf>,
    /// Client private key (PEM: PKCS#8, RSA or EC).
    pub sslkey: Option<PathBuf>,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            migrate_on_start: true,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
        }
    }
}

/// `github:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct GithubSection {
    /// REST API base (`GITHUB_API_URL` overrides).
    pub api_url: String,
    /// Token for labels (`GITHUB_TOKEN` overrides). Labels are skipped
    /// without one (or without `app`).
    pub token: Option<Secret>,
    /// A GitHub App to act as instead of a token (exclusive with `token`).
    pub app: Option<GithubAppSection>,
    /// Timeout of each GitHub call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redelivering deliveries GitHub failed to make (`github.catch_up`); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUpSection>,
    /// How a waiting pull request shows its place in the queue (default `label`).
    pub queue_status: QueueStatusMode,
    /// Shortest time between two position updates of one pull request's
    /// status per pipeline (the final "Started"/"Cancelled" goes at once).
    #[serde(with = "humantime_serde")]
    pub queue_status_interval: Duration,
}

/// `github.queue_status`: what a waiting pull request carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueStatusMode {
    /// A check run per pipeline (needs `github.app`) plus the label.
    CheckRun,
    /// A commit status per pipeline on the head SHA plus the label.
    CommitStatus,
    /// The `<pipeline>/queued` label only (the original behaviour).
    #[default]
    Label,
    /// Neither label nor status.
    Off,
}

impl QueueStatusMode {
    /// Whether the `<pipeline>/queued` label is kept.
    pub fn labels(self) -> bool {
        self != Self::Off
    }

    /// Whether a check run or commit status shows the position.
    pub fn posts_status(self) -> bool {
        matches!(self, Self::CheckRun | Self::CommitStatus)
    }

    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CheckRun => "check_run",
            Self::CommitStatus => "commit_status",
            Self::Label => "label",
            Self::Off => "off",
        }
    }
}

impl GithubSection {
    /// Whether labels are on: a non-empty token or an app is configured.
    pub fn labels_enabled(&self) -> bool {
        self.app.is_some() || self.token.as_ref().is_some_and(|t| !t.expose().is_empty())
    }
}

/// `github.app:` a GitHub App installation whose tokens the dispatcher uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GithubAppSection {
    /// The app's id (its settings page: "App ID").
    pub app_id: u64,
    /// PEM file of the app's private key (PKCS#1 as GitHub issues it, or PKCS#8).
    pub private_key_file: PathBuf,
    /// The installation on the organisation or account of the repositories.
    pub installation_id: u64,
}

impl Default for GithubSection {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".to_owned(),
            token: None,
            app: None,
            timeout: Duration::from_secs(10),
            catch_up: None,
            queue_status: QueueStatusMode::default(),
            queue_status_interval: Duration::from_secs(30),
        }
    }
}

/// One entry of `api.tokens` / `api.admin_tokens`: a token, or a token
/// with the name of who holds it (shown in timelines and logs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// `- "s3cr3t"`.
    Plain(Secret),
    /// `- {name: alice, token: "s3cr3t"}`.
    Named {
        /// Who holds it.
        name: String,
        /// The bearer token.
        token: Secret,
    },
}

/// `api:` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiSection {
    /// Bearer tokens that read the events, pools and explanations; empty =
    /// reading is open.
    pub tokens: Vec<TokenEntry>,
    /// Bearer tokens that read and act (replay, cancel, pause); empty = the
    /// admin API is off.
    pub admin_tokens: Vec<TokenEntry>,
    /// Bearer token required on `GET /metrics`; unset = open.
    pub metrics_token: Option<Secret>,
}

/// `dispatch:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DispatchSection {
    /// Trigger attempts before a dispatch is `failed`.
    pub max_attempts: u32,
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_base: Duration,
    /// Largest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// How long a triggered dispatch holds a slot before its PipelineRun appears.
    #[serde(with = "humantime_serde")]
    pub reservation_timeout: Duration,
    /// Interval of the slow safety pass.
    #[serde(with = "humantime_serde")]
    pub safety_pass_interval: Duration,
    /// Timeout of each EventListener POST.
    #[serde(with = "humantime_serde")]
    pub trigger_timeout: Duration,
    /// Interval of the full PipelineRun list that repairs watch drift and proves the API is reachable.
    #[serde(with = "humantime_serde")]
    pub capacity_resync_interval: Duration,
    /// A pool whose Kubernetes state is older than this dispatches nothing.
    #[serde(with = "humantime_serde")]
    pub capacity_stale_after: Duration,
    /// How often a standby replica tries to become the active dispatcher.
    #[serde(with = "humantime_serde")]
    pub leader_retry_interval: Duration,
    /// Shortest time between the starts of two passes. Under a flood of
    /// deliveries this batches them into fewer, larger passes (bounded extra
    /// latency); `0s` runs a pass per wake-up.
    #[serde(with = "humantime_serde")]
    pub min_pass_interval: Duration,
    /// Longest time a standby waits to take over from an active replica that
    /// stopped answering (frozen, partitioned): PostgreSQL ends the leader's
    /// idle session well within it, which releases the lock.
    #[serde(with = "humantime_serde")]
    pub failover_timeout: Duration,
    /// Waiting dispatches above which a pass reads only the work in flight
    /// and the heads of the queues of pools with room, instead of every
    /// open dispatch (`0`: always).
    pub incremental_pass_above: u32,
}

impl Default for DispatchSection {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            retry_backoff_base: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            reservation_timeout: Duration::from_secs(120),
            safety_pass_interval: Duration::from_secs(30),
            trigger_timeout: Duration::from_secs(10),
            capacity_resync_interval: Duration::from_secs(10),
            capacity_stale_after: Duration::from_secs(30),
            leader_retry_interval: Duration::from_secs(1),
            min_pass_interval: Duration::from_millis(5),
            failover_timeout: Duration::from_secs(15),
            incremental_pass_above: 2000,
        }
    }
}

/// `logging:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LoggingSection {
    /// `text` (default) or `json`.
    pub format: String,
    /// tracing filter directive (`LOG_LEVEL` overrides), e.g. `info` or `dispatcher=debug`.
    pub level: String,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// `dev:` section: aids for running the service on a laptop. Never turn
/// them on in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct DevSection {
    /// Simulate Tekton in-process: a fake Kubernetes API and fake
    /// EventListeners that create PipelineRuns, instead of the real ones.
    /// Refused while a real Kubernetes configuration is in use.
    pub simulate_tekton: bool,
    /// How long a simulated PipelineRun runs before it succeeds.
    #[serde(with = "humantime_serde")]
    pub run_duration: Duration,
}

impl Default for DevSection {
    fn default() -> Self {
        Self {
            simulate_tekton: false,
            run_duration: Duration::from_secs(20),
        }
    }
}

/// `retention:` section: how long finished events are kept. Absent = forever.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RetentionSection {
    /// Finished events (with their dispatches, timelines and settled label
    /// rows) are deleted this long after they finished (`30d`). Required.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Payloads of finished events are dropped this long after they
    /// finished, keeping the row (optional, shorter than `max_age`).
    #[serde(default, with = "humantime_serde")]
    pub payload_max_age: Option<Duration>,
    /// How often the active replica prunes (default `1h`, at least `1m`).
    #[serde(
        default = "RetentionSection::default_interval",
        with = "humantime_serde"
    )]
    pub interval: Duration,
    /// Rows per short transaction (default 1000, 1 to 100000).
    #[serde(default = "RetentionSection::default_batch_size")]
    pub batch_size: u32,
}

impl RetentionSection {
    fn default_interval() -> Duration {
        Duration::from_secs(3600)
    }

    fn default_batch_size() -> u32 {
        1000
    }
}

/// `github.catch_up:` the active replica asks GitHub to redeliver the
/// deliveries of these hooks that failed (non-2xx) and that the database
/// does not hold. Absent = off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CatchUpSection {
    /// The webhooks whose deliveries are looked at.
    pub hooks: Vec<CatchUpHookSection>,
    /// Time between passes on the active replica (default `5m`, at least `10s`).
    #[serde(default = "CatchUpSection::default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Redeliveries asked per pass, over all hooks (default 50, 1 to 1000).
    #[serde(default = "CatchUpSection::default_max_per_pass")]
    pub max_per_pass: u32,
    /// How far back a hook without a stored cursor is looked at, and the
    /// oldest delivery ever asked for again (default `24h`, at most `72h`:
    /// GitHub redelivers only deliveries of the last three days).
    #[serde(default = "CatchUpSection::default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl CatchUpSection {
    fn default_interval() -> Duration {
        Duration::from_secs(300)
    }

    fn default_max_per_pass() -> u32 {
        50
    }

    fn default_max_age() -> Duration {
        Duration::from_secs(24 * 3600)
    }
}

/// One entry of `github.catch_up.hooks`: a repository's or an
/// organisation's webhook (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CatchUpHookSection {
    /// `owner/name` of a repository webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Login of an organisation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// The webhook's id (its settings page URL ends with it).
    pub hook_id: u64,
}
