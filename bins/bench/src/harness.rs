//! Databases and the dispatcher process for a benchmark run.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) const SECRET: &str = "bench-secret";

/// A database created for one benchmark and dropped afterwards.
pub(crate) struct BenchDb {
    admin_url: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

/// Replaces the database of a `postgres://` URL.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, String::new()), |(b, q)| (b, format!("?{q}")));
    let start = base.find("://").map_or(0, |i| i + 3);
    let base = base[start..]
        .find('/')
        .map_or(base, |slash| &base[..start + slash]);
    format!("{base}/{database}{query}")
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

impl BenchDb {
    /// Creates `bench_<tag>_<pid>` and migrates it with `dispatcher migrate`.
    pub(crate) async fn create(
        server_url: &str,
        tag: &str,
        dispatcher: &Path,
    ) -> anyhow::Result<Self> {
        let admin_url = with_database(server_url, "postgres");
        let name = format!("bench_{tag}_{}", std::process::id());
        let admin = connect(&admin_url).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = with_database(server_url, &name);
        let dir = std::env::temp_dir().join(format!("dispatcher-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("migrate.yaml");
        std::fs::write(&config, "security: {verify_signatures: false}\n")?;
        let out = std::process::Command::new(dispatcher)
            .arg("migrate")
            .env("WEBHOOK_DISPATCHER_CONFIG", &config)
            .env("DATABASE_URL", &url)
            .output()
            .with_context(|| format!("running {}", dispatcher.display()))?;
        let _ = std::fs::remove_dir_all(&dir);
        if !out.status.success() {
            bail!(
                "dispatcher migrate failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }

    pub(crate) async fn drop_now(self) -> anyhow::Result<()> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

/// The dispatcher under test.
pub(crate) struct Dispatcher {
    child: Child,
    pub(crate) url: String,
    dir: PathBuf,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Dispatcher {
    /// Starts `serve` with `config` and waits for it to listen.
    pub(crate) async fn start(
        binary: &Path,
        config: &str,
        database_url: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        // One directory per process started: two dispatchers running at
        // once must not share a config file (a rewrite would reload the
        // other), and each directory goes when its dispatcher does.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dispatcher-bench-{}-run{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .env("WEBHOOK_DISPATCHER_CONFIG", &config_path)
            .env("DATABASE_URL", database_url)
            .env("GITHUB_WEBHOOK_SECRET", SECRET)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "warn,dispatcher::serve=info")
            .env("KUBECONFIG", dir.join("none"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Ok(workers) = std::env::var("BENCH_DISPATCHER_WORKERS") {
            cmd.env("TOKIO_WORKER_THREADS", workers);
        }
        // `BENCH_DISPATCHER_LOG=/path LOG=filter`: the dispatcher's log at
        // that level is kept in the file, to see where the time goes.
        let log_file = std::env::var_os("BENCH_DISPATCHER_LOG");
        if log_file.is_some() {
            cmd.env(
                "LOG_LEVEL",
                std::env::var("BENCH_DISPATCHER_LOG_LEVEL").unwrap_or_else(|_| "debug".into()),
            );
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let address = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("dispatcher exited before listening")
            };
            if line.contains("\"message\":\"listening\"") {
                let v: serde_json::Value = serde_json::from_str(&line)?;
                break v["address"].as_str().unwrap_or_default().to_owned();
            }
        };
        // Keep draining the log so the process never blocks on a full pipe.
        let mut keep = match log_file {
            Some(path) => Some(std::fs::File::create(path)?),
            None => None,
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = keep.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Ok(Self {
            child,
            url: format!("http://{address}"),
            dir,
        })
    }

    /// Waits until this replica is the active dispatcher and Kubernetes
    /// state is known for its `pools` pools (the readiness API).
    pub(crate) async fn wait_leading(&self, pools: usize) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
        loop {
            every.tick().await;
            let r: serde_json::Value = client
                .get(format!("{}/api/v1/status/ready", self.url))
                .send()
                .await?
                .json()
                .await?;
            let known = r["dispatcher"]["pools"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if r["dispatcher"]["role"] == "leader"
                && known.len() == pools
                && known.iter().all(|p| p["state"] == "known")
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("dispatcher never became ready: {r}");
            }
        }
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        self.child.wait().await?;
        Ok(())
    }
}

/// A ~`size`-byte `pull_request` payload shaped like GitHub's.
pub(crate) fn pr_payload(repo: &str, number: u64, action: &str, size: usize) -> String {
    let mut v = serde_json::json!({
        "action": action,
        "number": number,
        "pull_request": {
            "url": format!("https://api.github.com/repos/{repo}/pulls/{number}"),
            "number": number, "state": "open", "title": format!("operator foo (1.2.{number})"),
            "user": {"login": "contributor", "id": 1234, "type": "User"},
            "body": "",
            "head": {"ref": "feature", "sha": "0123456789abcdef0123456789abcdef01234567"},
            "base": {"ref": "main", "sha": "89abcdef0123456789abcdef0123456789abcdef"},
            "draft": false, "labels": [], "commits": 1, "additions": 120, "deletions": 3, "changed_files": 4,
        },
        "repository": {"id": 987654, "name": repo.split('/').nth(1).unwrap_or(repo), "full_name": repo, "private": false},
        "sender": {"login": "contributor", "id": 1234},
    });
    let filler = size.saturating_sub(v.to_string().len());
    v["pull_request"]["body"] =
        serde_json::Value::String("lorem ipsum ".repeat(filler / 12 + 1)[..filler].to_owned());
    v.to_string()
}

/// POSTs `payload` as a signed `pull_request` delivery `delivery` to the
/// dispatcher at `url`.
pub(crate) async fn post_webhook(
    client: &reqwest::Client,
    url: &str,
    delivery: &str,
    payload: String,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{url}/api/v1/webhooks/github-pipeline"))
        .header("User-Agent", "GitHub-Hookshot/bench")
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .header(
            "X-Hub-Signature-256",
            dispatcher_sig::sign(SECRET.as_bytes(), payload.as_bytes()),
        )
        .body(payload)
        .send()
        .await
}
