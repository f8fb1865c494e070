//! Pool usage from Kubernetes: one watch per (namespace, pipeline, API
//! version), shared by every pool on it, plus a periodic full list that
//! repairs drift and proves the API still answers.
//!
//! Health is tracked here rather than trusted to the client: kube's retries
//! can make a watch look quiet-but-fine during an outage, and kube's
//! `watcher` helper reconnects on its own while its cache still looks
//! current. So this module runs its own loop per watch: full list → watch
//! from the list's resourceVersion → when the watch stream breaks or ends
//! for any reason (including a 410 Gone or the server's timeout), the state
//! is `Unknown` until a fresh full list succeeds, with capped backoff
//! between failed lists. A pool's state is also `Unknown` before the first
//! list, after any list error until the next success, and when nothing
//! succeeded for `stale_after`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dispatcher_core::backoff::retry_delay;
use dispatcher_core::config::{PoolSpec, TektonApiVersion};
use dispatcher_core::ports::{CapacitySource, PoolState};
use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams,
};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::pipelinerun::{PIPELINE_LABEL, RunInfo};

/// Reason prefix of every pool while no Kubernetes client could be built.
const NO_CONFIG: &str = "no Kubernetes configuration";
/// `timeoutSeconds` of one watch request (kube's default; its client reads
/// time out 5 s later).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// First delay of the re-list and reconnect backoffs (at most the resync interval).
const RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest delay of those backoffs (at most the resync interval).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Timing of the capacity view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityOptions {
    /// Interval of the full list.
    pub resync_interval: Duration,
    /// Age after which a pool's state is unknown.
    pub stale_after: Duration,
    /// Timeout of one full list.
    pub list_timeout: Duration,
}

impl CapacityOptions {
    /// Delay after `failures` consecutive failures (≥ 1): exponential from
    /// [`RETRY_BASE`], capped by the resync interval and [`RETRY_MAX`].
    fn retry_delay(&self, failures: u32, seed: u64) -> Duration {
        let base = RETRY_BASE.min(self.resync_interval);
        let max = self.resync_interval.clamp(base, RETRY_MAX.max(base));
        retry_delay(base, max, failures, seed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct WatchKey {
    namespace: String,
    pipeline: String,
    api_version: TektonApiVersion,
}

impl WatchKey {
    fn of(pool: &PoolSpec) -> Self {
        Self {
            namespace: pool.namespace.clone(),
            pipeline: pool.pipeline_name.clone(),
            api_version: pool.api_version,
        }
    }

    /// Jitter seed, so watches of different pipelines retry apart.
    fn seed(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    runs: HashMap<String, RunInfo>,
    synced: bool,
    last_ok: Option<Instant>,
    error: Option<String>,
    /// Runs the watch deleted since the last full list, with the version of
    /// their deletion, so a list taken before the deletion cannot revive them.
    deleted: HashMap<String, u64>,
    /// A watch is open, following the last full list of the watch loop.
    watching: bool,
    /// Watches ended so far: a periodic list that started under another
    /// epoch (or with no watch open) must not touch the state.
    epoch: u64,
    /// The current `error` is a routine watch restart (the server's
    /// timeout): the pool is unknown, but that is not worth a warning.
    routine_gap: bool,
}

impl Snapshot {
    /// Merges a full list taken at `list_version` into the watch's view:
    /// anything the watch applied after the list's snapshot wins.
    fn merge_list(&mut self, listed: HashMap<String, RunInfo>, list_version: Option<u64>) {
        let Some(at) = list_version else {
            self.runs = listed;
            self.deleted.clear();
            return;
        };
        let newer = |rv: Option<u64>| rv.is_some_and(|rv| rv > at);
        self.runs
            .retain(|name, run| listed.contains_key(name) || newer(run.resource_version));
        for (name, run) in listed {
            let deleted_later = self.deleted.get(&name).is_some_and(|rv| *rv > at);
            let cached_newer = self
                .runs
                .get(&name)
                .is_some_and(|c| newer(c.resource_version));
            if !deleted_later && !cached_newer {
                self.runs.insert(name, run);
            }
        }
        self.deleted.retain(|_, rv| *rv > at);
    }
}

#[derive(Debug)]
struct WatchState {
    key: WatchKey,
    snapshot: RwLock<Snapshot>,
}

impl WatchState {
    fn new(key: WatchKey) -> Self {
        Self {
            key,
            snapshot: RwLock::new(Snapshot::default()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let Ok(mut s) = self.snapshot.write() else {
            return;
        };
        // For logging, a routine watch restart does not count as trouble.
        let fine = |s: &Snapshot| s.synced && (s.error.is_none() || s.routine_gap);
        let was_fine = fine(&s);
        f(&mut s);
        let (ns, pipeline) = (&self.key.namespace, &self.key.pipeline);
        match (was_fine, fine(&s)) {
            (false, true) => {
                tracing::info!(namespace = %ns, pipeline = %pipeline, runs = s.runs.len(), "PipelineRun state is current")
            }
            (true, false) => tracing::warn!(
                namespace = %ns, pipeline = %pipeline, error = s.error.as_deref().unwrap_or("-"),
                "PipelineRun state unknown; not dispatching into this pipeline until the Kubernetes API answers"
            ),
            _ => {}
        }
    }

    fn ok(s: &mut Snapshot) {
        s.last_ok = Some(Instant::now());
        s.error = None;
        s.routine_gap = false;
    }

    /// Records a failure (never routine).
    fn fail(s: &mut Snapshot, error: String) {
        s.error = Some(error);
        s.routine_gap = false;
    }

    /// `(watching, epoch)` now.
    fn watch_epoch(&self) -> (bool, u64) {
        self.snapshot
            .read()
            .map_or((false, u64::MAX), |s| (s.watching, s.epoch))
    }
}

/// The Kubernetes-backed [`CapacitySource`]. Dropping it stops its tasks.
#[derive(Debug)]
pub struct KubeCapacity {
    watches: RwLock<BTreeMap<WatchKey, Arc<WatchState>>>,
    changed: Arc<Notify>,
    options: CapacityOptions,
    /// Why every pool is unknown regardless of its watch (no client).
    unavailable: Arc<RwLock<Option<String>>>,
    /// Watches added after the start ([`KubeCapacity::watch_pools`]) go to
    /// the task that owns the client; `None` when there is no client at all.
    added: Option<tokio::sync::mpsc::UnboundedSender<Arc<WatchState>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// One state per distinct watch of `pools`.
fn watch_states<'a>(
    pools: impl IntoIterator<Item = &'a PoolSpec>,
) -> BTreeMap<WatchKey, Arc<WatchState>> {
    pools
        .into_iter()
        .map(|pool| {
            let key = WatchKey::of(pool);
            (key.clone(), Arc::new(WatchState::new(key)))
        })
        .collect()
}

/// The two tasks of one watch: the list + watch loop and the periodic resync.
fn watch_tasks(
    client: &kube::Client,
    state: &Arc<WatchState>,
    changed: &Arc<Notify>,
    options: CapacityOptions,
) -> [std::pin::Pin<Box<dyn Future<Output = ()> + Send>>; 2] {
    let api = pipeline_runs(client.clone(), &state.key);
    let labels = format!("{PIPELINE_LABEL}={}", state.key.pipeline);
    [
        Box::pin(follow(
            api.clone(),
            labels.clone(),
            Arc::clone(state),
            Arc::clone(changed),
            options,
        )),
        Box::pin(resync(
            api,
            labels,
            Arc::clone(state),
            Arc::clone(changed),
            options,
        )),
    ]
}

impl KubeCapacity {
    /// Starts watching the PipelineRuns of every pool. Call it inside a
    /// Tokio runtime.
    pub fn start<'a>(
        client: &kube::Client,
        pools: impl IntoIterator<Item = &'a PoolSpec>,
        options: CapacityOptions,
    ) -> Self {
        let client = client.clone();
        Self::connect(
            move || {
                let client = client.clone();
                async move { Ok::<_, std::convert::Infallible>(client) }
            },
            pools,
            options,
        )
    }

    /// Builds the Kubernetes client with `client_factory` in the background,
    /// retrying failures with capped exponential backoff until one works,
    /// then starts watching every pool. Until then every pool is `Unknown`
    /// with a reason starting "no Kubernetes configuration: ". Call it
    /// inside a Tokio runtime; typically `KubeCapacity::connect(kube_client,
    /// pools, options)`.
    pub fn connect<'a, F, Fut, E>(
        mut client_factory: F,
        pools: impl IntoIterator<Item = &'a PoolSpec>,
        options: CapacityOptions,
    ) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<kube::Client, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let changed = Arc::new(Notify::new());
        let watches = watch_states(pools);
        let unavailable = Arc::new(RwLock::new(Some(format!("{NO_CONFIG}: not loaded yet"))));
        let (added, mut to_add) = tokio::sync::mpsc::unbounded_channel::<Arc<WatchState>>();
        let task = tokio::spawn({
            let watches: Vec<Arc<WatchState>> = watches.values().cloned().collect();
            let changed = Arc::clone(&changed);
            let unavailable = Arc::clone(&unavailable);
            async move {
                let mut failures = 0u32;
                let client = loop {
                    match client_factory().await {
                        Ok(client) => break client,
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let delay = options.retry_delay(failures, 0);
                            let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                            if failures == 1 {
                                tracing::error!(
                                    error = %e, retry_in_ms,
                                    "no Kubernetes configuration (in-cluster service account or KUBECONFIG); nothing will be dispatched until it loads"
                                );
                            } else {
                                tracing::warn!(error = %e, attempts = failures, retry_in_ms, "Kubernetes configuration still failing");
                            }
                            set_unavailable(&unavailable, Some(format!("{NO_CONFIG}: {e}")));
                            changed.notify_one();
                            tokio::time::sleep(delay).await;
                        }
                    }
                };
                tracing::info!(
                    attempts = failures + 1,
                    "Kubernetes client ready; watching PipelineRuns"
                );
                // Owned here: aborting this task (dropping the capacity) aborts them.
                let mut tasks = JoinSet::new();
                for state in &watches {
                    for task in watch_tasks(&client, state, &changed, options) {
                        tasks.spawn(task);
                    }
                }
                set_unavailable(&unavailable, None);
                changed.notify_one();
                // Watches added by a configuration reload start here, with
                // the same client; the tasks run until the capacity is dropped.
                let mut adding = true;
                loop {
                    tokio::select! {
                        state = to_add.recv(), if adding => match state {
                            Some(state) => {
                                for task in watch_tasks(&client, &state, &changed, options) {
                                    tasks.spawn(task);
                                }
                            }
                            None => adding = false,
                        },
                        done = tasks.join_next(), if !tasks.is_empty() => {
                            if done.is_none() && !adding {
                                break;
                            }
                        }
                        else => break,
                    }
                }
            }
        });
        Self {
            watches: RwLock::new(watches),
            changed,
            options,
            unavailable,
            added: Some(added),
            tasks: vec![task],
        }
    }

    /// Starts watching the pools of `pools` not watched yet (a configuration
    /// reload added them); a new pool is `Unknown` until its first list.
    /// Pools no longer configured keep their watch: it is cheap, and a
    /// reload that brings them back finds them current.
    pub fn watch_pools<'a>(&self, pools: impl IntoIterator<Item = &'a PoolSpec>) {
        let Ok(mut watches) = self.watches.write() else {
            return;
        };
        for pool in pools {
            let key = WatchKey::of(pool);
            if watches.contains_key(&key) {
                continue;
            }
            let state = Arc::new(WatchState::new(key.clone()));
            tracing::info!(namespace = %key.namespace, pipeline = %key.pipeline, "watching the PipelineRuns of a pool added by a reload");
            if let Some(added) = &self.added {
                let _ = added.send(Arc::clone(&state));
            }
            watches.insert(key, state);
        }
        self.changed.notify_one();
    }

    /// A source that knows nothing: every pool is `Unknown` with `reason`
    /// (no Kubernetes configuration could be loaded).
    pub fn unavailable(reason: impl Into<String>, options: CapacityOptions) -> Self {
        Self {
            watches: RwLock::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
            options,
            unavailable: Arc::new(RwLock::new(Some(reason.into()))),
            added: None,
            tasks: Vec::new(),
        }
    }

    fn unavailable_reason(&self) -> Option<String> {
        match self.unavailable.read() {
            Ok(reason) => reason.clone(),
            Err(_) => Some("internal state poisoned".to_owned()),
        }
    }
}

fn set_unavailable(unavailable: &RwLock<Option<String>>, reason: Option<String>) {
    if let Ok(mut current) = unavailable.write() {
        *current = reason;
    }
}

impl Drop for KubeCapacity {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl CapacitySource for KubeCapacity {
    fn pool_state(&self, pool: &PoolSpec) -> PoolState {
        if let Some(reason) = self.unavailable_reason() {
            return PoolState::Unknown { reason };
        }
        let state = match self.watches.read() {
            Ok(watches) => watches.get(&WatchKey::of(pool)).cloned(),
            Err(_) => None,
        };
        let Some(state) = state else {
            return PoolState::Unknown {
                reason: "pool is not watched".to_owned(),
            };
        };
        let Ok(s) = state.snapshot.read() else {
            return PoolState::Unknown {
                reason: "internal state poisoned".to_owned(),
            };
        };
        if let Some(error) = &s.error {
            return PoolState::Unknown {
                reason: format!("Kubernetes API error: {error}"),
            };
        }
        if !s.synced {
            return PoolState::Unknown {
                reason: "waiting for the first PipelineRun list".to_owned(),
            };
        }
        match s.last_ok {
            Some(t) if t.elapsed() <= self.options.stale_after => {}
            _ => {
                return PoolState::Unknown {
                    reason: format!(
                        "no answer from the Kubernetes API for over {}s",
                        self.options.stale_after.as_secs()
                    ),
                };
            }
        }
        // Only runs of this pool count, and only they can confirm its
        // dispatches: a run of the same pipeline outside the annotation
        // selector belongs to another pool.
        let pool_runs = s
            .runs
            .values()
            .filter(|r| r.matches(&pool.annotation_selector));
        let mut running = 0u32;
        let mut runs = Vec::new();
        for run in pool_runs {
            running += u32::from(!run.finished);
            runs.push(run.view(pool.dispatch_label.as_deref()));
        }
        PoolState::Known { running, runs }
    }

    fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.changed.notified()
    }
}

fn pipeline_runs(client: kube::Client, key: &WatchKey) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tekton.dev", key.api_version.as_str(), "PipelineRun");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
    Api::namespaced_with(client, &key.namespace, &resource)
}

fn name_of(obj: &DynamicObject) -> String {
    obj.metadata.name.clone().unwrap_or_default()
}

/// How one watch ended.
struct WatchEnd {
    reason: String,
    /// Ended by the server's timeout: routine, not a failure.
    routine: bool,
    /// 410 Gone: the version expired; re-list at once.
    gone: bool,
}

/// The watch loop: full list, then watch from the list's resourceVersion
/// until the stream breaks or ends; the state is `Unknown` from that moment
/// until the next full list succeeds. Failed lists back off (capped); so do
/// watches that end without delivering anything.
async fn follow(
    api: Api<DynamicObject>,
    labels: String,
    state: Arc<WatchState>,
    changed: Arc<Notify>,
    options: CapacityOptions,
) {
    let seed = state.key.seed();
    let mut failures = 0u32;
    loop {
        if failures > 0 {
            tokio::time::sleep(options.retry_delay(failures, seed)).await;
        }
        let listed = tokio::time::timeout(options.list_timeout, list_all(&api, &labels)).await;
        let version = match listed {
            Ok(Ok((runs, Some(version)))) => {
                state.update(|s| {
                    s.runs = runs;
                    s.deleted.clear();
                    s.synced = true;
                    WatchState::ok(s);
                });
                changed.notify_one();
                version
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => format!("PipelineRun list failed: {e}"),
                    Err(_) => format!(
                        "PipelineRun list timed out after {}s",
                        options.list_timeout.as_secs()
                    ),
                    Ok(Ok(_)) => "the PipelineRun list carries no resourceVersion".to_owned(),
                };
                tracing::debug!(namespace = %state.key.namespace, pipeline = %state.key.pipeline, error = %error, failures, "PipelineRun list failed; retrying");
                state.update(|s| WatchState::fail(s, error));
                changed.notify_one();
                failures = failures.saturating_add(1);
                continue;
            }
        };
        let opened = Instant::now();
        let mut delivered = false;
        let end = watch_from(&api, &labels, &version, &state, &changed, &mut delivered).await;
        tracing::debug!(namespace = %state.key.namespace, pipeline = %state.key.pipeline, reason = %end.reason, "PipelineRun watch ended; unknown until a fresh list");
        state.update(|s| {
            s.watching = false;
            s.epoch += 1;
            s.error = Some(end.reason);
            // A 410 is routine too: the list right after repairs it.
            s.routine_gap = end.routine || end.gone;
        });
        changed.notify_one();
        let lived = opened.elapsed() >= options.resync_interval;
        failures = if delivered || lived || end.gone {
            0
        } else {
            failures.saturating_add(1)
        };
    }
}

/// One watch request, followed until it ends.
async fn watch_from(
    api: &Api<DynamicObject>,
    labels: &str,
    version: &str,
    state: &WatchState,
    changed: &Notify,
    delivered: &mut bool,
) -> WatchEnd {
    let params = WatchParams::default()
        .labels(labels)
        .timeout(WATCH_TIMEOUT_SECS);
    let stream = match api.watch(&params, version).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(status)) if status.code == 410 => {
            return WatchEnd {
                reason: format!("PipelineRun watch expired (410 Gone): {}", status.message),
                routine: false,
                gone: true,
            };
        }
        Err(e) => {
            return WatchEnd {
                reason: format!("PipelineRun watch failed: {e}"),
                routine: false,
                gone: false,
            };
        }
    };
    state.update(|s| s.watching = true);
    let mut stream = std::pin::pin!(stream);
    loop {
        let end = match stream.next().await {
            None => WatchEnd {
                reason: "PipelineRun watch ended; re-listing".to_owned(),
                routine: true,
                gone: false,
            },
            Some(Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj))) => {
                state.update(|s| {
                    s.runs.insert(name_of(&obj), RunInfo::from_object(&obj));
                    WatchState::ok(s);
                });
                *delivered = true;
                changed.notify_one();
                continue;
            }
            Some(Ok(WatchEvent::Deleted(obj))) => {
                state.update(|s| {
                    let name = name_of(&obj);
                    if let Some(rv) = RunInfo::from_object(&obj).resource_version {
                        s.deleted.insert(name.clone(), rv);
                    }
                    s.runs.remove(&name);
                    WatchState::ok(s);
                });
                *delivered = true;
                changed.notify_one();
                continue;
            }
            Some(Ok(WatchEvent::Bookmark(_))) => {
                state.update(WatchState::ok);
                *delivered = true;
                continue;
            }
            Some(Ok(WatchEvent::Error(status))) => WatchEnd {
                gone: status.code == 410,
                reason: format!(
                    "PipelineRun watch error (HTTP {}): {}",
                    status.code, status.message
                ),
                routine: false,
            },
            Some(Err(kube::Error::Api(status))) => WatchEnd {
                gone: status.code == 410,
                reason: format!(
                    "PipelineRun watch error (HTTP {}): {}",
                    status.code, status.message
                ),
                routine: false,
            },
            Some(Err(e)) => WatchEnd {
                reason: format!("PipelineRun watch broke: {e}"),
                routine: false,
                gone: false,
            },
        };
        return end;
    }
}

/// Page size of the full list (PipelineRuns are large objects).
const LIST_PAGE: u32 = 200;

/// Runs of one list with its resourceVersion (as sent, for watching from it).
type Listed = (HashMap<String, RunInfo>, Option<String>);

/// Lists every PipelineRun of the watch, page by page; returns them with the
/// list's resourceVersion.
async fn list_all(api: &Api<DynamicObject>, labels: &str) -> Result<Listed, kube::Error> {
    let mut runs = HashMap::new();
    let mut version = None;
    let mut params = ListParams::default().labels(labels).limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        if version.is_none() {
            version = page
                .metadata
                .resource_version
                .clone()
                .filter(|v| !v.is_empty());
        }
        runs.extend(
            page.items
                .iter()
                .map(|o| (name_of(o), RunInfo::from_object(o))),
        );
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((runs, version)),
        }
    }
}

/// The periodic full list: repairs drift of an open watch and proves the
/// API still answers. While the watch loop is re-listing it stays out of
/// the way (that loop's own list decides when the state is current again).
async fn resync(
    api: Api<DynamicObject>,
    labels: String,
    state: Arc<WatchState>,
    changed: Arc<Notify>,
    options: CapacityOptions,
) {
    // The watch loop lists first; the periodic list starts one interval later.
    let first = tokio::time::Instant::now() + options.resync_interval;
    let mut ticks = tokio::time::interval_at(first, options.resync_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (watching, epoch) = state.watch_epoch();
        if !watching {
            continue;
        }
        match tokio::time::timeout(options.list_timeout, list_all(&api, &labels)).await {
            Ok(Ok((runs, version))) => state.update(|s| {
                // A watch that ended meanwhile makes this list stale.
                if s.watching && s.epoch == epoch {
                    s.merge_list(runs, version.and_then(|v| v.parse().ok()));
                    s.synced = true;
                    WatchState::ok(s);
                }
            }),
            Ok(Err(e)) => {
                state.update(|s| WatchState::fail(s, format!("PipelineRun list failed: {e}")));
            }
            // A slow list proves nothing either way; staleness decides (a pool
            // whose watch and lists are all silent for `stale_after` is unknown).
            Err(_) => tracing::warn!(
                namespace = %state.key.namespace, pipeline = %state.key.pipeline,
                timeout_secs = options.list_timeout.as_secs(), "PipelineRun list timed out"
            ),
        }
        changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rv: u64) -> RunInfo {
        RunInfo {
            annotations: Default::default(),
            event_id: None,
            labels: Default::default(),
            created_at: None,
            finished: false,
            name: None,
            finished_at: None,
            resource_version: Some(rv),
        }
    }

    #[test]
    fn a_list_older_than_the_watch_does_not_undo_it() {
        let mut s = Snapshot::default();
        // The watch saw `new` created (rv 12) and `gone` deleted (rv 13) after the list's snapshot (rv 10).
        s.runs.insert("new".into(), run(12));
        s.runs.insert("kept".into(), run(5));
        s.runs.insert("stale".into(), run(6));
        s.deleted.insert("gone".into(), 13);
        s.deleted.insert("long-gone".into(), 4);
        let listed: HashMap<String, RunInfo> = [
            ("kept".to_owned(), run(9)),
            ("gone".to_owned(), run(8)),
            ("other".to_owned(), run(7)),
        ]
        .into();
        s.merge_list(listed, Some(10));
        let mut names: Vec<&str> = s.runs.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["kept", "new", "other"],
            "stale removed, gone stays gone, new stays"
        );
        assert_eq!(
            s.runs["kept"].resource_version,
            Some(9),
            "the list repairs older entries"
        );
        assert_eq!(
            s.deleted.keys().collect::<Vec<_>>(),
            ["gone"],
            "tombstones older than the list are dropped"
        );
    }

    #[test]
    fn without_versions_the_list_replaces_everything() {
        let mut s = Snapshot::default();
        s.runs.insert("a".into(), run(1));
        s.merge_list([("b".to_owned(), run(2))].into(), None);
        assert_eq!(s.runs.keys().collect::<Vec<_>>(), ["b"]);
    }
}
