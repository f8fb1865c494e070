//! # dispatcher
//!
//! The Webhook Dispatcher binary: a thin layer over the workspace crates.
//!
//! **Owns:** the command line (`serve`, the default; `migrate`;
//! `check-config`; `explain`; `prune`), configuration loading (figment), logging setup, wiring
//! and graceful shutdown.
//!
//! **Must not:** contain business rules: routing, planning and status live
//! in `dispatcher-core`; storage, Kubernetes, GitHub and HTTP in their crates.

mod config;
mod connect;
mod explain;
mod options;
mod prune;
mod reload;
mod serve;
mod simulate;
mod summary;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dispatcher_core::config::LogFormat;

/// GitHub pull-request webhooks to capacity-limited Tekton pipelines.
#[derive(Debug, Parser)]
#[command(name = "dispatcher", version, about)]
struct Cli {
    /// Configuration file.
    /// Configuration file (else `CONFIG_FILE`, the original's variable, else the default path).
    #[arg(long, short, global = true, env = "WEBHOOK_DISPATCHER_CONFIG")]
    config: Option<PathBuf>,
    /// Log at debug level.
    #[arg(long, short, global = true)]
    verbose: bool,
    /// Log format (overrides LOG_FORMAT and logging.format).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and exit (non-zero on any problem).
    CheckConfig {
        /// Also check the database, each pool's Kubernetes access, each
        /// EventListener and the GitHub token, one line each.
        #[arg(long)]
        connect: bool,
    },
    /// Explain one event as text: matching, timeline, why it waits (asks a
    /// running dispatcher's API).
    Explain {
        /// The event's id (the UUID the API shows).
        id: String,
        /// Base URL of a running dispatcher (default: this config's port on
        /// 127.0.0.1; with a URL no configuration is read).
        #[arg(long)]
        url: Option<String>,
        /// A read token, when `api.tokens` protects the API.
        #[arg(long, env = "DISPATCHER_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run one retention pass now with the config's `retention` section:
    /// delete old finished events, drop old payloads (refused when the
    /// section is absent).
    Prune {
        /// Show what would be deleted and dropped; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be up (config errors come first): print plainly too.
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // reqwest and kube use rustls without a built-in provider: install ring's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // With --url, `explain` needs no configuration (an operator's laptop).
    if let Some(Command::Explain {
        id,
        url: Some(url),
        token,
    }) = &cli.command
    {
        return explain(&explain::ExplainRequest {
            url: url.clone(),
            id: id.clone(),
            token: token.clone(),
        });
    }
    let env = |k: &str| std::env::var(k).ok();
    let path = (cli.config.clone())
        .or_else(|| env("CONFIG_FILE").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    let loaded = config::load(&path, &env)?;
    let settings = loaded.settings;
    let format = match cli.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Text,
        None => settings.log_format,
    };
    telemetry::init(format, &settings.log_level, cli.verbose)?;
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, file = %loaded.path.display(), "unknown configuration key ignored (typo?)");
    }

    let command = cli.command.unwrap_or(Command::Serve);
    if matches!(command, Command::Serve | Command::CheckConfig { .. }) {
        simulate::refuse_real_kubernetes(&settings, &env)?;
    }
    match command {
        Command::CheckConfig { connect } => {
            // The key is parsed as `serve` would (the validation only read it).
            if let Some(app) = &settings.github.app {
                dispatcher_github::AppKey::from_pem_file(&app.private_key_file)
                    .map_err(|e| anyhow::anyhow!("github.app.private_key_file: {e}"))?;
            }
            #[allow(clippy::print_stdout)] // the command's output
            {
                println!(
                    "{}: OK ({} item(s), {} pool(s), signatures {})",
                    loaded.path.display(),
                    settings.items.len(),
                    settings.pools.len(),
                    if settings.security.verify_signatures {
                        "verified"
                    } else {
                        "NOT verified"
                    }
                );
                if settings.dev.simulate_tekton {
                    println!(
                        "  dev.simulate_tekton: ON (PipelineRuns simulated in-process, each running {:?})",
                        settings.dev.run_duration
                    );
                }
                if let Some(app) = &settings.github.app {
                    println!(
                        "  github: labels as GitHub App {} (installation {})",
                        app.app_id, app.installation_id
                    );
                }
                for pool in settings.pools.values() {
                    println!(
                        "  pool {} (max {}, tekton.dev/{})",
                        pool.key,
                        pool.max_capacity,
                        pool.api_version.as_str()
                    );
                }
            }
            if connect {
                let url = database_url(&settings).ok();
                let failed = runtime()?.block_on(connect::run(&settings, url.as_deref()));
                anyhow::ensure!(failed == 0, "{failed} connection check(s) failed");
            }
            Ok(())
        }
        Command::Migrate => {
            let url = database_url(&settings)?;
            runtime()?.block_on(async {
                let applied =
                    dispatcher_store::run_migrations(&url, &options::connection(&settings))
                        .await
                        .context("applying migrations")?;
                if applied.is_empty() {
                    tracing::info!("database schema is up to date");
                }
                for version in applied {
                    tracing::info!(%version, "applied migration");
                }
                Ok(())
            })
        }
        Command::Explain { id, url, token } => explain(&explain::ExplainRequest {
            url: url.unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.server.port)),
            id,
            token,
        }),
        Command::Prune { dry_run } => {
            let url = database_url(&settings)?;
            let text = runtime()?.block_on(prune::prune(&settings, &url, dry_run))?;
            #[allow(clippy::print_stdout)] // the command's output
            {
                print!("{text}");
            }
            Ok(())
        }
        Command::Serve => {
            let url = database_url(&settings)?;
            runtime()?.block_on(serve::serve(settings, &url, loaded.path))
        }
    }
}

fn explain(request: &explain::ExplainRequest) -> anyhow::Result<()> {
    let text = runtime()?.block_on(explain::fetch(request))?;
    #[allow(clippy::print_stdout)] // the command's output
    {
        print!("{text}");
    }
    Ok(())
}

/// The database URL with the `database.ssl*` keys applied over its own
/// `sslmode`/`sslrootcert`/`sslcert`/`sslkey` parameters.
fn database_url(settings: &dispatcher_core::config::Settings) -> anyhow::Result<String> {
    let d = &settings.database;
    let url = d.url.as_ref().map(|u| u.expose().to_owned()).filter(|u| !u.is_empty()).context(
        "no database configured: set DATABASE_URL, the POSTGRESQL_* variables, or database.url in the config file",
    )?;
    Ok(dispatcher_store::with_tls_params(
        &url,
        d.sslmode.as_deref(),
        d.sslrootcert.as_deref(),
        d.sslcert.as_deref(),
        d.sslkey.as_deref(),
    ))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
