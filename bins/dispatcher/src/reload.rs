//! Live configuration reload: on SIGHUP, or when the config file changes
//! (including Kubernetes' swap of a mounted ConfigMap's `..data` symlink),
//! the file is loaded and validated exactly as at start; a valid one is
//! swapped in at once everywhere, an invalid one changes nothing and is
//! reported (log, `webhook_dispatcher_config_reload_failures_total`, the
//! readiness details).
//!
//! What reloads: items, filters, pools and capacities (queued work follows
//! an item to its new pool), webhook secrets and signature settings, API
//! tokens, the GitHub token and the dispatch tuning. What needs a restart
//! (reported, not applied): the listener (`server.*`), the database, logging,
//! `dev`, `retention`, `github.api_url`/`timeout`/`app`/`catch_up`/`queue_status`/`queue_status_interval`, and the dispatch timings fixed when a
//! client or session is built (`failover_timeout`, `trigger_timeout`,
//! `capacity_resync_interval`, `capacity_stale_after`,
//! `leader_retry_interval`); docs/CONFIGURATION.md marks each key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dispatcher_capacity::KubeCapacity;
use dispatcher_core::config::{DispatchTuning, Settings};
use dispatcher_github::GithubLabels;
use dispatcher_http::{App, Metrics};
use dispatcher_store::PgEvents;
use notify::Watcher as _;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

/// Changes of the file within this window become one reload (an editor's
/// save or a ConfigMap update touches the directory several times).
const SETTLE: Duration = Duration::from_millis(250);

/// What the readiness report says about reloads.
#[derive(Debug, Default)]
pub(crate) struct ReloadStatus {
    view: RwLock<View>,
}

#[derive(Debug, Default, Clone)]
struct View {
    reloaded_at: Option<OffsetDateTime>,
    failed: Option<String>,
    needs_restart: Vec<String>,
}

impl ReloadStatus {
    /// `{"reloaded_at", "last_error", "needs_restart"}` for the readiness details.
    pub(crate) fn details(&self) -> serde_json::Value {
        let view = self.view.read().map(|v| v.clone()).unwrap_or_default();
        serde_json::json!({
            "reloaded_at": view.reloaded_at.map(dispatcher_core::domain::rfc3339::format),
            "last_error": view.failed,
            "needs_restart": view.needs_restart,
        })
    }

    fn update(&self, change: impl FnOnce(&mut View)) {
        if let Ok(mut view) = self.view.write() {
            change(&mut view);
        }
    }
}

/// Everything a reload swaps or tells.
pub(crate) struct Reloader {
    pub(crate) path: PathBuf,
    pub(crate) current: Arc<Settings>,
    pub(crate) updates: watch::Sender<Arc<Settings>>,
    pub(crate) app: Arc<App<PgEvents>>,
    pub(crate) capacity: Arc<KubeCapacity>,
    pub(crate) github: Option<GithubLabels>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) status: Arc<ReloadStatus>,
    /// With `dev.simulate_tekton`, reloaded items are pointed at the fakes too.
    pub(crate) simulation: Option<Arc<crate::simulate::Simulation>>,
}

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Signal,
    FileChanged,
}

impl Reloader {
    /// Runs until the process ends: waits for SIGHUP or a change of the
    /// file, then reloads.
    pub(crate) async fn run(mut self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cause>();
        // The watcher must live as long as this task.
        let _watcher = match watch_file(&self.path, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        tokio::spawn(forward_sighup(tx));
        let mut last_text = std::fs::read(&self.path).ok();
        while let Some(first) = rx.recv().await {
            // Let a burst of file events settle into one reload.
            let mut cause = first;
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    more = rx.recv() => match more {
                        Some(Cause::Signal) => cause = Cause::Signal,
                        Some(Cause::FileChanged) => {}
                        None => return,
                    },
                }
            }
            let text = std::fs::read(&self.path).ok();
            // A touched but unchanged file is not a reload; SIGHUP always is.
            if cause == Cause::FileChanged && text == last_text {
                continue;
            }
            last_text = text;
            self.reload(cause);
        }
    }

    fn reload(&mut self, cause: Cause) {
        let env = |k: &str| std::env::var(k).ok();
        let loaded = match crate::config::load(&self.path, &env) {
            Ok(loaded) => loaded,
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(path = %self.path.display(), ?cause, error = %error, "configuration reload refused: the running configuration stays");
                self.metrics.config_reload(false);
                self.status.update(|v| v.failed = Some(error));
                return;
            }
        };
        let mut next = loaded.settings;
        if let Some(simulation) = &self.simulation {
            match simulation.reroute(&mut next) {
                Ok(unsimulated) if !unsimulated.is_empty() => tracing::warn!(
                    items = %unsimulated.join(", "),
                    "items of pools added by the reload are not simulated until a restart"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload refused: cannot route it to the simulation");
                    self.metrics.config_reload(false);
                    self.status.update(|v| v.failed = Some(e.to_string()));
                    return;
                }
            }
        }
        if let Err(e) = self.app.reload(&next) {
            tracing::error!(error = %e, "configuration reload failed while applying it to the HTTP service");
            self.metrics.config_reload(false);
            self.status.update(|v| v.failed = Some(e.to_string()));
            return;
        }
        let needs_restart = needs_restart(&self.current, &next);
        let changes = describe_changes(&self.current, &next);
        self.capacity.watch_pools(next.pools.values());
        if let (Some(github), Some(token)) = (&self.github, &next.github.token) {
            github.set_token(token.expose());
        }
        let next = Arc::new(next);
        self.updates.send_replace(Arc::clone(&next));
        self.current = next;
        self.metrics.config_reload(true);
        for key in &loaded.unknown_keys {
            tracing::warn!(key = %key, "unknown configuration key ignored (typo?)");
        }
        tracing::info!(
            ?cause,
            items = self.current.items.len(),
            pools = self.current.pools.len(),
            changes = %changes.join("; "),
            "configuration reloaded"
        );
        if !needs_restart.is_empty() {
            tracing::warn!(settings = %needs_restart.join(", "), "changed settings take effect only after a restart");
        }
        self.status.update(|v| {
            v.reloaded_at = Some(OffsetDateTime::now_utc());
            v.failed = None;
            v.needs_restart = needs_restart;
        });
    }
}

/// Watches the file's directory: Kubernetes updates a mounted ConfigMap by
/// swapping a `..data` symlink, which never touches the file's own name.
fn watch_file(
    path: &Path,
    tx: mpsc::UnboundedSender<Cause>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            let file = p.file_name();
            file == name.as_deref() || file.is_some_and(|f| f == "..data")
        });
        if relevant {
            let _ = tx.send(Cause::FileChanged);
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

async fn forward_sighup(tx: mpsc::UnboundedSender<Cause>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by changing the config file");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received; reloading the configuration");
        if tx.send(Cause::Signal).is_err() {
            return;
        }
    }
}

/// Settings that changed but apply only at start.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<String> {
    // Every `server` key is fixed once the listener is bound.
    let mut out = changed_keys("server", &old.server, &new.server);
    let mut check = |name: &str, same: bool| {
        if !same {
            out.push(name.to_owned());
        }
    };
    // Serialised, secrets read `***`: the URL is compared on its own.
    let url = |s: &Settings| s.database.url.as_ref().map(|u| u.expose().to_owned());
    check(
        "database",
        serialised(&old.database) == serialised(&new.database) && url(old) == url(new),
    );
    check(
        "logging",
        old.log_format == new.log_format && old.log_level == new.log_level,
    );
    check("dev", serialised(&old.dev) == serialised(&new.dev));
    check("retention", old.retention == new.retention);
    check("github.api_url", old.github_api_url == new.github_api_url);
    check("github.timeout", old.github.timeout == new.github.timeout);
    check(
        "github.token (labels were off at start)",
        old.github.labels_enabled() || !new.github.labels_enabled(),
    );
    // The app's client is built at start (its key read once).
    check("github.app", old.github.app == new.github.app);
    // The catch-up worker is built at start with its hooks and timings.
    check("github.catch_up", old.catch_up == new.catch_up);
    // The label and status workers are chosen at start.
    check(
        "github.queue_status",
        old.github.queue_status == new.github.queue_status,
    );
    check(
        "github.queue_status_interval",
        old.github.queue_status_interval == new.github.queue_status_interval,
    );
    // Timings fixed when a session, client or watch is built.
    type Timing = fn(&DispatchTuning) -> Duration;
    let fixed: [(&str, Timing); 5] = [
        ("dispatch.failover_timeout", |d| d.failover_timeout),
        (
            "dispatch.trigger_timeout (the EventListener client's timeout)",
            |d| d.trigger_timeout,
        ),
        ("dispatch.capacity_resync_interval", |d| {
            d.capacity_resync_interval
        }),
        ("dispatch.capacity_stale_after", |d| d.capacity_stale_after),
        ("dispatch.leader_retry_interval", |d| {
            d.leader_retry_interval
        }),
    ];
    for (name, field) in fixed {
        check(name, field(&old.dispatch) == field(&new.dispatch));
    }
    out
}

fn serialised(value: &impl serde::Serialize) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// `<section>.<key>` for each top-level key whose value differs.
fn changed_keys(
    section: &str,
    old: &impl serde::Serialize,
    new: &impl serde::Serialize,
) -> Vec<String> {
    let (Some(serde_json::Value::Object(old)), Some(serde_json::Value::Object(new))) =
        (serialised(old), serialised(new))
    else {
        return vec![section.to_owned()];
    };
    old.iter()
        .filter(|(key, value)| new.get(*key) != Some(value))
        .map(|(key, _)| format!("{section}.{key}"))
        .collect()
}

/// A short account of what the reload changes, for the log.
fn describe_changes(old: &Settings, new: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    for pool in new.pools.values() {
        match old.pools.get(&pool.key) {
            None => out.push(format!(
                "pool {} added (capacity {})",
                pool.key, pool.max_capacity
            )),
            Some(before) if before.max_capacity != pool.max_capacity => out.push(format!(
                "pool {} capacity {} → {}",
                pool.key, before.max_capacity, pool.max_capacity
            )),
            Some(before) if before.fairness != pool.fairness => out.push(format!(
                "pool {} fairness {} → {} (or its weights)",
                pool.key,
                before.fairness.as_str(),
                pool.fairness.as_str()
            )),
            Some(_) => {}
        }
    }
    for key in old.pools.keys().filter(|k| !new.pools.contains_key(*k)) {
        out.push(format!("pool {key} removed"));
    }
    for item in &new.items {
        if old.item(&item.name).is_none() {
            out.push(format!("item {} added", item.name));
        }
    }
    for item in old.items.iter().filter(|i| new.item(&i.name).is_none()) {
        out.push(format!("item {} removed", item.name));
    }
    let secrets = |s: &Settings| -> Vec<String> {
        s.security
            .webhook_secrets
            .iter()
            .map(|x| x.expose().to_owned())
            .collect()
    };
    if secrets(old) != secrets(new) {
        out.push(format!(
            "webhook secrets replaced ({} now)",
            new.security.webhook_secrets.len()
        ));
    }
    if old.priority_labels != new.priority_labels {
        out.push("priority labels changed".to_owned());
    }
    if old.dispatch != new.dispatch {
        out.push("dispatch tuning changed".to_owned());
    }
    if out.is_empty() {
        out.push("no change to items, pools, priorities, secrets or tuning".to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(github: &serde_json::Value) -> Settings {
        let raw: dispatcher_core::config::RawConfig = serde_json::from_value(serde_json::json!({
            "security": {"verify_signatures": false},
            "github": github,
        }))
        .unwrap();
        Settings::from_raw(raw).unwrap()
    }

    #[test]
    fn a_github_app_change_needs_a_restart_a_token_change_does_not() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../crates/fakes/fixtures/test-app-key.pkcs1.pem"
        );
        let app = |id: u64| serde_json::json!({"app": {"app_id": id, "private_key_file": key, "installation_id": 1}});
        assert_eq!(
            needs_restart(&settings(&app(1)), &settings(&app(2))),
            ["github.app"]
        );
        assert!(needs_restart(&settings(&app(1)), &settings(&app(1))).is_empty());
        assert_eq!(
            needs_restart(&settings(&serde_json::json!({})), &settings(&app(1))),
            ["github.token (labels were off at start)", "github.app"]
        );
        let hooks = |id: u64| serde_json::json!({"token": "a", "catch_up": {"hooks": [{"repository": "o/r", "hook_id": id}]}});
        assert_eq!(
            needs_restart(&settings(&hooks(1)), &settings(&hooks(2))),
            ["github.catch_up"]
        );
        assert!(needs_restart(&settings(&hooks(1)), &settings(&hooks(1))).is_empty());
        assert!(
            needs_restart(
                &settings(&serde_json::json!({"token": "a"})),
                &settings(&serde_json::json!({"token": "b"}))
            )
            .is_empty()
        );
    }

    #[test]
    fn the_queue_status_mode_needs_a_restart() {
        let mode = |m: &str| settings(&serde_json::json!({"token": "a", "queue_status": m}));
        assert_eq!(
            needs_restart(&mode("label"), &mode("check_run")),
            ["github.queue_status"]
        );
        let every = |i: &str| settings(&serde_json::json!({"queue_status_interval": i}));
        assert_eq!(
            needs_restart(&every("30s"), &every("5s")),
            ["github.queue_status_interval"]
        );
    }

    #[test]
    fn each_changed_server_key_and_fixed_timing_is_named() {
        let mut old = settings(&serde_json::json!({}));
        let mut new = old.clone();
        new.server.port = 5001;
        new.server.request_timeout = Duration::from_secs(1);
        new.dispatch.failover_timeout = Duration::from_secs(60);
        new.dispatch.max_attempts = 9; // reloads: not named
        assert_eq!(
            needs_restart(&old, &new),
            [
                "server.port",
                "server.request_timeout",
                "dispatch.failover_timeout"
            ]
        );
        old.server = new.server.clone();
        old.dispatch = new.dispatch.clone();
        assert!(needs_restart(&old, &new).is_empty());
    }
}
