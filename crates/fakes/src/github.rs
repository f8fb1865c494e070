//! A fake GitHub REST API for issue labels: add
//! (`POST /repos/{owner}/{repo}/issues/{n}/labels`) and remove
//! (`DELETE /repos/{owner}/{repo}/issues/{n}/labels/{name}`, 404 when absent),
//! and `GET /repos/{owner}/{repo}` (any repository, with `triage` permission).
//! It can answer rate limits the way GitHub does (primary: `X-RateLimit-*`
//! headers; secondary: `Retry-After`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use crate::observed::Observed;
use crate::server::{FakeRequest, FakeServer, json as json_response};

/// A rate-limited answer, as GitHub sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Secondary rate limit: `status` (403 or 429) with `Retry-After: seconds`.
    RetryAfter {
        /// HTTP status.
        status: u16,
        /// `Retry-After` seconds.
        seconds: u64,
    },
    /// Primary rate limit: `status` with `X-RateLimit-Remaining: 0` and
    /// `X-RateLimit-Reset: reset` (epoch seconds).
    Exhausted {
        /// HTTP status.
        status: u16,
        /// `X-RateLimit-Reset`, Unix epoch seconds.
        reset: i64,
    },
}

/// One label call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelCall {
    /// `add` or `remove`.
    pub op: &'static str,
    /// `owner/repo`.
    pub repo: String,
    /// Issue / PR number.
    pub number: i64,
    /// Label name.
    pub label: String,
    /// Status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    labels: BTreeMap<(String, i64), BTreeSet<String>>,
    calls: Vec<LabelCall>,
    fail_next: u32,
    rate_limit: Option<(u32, RateLimit)>,
}

#[derive(Debug)]
struct Inner {
    shared: Observed<State>,
    token: String,
}

/// The fake GitHub API. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeGithub {
    inner: Arc<Inner>,
    server: Arc<FakeServer>,
}

impl FakeGithub {
    /// Starts the fake; requests must carry `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            shared: Observed::new(State::default()),
            token: token.to_owned(),
        });
        let server = FakeServer::start_shared(Arc::clone(&inner), handle).await?;
        Ok(Self {
            inner,
            server: Arc::new(server),
        })
    }

    /// API base URL (`github.api_url`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.shared.lock()
    }

    /// Current labels of a pull request.
    pub fn labels(&self, repo: &str, number: i64) -> BTreeSet<String> {
        self.state()
            .labels
            .get(&(repo.to_owned(), number))
            .cloned()
            .unwrap_or_default()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<LabelCall> {
        self.state().calls.clone()
    }

    /// Answer the next `n` calls with 502.
    pub fn fail_next(&self, n: u32) {
        self.state().fail_next = n;
    }

    /// Answer the next `n` calls with `limit` (nothing changes; the calls are recorded).
    pub fn rate_limit_next(&self, n: u32, limit: RateLimit) {
        self.state().rate_limit = (n > 0).then_some((n, limit));
    }

    /// Puts a label on a PR directly (as a pipeline or a human would).
    pub fn set_label(&self, repo: &str, number: i64, label: &str, present: bool) {
        let mut s = self.state();
        let set = s.labels.entry((repo.to_owned(), number)).or_default();
        if present {
            set.insert(label.to_owned());
        } else {
            set.remove(label);
        }
        drop(s);
        self.inner.shared.changed();
    }

    /// Waits (without polling) until `predicate` holds, or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&FakeGithub) -> bool,
    ) -> bool {
        self.inner
            .shared
            .wait_until(timeout, || predicate(self))
            .await
    }
}

fn handle(inner: &Arc<Inner>, request: &FakeRequest) -> http::Response<crate::server::FakeBody> {
    let auth = request
        .parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", inner.token) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "Bad credentials"}),
        );
    }
    let path = request.parts.uri.path().to_owned();
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let parsed = match segments
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["repos", owner, repo] if request.parts.method == Method::GET => {
            return json_response(
                StatusCode::OK,
                &json!({
                    "full_name": format!("{owner}/{repo}"),
                    "permissions": {"admin": false, "maintain": false, "push": false, "triage": true, "pull": true}
                }),
            );
        }
        ["repos", owner, repo, "issues", n, "labels"] => n
            .parse::<i64>()
            .ok()
            .map(|n| (format!("{owner}/{repo}"), n, None)),
        ["repos", owner, repo, "issues", n, "labels", label] => n
            .parse::<i64>()
            .ok()
            .map(|n| (format!("{owner}/{repo}"), n, Some((*label).to_owned()))),
        _ => None,
    };
    let Some((repo, number, label)) = parsed else {
        return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}));
    };
    let mut s = inner.shared.lock();
    let limited = s.rate_limit.map(|(_, limit)| limit);
    s.rate_limit = s
        .rate_limit
        .and_then(|(n, limit)| (n > 1).then_some((n - 1, limit)));
    let failing = limited.is_none() && s.fail_next > 0;
    if limited.is_none() {
        s.fail_next = s.fail_next.saturating_sub(1);
    }
    let (op, names, status) = match (&request.parts.method, label) {
        (&Method::POST, None) => {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
            let names: Vec<String> = body["labels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(limit) = limited {
                ("add", names, limit.status())
            } else if failing {
                ("add", names, 502)
            } else {
                let set = s.labels.entry((repo.clone(), number)).or_default();
                set.extend(names.iter().cloned());
                ("add", names, 200)
            }
        }
        (&Method::DELETE, Some(label)) => {
            if let Some(limit) = limited {
                ("remove", vec![label], limit.status())
            } else if failing {
                ("remove", vec![label], 502)
            } else {
                let removed = s
                    .labels
                    .entry((repo.clone(), number))
                    .or_default()
                    .remove(&label);
                ("remove", vec![label], if removed { 200 } else { 404 })
            }
        }
        _ => {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": "Method not allowed"}),
            );
        }
    };
    for label in &names {
        s.calls.push(LabelCall {
            op,
            repo: repo.clone(),
            number,
            label: label.clone(),
            status,
        });
    }
    let current: Vec<serde_json::Value> = s
        .labels
        .get(&(repo, number))
        .map(|l| l.iter().map(|n| json!({"name": n})).collect())
        .unwrap_or_default();
    drop(s);
    inner.shared.changed();
    if let Some(limit) = limited {
        return limit.response();
    }
    match status {
        200 => json_response(StatusCode::OK, &json!(current)),
        404 => json_response(
            StatusCode::NOT_FOUND,
            &json!({"message": "Label does not exist"}),
        ),
        _ => json_response(StatusCode::BAD_GATEWAY, &json!({"message": "Server Error"})),
    }
}

impl RateLimit {
    fn status(self) -> u16 {
        match self {
            Self::RetryAfter { status, .. } | Self::Exhausted { status, .. } => status,
        }
    }

    fn response(self) -> http::Response<crate::server::FakeBody> {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::FORBIDDEN);
        let (message, headers) = match self {
            Self::RetryAfter { seconds, .. } => (
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                vec![("retry-after", seconds.to_string())],
            ),
            Self::Exhausted { reset, .. } => (
                "API rate limit exceeded for installation.",
                vec![
                    ("x-ratelimit-limit", "5000".to_owned()),
                    ("x-ratelimit-remaining", "0".to_owned()),
                    ("x-ratelimit-used", "5000".to_owned()),
                    ("x-ratelimit-reset", reset.to_string()),
                    ("x-ratelimit-resource", "core".to_owned()),
                ],
            ),
        };
        let mut r = json_response(
            status,
            &json!({"message": message, "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}),
        );
        for (name, value) in headers {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                r.headers_mut().insert(name, value);
            }
        }
        r
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
