//! # dispatcher-capacity
//!
//! The Tekton side of the Webhook Dispatcher.
//!
//! **Owns:** counting unfinished PipelineRuns per capacity pool from the
//! Kubernetes API (list + watch, with its own health tracking so a pool whose
//! state is not known to be current dispatches nothing), and triggering
//! EventListeners with the exact stored delivery.
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
//! let client = kube_client().await?;
//! let options = CapacityOptions {
//!     resync_interval: Duration::from_secs(10),
//!     stale_after: Duration::from_secs(30),
//!     list_timeout: Duration::from_secs(10),
//! };
//! let capacity = KubeCapacity::start(&client, &pools, options);
//! println!("{:?}", capacity.pool_state(&pools[0]));
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
