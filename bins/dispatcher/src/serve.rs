//! `dispatcher serve`: wires the crates together and runs until SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatcher_capacity::{CapacityOptions, EventListenerClient, KubeCapacity, kube_client};
use dispatcher_core::config::Settings;
use dispatcher_github::GithubLabels;
use dispatcher_http::App;
use dispatcher_store::{Database, PoolOptions};
use tokio::sync::watch;

use crate::dispatch::Dispatcher;
use crate::status::DispatcherStatus;

/// Time the dispatch loop gets to finish its pass on shutdown.
const DISPATCH_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the service.
pub(crate) async fn serve(settings: Settings, database_url: &str) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    if settings.database.migrate_on_start {
        let applied = dispatcher_store::run_migrations(database_url)
            .await
            .context(
                "applying database migrations (set database.migrate_on_start: false to skip)",
            )?;
        for version in &applied {
            tracing::info!(%version, "applied migration");
        }
    }
    let db = Database::connect(
        database_url,
        PoolOptions {
            max_size: settings.database.pool_size,
            connect_timeout: settings.database.connect_timeout,
            acquire_timeout: settings.database.acquire_timeout,
        },
    )?;

    let capacity = Arc::new(start_capacity(&settings).await);
    let trigger = EventListenerClient::new(settings.dispatch.trigger_timeout)
        .context("building the EventListener client")?;
    let github = match &settings.github.token {
        Some(token) if !token.expose().is_empty() => Some(
            GithubLabels::new(
                &settings.github_api_url,
                token.expose(),
                settings.github.timeout,
            )
            .context("building the GitHub client")?,
        ),
        _ => {
            tracing::warn!(
                "no GitHub token (GITHUB_TOKEN or github.token): the <pipeline>/queued labels are disabled"
            );
            None
        }
    };
    let status = DispatcherStatus::new();

    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = Dispatcher {
        settings: Arc::clone(&settings),
        db: db.clone(),
        capacity: Arc::clone(&capacity),
        trigger,
        github,
        status: Arc::clone(&status),
    };
    let dispatch_task = tokio::spawn(dispatcher.run(stop_rx));

    let report_settings = Arc::clone(&settings);
    let report_capacity = Arc::clone(&capacity);
    let app = App::new(&settings, db.events())
        .context("building the HTTP app")?
        .with_status_source(Arc::new(move || {
            status.report(&report_settings, &report_capacity)
        }))
        // Always alive for now: the runtime plugs in the dispatch loop's heartbeat.
        .with_liveness_source(Arc::new(|| dispatcher_http::Liveness::Alive));
    let address = (settings.server.bind, settings.server.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, items = settings.items.len(), pools = settings.pools.len(), "listening");

    dispatcher_http::serve(
        listener,
        Arc::new(app),
        shutdown_signal(),
        dispatcher_http::ServeOptions::from(&settings.server),
    )
    .await?;

    let _ = stop_tx.send(true);
    match tokio::time::timeout(DISPATCH_STOP_TIMEOUT, dispatch_task).await {
        Ok(_) => tracing::info!("dispatcher stopped; bye"),
        Err(_) => tracing::warn!("dispatcher did not stop in time; exiting anyway"),
    }
    Ok(())
}

async fn start_capacity(settings: &Settings) -> KubeCapacity {
    let d = &settings.dispatch;
    let options = CapacityOptions {
        resync_interval: d.capacity_resync_interval,
        stale_after: d.capacity_stale_after,
        list_timeout: d.capacity_stale_after,
    };
    if settings.pools.is_empty() {
        return KubeCapacity::unavailable("no pools configured", options);
    }
    match kube_client().await {
        Ok(client) => KubeCapacity::start(&client, settings.pools.values(), options),
        Err(e) => {
            tracing::error!(error = %e, "no Kubernetes configuration (in-cluster service account or KUBECONFIG); nothing will be dispatched");
            KubeCapacity::unavailable(format!("no Kubernetes configuration: {e}"), options)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}
