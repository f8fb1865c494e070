//! Failover: two replicas, the active one frozen with SIGSTOP (a hung node, a
//! partition); how long until the standby triggers a delivery that arrived
//! right after the freeze. Baseline: the same delivery path with a healthy
//! leader, measured in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dispatcher_fakes::{FakeEventListener, FakeKube, TektonMode};

use crate::harness::{BenchDb, Dispatcher, SECRET, post_webhook, pr_payload};
use crate::stats::{Samples, ms};

const PIPELINE: &str = "failover-pipeline";
const WAIT: Duration = Duration::from_secs(120);
/// `dispatch.failover_timeout` (the default).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);

/// `rounds` freezes, each on fresh replicas and a fresh database.
pub(crate) async fn run(
    dispatcher: &Path,
    server_url: &str,
    rounds: usize,
) -> anyhow::Result<String> {
    let mut failover = Samples::default();
    let mut healthy = Samples::default();
    for round in 0..rounds {
        let (h, f) = one_round(dispatcher, server_url, round).await?;
        healthy.push(h);
        failover.push(f);
    }
    let target = FAILOVER_TIMEOUT + Duration::from_secs(2);
    let worst = failover.percentile(100.0);
    let mut out = String::new();
    writeln!(
        out,
        "failover: SIGSTOP of the active replica -> the standby's first trigger, {rounds} rounds (failover_timeout {}s)",
        FAILOVER_TIMEOUT.as_secs()
    )?;
    writeln!(
        out,
        "  frozen leader: p50 {}  max {}  (target < {} ms) {}",
        ms(failover.percentile(50.0)),
        ms(worst),
        target.as_millis(),
        if worst < target { "OK" } else { "MISSED" }
    )?;
    writeln!(
        out,
        "  healthy leader (baseline): p50 {}  max {}",
        ms(healthy.percentile(50.0)),
        ms(healthy.percentile(100.0))
    )?;
    Ok(out)
}

async fn one_round(
    dispatcher: &Path,
    server_url: &str,
    round: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let kube = FakeKube::start().await?;
    let tekton = TektonMode {
        kube: kube.clone(),
        namespace: "ns".into(),
        pipeline: PIPELINE.into(),
        annotations: vec![],
        run_for: Some(Duration::from_millis(50)),
        dispatch_label: None,
    };
    let listener = FakeEventListener::start(Some(SECRET), Some(tekton)).await?;
    let dir = std::env::temp_dir().join(format!(
        "dispatcher-bench-failover-{}-{round}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kube.kubeconfig("ns"))?;
    let config = format!(
        r#"
dispatcher:
  items:
    - name: bench
      events: [opened]
      full_repository_name: bench/repo
      capacity: {{type: ocp_tekton, pipeline_name: {PIPELINE}, max_capacity: 10, namespace: ns}}
      callback_url: "{}"
security: {{github_webhook_secret: "${{GITHUB_WEBHOOK_SECRET}}"}}
server: {{bind: 127.0.0.1, port: 0}}
dispatch: {{failover_timeout: {}s}}
"#,
        listener.url(),
        FAILOVER_TIMEOUT.as_secs()
    );
    let db = BenchDb::create(server_url, &format!("failover{round}"), dispatcher).await?;
    let env = [("KUBECONFIG", kubeconfig.display().to_string())];
    let a = Dispatcher::start(dispatcher, &config, &db.url, &env).await?;
    let b = Dispatcher::start(dispatcher, &config, &db.url, &env).await?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let (leader, standby) = loop {
        if Instant::now() > deadline {
            bail!("no leader/standby pair with a known pool");
        }
        let (ra, rb) = (ready(&client, &a.url).await?, ready(&client, &b.url).await?);
        let known = |r: &serde_json::Value| r["dispatcher"]["pools"][0]["state"] == "known";
        match (role(&ra), role(&rb)) {
            ("leader", "standby") if known(&ra) && known(&rb) => break (a, b),
            ("standby", "leader") if known(&ra) && known(&rb) => break (b, a),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };

    // Baseline: a delivery to the standby, dispatched by the healthy leader.
    let sent = send(&client, &standby.url, 1).await?;
    arrived(&listener, 1).await?;
    let healthy = listener.accepted()[0].at.saturating_duration_since(sent);

    let pid = leader.pid().context("leader exited")?;
    signal(pid, "STOP")?;
    let frozen = Instant::now();
    send(&client, &standby.url, 2).await?;
    arrived(&listener, 2).await?;
    let failover = listener.accepted()[1].at.saturating_duration_since(frozen);
    signal(pid, "CONT")?;

    leader.stop().await?;
    standby.stop().await?;
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((healthy, failover))
}

fn role(r: &serde_json::Value) -> &str {
    r["dispatcher"]["role"].as_str().unwrap_or("")
}

async fn ready(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(client
        .get(format!("{url}/api/v1/status/ready"))
        .send()
        .await?
        .json()
        .await?)
}

async fn send(client: &reqwest::Client, url: &str, pr: u64) -> anyhow::Result<Instant> {
    let payload = pr_payload("bench/repo", pr, "opened", 4 * 1024);
    let sent = Instant::now();
    let r = post_webhook(client, url, &format!("failover-{pr}"), payload).await?;
    if r.status() != reqwest::StatusCode::OK {
        bail!("webhook answered {}", r.status());
    }
    Ok(sent)
}

async fn arrived(listener: &FakeEventListener, n: usize) -> anyhow::Result<()> {
    if !listener.wait_until(WAIT, |l| l.accepted_count() >= n).await {
        bail!("trigger {n} never reached the listener");
    }
    Ok(())
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}
