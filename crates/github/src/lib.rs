//! # dispatcher-github
//!
//! Pull-request feedback on GitHub: the `<pipeline>/queued` label.
//!
//! **Owns:** the GitHub REST calls to add and remove issue labels
//! ([`GithubLabels`], implementing the `PrNotifier` port).
//!
//! **Must not:** decide when a label is wanted (that is the engine's label
//! reconciliation) or block dispatching: callers treat every error here as
//! "retry later".
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

use std::time::Duration;

use dispatcher_core::domain::PullRequestRef;
use dispatcher_core::ports::{NotifyError, PrNotifier};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

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
    token: String,
}

impl std::fmt::Debug for GithubLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubLabels")
            .field("api_url", &self.api_url)
            .field("token", &"***")
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
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            api_url: api_url.as_str().trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    fn labels_url(&self, pr: &PullRequestRef) -> Result<String, NotifyError> {
        let (owner, repo) = pr.repository.split_once('/').ok_or_else(|| {
            NotifyError(format!("repository '{}' is not owner/name", pr.repository))
        })?;
        Ok(format!(
            "{}/repos/{}/{}/issues/{}/labels",
            self.api_url,
            utf8_percent_encode(owner, SEGMENT),
            utf8_percent_encode(repo, SEGMENT),
            pr.number
        ))
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
    }
}

async fn check(
    response: Result<reqwest::Response, reqwest::Error>,
    ok_404: bool,
) -> Result<(), NotifyError> {
    let response = response.map_err(|e| NotifyError(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() || (ok_404 && status == reqwest::StatusCode::NOT_FOUND) {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect());
    Err(NotifyError(format!(
        "GitHub answered HTTP {}: {message}",
        status.as_u16()
    )))
}

impl PrNotifier for GithubLabels {
    async fn add_label(&self, pr: &PullRequestRef, label: &str) -> Result<(), NotifyError> {
        let url = self.labels_url(pr)?;
        let response = self
            .request(reqwest::Method::POST, url)
            .json(&serde_json::json!({"labels": [label]}))
            .send()
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
            self.request(reqwest::Method::DELETE, url).send().await,
            true,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dispatcher_fakes::FakeGithub;

    #[tokio::test(flavor = "multi_thread")]
    async fn adds_and_removes_labels_with_slashes() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let fake = FakeGithub::start("tok").await.unwrap();
        let github =
            GithubLabels::new(&fake.url().parse().unwrap(), "tok", Duration::from_secs(5)).unwrap();
        let pr = PullRequestRef {
            repository: "o/r".into(),
            number: 7,
        };
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
        assert!(err.0.contains("502"), "{err}");
        let wrong = GithubLabels::new(&fake.url().parse().unwrap(), "nope", Duration::from_secs(5))
            .unwrap();
        let err = wrong.add_label(&pr, "x/queued").await.unwrap_err();
        assert!(
            err.0.contains("401") && err.0.contains("Bad credentials"),
            "{err}"
        );
        assert!(!format!("{wrong:?}").contains("nope"));
    }
}
