//! `dev.simulate_tekton`: Tekton simulated in-process, so `just run` shows
//! the whole flow (queued, dispatched, finished) on a laptop without a
//! cluster.
//!
//! One fake Kubernetes API ([`FakeKube`]) holds the PipelineRuns; each pool
//! of the config gets a fake EventListener in Tekton mode that answers 202
//! and creates a run labelled as the real TriggerTemplate would (event id,
//! the pool's annotations, its `dispatch_label`), which succeeds after
//! `dev.run_duration`. Every item's trigger goes to its pool's fake
//! listener instead of its `callback_url`, and the capacity watcher follows
//! the fake API. Pools, capacities, the database and intake stay real.
//!
//! Wiring only: the fakes come from `dispatcher-fakes`, the decisions are
//! the engine's as in production.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use dispatcher_capacity::{CapacityOptions, KubeCapacity, KubeRunCanceller, kube_client_at};
use dispatcher_core::config::{PoolKey, Settings};
use dispatcher_fakes::{FakeEventListener, FakeKube, TektonMode};

/// Environment variables that mean a real Kubernetes configuration is in
/// use: a kubeconfig, or the service account of a pod.
const REAL_KUBERNETES_ENV: [&str; 2] = ["KUBECONFIG", "KUBERNETES_SERVICE_HOST"];

/// Refuses `dev.simulate_tekton` next to a real Kubernetes configuration:
/// a dev config deployed by mistake must fail loudly rather than pretend
/// to run pipelines. Empty variables count as unset, as everywhere else.
pub(crate) fn refuse_real_kubernetes(
    settings: &Settings,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    if !settings.dev.simulate_tekton {
        return Ok(());
    }
    let present: Vec<&str> = REAL_KUBERNETES_ENV
        .into_iter()
        .filter(|k| env(k).is_some_and(|v| !v.is_empty()))
        .collect();
    if !present.is_empty() {
        bail!(
            "dev.simulate_tekton is true but a real Kubernetes configuration is in use ({} set); \
             the simulation is for local development only: turn dev.simulate_tekton off, or unset {}",
            present.join(", "),
            present.join(" and ")
        );
    }
    Ok(())
}

/// The running fakes; dropping it stops them.
#[derive(Debug)]
pub(crate) struct Simulation {
    kube: FakeKube,
    /// One fake EventListener per pool, kept alive for the process.
    listeners: BTreeMap<PoolKey, FakeEventListener>,
}

impl Simulation {
    /// Starts the fakes and reroutes every item's trigger to its pool's
    /// fake listener in `settings`.
    pub(crate) async fn start(settings: &mut Settings) -> anyhow::Result<Self> {
        let run_duration = settings.dev.run_duration;
        tracing::warn!(
            run_duration_ms = u64::try_from(run_duration.as_millis()).unwrap_or(u64::MAX),
            pools = settings.pools.len(),
            items = settings.items.len(),
            "dev.simulate_tekton is ON: PipelineRuns are simulated in-process; nothing reaches Kubernetes or the real EventListeners"
        );
        let kube = FakeKube::start()
            .await
            .context("starting the simulated Kubernetes API")?;
        let mut listeners = BTreeMap::new();
        for pool in settings.pools.values() {
            let tekton = TektonMode {
                kube: kube.clone(),
                namespace: pool.namespace.clone(),
                pipeline: pool.pipeline_name.clone(),
                annotations: pool
                    .annotation_selector
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                run_for: Some(run_duration),
                dispatch_label: pool.dispatch_label.clone(),
            };
            // No signature check: the simulation shows the flow, and a
            // rotated secret would make the fake refuse what the real
            // listener's interceptor (configured separately) may accept.
            let listener = FakeEventListener::start(None, Some(tekton))
                .await
                .with_context(|| {
                    format!("starting the simulated EventListener of pool {}", pool.key)
                })?;
            tracing::info!(pool = %pool.key, listener = %listener.url(), "simulated EventListener ready");
            listeners.insert(pool.key.clone(), listener);
        }
        let simulation = Self { kube, listeners };
        simulation.reroute(settings)?;
        Ok(simulation)
    }

    /// Points every item's trigger at its pool's fake listener (at start
    /// and after each reload). An item of a pool added by a reload has no
    /// fake listener: it points at a closed port (its triggers fail and
    /// retry; a restart simulates the new pool) and is named in the result.
    pub(crate) fn reroute(&self, settings: &mut Settings) -> anyhow::Result<Vec<String>> {
        let mut unsimulated = Vec::new();
        for item in &mut settings.items {
            let url = match self.listeners.get(&item.pool) {
                Some(listener) => listener.url(),
                None => {
                    unsimulated.push(item.name.clone());
                    "http://127.0.0.1:9/".to_owned()
                }
            };
            item.callback_url = url
                .parse()
                .with_context(|| format!("simulated EventListener URL for item {}", item.name))?;
        }
        Ok(unsimulated)
    }

    /// The capacity watcher, following the simulated Kubernetes API.
    /// Cancels runs in the simulated Tekton (`cancel_superseded`, `cancel_on_close`).
    pub(crate) fn canceller(&self) -> KubeRunCanceller {
        let url = self.kube.url();
        KubeRunCanceller::new(move || {
            let url = url.clone();
            async move { kube_client_at(&url) }
        })
    }

    pub(crate) fn capacity(
        &self,
        settings: &Settings,
        options: CapacityOptions,
    ) -> anyhow::Result<KubeCapacity> {
        let client = kube_client_at(&self.kube.url())
            .context("connecting to the simulated Kubernetes API")?;
        Ok(KubeCapacity::start(
            &client,
            settings.pools.values(),
            options,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(simulate: bool) -> Settings {
        let tree = serde_json::json!({
            "security": {"github_webhook_secret": "s"},
            "dev": {"simulate_tekton": simulate},
        });
        let (raw, _) = dispatcher_core::config::parse(tree).unwrap();
        Settings::from_raw(raw).unwrap()
    }

    #[test]
    fn refused_only_with_a_real_kubernetes_configuration() {
        let none = |_: &str| None;
        assert!(refuse_real_kubernetes(&settings(true), &none).is_ok());
        let empty = |_: &str| Some(String::new());
        assert!(refuse_real_kubernetes(&settings(true), &empty).is_ok());
        for var in REAL_KUBERNETES_ENV {
            let env = |k: &str| (k == var).then(|| "x".to_owned());
            let err = refuse_real_kubernetes(&settings(true), &env)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("dev.simulate_tekton") && err.contains(var),
                "{err}"
            );
            // Off: the environment is none of its business.
            assert!(refuse_real_kubernetes(&settings(false), &env).is_ok());
        }
    }
}
