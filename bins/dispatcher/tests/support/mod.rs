//! Runs the real `dispatcher` binary against a per-test database and the
//! local fakes, and talks to it like GitHub and an operator would.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

pub mod openapi;
pub mod world;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const SECRET: &str = "e2e-secret";
/// Generous: the machines are shared and noisy. Tests wait on conditions, never on time.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running `dispatcher serve`.
pub struct Service {
    child: Child,
    pub url: String,
    /// The config file it runs with (rewrite it to test reloads).
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    log_tick: watch::Receiver<u64>,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dispatcher-e2e-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Service {
    /// Starts the binary with `config` (YAML) and extra environment (an
    /// empty value removes the variable), and waits for its "listening" log line.
    pub async fn start(config: &str, database_url: &str, env: &[(&str, String)]) -> Service {
        let dir = TempDir::new("svc");
        let config_path = dir.0.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WEBHOOK_DISPATCHER_CONFIG", &config_path)
            .env("DATABASE_URL", database_url)
            .env("GITHUB_WEBHOOK_SECRET", SECRET)
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "info,dispatcher_core=debug")
            .env("KUBECONFIG", dir.0.join("no-kubeconfig"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd.spawn().expect("spawn dispatcher");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tick_tx, log_tick) = watch::channel(0u64);
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("E2E_ECHO").is_some() {
                    eprintln!("[dispatcher] {line}");
                }
                sink.lock().unwrap().push(line);
                tick_tx.send_modify(|t| *t += 1);
            }
            tick_tx.send_modify(|t| *t += 1);
        });
        let mut service = Service {
            child,
            url: String::new(),
            config_path: config_path.clone(),
            logs,
            log_tick,
            _dir: dir,
        };
        let line = service
            .wait_log(|l| l.contains("\"message\":\"listening\""))
            .await
            .unwrap_or_else(|| panic!("dispatcher did not start:\n{}", service.logs().join("\n")));
        let v: Value = serde_json::from_str(&line).unwrap();
        service.url = format!("http://{}", v["address"].as_str().unwrap());
        service
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (on new log lines, not on time) for a line matching `pred`.
    pub async fn wait_log(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut tick = self.log_tick.clone();
        let logs = Arc::clone(&self.logs);
        tokio::time::timeout(WAIT, async {
            loop {
                tick.mark_unchanged();
                if let Some(l) = logs.lock().unwrap().iter().find(|l| pred(l)) {
                    return Some(l.clone());
                }
                if tick.changed().await.is_err() {
                    return logs.lock().unwrap().iter().find(|l| pred(l)).cloned();
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// `kill -9`.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    /// Waits for the process to exit.
    pub async fn terminate_wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().await.unwrap()
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, None).await
    }

    /// GET with a bearer token (a protected API).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = http().get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GETs `path` until `pred` holds for the JSON answer and returns it (a
    /// condition with a deadline: the API has no push channel to wait on).
    pub async fn get_until(&self, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.get_until_as(path, None, pred).await
    }

    /// [`Service::get_until`] with a bearer token.
    pub async fn get_until_as(
        &self,
        path: &str,
        token: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut every = tokio::time::interval(Duration::from_millis(20));
        loop {
            every.tick().await;
            let (_, body) = self.get_as(path, token).await;
            if pred(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} never matched; last: {body}"
            );
        }
    }

    /// `GET /metrics` as text (an open metrics endpoint).
    pub async fn metrics(&self) -> String {
        http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until event `id` (its UUID) matches `pred`; returns the event.
    pub async fn wait_event(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.get_until(&format!("/api/v1/events/{id}"), |b| pred(&b["event"]))
            .await["event"]
            .clone()
    }

    /// Role reported on /api/v1/status/ready.
    pub async fn role(&self) -> String {
        self.get("/api/v1/status/ready").await.1["dispatcher"]["role"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

pub fn http() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn pr_payload(repo: &str, number: i64, action: &str) -> String {
    pr_payload_labelled(repo, number, action, &[])
}

/// [`pr_payload`] of a pull request carrying `labels` (GitHub's label objects).
pub fn pr_payload_labelled(repo: &str, number: i64, action: &str, labels: &[&str]) -> String {
    let mut pull_request = json!({"number": number, "title": format!("PR {number}"), "base": {"ref": "main"}, "head": {"sha": "abc"}});
    if !labels.is_empty() {
        pull_request["labels"] = labels
            .iter()
            .map(|l| json!({"name": l, "color": "ededed"}))
            .collect();
    }
    json!({
        "action": action,
        "number": number,
        "pull_request": pull_request,
        "repository": {"full_name": repo},
    })
    .to_string()
}

/// A signed GitHub delivery; `overrides` replace (or, with an empty value, remove) headers.
pub fn delivery_with(
    url: &str,
    delivery_id: &str,
    event: &str,
    body: &str,
    overrides: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    let signature = dispatcher_sig::sign(SECRET.as_bytes(), body.as_bytes());
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in [
        ("user-agent", "GitHub-Hookshot/e2e"),
        ("x-github-event", event),
        ("x-github-delivery", delivery_id),
        ("x-github-hook-id", "4242"),
        ("content-type", "application/json"),
        ("x-hub-signature-256", signature.as_str()),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    for (k, v) in overrides {
        let name: reqwest::header::HeaderName = k.parse().unwrap();
        if v.is_empty() {
            headers.remove(&name);
        } else {
            headers.insert(name, v.parse().unwrap());
        }
    }
    http()
        .post(format!("{url}/api/v1/webhooks/github-pipeline"))
        .headers(headers)
        .body(body.to_owned())
}

/// A signed GitHub delivery.
pub fn delivery(url: &str, delivery_id: &str, event: &str, body: &str) -> reqwest::RequestBuilder {
    delivery_with(url, delivery_id, event, body, &[])
}

/// Sends a PR event and returns (status, body).
pub async fn send_pr(
    url: &str,
    delivery_id: &str,
    repo: &str,
    number: i64,
    action: &str,
) -> (u16, Value) {
    let r = delivery(
        url,
        delivery_id,
        "pull_request",
        &pr_payload(repo, number, action),
    )
    .send()
    .await
    .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}
