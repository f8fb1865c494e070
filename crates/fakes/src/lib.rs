//! # dispatcher-fakes
//!
//! Test support: small local fakes, each on 127.0.0.1 port 0, that speak the
//! real wire formats of the dispatcher's peers.
//!
//! * [`FakeKube`]: the Kubernetes API for `tekton.dev` PipelineRuns (list,
//!   `?watch=true` streaming, resourceVersions, label selectors, outages).
//! * [`FakeEventListener`]: a Tekton EventListener (202 + `eventID`, GitHub
//!   signature check over the raw bytes, scripted failures, optional
//!   PipelineRun creation in a [`FakeKube`]).
//! * [`FakeGithub`]: the GitHub issue-labels API (with rate limits on demand),
//!   optionally as a GitHub App's installation ([`FakeApp`]: JWT checked, tokens issued).
//! * [`FakeRedirect`]: answers every request with a 307 and counts the
//!   requests that reach the redirect target.
//!
//! Each fake has a `wait_until` that waits on its own change notifications,
//! so tests never sleep to synchronise.
//!
//! Besides tests and benchmarks, the `dispatcher` binary uses [`FakeKube`]
//! and [`FakeEventListener`] for its opt-in local simulation of Tekton
//! (`dev.simulate_tekton`, refused next to a real Kubernetes configuration),
//! so `just run` shows the whole flow on a laptop.
//!
//! **Must not:** be a dependency of any library crate (only of tests,
//! benchmarks and the `dispatcher` binary), or grow heavy dependencies: it
//! ships inside the binary.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let kube = dispatcher_fakes::FakeKube::start().await?;
//! kube.create_run("ns", "run-1", "my-pipeline", Some("event-1"), &[]);
//! assert_eq!(kube.unfinished("my-pipeline"), ["run-1"]);
//! # Ok(()) }
//! ```

mod github;
mod kube;
mod listener;
mod observed;
mod redirect;
mod server;

pub use github::{
    FakeApp, FakeDelivery, FakeGithub, LabelCall, RateLimit, RedeliveryRequest, StatusUpdate,
    TokenExchange,
};

/// Paths of the committed test-only RSA keys (`crates/fakes/fixtures`, see
/// its README): never a real app's keys.
pub mod fixtures {
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name)
    }

    /// The test app's private key, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    pub fn app_key_pkcs1() -> PathBuf {
        fixture("test-app-key.pkcs1.pem")
    }

    /// The same key, PKCS#8 (`BEGIN PRIVATE KEY`).
    pub fn app_key_pkcs8() -> PathBuf {
        fixture("test-app-key.pkcs8.pem")
    }

    /// Another key: its signatures are not the test app's.
    pub fn other_key_pkcs1() -> PathBuf {
        fixture("test-other-key.pkcs1.pem")
    }
}
pub use kube::{FakeKube, KubeRequest};
pub use listener::{FakeEventListener, Received, TektonMode};
pub use redirect::FakeRedirect;
pub use server::{FakeBody, FakeRequest, FakeServer};
