//! End-to-end: the dashboard in a real browser. Headless Chromium loads the
//! real binary's pages (scripts run: `--dump-dom` prints the DOM after
//! them), and the pages must show a full pool's queue in order and an
//! event's timeline; with read tokens configured the page must show no
//! data without one, and the data once the script has one. Screenshots go to `target/test-artifacts/dashboard/`.
//!
//! Chromium is required: without it these tests fail, unless
//! `DISPATCHER_SKIP_BROWSER_TESTS=1` (CI installs Debian's `chromium`, see
//! `.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::world::{World, WorldOptions};
use support::{Service, TempDir, http, send_pr};

/// The longest one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time the page gets to run its scripts: more than one refresh
/// (3 s), so a dump shows the script's work too.
const VIRTUAL_TIME_MS: &str = "4000";

/// The Chromium binary, or `None` when the tests are to be skipped.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("DISPATCHER_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
            eprintln!("chromium not found: browser test skipped (DISPATCHER_SKIP_BROWSER_TESTS=1)");
            return None;
        }
        panic!(
            "the dashboard's browser tests need Chromium, and no `chromium` (or \
             `chromium-browser`) is on PATH. Install it (Debian: `apt-get install \
             chromium`; .ci/run does) or set DISPATCHER_SKIP_BROWSER_TESTS=1 to skip them"
        );
    }
    found
}

/// `target/test-artifacts/dashboard/`, created.
fn artifacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"),
            Path::to_path_buf,
        )
        .join("test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `extra` arguments and a fresh
/// profile; returns its standard output. Killed (with its helpers: it runs
/// in a process group of its own) after [`CHROMIUM_TIMEOUT`].
async fn run_chromium(bin: &Path, url: &str, extra: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        // Root (CI containers) cannot use the sandbox.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        &format!("--user-data-dir={}", profile.0.display()),
        &format!("--virtual-time-budget={VIRTUAL_TIME_MS}"),
    ])
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn chromium");
    let pid = child.id().unwrap();
    match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.unwrap();
            assert!(
                output.status.success(),
                "chromium {url} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        }
        Err(_) => {
            // The group is the one this test started (its leader's pid).
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("chromium {url} did not finish within {CHROMIUM_TIMEOUT:?}: killed");
        }
    }
}

/// The DOM of `url` after its scripts ran.
async fn dom(bin: &Path, url: &str) -> String {
    run_chromium(bin, url, &["--dump-dom".to_owned()]).await
}

/// A 1280×900 screenshot of `url` into the artifacts directory.
async fn screenshot(bin: &Path, url: &str, name: &str) -> PathBuf {
    let file = artifacts().join(name);
    let _ = std::fs::remove_file(&file);
    run_chromium(
        bin,
        url,
        &[
            format!("--screenshot={}", file.display()),
            "--window-size=1280,900".to_owned(),
        ],
    )
    .await;
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "no screenshot of {url} at {}", file.display());
    eprintln!("screenshot: {}", file.display());
    file
}

/// Waits until the pools API shows one run and `queued` waiting.
async fn wait_queue(service: &Service, token: Option<&str>, queued: usize) {
    service
        .get_until_as("/api/v1/pools", token, |body| {
            let pool = &body["pools"][0];
            pool["running"] == 1 && pool["queued"] == queued
        })
        .await;
}

/// Three PRs into a pool of one: PR 1 runs, PRs 2 and 3 wait. Returns the event ids.
async fn three_prs(world: &World, service: &Service) -> Vec<String> {
    let mut ids = Vec::new();
    for pr in 1..=3 {
        let (status, body) = send_pr(&service.url, &format!("d{pr}"), "o/r", pr, "opened").await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    world.wait_dispatched(1).await;
    ids
}

/// The `(position, pr)` pairs of the queue rows in a DOM, in document order.
fn queue_rows(dom: &str) -> Vec<(u32, i64)> {
    dom.split(r#"<tr class="queued" "#)
        .skip(1)
        .map(|row| {
            let attr = |name: &str| {
                let start = row.find(&format!(r#"{name}=""#)).unwrap() + name.len() + 2;
                row[start..].split('"').next().unwrap().to_owned()
            };
            (
                attr("data-position").parse().unwrap(),
                attr("data-pr").parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_sees_the_queue_in_order_and_an_events_timeline() {
    let Some(chromium) = chromium() else { return };
    let world = World::with(WorldOptions {
        capacity: 1,
        ..WorldOptions::default()
    })
    .await;
    let service = world.replica().await;
    let ids = three_prs(&world, &service).await;
    wait_queue(&service, None, 2).await;

    let home = format!("{}/", service.url);
    let page = dom(&chromium, &home).await;
    assert_eq!(queue_rows(&page), [(1, 2), (2, 3)], "{page}");
    assert!(
        page.contains("o/r#2</a>") && page.contains("o/r#3</a>"),
        "{page}"
    );
    assert!(page.contains("1 running"), "{page}");
    assert!(page.contains("pool full"), "{page}");
    for id in &ids {
        assert!(
            page.contains(&format!(r#"href="/ui/events/{id}""#)),
            "{id}: {page}"
        );
    }
    // The script ran and refreshed the content from its fragment.
    assert!(page.contains(r#"id="refresh-status""#), "{page}");
    assert!(
        page.contains("updated "),
        "the script never refreshed the page: {page}"
    );

    let event = format!("{}/ui/events/{}", service.url, ids[2]);
    let page = dom(&chromium, &event).await;
    assert!(page.contains("<h3>Timeline</h3>"), "{page}");
    assert!(page.contains("received delivery d3"), "{page}");
    assert!(page.contains("queued for ops at position"), "{page}");
    assert!(page.contains("position <strong>2</strong> of 2"), "{page}");

    // The search: PR 2's event only, linked to its explanation.
    let search = format!("{}/ui/search?repository=o%2Fr&pr=2", service.url);
    let page = dom(&chromium, &search).await;
    assert!(
        page.contains(&format!(r#"data-event="{}""#, ids[1])),
        "{page}"
    );
    assert!(
        !page.contains(&format!(r#"data-event="{}""#, ids[2])),
        "{page}"
    );
    assert!(page.contains("1 found"), "{page}");

    screenshot(&chromium, &home, "dashboard.png").await;
    screenshot(&chromium, &event, "event.png").await;
    screenshot(&chromium, &search, "search.png").await;
}

/// Where dashboard.js keeps the read token (its `KEY`).
const TOKEN_KEY: &str = "webhook-dispatcher.read-token";

/// A same-origin stand-in for someone who typed a token into the form:
/// `/__token?token=T&next=/path` stores `T` in sessionStorage where the
/// dashboard's script keeps it and opens `next`; every other GET is
/// forwarded to the dispatcher with its `Authorization` header, so the
/// script's own fetches reach the real binary. (sessionStorage belongs to
/// an origin and a tab: this is the one way to hand a token to a headless
/// page without a DevTools client.)
struct TokenProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenProxy {
    async fn start(upstream: String) -> TokenProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(proxy_one(stream, upstream.clone()));
            }
        });
        TokenProxy { url, task }
    }
}

/// Serves one request (GET, no body) and closes the connection.
async fn proxy_one(mut stream: tokio::net::TcpStream, upstream: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let authorization = lines.find_map(|l| {
        l.split_once(':')
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_owned())
    });
    let (status, content_type, body) = if target.starts_with("/__token?") {
        let page = format!(
            "<!doctype html><script>const p = new URLSearchParams(location.search);\
             sessionStorage.setItem({key}, p.get('token')); location.replace(p.get('next'));</script>",
            key = Value::from(TOKEN_KEY)
        );
        (200, "text/html".to_owned(), page.into_bytes())
    } else {
        let mut request = http().get(format!("{upstream}{target}"));
        if let Some(a) = authorization {
            request = request.header("authorization", a);
        }
        let r = request.send().await.unwrap();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        (
            r.status().as_u16(),
            content_type,
            r.bytes().await.unwrap().to_vec(),
        )
    };
    let answer = format!(
        "HTTP/1.1 {status} -\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_read_tokens_the_page_shows_data_only_with_one() {
    let Some(chromium) = chromium() else { return };
    let world = World::with(WorldOptions {
        capacity: 1,
        extra_yaml: "api: {tokens: [\"reader-secret\"]}",
        ..WorldOptions::default()
    })
    .await;
    let service = world.replica().await;
    let ids = three_prs(&world, &service).await;
    wait_queue(&service, Some("reader-secret"), 2).await;

    for url in [
        format!("{}/", service.url),
        format!("{}/ui/events/{}", service.url, ids[2]),
    ] {
        let page = dom(&chromium, &url).await;
        assert!(!page.contains("o/r#"), "{url} shows a PR: {page}");
        assert!(!page.contains("ns/pipe"), "{url} shows the pool: {page}");
        assert!(
            !page.contains("queued for"),
            "{url} shows a timeline: {page}"
        );
        assert!(queue_rows(&page).is_empty(), "{page}");
        // The script found no token and shows the form.
        assert!(
            page.contains(r#"<form id="token-form" class="token">"#),
            "{url}: the token form is not shown: {page}"
        );
    }
    screenshot(&chromium, &format!("{}/", service.url), "locked.png").await;

    // The token as the form keeps it: the script fetches the data with it.
    let proxy = TokenProxy::start(service.url.clone()).await;
    let with_token =
        |token: &str, next: &str| format!("{}/__token?token={token}&next={next}", proxy.url);
    let page = dom(&chromium, &with_token("reader-secret", "/")).await;
    assert_eq!(queue_rows(&page), [(1, 2), (2, 3)], "{page}");
    assert!(page.contains(r#"data-locked="false""#), "{page}");
    assert!(
        page.contains(r#"<form id="token-form" class="token" hidden="">"#),
        "the form hides once the data is shown: {page}"
    );
    let event = format!("/ui/events/{}", ids[2]);
    let page = dom(&chromium, &with_token("reader-secret", &event)).await;
    assert!(page.contains("queued for ops at position"), "{page}");
    screenshot(&chromium, &with_token("reader-secret", "/"), "unlocked.png").await;

    // A wrong token is refused, forgotten, and the form asks again.
    let page = dom(&chromium, &with_token("wrong", "/")).await;
    assert!(page.contains("That token was refused."), "{page}");
    assert!(!page.contains("o/r#"), "{page}");
}
