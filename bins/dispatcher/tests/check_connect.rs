//! End-to-end: `dispatcher check-config --connect` against the fakes: every
//! peer answers (all ✓, exit 0, nothing triggered), then Kubernetes forbids
//! the pool's namespace and the GitHub token is wrong (✗ lines, exit 1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::SECRET;
use support::world::{GITHUB_TOKEN, World, WorldOptions};

async fn check_connect(world: &World, github_token: &str) -> (i32, String) {
    let config = world.dir.0.join("check.yaml");
    std::fs::write(&config, world.config()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatcher"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WEBHOOK_DISPATCHER_CONFIG", &config)
        .env("DATABASE_URL", world.db.url())
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env("GITHUB_TOKEN", github_token)
        .env("KUBECONFIG", world.dir.0.join("kubeconfig"))
        .args(["check-config", "--connect"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_peer_checked_with_one_line_each() {
    let world = World::new(2, None).await;

    let (code, stdout) = check_connect(&world, GITHUB_TOKEN).await;
    assert_eq!(code, 0, "{stdout}");
    let db = line(&stdout, "✓ database: connected (PostgreSQL ");
    assert!(db.contains("TLS off"), "{db}");
    line(&stdout, "✓ kubernetes ns: can list and watch pipelineruns");
    let listener = line(
        &stdout,
        &format!("✓ eventlistener {}", world.listener.url()),
    );
    assert!(listener.contains("answers (HTTP 405 to GET)"), "{listener}");
    let github = line(&stdout, "✓ github o/r: token has access (");
    assert!(github.contains("triage"), "{github}");
    assert!(!stdout.contains('✗'), "{stdout}");
    // One review per verb, and nothing triggered.
    let mut reviews = world.kube.access_reviews();
    reviews.sort();
    assert_eq!(
        reviews,
        [
            ("ns".into(), "list".into(), true),
            ("ns".into(), "watch".into(), true)
        ]
    );
    assert!(world.listener.accepted().is_empty());

    world.kube.forbid_namespace("ns", true);
    let (code, stdout) = check_connect(&world, "wrong-token").await;
    assert_eq!(code, 1, "{stdout}");
    line(&stdout, "✓ database: connected");
    let kube = line(
        &stdout,
        "✗ kubernetes ns: cannot list or watch pipelineruns (forbidden",
    );
    assert!(kube.contains("fake: forbidden in this namespace"), "{kube}");
    let github = line(&stdout, "✗ github o/r: ");
    assert!(github.contains("401"), "{github}");
    assert_eq!(stdout.matches('✗').count(), 2, "{stdout}");
}

/// With `github.app` the check exchanges the app's JWT for an installation
/// token and reads each repository with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_github_app_is_checked_through_its_installation_token() {
    let world = World::with(WorldOptions {
        github_app: true,
        ..WorldOptions::default()
    })
    .await;
    let (code, stdout) = check_connect(&world, "").await;
    assert_eq!(code, 0, "{stdout}");
    line(&stdout, "✓ github o/r: token has access (");
    assert_eq!(world.github.exchanges().len(), 1);

    world.github.refuse_issued_tokens(true);
    let (code, stdout) = check_connect(&world, "").await;
    assert_eq!(code, 1, "{stdout}");
    let github = line(&stdout, "✗ github o/r: ");
    assert!(github.contains("401"), "{github}");
    assert!(!stdout.contains("ghs_"), "no token printed: {stdout}");
}
