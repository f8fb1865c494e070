//! Intake throughput: the dispatcher versus direct inserts.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{BenchDb, Dispatcher, SECRET, connect, pr_payload};
use crate::stats::{Samples, mib, ms};

struct Load {
    ok: u64,
    errors: u64,
    samples: Samples,
    elapsed: Duration,
}

/// Runs `worker(n)` on `concurrency` tasks until `duration` passes.
async fn drive<F, Fut>(concurrency: usize, duration: Duration, worker: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let worker = Arc::new(worker);
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let worker = Arc::clone(&worker);
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let (mut ok, mut errors, mut samples) = (0, 0, Samples::default());
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if worker(n).await {
                        ok += 1;
                        samples.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (ok, errors, samples)
            })
        })
        .collect();
    let mut load = Load {
        ok: 0,
        errors: 0,
        samples: Samples::default(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        if let Ok((ok, errors, samples)) = t.await {
            load.ok += ok;
            load.errors += errors;
            load.samples.extend(samples);
        }
    }
    load.elapsed = started.elapsed();
    load
}

pub(crate) async fn run(
    dispatcher: &Path,
    server_url: &str,
    duration: Duration,
    concurrency: usize,
    payload_size: usize,
) -> anyhow::Result<String> {
    let payload = Arc::new(pr_payload("bench/repo", 1, "opened", payload_size));
    let signature = Arc::new(dispatcher_sig::sign(SECRET.as_bytes(), payload.as_bytes()));
    let headers = serde_json::json!([
        ["X-GitHub-Event", "pull_request"],
        ["X-GitHub-Delivery", "d"],
        ["X-Hub-Signature-256", signature.as_str()]
    ])
    .to_string();

    // Baseline: the same rows, straight into PostgreSQL, one connection per worker.
    let base_db = BenchDb::create(server_url, "baseline", dispatcher).await?;
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(Arc::new(connect(&base_db.url).await?));
    }
    let next_client = Arc::new(AtomicU64::new(0));
    let insert = "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name, pull_request_number, payload, headers)
                  VALUES ($1, 'pull_request', 'opened', 'bench/repo', 1, $2::text::json, $3::text::jsonb) RETURNING id, received_at";
    let statements = {
        let mut s = Vec::new();
        for c in &clients {
            s.push(c.prepare(insert).await?);
        }
        Arc::new(s)
    };
    let clients = Arc::new(clients);
    let (p, h) = (Arc::clone(&payload), Arc::new(headers));
    // Each worker task keeps its own connection: pick one per call round-robin over the pool of `concurrency`.
    let baseline = drive(concurrency, duration, move |n| {
        let clients = Arc::clone(&clients);
        let statements = Arc::clone(&statements);
        let (p, h, next) = (Arc::clone(&p), Arc::clone(&h), Arc::clone(&next_client));
        async move {
            let i = (next.fetch_add(1, Ordering::Relaxed) as usize) % clients.len();
            let delivery = format!("base-{n}");
            clients[i]
                .query_one(&statements[i], &[&delivery, &*p, &*h])
                .await
                .is_ok()
        }
    })
    .await;
    base_db.drop_now().await?;

    // The dispatcher: no config items, so the engine only marks events aborted in batches.
    let db = BenchDb::create(server_url, "intake", dispatcher).await?;
    let _engine_off = if std::env::var_os("BENCH_ENGINE_OFF").is_some() {
        // Holding the leader lock keeps the dispatcher on standby: intake alone.
        let c = connect(&db.url).await?;
        c.batch_execute("SELECT pg_advisory_lock(7235441202855961448)")
            .await?;
        Some(c)
    } else {
        None
    };
    let config = format!(
        "security: {{github_webhook_secret: \"${{GITHUB_WEBHOOK_SECRET}}\"}}\nserver: {{bind: 127.0.0.1, port: 0, shutdown_delay: 0s}}\ndatabase: {{pool_size: {concurrency}}}\n"
    );
    let service = Dispatcher::start(dispatcher, &config, &db.url, &[]).await?;
    let address = service.url.trim_start_matches("http://").to_owned();
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(tokio::sync::Mutex::new(
            crate::rawhttp::Connection::open(&address).await?,
        ));
    }
    let connections = Arc::new(connections);
    let next = Arc::new(AtomicU64::new(0));
    let measured = drive(concurrency, duration, move |n| {
        let (connections, payload, signature, next) = (
            Arc::clone(&connections),
            Arc::clone(&payload),
            Arc::clone(&signature),
            Arc::clone(&next),
        );
        async move {
            // Each in-flight request gets a connection of its own.
            let i = (next.fetch_add(1, Ordering::Relaxed) as usize) % connections.len();
            let mut conn = connections[i].lock().await;
            let delivery = format!("bench-{n}");
            let headers = [
                ("User-Agent", "GitHub-Hookshot/bench"),
                ("X-GitHub-Event", "pull_request"),
                ("X-GitHub-Delivery", delivery.as_str()),
                ("Content-Type", "application/json"),
                ("X-Hub-Signature-256", signature.as_str()),
            ];
            matches!(
                conn.post(
                    "/api/v1/webhooks/github-pipeline",
                    &headers,
                    payload.as_bytes()
                )
                .await,
                Ok(200)
            )
        }
    })
    .await;
    let rss = service.peak_rss();
    let stored: i64 = connect(&db.url)
        .await?
        .query_one("SELECT count(*) FROM webhook_events", &[])
        .await?
        .get(0);
    service.stop().await?;
    db.drop_now().await?;

    let rate = |l: &Load| l.ok as f64 / l.elapsed.as_secs_f64();
    let (mut b, mut m) = (baseline.samples.clone(), measured.samples.clone());
    let mut out = String::new();
    writeln!(
        out,
        "intake: {concurrency} concurrent, {} KiB payloads, {}s each",
        payload_size / 1024,
        duration.as_secs()
    )?;
    writeln!(
        out,
        "  baseline (direct INSERT): {:>8.0} rows/s   p50 {}  p99 {}  errors {}",
        rate(&baseline),
        ms(b.percentile(50.0)),
        ms(b.percentile(99.0)),
        baseline.errors
    )?;
    writeln!(
        out,
        "  dispatcher (HTTP intake): {:>8.0} req/s    p50 {}  p99 {}  errors {}  ({} rows stored)",
        rate(&measured),
        ms(m.percentile(50.0)),
        ms(m.percentile(99.0)),
        measured.errors,
        stored
    )?;
    writeln!(
        out,
        "  throughput ratio: {:.2} of baseline (target >= 1.0 at 32 concurrent)",
        rate(&measured) / rate(&baseline)
    )?;
    write!(out, "  dispatcher peak RSS: {} (target < 64 MiB)", mib(rss))?;
    Ok(out)
}
