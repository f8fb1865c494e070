//! A dispatching world: fake Kubernetes, a fake Tekton EventListener that
//! creates PipelineRuns, fake GitHub, one database, and replicas of the real
//! binary started on demand.

use std::collections::HashMap;
use std::time::Duration;

use dispatcher_fakes::{FakeApp, FakeEventListener, FakeGithub, FakeKube, TektonMode};
use dispatcher_testdb::TestDatabase;

use super::{Service, TempDir, WAIT, install_crypto};

pub const PIPELINE: &str = "pipe";
pub const GITHUB_TOKEN: &str = "gh-e2e-token";
/// The GitHub App of `WorldOptions::github_app`.
pub const APP_ID: u64 = 4242;
/// Its installation.
pub const INSTALLATION_ID: u64 = 77;
/// The label the fake TriggerTemplate copies the dispatch header into.
pub const DISPATCH_LABEL: &str = "webhook-dispatcher.example.com/dispatch";

/// How a world is set up.
#[derive(Debug, Clone)]
pub struct WorldOptions {
    /// `max_capacity` of the one pool.
    pub capacity: u32,
    /// PipelineRuns succeed after this long (None: when the test finishes them).
    pub run_for: Option<Duration>,
    /// Set `capacity.dispatch_label` and have the fake Tekton copy the header.
    pub dispatch_label: bool,
    /// `dispatch.trigger_timeout`.
    pub trigger_timeout: &'static str,
    /// `dispatch.failover_timeout`.
    pub failover_timeout: &'static str,
    /// Start from the Python dispatcher's database (adopted at start).
    pub original_database: bool,
    /// Top-level YAML appended to the config (e.g. an `api:` section).
    pub extra_yaml: &'static str,
    /// `security.allowed_github_events`, as YAML.
    pub allowed_events: &'static str,
    /// Label as a GitHub App (`github.app`, the fake in app mode) instead of
    /// with `GITHUB_TOKEN`.
    pub github_app: bool,
    /// `capacity.fairness` of the pool (empty: the default, fifo).
    pub fairness: &'static str,
    /// A second item `ops2` for this repository on the same pool.
    pub second_repository: Option<&'static str>,
    /// `dispatcher.priority_labels`, as YAML (empty: none).
    pub priority_labels: &'static str,
    /// More keys of the `github:` flow mapping, e.g. `", queue_status: check_run"`.
    pub github_yaml: &'static str,
    /// Every pass incremental (`dispatch.incremental_pass_above: 0`), as
    /// over a deep queue.
    pub incremental: bool,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            capacity: 2,
            run_for: None,
            dispatch_label: false,
            trigger_timeout: "2s",
            failover_timeout: "15s",
            original_database: false,
            extra_yaml: "",
            allowed_events: "[pull_request]",
            github_app: false,
            fairness: "",
            second_repository: None,
            priority_labels: "",
            github_yaml: "",
            incremental: false,
        }
    }
}

pub struct World {
    pub db: TestDatabase,
    pub kube: FakeKube,
    pub listener: FakeEventListener,
    pub github: FakeGithub,
    pub dir: TempDir,
    pub options: WorldOptions,
}

impl World {
    /// Fakes plus a database; PipelineRuns last `run_for` (None: until finished by the test).
    pub async fn new(capacity: u32, run_for: Option<Duration>) -> World {
        Self::with(WorldOptions {
            capacity,
            run_for,
            ..WorldOptions::default()
        })
        .await
    }

    pub async fn with(options: WorldOptions) -> World {
        install_crypto();
        let kube = FakeKube::start().await.unwrap();
        let tekton = TektonMode {
            kube: kube.clone(),
            namespace: "ns".into(),
            pipeline: PIPELINE.into(),
            annotations: vec![],
            run_for: options.run_for,
            dispatch_label: options.dispatch_label.then(|| DISPATCH_LABEL.to_owned()),
        };
        let listener = FakeEventListener::start(Some(super::SECRET), Some(tekton))
            .await
            .unwrap();
        let github = if options.github_app {
            let pem = std::fs::read(dispatcher_fakes::fixtures::app_key_pkcs1()).unwrap();
            let app = FakeApp::from_private_key_pem(&pem, APP_ID, INSTALLATION_ID).unwrap();
            FakeGithub::start_app(app).await.unwrap()
        } else {
            FakeGithub::start(GITHUB_TOKEN).await.unwrap()
        };
        let dir = TempDir::new("world");
        std::fs::write(dir.0.join("kubeconfig"), kube.kubeconfig("ns")).unwrap();
        World {
            db: if options.original_database {
                TestDatabase::original()
            } else {
                TestDatabase::new()
            },
            kube,
            listener,
            github,
            dir,
            options,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.options.capacity
    }

    pub fn config(&self) -> String {
        let mut label = if self.options.dispatch_label {
            format!(", dispatch_label: \"{DISPATCH_LABEL}\"")
        } else {
            String::new()
        };
        if !self.options.fairness.is_empty() {
            label.push_str(&format!(", fairness: {}", self.options.fairness));
        }
        let mut items = String::new();
        if let Some(repo) = self.options.second_repository {
            items.push_str(&format!(
                r#"
    - name: ops2
      events: [opened, synchronize, reopened]
      full_repository_name: {repo}
      capacity: {{type: ocp_tekton, pipeline_name: {PIPELINE}, max_capacity: {cap}, namespace: ns{label}}}
      callback_url: "{listener}""#,
                cap = self.options.capacity,
                listener = self.listener.url(),
            ));
        }
        if !self.options.priority_labels.is_empty() {
            items.push_str(&format!(
                "\n  priority_labels: {}",
                self.options.priority_labels
            ));
        }
        format!(
            r#"
dispatcher:
  items:
    - name: ops
      events: [opened, synchronize, reopened]
      full_repository_name: o/r
      capacity: {{type: ocp_tekton, pipeline_name: {PIPELINE}, max_capacity: {cap}, namespace: ns{label}}}
      callback_url: "{listener}"{items}
security:
  github_webhook_secret: "${{GITHUB_WEBHOOK_SECRET}}"
  allowed_github_events: {allowed_events}
server: {{bind: 127.0.0.1, port: 0}}
github: {{api_url: "{github}"{app}{github_yaml}}}
dispatch:
  max_attempts: 3
  retry_backoff_base: 50ms
  retry_backoff_max: 200ms
  trigger_timeout: {trigger_timeout}
  reservation_timeout: 30s
  capacity_resync_interval: 300ms
  capacity_stale_after: 5s
  leader_retry_interval: 100ms
  safety_pass_interval: 5s
  failover_timeout: {failover_timeout}
  incremental_pass_above: {incremental_above}
{extra}
"#,
            cap = self.options.capacity,
            listener = self.listener.url(),
            github = self.github.url(),
            incremental_above = if self.options.incremental { 0 } else { 2000 },
            app = if self.options.github_app {
                format!(
                    ", app: {{app_id: {APP_ID}, installation_id: {INSTALLATION_ID}, private_key_file: \"{}\"}}",
                    dispatcher_fakes::fixtures::app_key_pkcs1().display()
                )
            } else {
                String::new()
            },
            trigger_timeout = self.options.trigger_timeout,
            failover_timeout = self.options.failover_timeout,
            extra = self.options.extra_yaml,
            github_yaml = self.options.github_yaml,
            allowed_events = self.options.allowed_events,
        )
    }

    pub async fn replica(&self) -> Service {
        self.replica_with(&self.config()).await
    }

    /// `dispatcher check-config --connect` on the config file at `path`
    /// against this world: its exit code and standard output.
    pub async fn check_connect(&self, path: &std::path::Path) -> (i32, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WEBHOOK_DISPATCHER_CONFIG", path)
            .env("DATABASE_URL", self.db.url())
            .env("GITHUB_WEBHOOK_SECRET", super::SECRET)
            .env("GITHUB_TOKEN", GITHUB_TOKEN)
            .env("KUBECONFIG", self.dir.0.join("kubeconfig"))
            .args(["check-config", "--connect"])
            .output()
            .await
            .expect("check-config runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// A replica running `config` (usually [`World::config`] changed) in this world.
    pub async fn replica_with(&self, config: &str) -> Service {
        let mut env = vec![(
            "KUBECONFIG",
            self.dir.0.join("kubeconfig").display().to_string(),
        )];
        if !self.options.github_app {
            env.push(("GITHUB_TOKEN", GITHUB_TOKEN.to_owned()));
        }
        Service::start(config, self.db.url(), &env).await
    }

    /// PR number of every accepted trigger, in arrival order.
    pub fn dispatched_prs(&self) -> Vec<i64> {
        self.listener
            .accepted()
            .iter()
            .map(|r| r.json()["pull_request"]["number"].as_i64().unwrap())
            .collect()
    }

    /// Waits until `n` PRs ran and finished; asserts the pool never exceeded
    /// its capacity and each PR ran exactly once. PR numbers in dispatch order.
    pub async fn drained(&self, n: usize) -> Vec<i64> {
        self.wait_dispatched(n).await;
        assert!(
            self.kube
                .wait_until(WAIT, |k| k.unfinished(PIPELINE).is_empty())
                .await
        );
        self.assert_within_capacity();
        let prs = self.dispatched_prs();
        assert!(
            prs.len() == n && counts(&prs).values().all(|c| *c == 1),
            "not exactly once: {prs:?}"
        );
        prs
    }

    /// Never more runs at once than the pool's capacity (runs are counted by
    /// the fake API server from the moment they are created).
    pub fn assert_within_capacity(&self) {
        let most = self.kube.max_unfinished(PIPELINE);
        assert!(
            most <= self.options.capacity as usize,
            "capacity {} exceeded: {most}",
            self.options.capacity
        );
    }

    /// Each PR triggered at most once so far.
    pub fn assert_never_twice(&self) {
        let prs = self.dispatched_prs();
        let repeated: Vec<_> = counts(&prs).into_iter().filter(|(_, c)| *c > 1).collect();
        assert!(
            repeated.is_empty(),
            "triggered twice: {repeated:?} in {prs:?}"
        );
    }

    pub async fn wait_dispatched(&self, n: usize) {
        let ok = self
            .listener
            .wait_until(WAIT, |l| l.accepted().len() >= n)
            .await;
        assert!(
            ok,
            "only {} of {n} dispatched",
            self.listener.accepted().len()
        );
    }
}

pub fn counts(prs: &[i64]) -> HashMap<i64, usize> {
    let mut m = HashMap::new();
    for p in prs {
        *m.entry(*p).or_default() += 1;
    }
    m
}
