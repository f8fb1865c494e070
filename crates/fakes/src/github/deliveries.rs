//! Hook deliveries of the fake GitHub (the catch-up of missed deliveries):
//! `GET /repos/{owner}/{repo}/hooks/{id}/deliveries` and
//! `GET /orgs/{org}/hooks/{id}/deliveries` (newest first, `per_page`,
//! `cursor` and a `Link: <…>; rel="next"` header), `GET …/deliveries/{id}`
//! (one, with its request's headers and payload), and
//! `POST …/deliveries/{delivery_id}/attempts` (202), which records the
//! request and redelivers: the stored payload is POSTed, signed
//! (`X-Hub-Signature-256`) with the target's secret and carrying the
//! original `X-GitHub-Delivery`, to the target set with
//! [`FakeGithub::set_delivery_target`] (held until one is set). Each
//! redelivery is listed afterwards as a new delivery of the same guid
//! (`redelivery: true`, the target's status code, 0 when unreachable).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use time::OffsetDateTime;

use super::{FakeGithub, Inner};
use crate::server::{FakeBody, FakeRequest, json as json_response};

/// A delivery a test registers: what GitHub tried to deliver and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeDelivery {
    /// `X-GitHub-Delivery`.
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's `action`, if any.
    pub action: Option<String>,
    /// The answer GitHub got (0: none, e.g. the dispatcher was down).
    pub status_code: u16,
    /// The JSON payload, redelivered byte for byte.
    pub payload: String,
    /// Headers sent besides GitHub's own (event, delivery, signature,
    /// content type, user agent).
    pub headers: Vec<(String, String)>,
    /// When GitHub delivered it (default: when registered).
    pub delivered_at: Option<OffsetDateTime>,
    /// Whether this attempt was a redelivery.
    pub redelivery: bool,
}

impl FakeDelivery {
    /// A `pull_request` delivery of `payload` that got `status_code`; the
    /// action is read from the payload.
    pub fn pull_request(guid: &str, payload: &str, status_code: u16) -> Self {
        let action = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v["action"].as_str().map(str::to_owned));
        Self {
            guid: guid.to_owned(),
            event: "pull_request".to_owned(),
            action,
            status_code,
            payload: payload.to_owned(),
            headers: Vec::new(),
            delivered_at: None,
            redelivery: false,
        }
    }
}

/// One `POST …/deliveries/{id}/attempts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeliveryRequest {
    /// The hook (`repos/o/r/hooks/1` or `orgs/o/hooks/2`).
    pub hook: String,
    /// The delivery id asked for.
    pub delivery_id: i64,
    /// Its guid (empty for an unknown id, answered 404).
    pub guid: String,
    /// The status the redelivery got from the target, once sent.
    pub answered: Option<u16>,
}

#[derive(Debug, Clone)]
struct Stored {
    id: i64,
    hook_id: u64,
    delivered_at: OffsetDateTime,
    delivery: FakeDelivery,
}

#[derive(Debug, Default)]
pub(super) struct Deliveries {
    /// Per hook key, in registration order.
    hooks: BTreeMap<String, Vec<Stored>>,
    last_id: i64,
    target: Option<(String, Vec<u8>)>,
    requests: Vec<RedeliveryRequest>,
    /// Indexes into `requests` waiting for a target.
    held: Vec<usize>,
    listings: u32,
    /// Answer every deliveries request with this status (a token without
    /// access to the hooks gets 404 from GitHub).
    fail_with: Option<u16>,
}

impl FakeGithub {
    /// Registers a delivery of `hook` (`repos/o/r/hooks/1` or
    /// `orgs/o/hooks/2`); returns its delivery id (increasing).
    pub fn add_delivery(&self, hook: &str, delivery: FakeDelivery) -> i64 {
        let mut s = self.state();
        let id = add(&mut s.deliveries, hook, delivery);
        drop(s);
        self.inner.shared.changed();
        id
    }

    /// Where redeliveries go (the dispatcher's webhook URL) and the secret
    /// they are signed with; redeliveries held until now are sent.
    pub fn set_delivery_target(&self, url: &str, secret: &str) {
        let held = {
            let mut s = self.state();
            s.deliveries.target = Some((url.to_owned(), secret.as_bytes().to_vec()));
            std::mem::take(&mut s.deliveries.held)
        };
        for index in held {
            send_later(Arc::clone(&self.inner), index);
        }
    }

    /// Every redelivery request so far.
    pub fn redelivery_requests(&self) -> Vec<RedeliveryRequest> {
        self.state().deliveries.requests.clone()
    }

    /// Answers every deliveries request with `status` from now on (`None`:
    /// normally again).
    pub fn fail_deliveries_with(&self, status: impl Into<Option<u16>>) {
        self.state().deliveries.fail_with = status.into();
    }

    /// How many deliveries listings (pages) were answered.
    pub fn delivery_listings(&self) -> u32 {
        self.state().deliveries.listings
    }
}

fn add(d: &mut Deliveries, hook: &str, delivery: FakeDelivery) -> i64 {
    d.last_id += 1;
    let hook_id = hook
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    let stored = Stored {
        id: d.last_id,
        hook_id,
        delivered_at: delivery
            .delivered_at
            .unwrap_or_else(OffsetDateTime::now_utc),
        delivery,
    };
    d.hooks.entry(hook.to_owned()).or_default().push(stored);
    d.last_id
}

/// Answers a deliveries request, or `None` for any other path.
pub(super) fn route(
    inner: &Arc<Inner>,
    request: &FakeRequest,
    segments: &[&str],
) -> Option<http::Response<FakeBody>> {
    let (hook, rest) = match segments {
        ["repos", owner, repo, "hooks", id, "deliveries", rest @ ..] => {
            (format!("repos/{owner}/{repo}/hooks/{id}"), rest)
        }
        ["orgs", org, "hooks", id, "deliveries", rest @ ..] => {
            (format!("orgs/{org}/hooks/{id}"), rest)
        }
        _ => return None,
    };
    {
        let mut s = inner.shared.lock();
        if let Some((n, limit)) = s.rate_limit {
            s.rate_limit = (n > 1).then_some((n - 1, limit));
            return Some(limit.response());
        }
        if let Some(status) = s.deliveries.fail_with {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
            return Some(json_response(
                status,
                &json!({"message": status.canonical_reason().unwrap_or("Error")}),
            ));
        }
    }
    Some(match (&request.parts.method, rest) {
        (&Method::GET, []) => list(inner, request, &hook),
        (&Method::GET, [id]) => get(inner, &hook, id),
        (&Method::POST, [id, "attempts"]) => match id.parse::<i64>() {
            Ok(id) => attempt(inner, &hook, id),
            Err(_) => json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"})),
        },
        _ => json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"})),
    })
}

fn list(inner: &Arc<Inner>, request: &FakeRequest, hook: &str) -> http::Response<FakeBody> {
    let query: BTreeMap<String, String> =
        url::form_urlencoded::parse(request.parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    // The cursor: list deliveries older than this id.
    let before = query
        .get("cursor")
        .and_then(|c| c.strip_prefix("before_"))
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(i64::MAX);
    let mut s = inner.shared.lock();
    s.deliveries.listings += 1;
    let mut all: Vec<&Stored> = s
        .deliveries
        .hooks
        .get(hook)
        .map(|v| v.iter().filter(|d| d.id < before).collect())
        .unwrap_or_default();
    all.sort_by_key(|d| std::cmp::Reverse(d.id));
    let more = all.len() > per_page;
    all.truncate(per_page);
    let body: Vec<serde_json::Value> = all.iter().map(|d| summary(d)).collect();
    let next = more.then(|| all.last().map(|d| d.id)).flatten();
    drop(s);
    inner.shared.changed();
    let mut response = json_response(StatusCode::OK, &json!(body));
    if let Some(next) = next {
        let host = request
            .parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let link = format!(
            "<http://{host}{}?per_page={per_page}&cursor=before_{next}>; rel=\"next\"",
            request.parts.uri.path()
        );
        if let Ok(value) = http::HeaderValue::from_str(&link) {
            response.headers_mut().insert(http::header::LINK, value);
        }
    }
    response
}

/// `GET …/deliveries/{id}`: one delivery with its request (headers and payload).
fn get(inner: &Arc<Inner>, hook: &str, id: &str) -> http::Response<FakeBody> {
    let s = inner.shared.lock();
    let found = id.parse::<i64>().ok().and_then(|id| {
        s.deliveries
            .hooks
            .get(hook)
            .and_then(|v| v.iter().find(|d| d.id == id))
    });
    let Some(d) = found else {
        return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}));
    };
    let mut headers = serde_json::Map::new();
    headers.insert("X-GitHub-Event".to_owned(), json!(d.delivery.event));
    headers.insert("X-GitHub-Delivery".to_owned(), json!(d.delivery.guid));
    for (name, value) in &d.delivery.headers {
        headers.insert(name.clone(), json!(value));
    }
    let mut body = summary(d);
    body["request"] = json!({
        "headers": headers,
        "payload": serde_json::from_str::<serde_json::Value>(&d.delivery.payload).unwrap_or_default(),
    });
    body["response"] = json!({"headers": {}, "payload": null});
    json_response(StatusCode::OK, &body)
}

/// A delivery as the list shows it.
fn summary(d: &Stored) -> serde_json::Value {
    json!({
        "id": d.id,
        "guid": d.delivery.guid,
        "delivered_at": d.delivered_at
            .replace_nanosecond(0)
            .unwrap_or(d.delivered_at)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "redelivery": d.delivery.redelivery,
        "duration": 0.05,
        "status": status_text(d.delivery.status_code),
        "status_code": d.delivery.status_code,
        "event": d.delivery.event,
        "action": d.delivery.action,
        "installation_id": null,
        "repository_id": 1,
        "throttled_at": null,
    })
}

fn status_text(code: u16) -> &'static str {
    match code {
        0 => "Invalid HTTP Response: 0",
        200..=299 => "OK",
        _ => "Invalid HTTP Response",
    }
}

fn attempt(inner: &Arc<Inner>, hook: &str, id: i64) -> http::Response<FakeBody> {
    let mut s = inner.shared.lock();
    let guid = s
        .deliveries
        .hooks
        .get(hook)
        .and_then(|v| v.iter().find(|d| d.id == id))
        .map(|d| d.delivery.guid.clone());
    s.deliveries.requests.push(RedeliveryRequest {
        hook: hook.to_owned(),
        delivery_id: id,
        guid: guid.clone().unwrap_or_default(),
        answered: None,
    });
    let index = s.deliveries.requests.len() - 1;
    let ready = guid.is_some() && s.deliveries.target.is_some();
    if guid.is_some() && !ready {
        s.deliveries.held.push(index);
    }
    drop(s);
    inner.shared.changed();
    if guid.is_none() {
        return json_response(StatusCode::NOT_FOUND, &json!({"message": "Not Found"}));
    }
    if ready {
        send_later(Arc::clone(inner), index);
    }
    json_response(StatusCode::ACCEPTED, &json!({}))
}

/// Sends request `index`'s redelivery in the background, then lists it as
/// a new delivery with the answer's status.
fn send_later(inner: Arc<Inner>, index: usize) {
    tokio::spawn(async move {
        let found = {
            let s = inner.shared.lock();
            let request = s.deliveries.requests.get(index).cloned();
            let target = s.deliveries.target.clone();
            request.and_then(|r| {
                let stored = s
                    .deliveries
                    .hooks
                    .get(&r.hook)?
                    .iter()
                    .find(|d| d.id == r.delivery_id)?
                    .clone();
                Some((r, stored, target?))
            })
        };
        let Some((request, stored, (url, secret))) = found else {
            return;
        };
        let status = post(&url, &secret, &stored).await.unwrap_or(0);
        let mut s = inner.shared.lock();
        if let Some(r) = s.deliveries.requests.get_mut(index) {
            r.answered = Some(status);
        }
        let redelivered = FakeDelivery {
            status_code: status,
            delivered_at: None,
            redelivery: true,
            ..stored.delivery
        };
        add(&mut s.deliveries, &request.hook, redelivered);
        drop(s);
        inner.shared.changed();
    });
}

/// POSTs a delivery the way GitHub does; the answer's status.
async fn post(url: &str, secret: &[u8], stored: &Stored) -> Option<u16> {
    let url = url::Url::parse(url).ok()?;
    let host = url.host_str()?.to_owned();
    let port = url.port_or_known_default()?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let driver = tokio::spawn(connection);
    let body = stored.delivery.payload.clone().into_bytes();
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(url.path())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::USER_AGENT, "GitHub-Hookshot/fake")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("X-GitHub-Event", &stored.delivery.event)
        .header("X-GitHub-Delivery", &stored.delivery.guid)
        .header("X-GitHub-Hook-ID", stored.hook_id.to_string())
        .header("X-Hub-Signature-256", dispatcher_sig::sign(secret, &body));
    for (name, value) in &stored.delivery.headers {
        request = request.header(name, value);
    }
    let request = request.body(Full::new(Bytes::from(body))).ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    driver.abort();
    Some(status)
}
