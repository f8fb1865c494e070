//! # dispatcher-bench
//!
//! Measures the release binary against baselines taken in the same run, so
//! results are ratios that survive noisy, shared machines:
//!
//! * `intake`: signed ~25 KB `pull_request` deliveries at a fixed concurrency
//!   for a fixed time, versus the same rows inserted straight into PostgreSQL
//!   (tokio-postgres, same concurrency). Throughput, p50/p99, errors, peak RSS.
//! * `latency`: from the webhook's 200 to the EventListener receiving the
//!   POST, with free capacity, versus a direct POST to the same listener.
//! * `drain`: N PRs queued against capacity C with runs of R ms, versus the
//!   ideal `ceil(N/C) × R`.
//! * `failover`: SIGSTOP of the active replica → the standby's first trigger,
//!   versus `failover_timeout` + 2 s and the healthy-leader path.
//! * `flood`: 40 clients uploading 25 MiB bodies with well-formed but wrong
//!   signatures while 4 clients send signed webhooks, versus the same 4
//!   clients alone: share accepted, p50/p99, the dispatcher's peak RSS.
//! * `plan`: the dispatch pass with 1,000 full pools and 100,000 waiting
//!   dispatches (an idle pass, the passes after a run finishes, intake rate,
//!   peak RSS, triggers/s when every pool is freed at once), versus the same
//!   world with an empty queue; `plan --shards 4`: the same load by one
//!   leader and by 4 shard leaders. Not part of the default run;
//!   `just bench plan`.
//!
//! Needs `DATABASE_URL` (a server where it may create databases) and the
//! `dispatcher` binary; `just bench` provides both.

mod failover;
mod flood;
mod harness;
mod intake;
mod pipeline;
mod plan;
mod rawhttp;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Benchmarks of the Webhook Dispatcher.
#[derive(Debug, Parser)]
struct Cli {
    /// The release `dispatcher` binary.
    #[arg(long, default_value = "target/release/dispatcher")]
    dispatcher: PathBuf,
    /// PostgreSQL server (databases are created and dropped on it).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Every benchmark with its defaults.
    All,
    /// Intake throughput versus direct inserts.
    Intake {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent requests; each level is measured in turn (32 for
        /// throughput, 1 for a lone request's latency).
        #[arg(long, value_delimiter = ',', default_values_t = [32, 1])]
        concurrency: Vec<usize>,
        /// Payload size in KiB.
        #[arg(long, default_value_t = 25)]
        payload_kib: usize,
    },
    /// Webhook 200 → EventListener POST latency.
    Latency {
        /// Events measured.
        #[arg(long, default_value_t = 500)]
        events: usize,
    },
    /// Queue drain time versus the ideal.
    Drain {
        /// Pull requests queued.
        #[arg(long, default_value_t = 200)]
        prs: usize,
        /// Pipeline capacity.
        #[arg(long, default_value_t = 5)]
        capacity: usize,
        /// Duration of each fake PipelineRun in milliseconds.
        #[arg(long, default_value_t = 200)]
        run_ms: u64,
    },
    /// The dispatch pass with many full pools and a deep queue.
    Plan {
        /// Repositories (each with `items` pools).
        #[arg(long, default_value_t = 200)]
        repos: usize,
        /// Items (pools) per repository.
        #[arg(long, default_value_t = 5)]
        items: usize,
        /// Pull requests waiting, each in every pool of its repository.
        #[arg(long, default_value_t = 20_000)]
        prs: usize,
        /// Instead: one leader against this many shard leaders over the
        /// same load (a simulation of leadership per pool group).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Standby takeover after the active replica freezes.
    Failover {
        /// Freezes measured (each on fresh replicas).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Hostile 25 MiB uploads with wrong signatures beside normal webhooks.
    Flood {
        /// Seconds per phase (baseline, then flood).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Clients uploading hostile bodies.
        #[arg(long, default_value_t = 40)]
        flood_clients: usize,
        /// Size of each hostile body in MiB (25 is GitHub's cap and the default body limit).
        #[arg(long, default_value_t = 25)]
        flood_mib: usize,
        /// Clients sending normal signed webhooks.
        #[arg(long, default_value_t = 4)]
        normal_clients: usize,
        /// Size of a normal webhook in KiB.
        #[arg(long, default_value_t = 25)]
        payload_kib: usize,
    },
}

#[allow(clippy::print_stdout)] // the report is the program's output
fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let commands = match cli.command.clone().unwrap_or(Command::All) {
        Command::All => vec![
            Command::Intake {
                seconds: 10,
                concurrency: vec![32, 1],
                payload_kib: 25,
            },
            Command::Latency { events: 500 },
            Command::Drain {
                prs: 200,
                capacity: 5,
                run_ms: 200,
            },
            Command::Failover { rounds: 3 },
            Command::Flood {
                seconds: 10,
                flood_clients: 40,
                flood_mib: 25,
                normal_clients: 4,
                payload_kib: 25,
            },
        ],
        one => vec![one],
    };
    runtime.block_on(async {
        for command in commands {
            let report = match command {
                Command::Intake {
                    seconds,
                    concurrency,
                    payload_kib,
                } => {
                    let mut reports = Vec::new();
                    for level in concurrency {
                        reports.push(
                            intake::run(
                                &cli.dispatcher,
                                &cli.database_url,
                                Duration::from_secs(seconds),
                                level,
                                payload_kib * 1024,
                            )
                            .await?,
                        );
                    }
                    reports.join("\n")
                }
                Command::Latency { events } => {
                    pipeline::latency(&cli.dispatcher, &cli.database_url, events).await?
                }
                Command::Drain {
                    prs,
                    capacity,
                    run_ms,
                } => {
                    pipeline::drain(
                        &cli.dispatcher,
                        &cli.database_url,
                        prs,
                        capacity,
                        Duration::from_millis(run_ms),
                    )
                    .await?
                }
                Command::Failover { rounds } => {
                    failover::run(&cli.dispatcher, &cli.database_url, rounds).await?
                }
                Command::Plan {
                    repos,
                    items,
                    prs,
                    shards,
                } => {
                    let shape = plan::Shape { repos, items, prs };
                    match shards {
                        Some(n) => {
                            plan::run_shards(&cli.dispatcher, &cli.database_url, shape, n).await?
                        }
                        None => plan::run(&cli.dispatcher, &cli.database_url, shape).await?,
                    }
                }
                Command::Flood {
                    seconds,
                    flood_clients,
                    flood_mib,
                    normal_clients,
                    payload_kib,
                } => {
                    flood::run(
                        &cli.dispatcher,
                        &cli.database_url,
                        Duration::from_secs(seconds),
                        flood_clients,
                        flood_mib,
                        normal_clients,
                        payload_kib,
                    )
                    .await?
                }
                Command::All => continue,
            };
            println!("{report}");
        }
        anyhow::Ok(())
    })
}
