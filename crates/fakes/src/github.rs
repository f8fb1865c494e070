//! A fake GitHub REST API for issue labels: add
//! (`POST /repos/{owner}/{repo}/issues/{n}/labels`) and remove
//! (`DELETE /repos/{owner}/{repo}/issues/{n}/labels/{name}`, 404 when absent),
//! and `GET /repos/{owner}/{repo}` (any repository, with `triage` permission).
//! It can answer rate limits the way GitHub does (primary: `X-RateLimit-*`
//! headers; secondary: `Retry-After`).
//!
//! App mode ([`FakeGithub::start_app`]): `POST /app/installations/{id}/access_tokens`
//! checks the app's JWT (RS256 signature against the app's public key, `iss`,
//! `iat`, `exp`) and issues installation tokens with a configurable lifetime;
//! the label endpoints then accept those tokens until they expire. The fake's
//! clock can be moved forward ([`FakeGithub::advance_clock`]) so tests see
//! tokens expire without sleeping.
//!
//! Hook deliveries (`github/deliveries.rs`): listing, redelivery requests,
//! and the redeliveries themselves, signed, to a target URL.
//! Queue statuses: `POST /repos/{o}/{r}/check-runs` (answers the new run's
//! `id`), `PATCH /repos/{o}/{r}/check-runs/{id}` and
//! `POST /repos/{o}/{r}/statuses/{sha}` (state and the 140-character
//! description limit checked) are recorded in order
//! ([`FakeGithub::status_updates`], [`FakeGithub::latest_status`]). Unlike
//! GitHub, check runs are accepted from any authorised token.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use time::OffsetDateTime;

mod deliveries;

pub use deliveries::{FakeDelivery, RedeliveryRequest};

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

/// The GitHub App the fake trusts in app mode.
#[derive(Debug, Clone)]
pub struct FakeApp {
    /// The app's id (the JWT's `iss`).
    pub app_id: u64,
    /// The one installation tokens are issued for.
    pub installation_id: u64,
    /// The app's RSA public key, DER `RSAPublicKey` (PKCS#1).
    pub public_key: Vec<u8>,
    /// Lifetime of issued installation tokens (GitHub: one hour).
    pub token_lifetime: Duration,
}

impl FakeApp {
    /// The app whose private key is `pem` (PKCS#1 `RSA PRIVATE KEY` or
    /// PKCS#8 `PRIVATE KEY`); the fake keeps only the public half.
    pub fn from_private_key_pem(
        pem: &[u8],
        app_id: u64,
        installation_id: u64,
    ) -> Result<Self, String> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
        let pair = match &der {
            PrivateKeyDer::Pkcs1(k) => ring::rsa::KeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err("not an RSA private key".to_owned()),
        }
        .map_err(|e| e.to_string())?;
        use ring::signature::KeyPair as _;
        Ok(Self {
            app_id,
            installation_id,
            public_key: pair.public_key().as_ref().to_vec(),
            token_lifetime: Duration::from_secs(3600),
        })
    }
}

/// One `POST /app/installations/{id}/access_tokens`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExchange {
    /// The installation asked for.
    pub installation_id: String,
    /// Status answered (201 when a token was issued).
    pub status: u16,
    /// Why it was refused (the answer's message), if it was.
    pub refused: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    labels: BTreeMap<(String, i64), BTreeSet<String>>,
    calls: Vec<LabelCall>,
    fail_next: u32,
    rate_limit: Option<(u32, RateLimit)>,
    app: Option<FakeApp>,
    /// Issued installation tokens and when each expires (fake clock).
    issued: Vec<(String, OffsetDateTime)>,
    exchanges: Vec<TokenExchange>,
    clock_offset: Duration,
    refuse_issued: bool,
    /// Hook deliveries (`deliveries.rs`).
    deliveries: deliveries::Deliveries,
    /// Check runs and commit statuses (queue status).
    statuses: QueueStatuses,
}

impl State {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.clock_offset
    }
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
        Self::start_with(token, None).await
    }

    /// Starts the fake in app mode: requests must carry a token it issued
    /// to `app` (through `POST /app/installations/{id}/access_tokens`) that
    /// has not expired.
    pub async fn start_app(app: FakeApp) -> std::io::Result<Self> {
        Self::start_with("", Some(app)).await
    }

    async fn start_with(token: &str, app: Option<FakeApp>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            shared: Observed::new(State {
                app,
                ..State::default()
            }),
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

    /// Every token exchange so far.
    pub fn exchanges(&self) -> Vec<TokenExchange> {
        self.state().exchanges.clone()
    }

    /// Lifetime of installation tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        if let Some(app) = &mut self.state().app {
            app.token_lifetime = lifetime;
        }
    }

    /// Moves the fake's clock forward (token expiry and JWT checks).
    pub fn advance_clock(&self, by: Duration) {
        self.state().clock_offset += by;
    }

    /// Revokes every issued installation token (GitHub answers 401 to them).
    pub fn revoke_tokens(&self) {
        self.state().issued.clear();
    }

    /// Answer 401 to every installation token, also those issued later
    /// (an app whose installation lost its access), or stop doing so.
    pub fn refuse_issued_tokens(&self, refuse: bool) {
        self.state().refuse_issued = refuse;
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
    let bearer = auth.strip_prefix("Bearer ").unwrap_or("");
    let path = request.parts.uri.path().to_owned();
    if let Some(installation) = path
        .strip_prefix("/app/installations/")
        .and_then(|rest| rest.strip_suffix("/access_tokens"))
        && request.parts.method == Method::POST
    {
        return exchange(inner, installation, bearer);
    }
    let authorised = {
        let s = inner.shared.lock();
        let now = s.now();
        (!inner.token.is_empty() && bearer == inner.token)
            || (!s.refuse_issued && s.issued.iter().any(|(t, exp)| t == bearer && *exp > now))
    };
    if !authorised {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"message": "Bad credentials"}),
        );
    }
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    if let Some(response) = deliveries::route(
        inner,
        request,
        &segments.iter().map(String::as_str).collect::<Vec<_>>(),
    ) {
        return response;
    }
    if let Some(answer) = queue_status_route(inner, request, &segments) {
        return answer;
    }
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

/// `POST /app/installations/{installation}/access_tokens` with the app's JWT.
fn exchange(
    inner: &Arc<Inner>,
    installation: &str,
    jwt: &str,
) -> http::Response<crate::server::FakeBody> {
    let mut s = inner.shared.lock();
    let now = s.now();
    let outcome = match &s.app {
        None => Err((StatusCode::NOT_FOUND, "Not Found".to_owned())),
        Some(app) => check_jwt(app, jwt, now)
            .map_err(|m| (StatusCode::UNAUTHORIZED, m))
            .and_then(|()| {
                if installation == app.installation_id.to_string() {
                    Ok(app.token_lifetime)
                } else {
                    Err((StatusCode::NOT_FOUND, "Not Found".to_owned()))
                }
            }),
    };
    let response = match outcome {
        Ok(lifetime) => {
            let token = format!("ghs_fake{:04}", s.issued.len() + 1);
            let expires_at = now + lifetime;
            s.issued.push((token.clone(), expires_at));
            s.exchanges.push(TokenExchange {
                installation_id: installation.to_owned(),
                status: 201,
                refused: None,
            });
            let expires_at = expires_at
                .replace_nanosecond(0)
                .unwrap_or(expires_at)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            json_response(
                StatusCode::CREATED,
                &json!({
                    "token": token,
                    "expires_at": expires_at,
                    "permissions": {"issues": "write", "pull_requests": "write", "metadata": "read"},
                    "repository_selection": "all"
                }),
            )
        }
        Err((status, message)) => {
            s.exchanges.push(TokenExchange {
                installation_id: installation.to_owned(),
                status: status.as_u16(),
                refused: Some(message.clone()),
            });
            json_response(
                status,
                &json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
            )
        }
    };
    drop(s);
    inner.shared.changed();
    response
}

/// GitHub's checks of an app JWT, with its messages.
fn check_jwt(app: &FakeApp, jwt: &str, now: OffsetDateTime) -> Result<(), String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    const UNDECODABLE: &str = "A JSON web token could not be decoded";
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(UNDECODABLE.to_owned());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| UNDECODABLE.to_owned())
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| UNDECODABLE.to_owned())?;
    if header["alg"] != "RS256" {
        return Err(UNDECODABLE.to_owned());
    }
    let signed_len = jwt.len() - signature.len() - 1;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &app.public_key,
    )
    .verify(&jwt.as_bytes()[..signed_len], &decode(signature)?)
    .map_err(|_| "A JSON web token could not be decoded".to_owned())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|_| UNDECODABLE.to_owned())?;
    let iss_ok = match &claims["iss"] {
        serde_json::Value::Number(n) => n.as_u64() == Some(app.app_id),
        serde_json::Value::String(s) => *s == app.app_id.to_string(),
        _ => false,
    };
    if !iss_ok {
        return Err("'Issuer' claim ('iss') must be an Integer".to_owned());
    }
    let now = now.unix_timestamp();
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(UNDECODABLE.to_owned());
    };
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires".to_owned());
    }
    if iat > now {
        return Err("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".to_owned());
    }
    if exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future".to_owned());
    }
    Ok(())
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

// ---- Queue status: check runs and commit statuses ----

/// One accepted check run or commit status write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate {
    /// `check_run` or `commit_status`.
    pub kind: &'static str,
    /// `owner/repo`.
    pub repo: String,
    /// The commit.
    pub sha: String,
    /// Check run name or status context.
    pub name: String,
    /// Commit status `state`, or the check run's `status` (`queued`,
    /// `in_progress`) or `completed/<conclusion>`.
    pub state: String,
    /// Commit status `description`, or the check run's `output.title`.
    pub text: String,
    /// The check run's id (check runs only).
    pub check_run: Option<i64>,
}

#[derive(Debug, Default)]
struct QueueStatuses {
    updates: Vec<StatusUpdate>,
    /// Check run id → (repo, sha, name).
    runs: BTreeMap<i64, (String, String, String)>,
}

impl FakeGithub {
    /// Every accepted check run and commit status write, in order.
    pub fn status_updates(&self) -> Vec<StatusUpdate> {
        self.state().statuses.updates.clone()
    }

    /// The latest check run or commit status named `name` on `sha`.
    pub fn latest_status(&self, repo: &str, sha: &str, name: &str) -> Option<StatusUpdate> {
        self.state()
            .statuses
            .updates
            .iter()
            .rev()
            .find(|u| u.repo == repo && u.sha == sha && u.name == name)
            .cloned()
    }
}

/// `POST /repos/{o}/{r}/statuses/{sha}`, `POST /repos/{o}/{r}/check-runs`,
/// `PATCH /repos/{o}/{r}/check-runs/{id}`; `None` for any other route.
fn queue_status_route(
    inner: &Arc<Inner>,
    request: &FakeRequest,
    segments: &[String],
) -> Option<http::Response<crate::server::FakeBody>> {
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = &request.parts.method;
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let check_state = |b: &serde_json::Value| match b["status"].as_str() {
        Some("completed") => format!("completed/{}", b["conclusion"].as_str().unwrap_or("")),
        Some(other) => other.to_owned(),
        None => "queued".to_owned(),
    };
    let bad = |m: &str| {
        Some(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"message": m}),
        ))
    };
    let answer = match (method, segs.as_slice()) {
        (&Method::POST, ["repos", owner, repo, "statuses", sha]) => {
            let state = text(&body["state"]);
            let description = text(&body["description"]);
            if !["pending", "success", "error", "failure"].contains(&state.as_str()) {
                return bad("state is not one of pending, success, error, failure");
            }
            if description.chars().count() > 140 {
                return bad("description is too long (maximum is 140 characters)");
            }
            let update = StatusUpdate {
                kind: "commit_status",
                repo: format!("{owner}/{repo}"),
                sha: (*sha).to_owned(),
                name: text(&body["context"]),
                state,
                text: description,
                check_run: None,
            };
            inner.shared.lock().statuses.updates.push(update);
            json_response(StatusCode::CREATED, &json!({"state": body["state"]}))
        }
        (&Method::POST, ["repos", owner, repo, "check-runs"]) => {
            let (name, sha) = (text(&body["name"]), text(&body["head_sha"]));
            if name.is_empty() || sha.is_empty() {
                return bad("name and head_sha are required");
            }
            let mut s = inner.shared.lock();
            let id = i64::try_from(s.statuses.runs.len()).unwrap_or_default() + 1;
            let repo = format!("{owner}/{repo}");
            s.statuses
                .runs
                .insert(id, (repo.clone(), sha.clone(), name.clone()));
            s.statuses.updates.push(StatusUpdate {
                kind: "check_run",
                repo,
                sha,
                name,
                state: check_state(&body),
                text: text(&body["output"]["title"]),
                check_run: Some(id),
            });
            json_response(StatusCode::CREATED, &json!({"id": id}))
        }
        (&Method::PATCH, ["repos", owner, repo, "check-runs", id]) => {
            let mut s = inner.shared.lock();
            let known = id.parse::<i64>().ok().and_then(|id| {
                s.statuses
                    .runs
                    .get(&id)
                    .filter(|(r, _, _)| *r == format!("{owner}/{repo}"))
                    .map(|run| (id, run.clone()))
            });
            let Some((id, (repo, sha, name))) = known else {
                return Some(json_response(
                    StatusCode::NOT_FOUND,
                    &json!({"message": "Not Found"}),
                ));
            };
            s.statuses.updates.push(StatusUpdate {
                kind: "check_run",
                repo,
                sha,
                name,
                state: check_state(&body),
                text: text(&body["output"]["title"]),
                check_run: Some(id),
            });
            json_response(StatusCode::OK, &json!({"id": id}))
        }
        _ => return None,
    };
    inner.shared.changed();
    Some(answer)
}
