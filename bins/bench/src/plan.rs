//! The dispatch pass at scale (`plan`): many pools, every one full, and a
//! deep queue. `repos` repositories × `items` items (one pool each, capacity
//! 1, one running PipelineRun in each); `prs` pull requests, each waiting in
//! the `items` pools of its repository, stored directly in the database
//! before the dispatcher starts (1,000 pools and 100,000 waiting dispatches
//! of 20,000 PRs by default). Measured from the dispatcher's own
//! `webhook_dispatcher_dispatch_pass_duration_seconds`:
//!
//! * an idle pass: a delivery for an unknown repository (aborted), nothing
//!   to dispatch;
//! * the passes after one run finishes: the one that triggers the freed
//!   pool's first PR and the one that records the EventListener's answer;
//! * intake rate while the queue is that deep;
//!
//! each against the same world with an empty queue, measured just before.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dispatcher_fakes::{FakeEventListener, FakeKube};

use crate::harness::{BenchDb, Dispatcher, connect, post_webhook};
use crate::stats::{mib, ms};

const NAMESPACE: &str = "bench";
const WAIT: Duration = Duration::from_secs(120);
/// Runs finished one at a time before the burst.
const FINISHED_ONE_BY_ONE: usize = 10;

/// The shape of the load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) repos: usize,
    pub(crate) items: usize,
    pub(crate) prs: usize,
}

impl Shape {
    fn pools(self) -> usize {
        self.repos * self.items
    }
}

struct World {
    kube: FakeKube,
    listener: FakeEventListener,
    db: BenchDb,
    service: Dispatcher,
    client: reqwest::Client,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pipeline(repo: usize, item: usize) -> String {
    format!("p-{repo}-{item}")
}

fn config(shape: Shape, callback: &str) -> String {
    let mut items = String::new();
    for r in 0..shape.repos {
        for k in 0..shape.items {
            let _ = writeln!(
                items,
                "    - {{name: item-{r}-{k}, events: [opened], full_repository_name: bench/repo-{r}, callback_url: \"{callback}\", \
                 capacity: {{type: ocp_tekton, pipeline_name: {}, max_capacity: 1, namespace: {NAMESPACE}}}}}",
                pipeline(r, k)
            );
        }
    }
    format!(
        "dispatcher:\n  items:\n{items}security: {{github_webhook_secret: \"${{GITHUB_WEBHOOK_SECRET}}\"}}\nserver: {{bind: 127.0.0.1, port: 0, shutdown_delay: 0s}}\n"
    )
}

/// `prs` queued events, each with a queued dispatch in every pool of its
/// repository, as the engine would have left them.
async fn fill_queue(url: &str, shape: Shape) -> anyhow::Result<()> {
    let db = connect(url).await?;
    db.execute(
        "INSERT INTO webhook_events (delivery_id, event_type, action, repository_full_name,
                                     pull_request_number, payload, headers, status, planned_at)
         SELECT 'seed-' || g, 'pull_request', 'opened', 'bench/repo-' || (g % $1), g,
                '{\"action\":\"opened\"}'::json, '[]'::jsonb, 'queued', now()
           FROM generate_series(1, $2::bigint) AS g",
        &[&(shape.repos as i64), &(shape.prs as i64)],
    )
    .await?;
    db.execute(
        "INSERT INTO dispatches (event_id, item_name, pool, queued_label, repository_full_name,
                                 pull_request_number, state, queue_position)
         SELECT e.id, 'item-' || (e.pull_request_number % $1) || '-' || k,
                'bench/p-' || (e.pull_request_number % $1) || '-' || k,
                'p-' || (e.pull_request_number % $1) || '-' || k || '/queued',
                e.repository_full_name, e.pull_request_number, 'queued', e.id
           FROM webhook_events e CROSS JOIN generate_series(0, $2::bigint - 1) AS k",
        &[&(shape.repos as i64), &(shape.items as i64)],
    )
    .await?;
    db.batch_execute("ANALYZE").await?;
    Ok(())
}

async fn world(
    dispatcher: &Path,
    server_url: &str,
    tag: &str,
    shape: Shape,
    queued: bool,
) -> anyhow::Result<World> {
    let kube = FakeKube::start().await?;
    for r in 0..shape.repos {
        for k in 0..shape.items {
            let p = pipeline(r, k);
            kube.create_run(NAMESPACE, &format!("run-{p}"), &p, None, &[]);
        }
    }
    // Accepts every trigger (202; the seeded events carry no signature to
    // check); no PipelineRun follows, the dispatch keeps its reservation.
    let listener = FakeEventListener::start(None, None).await?;
    let dir = TempDir(
        std::env::temp_dir().join(format!("dispatcher-bench-{tag}-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig(NAMESPACE))?;
    let db = BenchDb::create(server_url, tag, dispatcher).await?;
    if queued {
        fill_queue(&db.url, shape).await?;
    }
    let service = Dispatcher::start(
        dispatcher,
        &config(shape, &listener.url()),
        &db.url,
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    )
    .await?;
    service.wait_leading(shape.pools()).await?;
    let client = reqwest::Client::new();
    Ok(World {
        kube,
        listener,
        db,
        service,
        client,
        _dir: dir,
    })
}

impl World {
    /// `(count, sum)` of the pass duration histogram.
    async fn passes(&self) -> anyhow::Result<(f64, f64)> {
        let text = self
            .client
            .get(format!("{}/metrics", self.service.url))
            .send()
            .await?
            .text()
            .await?;
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((
            value("webhook_dispatcher_dispatch_pass_duration_seconds_count"),
            value("webhook_dispatcher_dispatch_pass_duration_seconds_sum"),
        ))
    }

    /// Waits until the pass count reaches `count`.
    async fn wait_passes(&self, count: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while self.passes().await?.0 < count {
            if Instant::now() > deadline {
                bail!("no pass finished");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Mean duration of the passes since `before`.
    async fn mean_since(&self, before: (f64, f64)) -> anyhow::Result<Duration> {
        let after = self.passes().await?;
        let count = (after.0 - before.0).max(1.0);
        Ok(Duration::from_secs_f64(
            (after.1 - before.1).max(0.0) / count,
        ))
    }

    /// A delivery no item matches: one idle pass.
    async fn send_unknown(&self, i: usize) -> anyhow::Result<()> {
        let n = i + 1; // PR numbers start at 1
        let payload = serde_json::json!({
            "action": "opened", "number": n,
            "pull_request": {"number": n}, "repository": {"full_name": "bench/unknown"},
        })
        .to_string();
        let delivery = format!("unknown-{n}-{}", std::process::id());
        let r = post_webhook(&self.client, &self.service.url, &delivery, payload).await?;
        if !r.status().is_success() {
            let status = r.status();
            bail!(
                "webhook answered {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Mean pass time of `n` idle passes, one at a time.
    async fn idle_passes(&self, n: usize) -> anyhow::Result<Duration> {
        // Let start-up passes settle first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = self.passes().await?;
        for i in 0..n {
            let count = self.passes().await?.0;
            self.send_unknown(i).await?;
            self.wait_passes(count + 1.0).await?;
        }
        self.mean_since(before).await
    }

    /// Mean pass time around finishing `n` runs, one at a time, each
    /// followed by its pool's next trigger and the pass recording its answer
    /// (when the queue is deep).
    async fn run_finished_passes(
        &self,
        shape: Shape,
        n: usize,
        queued: bool,
    ) -> anyhow::Result<Duration> {
        let before = self.passes().await?;
        for i in 0..n {
            let (r, k) = (i % shape.repos, (i / shape.repos) % shape.items);
            let p = pipeline(r, k);
            let accepted = self.listener.accepted_count();
            let count = self.passes().await?.0;
            self.kube
                .set_succeeded(NAMESPACE, &format!("run-{p}"), "True", "Succeeded");
            if queued {
                let deadline = Instant::now() + WAIT;
                while self.listener.accepted_count() <= accepted {
                    if Instant::now() > deadline {
                        bail!("no trigger after a run finished");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                self.wait_passes(count + 2.0).await?;
            } else {
                self.wait_passes(count + 1.0).await?;
            }
        }
        self.mean_since(before).await
    }

    /// Every run not finished yet finishes at once (`first` pools were
    /// already freed one by one): the time until each of those pools'
    /// next dispatch reached the EventListener.
    async fn burst(&self, shape: Shape, first: usize) -> anyhow::Result<(usize, Duration)> {
        let started = Instant::now();
        let (accepted, freed) = self.free_remaining(shape, first);
        self.wait_accepted(accepted + freed).await?;
        Ok((freed, started.elapsed()))
    }

    /// Finishes every run not finished yet; returns the listener's count
    /// before and how many pools were freed.
    fn free_remaining(&self, shape: Shape, first: usize) -> (usize, usize) {
        let accepted = self.listener.accepted_count();
        for i in first..shape.pools() {
            let (r, k) = (i % shape.repos, (i / shape.repos) % shape.items);
            self.kube.set_succeeded(
                NAMESPACE,
                &format!("run-{}", pipeline(r, k)),
                "True",
                "Succeeded",
            );
        }
        (accepted, shape.pools() - first)
    }

    /// Waits until the EventListener has accepted `count` triggers in all.
    async fn wait_accepted(&self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        while self.listener.accepted_count() < count {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {count} triggers after the runs finished",
                    self.listener.accepted_count()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Deliveries no item matches, `clients` at a time for `duration`: accepted per second.
    async fn intake_rate(&self, clients: usize, duration: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let client = self.client.clone();
            let url = self.service.url.clone();
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                let mut n = 0usize;
                while started.elapsed() < duration {
                    n += 1;
                    let payload = serde_json::json!({
                        "action": "opened", "number": n,
                        "pull_request": {"number": n}, "repository": {"full_name": format!("bench/other-{c}")},
                    })
                    .to_string();
                    let delivery = format!("rate-{c}-{n}");
                    let r = post_webhook(&client, &url, &delivery, payload).await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += t.await.context("intake client")?;
        }
        Ok(ok as f64 / started.elapsed().as_secs_f64())
    }
}

pub(crate) async fn run(
    dispatcher: &Path,
    server_url: &str,
    shape: Shape,
) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "plan: {} pools ({} repositories x {} items, capacity 1, all full), {} PRs waiting = {} queued dispatches",
        shape.pools(),
        shape.repos,
        shape.items,
        shape.prs,
        shape.prs * shape.items
    )?;
    let mut rows = Vec::new();
    let mut burst = None;
    for (tag, queued) in [("plan_empty", false), ("plan_deep", true)] {
        let started = Instant::now();
        let w = world(dispatcher, server_url, tag, shape, queued).await?;
        let ready_after = started.elapsed();
        eprintln!("plan: {tag} ready after {}", ms(ready_after));
        let idle = w.idle_passes(20).await?;
        eprintln!("plan: {tag} idle passes {}", ms(idle));
        let finished = w
            .run_finished_passes(shape, FINISHED_ONE_BY_ONE, queued)
            .await?;
        eprintln!("plan: {tag} passes after a run finished {}", ms(finished));
        let rate = w.intake_rate(16, Duration::from_secs(5)).await?;
        // Last: it changes the world (every pool then holds a reservation).
        if queued {
            let (freed, took) = w.burst(shape, FINISHED_ONE_BY_ONE).await?;
            burst = Some((freed, took));
            eprintln!(
                "plan: {tag} {freed} triggers after as many runs finished at once: {}",
                ms(took)
            );
        }
        let rss = w.service.peak_rss();
        rows.push((tag, ready_after, idle, finished, rate, rss));
        w.service.stop().await?;
        w.db.drop_now().await?;
        drop(w.kube);
    }
    for (tag, ready, idle, finished, rate, rss) in &rows {
        writeln!(
            out,
            "  {:<11} ready after {:>8}  idle pass {:>9}  pass after a run finished {:>9}  intake {:>6.0}/s  peak RSS {}",
            tag.trim_start_matches("plan_"),
            ms(*ready),
            ms(*idle),
            ms(*finished),
            rate,
            mib(*rss)
        )?;
    }
    let (empty, deep) = (&rows[0], &rows[1]);
    writeln!(
        out,
        "  deep queue: pass after a run finished {} (target < 50 ms), peak RSS {} (target < 128 MiB), intake {:.2} of the empty-queue rate (target >= 0.90)",
        ms(deep.3),
        mib(deep.5),
        deep.4 / empty.4
    )?;
    if let Some((freed, took)) = burst {
        writeln!(
            out,
            "  deep queue: {freed} runs finish at once -> {freed} triggers in {} = {:.0} triggers/s (sharding only below 1000/s)",
            ms(took),
            freed as f64 / took.as_secs_f64()
        )?;
    }
    Ok(out)
}

/// `plan --shards N`: a simulation of leadership per pool group. The same
/// load as one leader's (measured first, deep queue only) is split into `N`
/// worlds of a `1/N` share each (its repositories' pools and pull requests,
/// so every pool keeps its depth), each with its own dispatcher and
/// database on the same PostgreSQL server and the same cores, as `N` shard
/// leaders would run it. Reported: the pass after a run finished (per
/// shard) and the triggers per second when every pool is freed at once
/// (all shards together).
pub(crate) async fn run_shards(
    dispatcher: &Path,
    server_url: &str,
    shape: Shape,
    shards: usize,
) -> anyhow::Result<String> {
    if shards < 2 || !shape.repos.is_multiple_of(shards) || !shape.prs.is_multiple_of(shards) {
        bail!("--shards must be at least 2 and divide --repos and --prs");
    }
    let share = Shape {
        repos: shape.repos / shards,
        items: shape.items,
        prs: shape.prs / shards,
    };
    let mut out = String::new();
    writeln!(
        out,
        "plan --shards {shards}: {} pools and {} waiting dispatches, one leader vs {shards} shard leaders of {} pools and {} waiting each",
        shape.pools(),
        shape.prs * shape.items,
        share.pools(),
        share.prs * share.items
    )?;

    let mut worlds = Vec::new();
    for i in 0..shards {
        worlds.push(
            world(
                dispatcher,
                server_url,
                &format!("plan_shard{i}"),
                share,
                true,
            )
            .await?,
        );
    }
    let mut shard_pass = Duration::ZERO;
    for w in &worlds {
        shard_pass += w
            .run_finished_passes(share, FINISHED_ONE_BY_ONE, true)
            .await?;
    }
    let shard_pass = shard_pass / u32::try_from(shards).unwrap_or(1);
    // Every shard's pools freed at once, then each shard's triggers awaited.
    let started = Instant::now();
    let freeing: Vec<(usize, usize)> = worlds
        .iter()
        .map(|w| w.free_remaining(share, FINISHED_ONE_BY_ONE))
        .collect();
    for (w, (accepted, n)) in worlds.iter().zip(&freeing) {
        w.wait_accepted(accepted + n).await?;
    }
    let took = started.elapsed();
    let freed: usize = freeing.iter().map(|(_, n)| n).sum();
    for w in worlds {
        w.service.stop().await?;
        w.db.drop_now().await?;
        drop(w.kube);
    }
    let one = world(dispatcher, server_url, "plan_one", shape, true).await?;
    let one_pass = one
        .run_finished_passes(shape, FINISHED_ONE_BY_ONE, true)
        .await?;
    let (one_freed, one_took) = one.burst(shape, FINISHED_ONE_BY_ONE).await?;
    one.service.stop().await?;
    one.db.drop_now().await?;
    drop(one.kube);
    eprintln!("plan: one leader measured");

    let per_second = |n: usize, t: Duration| n as f64 / t.as_secs_f64();
    writeln!(
        out,
        "  1 leader    pass after a run finished {:>9}   every pool freed: {one_freed} triggers in {} = {:.0}/s",
        ms(one_pass),
        ms(one_took),
        per_second(one_freed, one_took)
    )?;
    writeln!(
        out,
        "  {shards} shards    pass after a run finished {:>9}   every pool freed: {freed} triggers in {} = {:.0}/s (all shards at once)",
        ms(shard_pass),
        ms(took),
        per_second(freed, took)
    )?;
    Ok(out)
}
