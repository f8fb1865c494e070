//! Cancelling PipelineRuns ([`RunCanceller`]): a merge patch of
//! `spec.status` to `CancelledRunFinally` (`PipelineRunCancelled` on
//! `tekton.dev/v1beta1`), for the work of items with `cancel_superseded` or
//! `cancel_on_close`. The runs of a dispatch are found by the pool's
//! `dispatch_label` (exact) or by `triggers.tekton.dev/triggers-eventid`.
//! Needs `patch` on `pipelineruns` (only the overlay that enables cancelling
//! grants it).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use dispatcher_core::config::TektonApiVersion;
use dispatcher_core::domain::DispatchId;
use dispatcher_core::ports::{CancelRunOutcome, RunCanceller, RunTarget};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};

use crate::pipelinerun::{EVENT_ID_LABEL, RunInfo};

/// Longest one cancellation (list + patches) may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(15);

type ClientFactory = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<kube::Client, String>> + Send>> + Send + Sync,
>;

/// The `spec.status` value that cancels a run (running its `finally` tasks
/// on `v1`).
pub fn cancel_status(api_version: TektonApiVersion) -> &'static str {
    match api_version {
        TektonApiVersion::V1 => "CancelledRunFinally",
        TektonApiVersion::V1Beta1 => "PipelineRunCancelled",
    }
}

/// The Kubernetes-backed [`RunCanceller`]. Its client is built on first use
/// (and again after a failure), so a missing configuration only delays
/// cancels, which the cancel worker retries.
pub struct KubeRunCanceller {
    client: tokio::sync::Mutex<Option<kube::Client>>,
    factory: ClientFactory,
}

impl std::fmt::Debug for KubeRunCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRunCanceller").finish_non_exhaustive()
    }
}

impl KubeRunCanceller {
    /// A canceller whose client `factory` builds (e.g. `kube_client`).
    pub fn new<F, Fut, E>(factory: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<kube::Client, E>> + Send + 'static,
        E: std::fmt::Display + 'static,
    {
        Self {
            client: tokio::sync::Mutex::new(None),
            factory: Box::new(move || {
                let fut = factory();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }

    async fn client(&self) -> Result<kube::Client, String> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = (self.factory)()
            .await
            .map_err(|e| format!("no Kubernetes client: {e}"))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn cancel(
        &self,
        target: &RunTarget,
        dispatch: DispatchId,
        listener_event_id: Option<&str>,
    ) -> Result<CancelRunOutcome, String> {
        let selector = match (&target.dispatch_label, listener_event_id) {
            (Some(label), _) => format!("{label}={dispatch}"),
            (None, Some(event_id)) => format!("{EVENT_ID_LABEL}={event_id}"),
            (None, None) => {
                return Err(
                    "its run cannot be found yet (no eventID, no dispatch label)".to_owned(),
                );
            }
        };
        let client = self.client().await?;
        let gvk = GroupVersionKind::gvk("tekton.dev", target.api_version.as_str(), "PipelineRun");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "pipelineruns");
        let api: Api<DynamicObject> = Api::namespaced_with(client, &target.namespace, &resource);
        let runs = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("listing PipelineRuns ({selector}): {e}"))?;
        if runs.items.is_empty() {
            return Ok(CancelRunOutcome::NotFound);
        }
        let patch = Patch::Merge(serde_json::json!({
            "spec": { "status": cancel_status(target.api_version) }
        }));
        let mut cancelled = Vec::new();
        for run in &runs.items {
            if RunInfo::from_object(run).finished {
                continue;
            }
            let Some(name) = run.metadata.name.as_deref() else {
                continue;
            };
            match api.patch(name, &PatchParams::default(), &patch).await {
                Ok(_) => cancelled.push(name.to_owned()),
                // Deleted since the list: nothing left to cancel there.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(format!("patching PipelineRun {name}: {e}")),
            }
        }
        Ok(if cancelled.is_empty() {
            CancelRunOutcome::NothingRunning
        } else {
            CancelRunOutcome::Cancelled(cancelled)
        })
    }
}

impl RunCanceller for KubeRunCanceller {
    async fn cancel_run(
        &self,
        target: &RunTarget,
        dispatch: DispatchId,
        listener_event_id: Option<&str>,
    ) -> Result<CancelRunOutcome, String> {
        tokio::time::timeout(
            CANCEL_TIMEOUT,
            self.cancel(target, dispatch, listener_event_id),
        )
        .await
        .unwrap_or_else(|_| Err("the Kubernetes API did not answer in time".to_owned()))
    }
}
