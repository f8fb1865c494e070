//! Dispatch latency and queue drain, with the fakes standing in for Tekton.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dispatcher_fakes::{FakeEventListener, FakeKube, TektonMode};

use crate::harness::{BenchDb, Dispatcher, SECRET, post_webhook, pr_payload};
use crate::stats::{Samples, mib, ms};

const PIPELINE: &str = "bench-pipeline";
const WAIT: Duration = Duration::from_secs(120);

struct World {
    kube: FakeKube,
    listener: FakeEventListener,
    db: BenchDb,
    service: Dispatcher,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// Removed on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn world(
    dispatcher: &Path,
    server_url: &str,
    tag: &str,
    capacity: usize,
    run_for: Duration,
) -> anyhow::Result<World> {
    let kube = FakeKube::start().await?;
    let tekton = TektonMode {
        kube: kube.clone(),
        namespace: "ns".into(),
        pipeline: PIPELINE.into(),
        annotations: vec![],
        run_for: Some(run_for),
        dispatch_label: None,
    };
    let listener = FakeEventListener::start(Some(SECRET), Some(tekton)).await?;
    let dir = tempdir::Dir(
        std::env::temp_dir().join(format!("dispatcher-bench-{tag}-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig("ns"))?;
    let config = format!(
        r#"
dispatcher:
  items:
    - name: bench
      events: [opened]
      full_repository_name: bench/repo
      capacity: {{type: ocp_tekton, pipeline_name: {PIPELINE}, max_capacity: {capacity}, namespace: ns}}
      callback_url: "{}"
security: {{github_webhook_secret: "${{GITHUB_WEBHOOK_SECRET}}"}}
server: {{bind: 127.0.0.1, port: 0, shutdown_delay: 0s}}
"#,
        listener.url()
    );
    let db = BenchDb::create(server_url, tag, dispatcher).await?;
    let service = Dispatcher::start(
        dispatcher,
        &config,
        &db.url,
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    )
    .await?;
    // Wait for the first full PipelineRun list (the pool is unknown until then).
    service.wait_leading(1).await?;
    Ok(World {
        kube,
        listener,
        db,
        service,
        _dir: dir,
    })
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    n: u64,
    payload: &str,
) -> anyhow::Result<Instant> {
    let r = post_webhook(client, url, &format!("bench-{n}"), payload.to_owned()).await?;
    let at = Instant::now();
    if r.status() != reqwest::StatusCode::OK {
        bail!("webhook answered {}", r.status());
    }
    Ok(at)
}

/// Webhook 200 → listener POST, with free capacity.
pub(crate) async fn latency(
    dispatcher: &Path,
    server_url: &str,
    events: usize,
) -> anyhow::Result<String> {
    let w = world(
        dispatcher,
        server_url,
        "latency",
        events + 10,
        Duration::from_millis(5),
    )
    .await?;
    let client = reqwest::Client::new();

    // Baseline: the same client POSTing straight to the listener.
    let mut direct = Samples::default();
    let probe = pr_payload("bench/repo", 1, "opened", 25 * 1024);
    let baseline_listener = FakeEventListener::start(None, None).await?;
    for _ in 0..events {
        let t = Instant::now();
        client
            .post(baseline_listener.url())
            .body(probe.clone())
            .send()
            .await?;
        direct.push(t.elapsed());
    }

    let mut acked = Vec::with_capacity(events);
    for n in 0..events as u64 {
        let payload = pr_payload("bench/repo", n + 1, "opened", 25 * 1024);
        acked.push((n + 1, send(&client, &w.service.url, n, &payload).await?));
        // Wait for this event's POST before the next, so each sample is one event alone.
        let arrived = w
            .listener
            .wait_until(WAIT, |l| l.accepted_count() > n as usize)
            .await;
        if !arrived {
            bail!("event {n} never reached the listener");
        }
    }
    let mut samples = Samples::default();
    // Each body parsed once; a PR's first POST counts.
    let mut arrivals: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    for r in w.listener.accepted() {
        if let Some(pr) = r.json()["pull_request"]["number"].as_u64() {
            arrivals.entry(pr).or_insert(r.at);
        }
    }
    for (pr, at) in &acked {
        let arrived = arrivals.get(pr).context("dispatched event missing")?;
        // The listener may see the POST before the client has read its 200.
        samples.push(arrived.saturating_duration_since(*at));
    }
    let rss = w.service.peak_rss();
    w.service.stop().await?;
    w.db.drop_now().await?;
    drop(w.kube);

    let mut out = String::new();
    writeln!(
        out,
        "latency: webhook 200 -> EventListener POST, {} events, free capacity",
        samples.len()
    )?;
    writeln!(
        out,
        "  dispatcher: p50 {}  p99 {}  max {}  (target p50 < 20 ms, p99 < 100 ms)",
        ms(samples.percentile(50.0)),
        ms(samples.percentile(99.0)),
        ms(samples.percentile(100.0))
    )?;
    writeln!(
        out,
        "  baseline, one direct POST of the same payload: p50 {}  p99 {}",
        ms(direct.percentile(50.0)),
        ms(direct.percentile(99.0))
    )?;
    write!(out, "  dispatcher peak RSS: {}", mib(rss))?;
    Ok(out)
}

/// `prs` pull requests against `capacity`, runs lasting `run_for`.
pub(crate) async fn drain(
    dispatcher: &Path,
    server_url: &str,
    prs: usize,
    capacity: usize,
    run_for: Duration,
) -> anyhow::Result<String> {
    let w = world(dispatcher, server_url, "drain", capacity, run_for).await?;
    let client = reqwest::Client::new();
    let payloads: Vec<String> = (1..=prs as u64)
        .map(|n| pr_payload("bench/repo", n, "opened", 25 * 1024))
        .collect();
    let started = Instant::now();
    let sends: Vec<_> = payloads
        .into_iter()
        .enumerate()
        .map(|(n, payload)| {
            let client = client.clone();
            let url = w.service.url.clone();
            tokio::spawn(async move { send(&client, &url, n as u64, &payload).await })
        })
        .collect();
    for s in sends {
        s.await??;
    }
    let queued_in = started.elapsed();
    let done = w
        .kube
        .wait_until(WAIT, |k| {
            k.created(PIPELINE) == prs && k.unfinished(PIPELINE).is_empty()
        })
        .await;
    if !done {
        bail!(
            "queue did not drain: {} of {prs} runs created",
            w.kube.created(PIPELINE)
        );
    }
    let total = started.elapsed();
    let max_running = w.kube.max_unfinished(PIPELINE);
    let once = w.listener.accepted_count();
    let rss = w.service.peak_rss();
    w.service.stop().await?;
    w.db.drop_now().await?;

    let ideal = run_for * u32::try_from(prs.div_ceil(capacity))?;
    let mut out = String::new();
    writeln!(
        out,
        "drain: {prs} PRs, capacity {capacity}, runs of {}",
        ms(run_for)
    )?;
    writeln!(
        out,
        "  all stored after {}; last run finished after {}",
        ms(queued_in),
        ms(total)
    )?;
    writeln!(
        out,
        "  ideal ceil({prs}/{capacity}) x {} = {}",
        ms(run_for),
        ms(ideal)
    )?;
    writeln!(
        out,
        "  ratio to ideal: {:.3} (target <= 1.25)",
        total.as_secs_f64() / ideal.as_secs_f64()
    )?;
    writeln!(
        out,
        "  most runs at once: {max_running} (capacity {capacity}); triggers accepted: {once} (PRs {prs})"
    )?;
    write!(out, "  dispatcher peak RSS: {}", mib(rss))?;
    Ok(out)
}
