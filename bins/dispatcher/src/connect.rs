//! `dispatcher check-config --connect`: after the file, every peer the
//! service talks to, one line each (`✓`/`✗`/`-`), each check bounded by
//! [`CHECK_TIMEOUT`]. The checks live in the crates owning the peers; this
//! only runs them and prints. Nothing is triggered or written.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use dispatcher_core::config::Settings;

/// Longest time one check may take.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Prints one line per check; returns the number that failed.
pub(crate) async fn run(settings: &Settings, database_url: Option<&str>) -> usize {
    let mut report = Report::default();
    database(settings, database_url, &mut report).await;
    if settings.dev.simulate_tekton {
        report.skip("kubernetes: simulated in-process (dev.simulate_tekton), not checked");
        report.skip("eventlisteners: simulated in-process (dev.simulate_tekton), not checked");
    } else {
        kubernetes(settings, &mut report).await;
        event_listeners(settings, &mut report).await;
    }
    github(settings, &mut report).await;
    report.failed
}

#[derive(Default)]
struct Report {
    failed: usize,
}

#[allow(clippy::print_stdout)] // the command's output
impl Report {
    fn ok(&mut self, line: &str) {
        println!("✓ {line}");
    }
    fn fail(&mut self, line: &str) {
        self.failed += 1;
        println!("✗ {line}");
    }
    fn skip(&mut self, line: &str) {
        println!("- {line}");
    }
}

async fn bounded<T, E: std::fmt::Display>(
    check: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

async fn database(settings: &Settings, url: Option<&str>, report: &mut Report) {
    let Some(url) = url else {
        report.fail(
            "database: not configured (DATABASE_URL, the POSTGRESQL_* variables or database.url)",
        );
        return;
    };
    let options = crate::options::connection(settings);
    match bounded(dispatcher_store::probe(url, &options)).await {
        Ok(db) => {
            let version = db.server_version.split_whitespace().next().unwrap_or("?");
            let tls = if db.tls { "TLS on" } else { "TLS off" };
            let pending = db.pending_migrations.len();
            if pending > 0 && !settings.database.migrate_on_start {
                report.fail(&format!(
                    "database: connected (PostgreSQL {version}, {tls}) but {pending} migration(s) pending and database.migrate_on_start is off: run `dispatcher migrate`"
                ));
            } else if pending > 0 {
                report.ok(&format!(
                    "database: connected (PostgreSQL {version}, {tls}, {pending} migration(s) to apply at start)"
                ));
            } else {
                report.ok(&format!(
                    "database: connected (PostgreSQL {version}, {tls}, schema up to date)"
                ));
            }
        }
        Err(e) => report.fail(&format!("database: cannot connect ({e})")),
    }
}

async fn kubernetes(settings: &Settings, report: &mut Report) {
    let namespaces: BTreeSet<&str> = settings
        .pools
        .values()
        .map(|p| p.namespace.as_str())
        .collect();
    if namespaces.is_empty() {
        return;
    }
    let client = match bounded(dispatcher_capacity::kube_client()).await {
        Ok(client) => client,
        Err(e) => {
            report.fail(&format!(
                "kubernetes: no client (in-cluster service account or KUBECONFIG): {e}"
            ));
            return;
        }
    };
    for namespace in namespaces {
        match bounded(dispatcher_capacity::pipelinerun_access(&client, namespace)).await {
            Ok(answers) => {
                let denied: Vec<&str> = answers
                    .iter()
                    .filter(|a| !a.allowed)
                    .map(|a| a.verb)
                    .collect();
                if denied.is_empty() {
                    report.ok(&format!(
                        "kubernetes {namespace}: can list and watch pipelineruns"
                    ));
                } else {
                    let reason = answers
                        .iter()
                        .find_map(|a| a.reason.clone())
                        .map_or_else(|| "forbidden".to_owned(), |r| format!("forbidden: {r}"));
                    report.fail(&format!(
                        "kubernetes {namespace}: cannot {} pipelineruns ({reason})",
                        denied.join(" or ")
                    ));
                }
            }
            Err(e) => report.fail(&format!(
                "kubernetes {namespace}: access review failed ({e})"
            )),
        }
        // Items that cancel runs also patch them there.
        let cancels = settings.items.iter().any(|i| {
            (i.cancel_superseded || i.cancel_on_close)
                && settings
                    .pools
                    .get(&i.pool)
                    .is_some_and(|p| p.namespace == namespace)
        });
        if cancels {
            let verbs = [dispatcher_capacity::CANCEL_VERB];
            match bounded(dispatcher_capacity::pipelinerun_verbs_access(
                &client, namespace, &verbs,
            ))
            .await
            {
                Ok(answers) if answers.iter().all(|a| a.allowed) => report.ok(&format!(
                    "kubernetes {namespace}: can patch pipelineruns (cancel_superseded / cancel_on_close)"
                )),
                Ok(answers) => {
                    let reason = answers
                        .iter()
                        .find_map(|a| a.reason.clone())
                        .map_or_else(|| "forbidden".to_owned(), |r| format!("forbidden: {r}"));
                    report.fail(&format!(
                        "kubernetes {namespace}: cannot patch pipelineruns, which cancel_superseded / cancel_on_close need ({reason}; deploy/kustomize/pool-cancel)"
                    ));
                }
                Err(e) => report.fail(&format!(
                    "kubernetes {namespace}: access review failed ({e})"
                )),
            }
        }
    }
}

async fn event_listeners(settings: &Settings, report: &mut Report) {
    let mut seen = BTreeSet::new();
    for item in &settings.items {
        let url = item.callback_url.as_str();
        if !seen.insert(url) {
            continue;
        }
        match bounded(dispatcher_capacity::probe_event_listener(
            url,
            CHECK_TIMEOUT,
        ))
        .await
        {
            Ok(status) => report.ok(&format!(
                "eventlistener {url} ({}): answers (HTTP {status} to GET)",
                item.name
            )),
            Err(e) => report.fail(&format!(
                "eventlistener {url} ({}): unreachable ({e})",
                item.name
            )),
        }
    }
}

async fn github(settings: &Settings, report: &mut Report) {
    let client = match crate::serve::github_client(settings, CHECK_TIMEOUT) {
        Ok(Some(client)) => client,
        Ok(None) => {
            report.skip("github: no token or app (GITHUB_TOKEN, github.token or github.app): the <pipeline>/queued labels are off");
            return;
        }
        Err(e) => {
            report.fail(&format!("github: cannot build a client ({e:#})"));
            return;
        }
    };
    let repositories: BTreeSet<&str> = settings
        .items
        .iter()
        .map(|i| i.repository.as_str())
        .collect();
    for repository in repositories {
        match bounded(client.repository_access(repository)).await {
            Ok(access) => {
                let granted = access
                    .permissions
                    .as_ref()
                    .map_or_else(|| "permissions not reported".to_owned(), |p| p.join(", "));
                match access.can_label() {
                    Some(false) => report.fail(&format!(
                        "github {repository}: token cannot label pull requests ({granted}; needs triage or more)"
                    )),
                    _ => report.ok(&format!(
                        "github {repository}: token has access ({granted})"
                    )),
                }
            }
            Err(e) => report.fail(&format!("github {repository}: {e}")),
        }
    }
    // The catch-up lists each hook's deliveries: one delivery, read only.
    for hook in settings.catch_up.iter().flat_map(|c| &c.hooks) {
        use dispatcher_core::catch_up::HookDeliveries as _;
        match bounded(client.list_deliveries(hook, 1, None)).await {
            Ok(_) => report.ok(&format!(
                "github hook {hook}: deliveries readable (github.catch_up)"
            )),
            Err(e) => report.fail(&format!(
                "github hook {hook}: cannot list deliveries (github.catch_up): {e}"
            )),
        }
    }
}
