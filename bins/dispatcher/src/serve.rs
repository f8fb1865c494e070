//! `dispatcher serve`: wires the crates together and runs until SIGTERM/SIGINT.
//!
//! HTTP serves from the first moment, even when PostgreSQL or Kubernetes are
//! not reachable yet: readiness says why, and migrations, leadership and the
//! Kubernetes client are retried in the background instead of crash-looping.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dispatcher_capacity::{
    CapacityOptions, EventListenerClient, KubeCapacity, KubeRunCanceller, kube_client,
};
use dispatcher_core::config::{QueueStatusMode, Settings};
use dispatcher_core::ports::CapacitySource;
use dispatcher_github::GithubLabels;
use dispatcher_http::{App, DispatcherReport, Liveness, Metrics};
use dispatcher_runtime::{DispatcherStatus, Runtime};
use dispatcher_store::{Database, PgLeaderElection};
use tokio::sync::watch;

use crate::simulate::Simulation;

/// Runs the service; `config_path` is watched for reloads.
pub(crate) async fn serve(
    mut settings: Settings,
    database_url: &str,
    config_path: std::path::PathBuf,
) -> anyhow::Result<()> {
    // Held to the end: dropping it stops the simulated Tekton.
    let simulation = if settings.dev.simulate_tekton {
        Some(Arc::new(Simulation::start(&mut settings).await?))
    } else {
        None
    };
    let settings = Arc::new(settings);
    crate::summary::log_start(&settings, env!("CARGO_PKG_VERSION"));
    warn_about(&settings);
    let db = Database::connect(database_url, crate::options::pool(&settings))?;
    let capacity = Arc::new(match &simulation {
        Some(simulation) => simulation.capacity(&settings, capacity_options(&settings))?,
        None => start_capacity(&settings),
    });
    // Events adopted from the original's database are signed again with it.
    let secret = settings.security.webhook_secrets.first();
    let secret = secret.map(|s| s.expose().as_bytes());
    let trigger = EventListenerClient::new(settings.dispatch.trigger_timeout, secret)
        .context("building the EventListener client")?;
    let github = github_labels(&settings)?;
    // Reloaded settings reach the dispatcher through this channel.
    let (settings_tx, settings_rx) = watch::channel(Arc::clone(&settings));
    // `github.queue_status: off` turns the `<pipeline>/queued` label off too.
    let labels = github.is_some() && settings.github.queue_status.labels();
    let election = PgLeaderElection::new(db.clone(), labels, crate::options::leader(&settings));
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let mut runtime = Runtime::new(
        Arc::clone(&settings),
        election,
        Arc::clone(&capacity),
        trigger,
    )
    .with_metrics(Arc::clone(&metrics))
    .with_settings_updates(settings_rx.clone());
    if let Some(github) = &github {
        if labels {
            runtime = runtime.with_labels(db.labels(), github.clone());
        }
        if let Some(kind) = status_kind(settings.github.queue_status) {
            runtime = runtime.with_queue_status(
                db.queue_statuses(),
                dispatcher_github::GithubQueueStatus::new(github.clone(), kind),
                settings.github.queue_status_interval,
            );
        }
    }
    // Validation requires a token or an app with github.catch_up.
    if let (Some(policy), Some(github)) = (settings.catch_up.clone(), &github) {
        runtime = runtime.with_catch_up(github.clone(), db.catch_up(), policy);
    }
    if let Some(policy) = settings.retention {
        runtime = runtime.with_retention(db.retention(), policy);
    }
    // Cancels runs of work superseded or closed (items' `cancel_superseded`,
    // `cancel_on_close`); idle while no item asks for it.
    let canceller = Arc::new(match &simulation {
        Some(simulation) => simulation.canceller(),
        None => KubeRunCanceller::new(kube_client),
    });
    runtime = runtime.with_run_cancels(db.run_cancels(), canceller);
    let status = runtime.status();

    let (stop_tx, stop_rx) = watch::channel(false);
    if settings.database.migrate_on_start {
        let (url, connection) = (
            database_url.to_owned(),
            crate::options::connection(&settings),
        );
        runtime = runtime.with_preparation("applying database migrations", move || {
            let url = url.clone();
            async move {
                let applied = dispatcher_store::run_migrations(&url, &connection).await;
                for version in applied.as_ref().map_err(ToString::to_string)? {
                    tracing::info!(%version, "applied migration");
                }
                Ok(())
            }
        });
    }
    let dispatch_task = tokio::spawn(runtime.run(stop_rx));

    let pool = db.clone();
    let reloads = Arc::new(crate::reload::ReloadStatus::default());
    let app = http_app(&settings_rx, &db, &status, &capacity, &reloads)?
        .with_metrics(Arc::clone(&metrics))
        .with_metrics_refresh(Arc::new(move |metrics: &Metrics| {
            let status = pool.pool_status();
            metrics.set_db_pool(status.size, status.in_use);
        }));
    let app = Arc::new(app);
    tokio::spawn(
        crate::reload::Reloader {
            path: config_path,
            current: Arc::clone(&settings),
            updates: settings_tx,
            app: Arc::clone(&app),
            capacity: Arc::clone(&capacity),
            github,
            metrics,
            status: reloads,
            simulation: simulation.clone(),
        }
        .run(),
    );
    let address = (settings.server.bind, settings.server.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, items = settings.items.len(), pools = settings.pools.len(), "listening");

    // On SIGTERM the dispatcher stops starting triggers at once, in parallel
    // with the HTTP drain; both finish within the grace period.
    let signal = async {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    };
    dispatcher_http::serve(
        listener,
        app,
        signal,
        dispatcher_http::ServeOptions::from(&settings.server),
    )
    .await?;

    let stop_limit = settings.dispatch.trigger_timeout + Duration::from_secs(5);
    match tokio::time::timeout(stop_limit, dispatch_task).await {
        Ok(_) => tracing::info!("dispatcher stopped; bye"),
        Err(_) => tracing::warn!("dispatcher did not stop in time; exiting anyway"),
    }
    drop(simulation);
    Ok(())
}

fn http_app(
    settings: &watch::Receiver<Arc<Settings>>,
    db: &Database,
    status: &Arc<DispatcherStatus>,
    capacity: &Arc<KubeCapacity>,
    reloads: &Arc<crate::reload::ReloadStatus>,
) -> anyhow::Result<App<dispatcher_store::PgEvents>> {
    let (report_settings, report_status, report_capacity, report_reloads) = (
        settings.clone(),
        Arc::clone(status),
        Arc::clone(capacity),
        Arc::clone(reloads),
    );
    let live_status = Arc::clone(status);
    let pool_capacity = Arc::clone(capacity);
    let current = Arc::clone(&settings.borrow());
    Ok(App::new(&current, db.events())
        .context("building the HTTP app")?
        .with_pool_states(Arc::new(move |pool| pool_capacity.pool_state(pool)))
        .with_status_source(Arc::new(move || {
            let settings = Arc::clone(&report_settings.borrow());
            let report = report_status.report(&settings, &*report_capacity);
            let mut details = report.details;
            if let Some(map) = details.as_object_mut() {
                map.insert("config".to_owned(), report_reloads.details());
            }
            DispatcherReport {
                healthy: report.healthy,
                details,
            }
        }))
        .with_liveness_source(Arc::new(move || match live_status.liveness() {
            Ok(()) => Liveness::Alive,
            Err(reason) => Liveness::Stuck(reason),
        })))
}

fn github_labels(settings: &Settings) -> anyhow::Result<Option<GithubLabels>> {
    let github = github_client(settings, settings.github.timeout)?;
    if github.is_none() {
        tracing::warn!(
            "no GitHub token or app (GITHUB_TOKEN, github.token or github.app): the <pipeline>/queued labels are disabled"
        );
    }
    Ok(github)
}

/// The GitHub client of `settings`: a GitHub App's (`github.app`, its key
/// read and parsed here) or a token's; `None` when neither is configured.
pub(crate) fn github_client(
    settings: &Settings,
    timeout: Duration,
) -> anyhow::Result<Option<GithubLabels>> {
    if let Some(app) = &settings.github.app {
        let github_app = dispatcher_github::GithubApp::from_key_file(
            app.app_id,
            app.installation_id,
            &app.private_key_file,
        )
        .map_err(|e| anyhow::anyhow!("github.app.private_key_file: {e}"))?;
        tracing::info!(
            app_id = app.app_id,
            installation_id = app.installation_id,
            "GitHub labels as a GitHub App installation"
        );
        return Ok(Some(
            GithubLabels::with_app(&settings.github_api_url, github_app, timeout)
                .context("building the GitHub client")?,
        ));
    }
    match &settings.github.token {
        Some(token) if !token.expose().is_empty() => Ok(Some(
            GithubLabels::new(&settings.github_api_url, token.expose(), timeout)
                .context("building the GitHub client")?,
        )),
        _ => Ok(None),
    }
}

/// The kind of GitHub status `github.queue_status` publishes, if any.
fn status_kind(mode: QueueStatusMode) -> Option<dispatcher_github::StatusKind> {
    match mode {
        QueueStatusMode::CheckRun => Some(dispatcher_github::StatusKind::CheckRun),
        QueueStatusMode::CommitStatus => Some(dispatcher_github::StatusKind::CommitStatus),
        QueueStatusMode::Label | QueueStatusMode::Off => None,
    }
}

fn warn_about(settings: &Settings) {
    let github = &settings.github;
    if github.queue_status == QueueStatusMode::CheckRun && github.app.is_none() {
        tracing::warn!(
            "github.queue_status is check_run without github.app: GitHub accepts check runs only from a GitHub App, so a token's check runs will fail (use commit_status with a token)"
        );
    }
    if github.queue_status.posts_status() && !github.labels_enabled() {
        tracing::warn!(
            "github.queue_status needs GitHub credentials (github.token, GITHUB_TOKEN or github.app): no queue status is shown"
        );
    }
    if !settings.security.verify_signatures {
        tracing::warn!(
            "security.verify_signatures is off: any request that looks like a GitHub webhook is accepted"
        );
    }
}

fn capacity_options(settings: &Settings) -> CapacityOptions {
    let d = &settings.dispatch;
    CapacityOptions {
        resync_interval: d.capacity_resync_interval,
        stale_after: d.capacity_stale_after,
        list_timeout: d.capacity_stale_after,
    }
}

fn start_capacity(settings: &Settings) -> KubeCapacity {
    let options = capacity_options(settings);
    if settings.pools.is_empty() {
        return KubeCapacity::unavailable("no pools configured", options);
    }
    // Keeps every pool unknown and retries while no Kubernetes configuration works.
    KubeCapacity::connect(kube_client, settings.pools.values(), options)
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
