//! # dispatcher-capacity
//!
//! The Tekton side of the Webhook Dispatcher.
//!
//! **Owns:** counting unfinished PipelineRuns per capacity pool from the
//! Kubernetes API (its own list + watch loop, with its own health tracking so
//! a pool whose state is not known to be current dispatches nothing: from
//! the moment a watch breaks or ends until a fresh full list succeeds, while
//! the API errors or is silent, and while no Kubernetes client could be
//! built), and triggering EventListeners with the exact stored delivery
//! (redirects are not followed).
//!
//! **Must not:** know PostgreSQL, GitHub or HTTP serving. It implements the
//! `CapacitySource`, `Trigger` and `RunCanceller` ports of `dispatcher-core`
//! (the last cancels PipelineRuns by patching `spec.status`).
//!
//! ```no_run
//! # async fn demo(pools: Vec<dispatcher_core::config::PoolSpec>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use dispatcher_capacity::{CapacityOptions, KubeCapacity, kube_client};
//! use dispatcher_core::ports::CapacitySource;
//!
//! let options = CapacityOptions {
//!     resync_interval: Duration::from_secs(10),
//!     stale_after: Duration::from_secs(30),
//!     list_timeout: Duration::from_secs(10),
//! };
//! // Every pool is Unknown ("no Kubernetes configuration: ...") until
//! // `kube_client` succeeds; it is retried in the background with backoff.
//! let capacity = KubeCapacity::connect(kube_client, &pools, options);
//! println!("{:?}", capacity.pool_state(&pools[0]));
//!
//! // With a client at hand:
//! let client = kube_client().await?;
//! let capacity = KubeCapacity::start(&client, &pools, options);
//! # Ok(()) }
//! ```

mod cancel;
mod check;
mod pipelinerun;
mod trigger;
mod watch;

pub use cancel::{KubeRunCanceller, cancel_status};
pub use check::{
    CANCEL_VERB, PIPELINERUN_VERBS, VerbAccess, pipelinerun_access, pipelinerun_verbs_access,
    probe_event_listener,
};
pub use pipelinerun::{EVENT_ID_LABEL, PIPELINE_LABEL, RunInfo};
pub use trigger::EventListenerClient;
pub use watch::{CapacityOptions, KubeCapacity};

/// A Kubernetes client that could not be built for an explicit API URL.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an absolute `http(s)://` URI (the text given).
    #[error("not a Kubernetes API URL: '{0}'")]
    Url(String),
    /// kube refused the configuration.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// A client for the Kubernetes API at `url`, without credentials and
/// without the client's own retries: for an API server on this machine,
/// such as the dev simulation's in-process fake (`dev.simulate_tekton`).
/// Call it inside a Tokio runtime.
pub fn kube_client_at(url: &str) -> Result<kube::Client, ClientError> {
    let uri = url.parse().map_err(|_| ClientError::Url(url.to_owned()))?;
    let mut config = kube::Config::new(uri);
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// A Kubernetes client from the in-cluster service account or `KUBECONFIG`
/// (`~/.kube/config`), with the client's own retries turned off: failures
/// must surface quickly so the dispatcher can fail closed.
pub async fn kube_client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}
