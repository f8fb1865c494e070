//! Hostile flood: many clients uploading GitHub-sized (25 MiB) bodies with
//! well-formed but wrong signatures, while a few clients send normal signed
//! webhooks. The normal clients are measured first alone (baseline), then
//! under the flood, against the same dispatcher process.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{BenchDb, Dispatcher, SECRET, connect, pr_payload};
use crate::rawhttp::Connection;
use crate::stats::{Samples, mib, ms};

const PATH: &str = "/api/v1/webhooks/github-pipeline";
/// The dispatcher's default `server.max_buffered_bytes`.
const MAX_BUFFERED_BYTES: u64 = 128 * 1024 * 1024;

/// What the normal clients saw in one phase.
#[derive(Default)]
struct Normal {
    sent: u64,
    accepted: u64,
    /// Answers other than 200, by status.
    refused: std::collections::BTreeMap<u16, u64>,
    /// Connection errors (counted as not accepted).
    errors: u64,
    samples: Samples,
}

impl Normal {
    fn merge(&mut self, other: Normal) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (k, v) in other.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.samples.extend(other.samples);
    }

    fn share(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.accepted as f64 / self.sent as f64
        }
    }
}

/// Counts of what the flood clients got back.
#[derive(Default)]
struct FloodCounts {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    cut_off: AtomicU64,
    body_bytes_sent: AtomicU64,
}

/// One normal client: signed deliveries one after another until `deadline`.
async fn normal_client(
    address: String,
    payload: Arc<String>,
    signature: Arc<String>,
    next_delivery: Arc<AtomicU64>,
    deadline: Instant,
) -> Normal {
    let mut out = Normal::default();
    let mut conn: Option<Connection> = None;
    while Instant::now() < deadline {
        let delivery = format!("normal-{}", next_delivery.fetch_add(1, Ordering::Relaxed));
        let headers = [
            ("User-Agent", "GitHub-Hookshot/bench"),
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", delivery.as_str()),
            ("Content-Type", "application/json"),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        out.sent += 1;
        let started = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.post(PATH, &headers, payload.as_bytes()).await,
            None => match Connection::open(&address).await {
                Ok(c) => {
                    conn.insert(c)
                        .post(PATH, &headers, payload.as_bytes())
                        .await
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(200) => {
                out.accepted += 1;
                out.samples.push(started.elapsed());
            }
            Ok(status) => {
                *out.refused.entry(status).or_default() += 1;
                // The server closes a connection whose body it did not read.
                conn = None;
            }
            Err(_) => {
                out.errors += 1;
                conn = None;
            }
        }
    }
    out
}

/// Reads a response head and returns its status.
async fn read_status(stream: &mut tokio::net::tcp::ReadHalf<'_>) -> anyhow::Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            return Ok(head.get(9..12).context("short status line")?.parse()?);
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One flood client: a fresh connection per upload (the server closes
/// connections it answers early), the answer read while the body is still
/// being written.
async fn flood_client(
    address: String,
    body: Arc<Vec<u8>>,
    next_delivery: Arc<AtomicU64>,
    counts: Arc<FloodCounts>,
) {
    let signature = dispatcher_sig::sign(b"not-the-secret", b"anything");
    loop {
        let delivery = format!("flood-{}", next_delivery.fetch_add(1, Ordering::Relaxed));
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\nUser-Agent: GitHub-Hookshot/flood\r\nX-GitHub-Event: pull_request\r\nX-GitHub-Delivery: {delivery}\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {signature}\r\n\r\n",
            body.len()
        );
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(mut stream) = TcpStream::connect(&address).await else {
            counts.cut_off.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (mut rd, mut wr) = stream.split();
        let sent = &counts.body_bytes_sent;
        let upload = async {
            wr.write_all(head.as_bytes()).await?;
            for chunk in body.chunks(256 * 1024) {
                wr.write_all(chunk).await?;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        };
        let status = tokio::select! {
            status = read_status(&mut rd) => status.ok(),
            uploaded = upload => match uploaded {
                Ok(()) => read_status(&mut rd).await.ok(),
                Err(_) => None,
            },
        };
        let counter = match status {
            Some(401) => &counts.unauthorized,
            Some(503) => &counts.busy,
            Some(_) => &counts.other,
            None => &counts.cut_off,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn normal_phase(
    address: &str,
    clients: usize,
    duration: Duration,
    payload: &Arc<String>,
    signature: &Arc<String>,
    next_delivery: &Arc<AtomicU64>,
) -> Normal {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(normal_client(
                address.to_owned(),
                Arc::clone(payload),
                Arc::clone(signature),
                Arc::clone(next_delivery),
                deadline,
            ))
        })
        .collect();
    let mut total = Normal::default();
    for t in tasks {
        if let Ok(n) = t.await {
            total.merge(n);
        }
    }
    total
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    dispatcher: &Path,
    server_url: &str,
    duration: Duration,
    flood_clients: usize,
    flood_mib: usize,
    normal_clients: usize,
    payload_kib: usize,
) -> anyhow::Result<String> {
    let db = BenchDb::create(server_url, "flood", dispatcher).await?;
    // Defaults for every limit under test (body limit 25 MiB, 128 MiB budget,
    // 1024 connections); no shutdown delay so the run ends promptly.
    let config = "security: {github_webhook_secret: \"${GITHUB_WEBHOOK_SECRET}\"}\nserver: {bind: 127.0.0.1, port: 0, shutdown_delay: 0s}\n";
    let service = Dispatcher::start(dispatcher, config, &db.url, &[]).await?;
    let address = service.url.trim_start_matches("http://").to_owned();

    let payload = Arc::new(pr_payload("bench/repo", 1, "opened", payload_kib * 1024));
    let signature = Arc::new(dispatcher_sig::sign(SECRET.as_bytes(), payload.as_bytes()));
    let next_delivery = Arc::new(AtomicU64::new(0));

    let mut baseline = normal_phase(
        &address,
        normal_clients,
        duration,
        &payload,
        &signature,
        &next_delivery,
    )
    .await;
    let baseline_rss = service.peak_rss();

    let flood_size = flood_mib * 1024 * 1024;
    let mut flood_body = Vec::with_capacity(flood_size);
    flood_body.extend_from_slice(b"{\"pad\":\"");
    flood_body.resize(flood_size - 2, b'x');
    flood_body.extend_from_slice(b"\"}");
    let flood_body = Arc::new(flood_body);
    let counts = Arc::new(FloodCounts::default());
    let flood_started = Instant::now();
    let flooders: Vec<_> = (0..flood_clients)
        .map(|_| {
            tokio::spawn(flood_client(
                address.clone(),
                Arc::clone(&flood_body),
                Arc::clone(&next_delivery),
                Arc::clone(&counts),
            ))
        })
        .collect();
    let mut flooded = normal_phase(
        &address,
        normal_clients,
        duration,
        &payload,
        &signature,
        &next_delivery,
    )
    .await;
    for f in &flooders {
        f.abort();
    }
    let flood_elapsed = flood_started.elapsed();
    let peak_rss = service.peak_rss();
    let stored: i64 = connect(&db.url)
        .await?
        .query_one(
            "SELECT count(*) FROM webhook_events WHERE delivery_id LIKE 'flood-%'",
            &[],
        )
        .await?
        .get(0);
    service.stop().await?;
    db.drop_now().await?;

    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::new();
    writeln!(
        out,
        "flood: {flood_clients} clients x {flood_mib} MiB bodies with wrong signatures + {normal_clients} clients of signed {payload_kib} KiB webhooks, {}s per phase",
        duration.as_secs()
    )?;
    for (name, n) in [
        ("baseline (normal clients alone)", &mut baseline),
        ("under flood", &mut flooded),
    ] {
        writeln!(
            out,
            "  {name:<32} accepted {:>6.2} % ({}/{})  {:>6.0} req/s  p50 {}  p99 {}  refused {:?}  errors {}",
            n.share() * 100.0,
            n.accepted,
            n.sent,
            n.accepted as f64 / duration.as_secs_f64(),
            ms(n.samples.percentile(50.0)),
            ms(n.samples.percentile(99.0)),
            n.refused,
            n.errors
        )?;
    }
    writeln!(
        out,
        "  flood uploads: {} started, {} answered 401, {} answered 503 (budget full), {} other, {} cut off; {} of bodies sent in {:.1}s; {stored} stored (must be 0)",
        load(&counts.requests),
        load(&counts.unauthorized),
        load(&counts.busy),
        load(&counts.other),
        load(&counts.cut_off),
        mib(load(&counts.body_bytes_sent)),
        flood_elapsed.as_secs_f64()
    )?;
    writeln!(
        out,
        "  share of normal webhooks accepted under flood: {:.2} % (target >= 99 %)",
        flooded.share() * 100.0
    )?;
    writeln!(
        out,
        "  normal p99 under flood / baseline: {:.2}x",
        flooded.samples.percentile(99.0).as_secs_f64()
            / baseline.samples.percentile(99.0).as_secs_f64().max(1e-9)
    )?;
    write!(
        out,
        "  dispatcher peak RSS: {} (baseline phase {}; target < max_buffered_bytes + 64 MiB = {})",
        mib(peak_rss),
        mib(baseline_rss),
        mib(MAX_BUFFERED_BYTES + 64 * 1024 * 1024)
    )?;
    Ok(out)
}
