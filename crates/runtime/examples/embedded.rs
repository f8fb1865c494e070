//! The dispatcher inside another tokio program: the intake HTTP service and
//! the dispatch runtime with the production adapters, wired by hand.
//!
//! ```sh
//! DATABASE_URL=postgres://localhost/dispatcher \
//! EVENT_LISTENER_URL=http://127.0.0.1:8080/ \
//! GITHUB_WEBHOOK_SECRET=dev-secret \
//!     cargo run -p dispatcher-runtime --example embedded
//! ```
//!
//! Kubernetes comes from `KUBECONFIG` or the in-cluster service account;
//! until one works, every pool is unknown and nothing is dispatched.

use std::sync::Arc;

use dispatcher_capacity::{CapacityOptions, EventListenerClient, KubeCapacity, kube_client};
use dispatcher_core::config::{Settings, parse};
use dispatcher_http::{App, DispatcherReport};
use dispatcher_runtime::Runtime;
use dispatcher_store::{ConnectionOptions, Database, LeaderOptions, PgLeaderElection, PoolOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt().with_env_filter("info").init();
    let env = |k: &str| std::env::var(k).map_err(|_| format!("set {k}"));

    // Your program's own configuration, in the dispatcher's model.
    let (raw, _unknown_keys) = parse(serde_json::json!({
        "dispatcher": {"items": [{
            "name": "example",
            "events": ["opened", "synchronize", "reopened"],
            "full_repository_name": "example-org/example-repo",
            "callback_url": env("EVENT_LISTENER_URL")?,
            "capacity": {"type": "ocp_tekton", "pipeline_name": "example-pipeline",
                         "max_capacity": 2, "namespace": "default"},
        }]},
        "security": {"github_webhook_secret": env("GITHUB_WEBHOOK_SECRET")?},
    }))?;
    let settings = Arc::new(Settings::from_raw(raw)?);
    let database_url = env("DATABASE_URL")?;

    // Adapters: PostgreSQL, Kubernetes, the EventListener.
    dispatcher_store::run_migrations(&database_url, &ConnectionOptions::default()).await?;
    let db = Database::connect(&database_url, PoolOptions::default())?;
    let d = &settings.dispatch;
    let capacity = Arc::new(KubeCapacity::connect(
        kube_client,
        settings.pools.values(),
        CapacityOptions {
            resync_interval: d.capacity_resync_interval,
            stale_after: d.capacity_stale_after,
            list_timeout: d.capacity_stale_after,
        },
    ));
    // Adopted events are signed again with the first webhook secret.
    let resign = settings.security.webhook_secrets.first();
    let trigger =
        EventListenerClient::new(d.trigger_timeout, resign.map(|s| s.expose().as_bytes()))?;
    let election = PgLeaderElection::new(db.clone(), false, LeaderOptions::default());

    // The dispatcher runs as one task of this program...
    let runtime = Runtime::new(
        Arc::clone(&settings),
        election,
        Arc::clone(&capacity),
        trigger,
    );
    let status = runtime.status();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let dispatcher = tokio::spawn(runtime.run(stopped));

    // ...and intake as another, reporting the dispatcher in its readiness.
    let report_settings = Arc::clone(&settings);
    let app = App::new(&settings, db.events())?.with_status_source(Arc::new(move || {
        let report = status.report(&report_settings, &*capacity);
        DispatcherReport {
            healthy: report.healthy,
            details: report.details,
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5000").await?;
    tracing::info!(address = %listener.local_addr()?, "intake listening");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    dispatcher_http::serve(
        listener,
        Arc::new(app),
        ctrl_c,
        dispatcher_http::ServeOptions::from(&settings.server),
    )
    .await?;

    let _ = stop.send(true);
    dispatcher.await?;
    Ok(())
}
