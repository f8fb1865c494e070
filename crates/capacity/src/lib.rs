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
//! `CapacitySource` and `Trigger` ports of `dispatcher-core`.
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

mod pipelinerun;
mod trigger;
mod watch;

pub use pipelinerun::{EVENT_ID_LABEL, PIPELINE_LABEL, RunInfo};
pub use trigger::EventListenerClient;
pub use watch::{CapacityOptions, KubeCapacity};

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
