//! Pool usage from Kubernetes: one watch per (namespace, pipeline, API
//! version), shared by every pool on it, plus a periodic full list that
//! repairs drift and proves the API still answers.
//!
//! Health is tracked here rather than trusted to the client: kube's retries
//! can make a watch look quiet-but-fine during an outage. A pool's state is
//! `Unknown` (and nothing is dispatched into it) until the first full list,
//! after any error until the next success, and when nothing succeeded for
//! `stale_after`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dispatcher_core::config::{PoolSpec, TektonApiVersion};
use dispatcher_core::ports::{CapacitySource, PoolState};
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::pipelinerun::{PIPELINE_LABEL, RunInfo};

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
}

#[derive(Debug, Default)]
struct Snapshot {
    runs: HashMap<String, RunInfo>,
    synced: bool,
    last_ok: Option<Instant>,
    error: Option<String>,
    /// Objects of a watch restart, swapped in at `InitDone`.
    init_buffer: Option<HashMap<String, RunInfo>>,
    /// Runs the watch deleted since the last full list, with the version of
    /// their deletion, so a list taken before the deletion cannot revive them.
    deleted: HashMap<String, u64>,
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
    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        let Ok(mut s) = self.snapshot.write() else {
            return;
        };
        let was_healthy = s.synced && s.error.is_none();
        f(&mut s);
        let healthy = s.synced && s.error.is_none();
        let (ns, pipeline) = (&self.key.namespace, &self.key.pipeline);
        match (was_healthy, healthy) {
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
    }
}

/// The Kubernetes-backed [`CapacitySource`]. Dropping it stops its tasks.
#[derive(Debug)]
pub struct KubeCapacity {
    watches: BTreeMap<WatchKey, Arc<WatchState>>,
    changed: Arc<Notify>,
    options: CapacityOptions,
    unavailable: Option<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl KubeCapacity {
    /// Starts watching the PipelineRuns of every pool.
    pub fn start<'a>(
        client: &kube::Client,
        pools: impl IntoIterator<Item = &'a PoolSpec>,
        options: CapacityOptions,
    ) -> Self {
        let changed = Arc::new(Notify::new());
        let mut watches = BTreeMap::new();
        let mut tasks = Vec::new();
        for pool in pools {
            let key = WatchKey::of(pool);
            if watches.contains_key(&key) {
                continue;
            }
            let state = Arc::new(WatchState {
                key: key.clone(),
                snapshot: RwLock::new(Snapshot::default()),
            });
            let api = pipeline_runs(client.clone(), &key);
            let labels = format!("{PIPELINE_LABEL}={}", key.pipeline);
            tasks.push(tokio::spawn(watch(
                api.clone(),
                labels.clone(),
                Arc::clone(&state),
                Arc::clone(&changed),
            )));
            tasks.push(tokio::spawn(resync(
                api,
                labels,
                Arc::clone(&state),
                Arc::clone(&changed),
                options,
            )));
            watches.insert(key, state);
        }
        Self {
            watches,
            changed,
            options,
            unavailable: None,
            tasks,
        }
    }

    /// A source that knows nothing: every pool is `Unknown` with `reason`
    /// (no Kubernetes configuration could be loaded).
    pub fn unavailable(reason: impl Into<String>, options: CapacityOptions) -> Self {
        Self {
            watches: BTreeMap::new(),
            changed: Arc::new(Notify::new()),
            options,
            unavailable: Some(reason.into()),
            tasks: Vec::new(),
        }
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
        if let Some(reason) = &self.unavailable {
            return PoolState::Unknown {
                reason: reason.clone(),
            };
        }
        let Some(state) = self.watches.get(&WatchKey::of(pool)) else {
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

async fn watch(
    api: Api<DynamicObject>,
    labels: String,
    state: Arc<WatchState>,
    changed: Arc<Notify>,
) {
    let stream =
        watcher::watcher(api, watcher::Config::default().labels(&labels)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        state.update(|s| match event {
            Ok(Event::Init) => s.init_buffer = Some(HashMap::new()),
            Ok(Event::InitApply(obj)) => {
                s.init_buffer
                    .get_or_insert_with(HashMap::new)
                    .insert(name_of(&obj), RunInfo::from_object(&obj));
            }
            Ok(Event::InitDone) => {
                s.runs = s.init_buffer.take().unwrap_or_default();
                s.deleted.clear();
                s.synced = true;
                WatchState::ok(s);
            }
            Ok(Event::Apply(obj)) => {
                s.runs.insert(name_of(&obj), RunInfo::from_object(&obj));
                WatchState::ok(s);
            }
            Ok(Event::Delete(obj)) => {
                let name = name_of(&obj);
                if let Some(rv) = RunInfo::from_object(&obj).resource_version {
                    s.deleted.insert(name.clone(), rv);
                }
                s.runs.remove(&name);
                WatchState::ok(s);
            }
            Err(e) => s.error = Some(e.to_string()),
        });
        changed.notify_one();
    }
}

/// Page size of the full list (PipelineRuns are large objects).
const LIST_PAGE: u32 = 200;

/// Lists every PipelineRun of the watch, page by page; returns them with the
/// list's resourceVersion.
async fn list_all(
    api: &Api<DynamicObject>,
    labels: &str,
) -> Result<(HashMap<String, RunInfo>, Option<u64>), kube::Error> {
    let mut runs = HashMap::new();
    let mut version = None;
    let mut params = ListParams::default().labels(labels).limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        if version.is_none() {
            version = page
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok());
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

async fn resync(
    api: Api<DynamicObject>,
    labels: String,
    state: Arc<WatchState>,
    changed: Arc<Notify>,
    options: CapacityOptions,
) {
    let mut ticks = tokio::time::interval(options.resync_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(options.list_timeout, list_all(&api, &labels)).await {
            Ok(Ok((runs, version))) => state.update(|s| {
                s.merge_list(runs, version);
                s.synced = true;
                WatchState::ok(s);
            }),
            Ok(Err(e)) => state.update(|s| s.error = Some(e.to_string())),
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
