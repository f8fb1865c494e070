//! # dispatcher-github
//!
//! Pull-request feedback on GitHub: the `<pipeline>/queued` label; and the
//! webhook deliveries API for the catch-up of missed deliveries
//! (`deliveries.rs`, implementing the `HookDeliveries` port).
//!
//! **Owns:** the GitHub REST calls to add and remove issue labels
//! ([`GithubLabels`], implementing the `PrNotifier` port).
//!
//! **Must not:** decide when a label is wanted (that is the engine's label
//! reconciliation) or block dispatching: callers treat every error here as
//! "retry later".
//!
//! Redirects are not followed (a 3xx is an ordinary failure), so the token
//! is only ever sent to the configured API. A rate-limited answer (403 or
//! 429 with `Retry-After`, or with `X-RateLimit-Remaining: 0` and
//! `X-RateLimit-Reset`; a bare 429 means one minute) is a [`NotifyError`]
//! whose `retry_at` says when GitHub may be called again.
//!
//! Authentication is a token or a GitHub App ([`GithubApp`]: a JWT signed
//! RS256 with the app's key is exchanged for installation tokens, cached
//! and replaced when less than five minutes remain or when GitHub answers
//! 401 to one, which is then retried once).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dispatcher_core::domain::PullRequestRef;
//! use dispatcher_core::ports::PrNotifier;
//!
//! let github = dispatcher_github::GithubLabels::new(
//!     &"https://api.github.com".parse()?, "ghp_token", std::time::Duration::from_secs(10))?;
//! let pr = PullRequestRef { repository: "o/r".into(), number: 7 };
//! github.add_label(&pr, "operator-hosted-pipeline/queued").await?;
//! # Ok(()) }
//! ```

mod app;
mod deliveries;
mod queue_status;

use std::time::Duration;

pub use app::{AppClock, AppKey, DEFAULT_REFRESH_MARGIN, GithubApp};
use app::{AppTokens, Auth};
pub use queue_status::{GithubQueueStatus, StatusKind, context};

use dispatcher_core::domain::PullRequestRef;
use dispatcher_core::ports::{NotifyError, PrNotifier};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use time::OffsetDateTime;

/// Characters escaped in a path segment (everything but unreserved ones).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// GitHub's issue-labels API.
#[derive(Clone)]
pub struct GithubLabels {
    http: reqwest::Client,
    api_url: String,
    /// Shared by every clone, so a rotated token (or the app's cached
    /// token) reaches the label worker.
    auth: Auth,
}

impl std::fmt::Debug for GithubLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubLabels")
            .field("api_url", &self.api_url)
            .field(
                "auth",
                &match &self.auth {
                    Auth::Token(_) => "token ***",
                    Auth::App(_) => "GitHub App",
                },
            )
            .finish()
    }
}

impl GithubLabels {
    /// A client for `api_url` (e.g. `https://api.github.com` or a GHES `/api/v3` base).
    pub fn new(
        api_url: &reqwest::Url,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Self::build(
            api_url,
            timeout,
            Auth::Token(std::sync::Arc::new(std::sync::RwLock::new(
                token.to_owned(),
            ))),
        )
    }

    /// A client acting as a GitHub App installation (`github.app`).
    pub fn with_app(
        api_url: &reqwest::Url,
        app: GithubApp,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let base = api_url.as_str().trim_end_matches('/');
        let tokens = AppTokens::new(app, base);
        Self::build(api_url, timeout, Auth::App(std::sync::Arc::new(tokens)))
    }

    fn build(
        api_url: &reqwest::Url,
        timeout: Duration,
        auth: Auth,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            // The token must never follow a redirect; a 3xx is an ordinary failure.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            api_url: api_url.as_str().trim_end_matches('/').to_owned(),
            auth,
        })
    }

    /// Uses `token` from the next request on, in this client and every
    /// clone of it (a rotated `GITHUB_TOKEN` without a restart). Returns
    /// false, changing nothing, for a client acting as a GitHub App.
    pub fn set_token(&self, token: &str) -> bool {
        let Auth::Token(current) = &self.auth else {
            return false;
        };
        match current.write() {
            Ok(mut current) => token.clone_into(&mut current),
            Err(poisoned) => token.clone_into(&mut poisoned.into_inner()),
        }
        true
    }

    /// Sends a request built by `build` with the current token. A 401 to
    /// an app's installation token drops it and retries once with a fresh one.
    async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, NotifyError> {
        let mut retried = false;
        loop {
            let token = self.auth.token(&self.http).await?;
            let response = build()
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| NotifyError::new(e.without_url().to_string()))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED
                && !retried
                && let Auth::App(app) = &self.auth
            {
                tracing::info!("GitHub refused the app's installation token; exchanging again");
                app.invalidate(&token).await;
                retried = true;
                continue;
            }
            return Ok(response);
        }
    }

    fn labels_url(&self, pr: &PullRequestRef) -> Result<String, NotifyError> {
        let (owner, repo) = pr.repository.split_once('/').ok_or_else(|| {
            NotifyError::new(format!("repository '{}' is not owner/name", pr.repository))
        })?;
        Ok(format!(
            "{}/repos/{}/{}/issues/{}/labels",
            self.api_url,
            utf8_percent_encode(owner, SEGMENT),
            utf8_percent_encode(repo, SEGMENT),
            pr.number
        ))
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    }

    /// `GET /repos/{owner}/{repo}` with the token (`dispatcher check-config
    /// --connect`): whether the token sees the repository and what it may do
    /// there. Changes nothing.
    pub async fn repository_access(&self, repository: &str) -> Result<RepositoryAccess, String> {
        let (owner, repo) = repository
            .split_once('/')
            .ok_or_else(|| format!("repository '{repository}' is not owner/name"))?;
        let url = format!(
            "{}/repos/{}/{}",
            self.api_url,
            utf8_percent_encode(owner, SEGMENT),
            utf8_percent_encode(repo, SEGMENT)
        );
        let response = self
            .send(|| self.request(reqwest::Method::GET, &url))
            .await
            .map_err(|e| e.message)?;
        if !response.status().is_success() {
            return Err(refusal(response).await.message);
        }
        let body = response.text().await.unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let permissions = json
            .get("permissions")
            .and_then(|p| p.as_object())
            .map(|p| {
                p.iter()
                    .filter(|(_, v)| v.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            });
        Ok(RepositoryAccess {
            full_name: json
                .get("full_name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(repository)
                .to_owned(),
            permissions,
        })
    }
}

/// What a token may do on one repository (`GET /repos/{owner}/{repo}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryAccess {
    /// The repository's name as GitHub spells it.
    pub full_name: String,
    /// The permissions granted (`pull`, `triage`, `push`, `maintain`,
    /// `admin`), when GitHub reports them (it does for user tokens).
    pub permissions: Option<Vec<String>>,
}

impl RepositoryAccess {
    /// Whether the token may label pull requests (`triage` or more); `None`
    /// when GitHub did not report permissions (app installation tokens).
    pub fn can_label(&self) -> Option<bool> {
        self.permissions.as_ref().map(|p| {
            p.iter()
                .any(|p| matches!(p.as_str(), "triage" | "push" | "maintain" | "admin"))
        })
    }
}

/// Fallback pause for a 429 without usable headers (GitHub's guidance: wait
/// at least a minute).
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);
/// Longest pause read from a header (larger values are bogus).
const MAX_HEADER_PAUSE: Duration = Duration::from_secs(86_400);

async fn check(
    response: Result<reqwest::Response, NotifyError>,
    ok_404: bool,
) -> Result<(), NotifyError> {
    let response = response?;
    let status = response.status();
    if status.is_success() || (ok_404 && status == reqwest::StatusCode::NOT_FOUND) {
        return Ok(());
    }
    Err(refusal(response).await)
}

/// The error of an answer that is not a success, with the rate limit's end.
pub(crate) async fn refusal(response: reqwest::Response) -> NotifyError {
    let status = response.status();
    let retry_at = rate_limit_end(status, response.headers(), OffsetDateTime::now_utc());
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let message = format!("GitHub answered HTTP {}: {message}", status.as_u16());
    match retry_at {
        Some(at) => NotifyError::rate_limited(message, at),
        None => NotifyError::new(message),
    }
}

/// When GitHub may be called again after a rate-limited answer, or `None`
/// when the answer is not a rate limit.
fn rate_limit_end(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    now: OffsetDateTime,
) -> Option<OffsetDateTime> {
    if status != reqwest::StatusCode::FORBIDDEN && status != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // Secondary rate limits: seconds to wait.
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(now + Duration::from_secs(secs).min(MAX_HEADER_PAUSE));
    }
    // Primary rate limit: the window's reset, in epoch seconds.
    let reset = header("x-ratelimit-reset")
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
    if let (Some("0"), Some(reset)) = (header("x-ratelimit-remaining"), reset) {
        return Some(reset.min(now + MAX_HEADER_PAUSE));
    }
    // A 403 without rate-limit headers is a permission problem, not a pause.
    (status == reqwest::StatusCode::TOO_MANY_REQUESTS).then(|| now + DEFAULT_RATE_LIMIT_PAUSE)
}

impl PrNotifier for GithubLabels {
    async fn add_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
        let url = self.labels_url(pr)?;
        let body = serde_json::json!({"labels": [label]});
        let response = self
            .send(|| self.request(reqwest::Method::POST, &url).json(&body))
            .await;
        check(response, false).await
    }

    async fn remove_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
        // A label that is not there (removed by the pipeline itself, or by a human) is success.
        let url = format!(
            "{}/{}",
            self.labels_url(pr)?,
            utf8_percent_encode(label, SEGMENT)
        );
        check(
            self.send(|| self.request(reqwest::Method::DELETE, &url))
                .await,
            true,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use std::sync::Mutex;

    use super::*;
    use dispatcher_core::labels::{LabelPacer, LabelReport};
    use dispatcher_core::ports::{Clock, LabelStore, LabelTask, StoreError};
    use dispatcher_fakes::{FakeApp, FakeGithub, FakeRedirect, RateLimit};

    fn client(url: &str, token: &str) -> GithubLabels {
        let _ = rustls::crypto::ring::default_provider().install_default();
        GithubLabels::new(&url.parse().unwrap(), token, Duration::from_secs(5)).unwrap()
    }

    fn pr() -> PullRequestRef {
        PullRequestRef {
            repository: "o/r".into(),
            number: 7,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_rotated_token_reaches_every_clone() {
        let fake = FakeGithub::start("new-token").await.unwrap();
        let github = client(&fake.url(), "old-token");
        let worker_copy = github.clone();
        assert!(worker_copy.add_label(&pr(), "p/queued").await.is_err());
        github.set_token("new-token");
        worker_copy.add_label(&pr(), "p/queued").await.unwrap();
        assert!(fake.labels("o/r", 7).contains("p/queued"));
    }

    const APP_ID: u64 = 4242;
    const INSTALLATION: u64 = 77;

    /// A fake GitHub trusting the test app, and a clock both sides share.
    async fn app_fake() -> FakeGithub {
        let pem = std::fs::read(dispatcher_fakes::fixtures::app_key_pkcs1()).unwrap();
        let app = FakeApp::from_private_key_pem(&pem, APP_ID, INSTALLATION).unwrap();
        FakeGithub::start_app(app).await.unwrap()
    }

    fn app_client(fake: &FakeGithub, key: &std::path::Path, clock: AppClock) -> GithubLabels {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut app = GithubApp::from_key_file(APP_ID, INSTALLATION, key).unwrap();
        app.clock = clock;
        GithubLabels::with_app(&fake.url().parse().unwrap(), app, Duration::from_secs(5)).unwrap()
    }

    /// A clock at real time plus an offset the test moves.
    fn shifted_clock() -> (AppClock, std::sync::Arc<Mutex<Duration>>) {
        let offset = std::sync::Arc::new(Mutex::new(Duration::ZERO));
        let read = std::sync::Arc::clone(&offset);
        (
            std::sync::Arc::new(move || OffsetDateTime::now_utc() + *read.lock().unwrap()),
            offset,
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_app_labels_with_one_cached_installation_token() {
        let fake = app_fake().await;
        for key in [
            dispatcher_fakes::fixtures::app_key_pkcs1(),
            dispatcher_fakes::fixtures::app_key_pkcs8(),
        ] {
            let (clock, _) = shifted_clock();
            let github = app_client(&fake, &key, clock);
            let before = fake.exchanges().len();
            for n in 0..5 {
                github
                    .add_label(&pr(), &format!("p{n}/queued"))
                    .await
                    .unwrap();
            }
            github.remove_label(&pr(), "p0/queued").await.unwrap();
            github.clone().add_label(&pr(), "q/queued").await.unwrap();
            assert_eq!(
                fake.exchanges().len(),
                before + 1,
                "one exchange for many calls"
            );
            assert!(
                fake.exchanges()
                    .iter()
                    .all(|e| e.status == 201 && e.installation_id == "77")
            );
            assert!(
                !github.set_token("ignored"),
                "an app's client has no static token"
            );
            assert!(!format!("{github:?}").contains("ghs_"));
        }
        assert_eq!(fake.labels("o/r", 7).len(), 5);
        let access = app_client(
            &fake,
            &dispatcher_fakes::fixtures::app_key_pkcs1(),
            shifted_clock().0,
        )
        .repository_access("o/r")
        .await
        .unwrap();
        assert_eq!(access.full_name, "o/r");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_installation_token_is_replaced_before_it_expires() {
        let fake = app_fake().await;
        fake.set_token_lifetime(Duration::from_secs(20 * 60));
        let (clock, offset) = shifted_clock();
        let github = app_client(&fake, &dispatcher_fakes::fixtures::app_key_pkcs1(), clock);
        github.add_label(&pr(), "a/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 1);

        // 14 minutes later 6 remain: still more than the 5-minute margin.
        *offset.lock().unwrap() = Duration::from_secs(14 * 60);
        fake.advance_clock(Duration::from_secs(14 * 60));
        github.add_label(&pr(), "b/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 1);

        // 16 minutes after the exchange only 4 remain: a new token, while
        // the old one still works (no failed call on the way).
        *offset.lock().unwrap() = Duration::from_secs(16 * 60);
        fake.advance_clock(Duration::from_secs(2 * 60));
        github.add_label(&pr(), "c/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 2);
        assert!(
            fake.calls().iter().all(|c| c.status == 200),
            "{:?}",
            fake.calls()
        );

        // A token shorter-lived than the margin is exchanged for every call.
        fake.set_token_lifetime(Duration::from_secs(60));
        *offset.lock().unwrap() = Duration::from_secs(32 * 60);
        fake.advance_clock(Duration::from_secs(16 * 60));
        github.add_label(&pr(), "d/queued").await.unwrap();
        github.add_label(&pr(), "e/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 4);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_refused_installation_token_is_exchanged_again_once() {
        let fake = app_fake().await;
        let github = app_client(
            &fake,
            &dispatcher_fakes::fixtures::app_key_pkcs1(),
            shifted_clock().0,
        );
        github.add_label(&pr(), "a/queued").await.unwrap();
        fake.revoke_tokens();
        github.add_label(&pr(), "b/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 2);
        assert!(fake.labels("o/r", 7).contains("b/queued"));

        // A 401 to the fresh token too is an error after one retry, not a loop.
        fake.refuse_issued_tokens(true);
        let err = github.add_label(&pr(), "c/queued").await.unwrap_err();
        assert!(err.message.contains("HTTP 401"), "{err}");
        assert_eq!(fake.exchanges().len(), 3, "one re-exchange per call");
        fake.refuse_issued_tokens(false);
        github.add_label(&pr(), "c/queued").await.unwrap();
        assert_eq!(fake.exchanges().len(), 3, "the last token is kept");

        // An installation GitHub does not know is a clear error.
        let fake_static = FakeGithub::start("someone-else").await.unwrap();
        let err = app_client(
            &fake_static,
            &dispatcher_fakes::fixtures::app_key_pkcs1(),
            shifted_clock().0,
        )
        .add_label(&pr(), "c/queued")
        .await
        .unwrap_err();
        assert!(
            err.message.contains("token exchange") && err.message.contains("404"),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_fake_refuses_a_wrong_key_or_a_stale_jwt() {
        let fake = app_fake().await;
        let wrong = app_client(
            &fake,
            &dispatcher_fakes::fixtures::other_key_pkcs1(),
            shifted_clock().0,
        );
        let err = wrong.add_label(&pr(), "a/queued").await.unwrap_err();
        assert!(
            err.message.contains("HTTP 401") && err.message.contains("could not be decoded"),
            "{err}"
        );
        assert!(!err.message.contains("ey"), "no JWT in errors: {err}");

        // A JWT made 10 minutes ago has expired.
        let (clock, offset) = shifted_clock();
        let stale = app_client(&fake, &dispatcher_fakes::fixtures::app_key_pkcs1(), clock);
        fake.advance_clock(Duration::from_secs(10 * 60));
        let err = stale.add_label(&pr(), "a/queued").await.unwrap_err();
        assert!(err.message.contains("'exp'"), "{err}");
        // With both clocks agreeing it works.
        *offset.lock().unwrap() = Duration::from_secs(10 * 60);
        stale.add_label(&pr(), "a/queued").await.unwrap();
        let statuses: Vec<u16> = fake.exchanges().iter().map(|e| e.status).collect();
        assert_eq!(statuses, [401, 401, 201]);
        assert!(fake.calls().iter().all(|c| c.op == "add"));
        assert_eq!(fake.calls().len(), 1, "refused exchanges reach no label");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn repository_access_reports_permissions() {
        let fake = FakeGithub::start("tok").await.unwrap();
        let access = client(&fake.url(), "tok")
            .repository_access("o/r")
            .await
            .unwrap();
        assert_eq!(access.full_name, "o/r");
        assert_eq!(access.can_label(), Some(true));
        assert!(access.permissions.unwrap().contains(&"triage".to_owned()));
        let err = client(&fake.url(), "wrong")
            .repository_access("o/r")
            .await
            .unwrap_err();
        assert!(
            err.contains("401") && err.contains("Bad credentials"),
            "{err}"
        );
        let read_only = RepositoryAccess {
            full_name: "o/r".into(),
            permissions: Some(vec!["pull".into()]),
        };
        assert_eq!(read_only.can_label(), Some(false));
        assert!(fake.calls().is_empty(), "nothing labelled");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn adds_and_removes_labels_with_slashes() {
        let fake = FakeGithub::start("tok").await.unwrap();
        let github = client(&fake.url(), "tok");
        let pr = pr();
        github
            .add_label(&pr, "operator-hosted-pipeline/queued")
            .await
            .unwrap();
        assert!(
            fake.labels("o/r", 7)
                .contains("operator-hosted-pipeline/queued")
        );
        github
            .remove_label(&pr, "operator-hosted-pipeline/queued")
            .await
            .unwrap();
        assert!(fake.labels("o/r", 7).is_empty());
        github
            .remove_label(&pr, "operator-hosted-pipeline/queued")
            .await
            .unwrap();
        assert_eq!(
            fake.calls().last().map(|c| c.status),
            Some(404),
            "absent label is success"
        );

        fake.fail_next(1);
        let err = github.add_label(&pr, "x/queued").await.unwrap_err();
        assert!(err.message.contains("502"), "{err}");
        assert_eq!(err.retry_at, None);
        let wrong = client(&fake.url(), "nope");
        let err = wrong.add_label(&pr, "x/queued").await.unwrap_err();
        assert!(
            err.message.contains("401") && err.message.contains("Bad credentials"),
            "{err}"
        );
        assert!(!format!("{wrong:?}").contains("nope"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn redirects_are_not_followed() {
        let redirect = FakeRedirect::start().await.unwrap();
        let github = client(&redirect.url(), "tok");
        let err = github.add_label(&pr(), "x/queued").await.unwrap_err();
        assert!(err.message.contains("HTTP 307"), "{err}");
        let err = github.remove_label(&pr(), "x/queued").await.unwrap_err();
        assert!(err.message.contains("HTTP 307"), "{err}");
        assert_eq!(redirect.redirected(), 2);
        assert_eq!(
            redirect.target_hits(),
            0,
            "the token never follows a redirect"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rate_limits_carry_the_time_to_retry() {
        let fake = FakeGithub::start("tok").await.unwrap();
        let github = client(&fake.url(), "tok");

        // Primary rate limit: reset time in epoch seconds.
        let reset = OffsetDateTime::now_utc().unix_timestamp() + 1800;
        fake.rate_limit_next(1, RateLimit::Exhausted { status: 403, reset });
        let err = github.add_label(&pr(), "x/queued").await.unwrap_err();
        assert_eq!(
            err.retry_at,
            Some(OffsetDateTime::from_unix_timestamp(reset).unwrap()),
            "{err}"
        );
        assert!(err.message.contains("403"), "{err}");

        // Secondary rate limit: seconds to wait.
        let before = OffsetDateTime::now_utc();
        fake.rate_limit_next(
            1,
            RateLimit::RetryAfter {
                status: 429,
                seconds: 90,
            },
        );
        let err = github.remove_label(&pr(), "x/queued").await.unwrap_err();
        let after = OffsetDateTime::now_utc();
        let at = err
            .retry_at
            .unwrap_or_else(|| panic!("not a rate limit: {err}"));
        let wait = Duration::from_secs(90);
        assert!(
            at >= before + wait && at <= after + wait,
            "{at} vs {before}..{after}"
        );

        // A 403 without rate-limit headers is a refusal, not a pause.
        assert_eq!(
            rate_limit_end(
                reqwest::StatusCode::FORBIDDEN,
                &reqwest::header::HeaderMap::new(),
                before
            ),
            None
        );
        assert_eq!(
            rate_limit_end(
                reqwest::StatusCode::TOO_MANY_REQUESTS,
                &reqwest::header::HeaderMap::new(),
                before
            ),
            Some(before + DEFAULT_RATE_LIMIT_PAUSE)
        );
        let mut remaining = reqwest::header::HeaderMap::new();
        remaining.insert("x-ratelimit-remaining", "12".parse().unwrap());
        remaining.insert("x-ratelimit-reset", "1".parse().unwrap());
        assert_eq!(
            rate_limit_end(reqwest::StatusCode::FORBIDDEN, &remaining, before),
            None,
            "quota left: not a rate limit"
        );
    }

    struct ManualClock(Mutex<OffsetDateTime>);

    impl Clock for ManualClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    /// Label intents in memory: due until finished without error.
    struct Intents(Vec<LabelTask>);

    impl LabelStore for Intents {
        async fn due_label_tasks(
            &mut self,
            _now: OffsetDateTime,
            limit: usize,
        ) -> Result<Vec<LabelTask>, StoreError> {
            Ok(self.0.iter().take(limit).cloned().collect())
        }

        async fn finish_label_task(
            &mut self,
            task: &LabelTask,
            error: Option<String>,
            _retry_at: Option<OffsetDateTime>,
        ) -> Result<(), StoreError> {
            match error {
                None => self.0.retain(|t| t != task),
                Some(_) => {
                    for t in self.0.iter_mut().filter(|t| *t == task) {
                        t.attempts += 1;
                    }
                }
            }
            Ok(())
        }

        async fn next_label_retry(&mut self) -> Result<Option<OffsetDateTime>, StoreError> {
            Ok(None)
        }
    }

    fn intents(n: i64) -> Intents {
        Intents(
            (1..=n)
                .map(|number| LabelTask {
                    pr: PullRequestRef {
                        repository: "o/r".into(),
                        number,
                    },
                    label: "p/queued".into(),
                    wanted: true,
                    attempts: 0,
                })
                .collect(),
        )
    }

    /// Both header styles pause the label worker: no call reaches GitHub
    /// before the pause ends, however often a pass runs; then work resumes.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_rate_limit_pauses_the_label_worker() {
        let now = OffsetDateTime::now_utc();
        let styles = [
            RateLimit::RetryAfter {
                status: 403,
                seconds: 600,
            },
            RateLimit::Exhausted {
                status: 429,
                reset: now.unix_timestamp() + 600,
            },
        ];
        for style in styles {
            let fake = FakeGithub::start("tok").await.unwrap();
            let github = client(&fake.url(), "tok");
            let clock = ManualClock(Mutex::new(now));
            let mut store = intents(3);
            let mut pacer = LabelPacer::new();
            fake.rate_limit_next(1, style);

            let report = pacer.run_pass(&mut store, &github, &clock).await.unwrap();
            let until = report
                .paused_until
                .unwrap_or_else(|| panic!("{style:?}: no pause in {report:?}"));
            assert!(
                until >= now + Duration::from_secs(590),
                "{style:?}: {until}"
            );
            assert_eq!(report.next_retry, Some(until));
            assert_eq!(
                fake.calls().len(),
                1,
                "{style:?}: the pass stopped at the rate limit"
            );
            assert!(
                store.0.iter().all(|t| t.attempts == 0),
                "{style:?}: a rate limit is not the task's fault"
            );

            // Woken again and again during the pause: no call.
            for _ in 0..3 {
                let report = pacer.run_pass(&mut store, &github, &clock).await.unwrap();
                assert_eq!(
                    report,
                    LabelReport {
                        next_retry: Some(until),
                        paused_until: Some(until),
                        ..LabelReport::default()
                    }
                );
            }
            *clock.0.lock().unwrap() = until - Duration::from_secs(1);
            pacer.run_pass(&mut store, &github, &clock).await.unwrap();
            assert_eq!(fake.calls().len(), 1, "{style:?}: no call during the pause");

            *clock.0.lock().unwrap() = until;
            let report = pacer.run_pass(&mut store, &github, &clock).await.unwrap();
            assert_eq!(report.applied, 3, "{style:?}: {report:?}");
            assert_eq!(fake.calls().len(), 4);
            assert_eq!(fake.labels("o/r", 1).len(), 1);
        }
    }
}
