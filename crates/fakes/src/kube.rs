//! A fake Kubernetes API serving `tekton.dev` PipelineRuns: list and
//! `?watch=true` streaming with resourceVersions and label selectors, the way
//! kube-rs uses them. Tests create and finish runs, take the API down (503 to
//! everything) and bring it back, drop open watches, make watches expire
//! (410 Gone), read the requests served and the highest number of runs that
//! were ever unfinished at once. It also answers SelfSubjectAccessReviews
//! (allowed unless a namespace is forbidden) for `check-config --connect`,
//! and merge-patches of a PipelineRun: a cancel (`spec.status`) finishes the
//! run a moment later (`Succeeded=False`, reason `Cancelled`), as Tekton
//! does; patches can be refused on demand (403, 404, 409).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::observed::Observed;
use crate::server::{FakeBody, FakeRequest, FakeServer, json as json_response};

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    namespace: String,
    object: Value,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRequest {
    /// A watch (`?watch=true`) rather than a list.
    pub watch: bool,
    /// The `resourceVersion` parameter, if any.
    pub resource_version: Option<String>,
    /// HTTP status answered (a watch answered 200 may still carry an in-stream error).
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    rv: u64,
    /// (namespace, name) → object (without apiVersion; set per request).
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    down: bool,
    max_unfinished: HashMap<String, usize>,
    /// Unfinished runs per pipeline now (kept per change: recounting every
    /// object on each change made a burst of 1,000 changes quadratic).
    unfinished: HashMap<String, usize>,
    list_requests: u64,
    watch_requests: u64,
    requests: Vec<KubeRequest>,
    /// Bumped to end every open watch.
    watch_generation: u64,
    open_watches: usize,
    /// Watches still to answer with an in-stream 410 Gone.
    gone_next: u32,
    /// Requests wait unanswered while set.
    hold: bool,
    /// Requests received, held ones included.
    arrived: usize,
    /// Namespaces where SelfSubjectAccessReviews answer `allowed: false`.
    forbidden: std::collections::BTreeSet<String>,
    /// SelfSubjectAccessReviews answered: (namespace, verb, allowed).
    access_reviews: Vec<(String, String, bool)>,
    /// PATCHes of PipelineRuns answered: (namespace, name, merge patch, status).
    patches: Vec<(String, String, Value, u16)>,
    /// PATCHes still to refuse with this status (403, 404, 409...).
    refuse_patches: Vec<u16>,
    /// How long a cancelled run takes to finish (Tekton runs `finally` first).
    cancel_delay: Option<Duration>,
}

/// Notified on every change (new resourceVersion, or the API going up or down).
type Inner = Observed<State>;

/// The fake API server. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeKube {
    inner: Arc<Inner>,
    server: Arc<FakeServer>,
}

fn is_finished(obj: &Value) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == "Succeeded" && (c["status"] == "True" || c["status"] == "False")
            })
        })
}

fn labels_match(obj: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(k, v)| {
        obj.pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v)
    })
}

/// `a=b,c==d` (equality only, which is all the dispatcher sends).
fn parse_selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("==").or_else(|| p.split_once('='))?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

impl FakeKube {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Observed::new(State::default()));
        let handler_inner = Arc::clone(&inner);
        let server = FakeServer::start(move |r| {
            let inner = Arc::clone(&handler_inner);
            async move {
                inner.lock().arrived += 1;
                inner.changed();
                inner
                    .wait_until(Duration::from_secs(3600), || !inner.lock().hold)
                    .await;
                handle(&inner, &r)
            }
        })
        .await?;
        Ok(Self {
            inner,
            server: Arc::new(server),
        })
    }

    /// Base URL of the API.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A kubeconfig pointing at this server (for the real binary).
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.lock()
    }

    fn record(&self, state: &mut State, kind: &'static str, namespace: &str, object: Value) {
        record(&self.inner, state, kind, namespace, object);
    }

    /// PATCHes of PipelineRuns answered so far: (namespace, name, merge
    /// patch, HTTP status).
    pub fn patches(&self) -> Vec<(String, String, Value, u16)> {
        self.state().patches.clone()
    }

    /// Refuses the next PATCHes of PipelineRuns, one per status given (403,
    /// 404, 409...), before patching again.
    pub fn refuse_patches(&self, statuses: &[u16]) {
        self.state().refuse_patches.extend_from_slice(statuses);
    }

    /// How long a run whose `spec.status` is patched to a cancel value takes
    /// to finish (`Succeeded=False`, reason `Cancelled`); default 200 ms.
    pub fn set_cancel_delay(&self, delay: Duration) {
        self.state().cancel_delay = Some(delay);
    }

    /// SelfSubjectAccessReviews for `namespace` answer `allowed: false`
    /// (`forbidden`) or `true` (the default).
    pub fn forbid_namespace(&self, namespace: &str, forbidden: bool) {
        let mut state = self.state();
        if forbidden {
            state.forbidden.insert(namespace.to_owned());
        } else {
            state.forbidden.remove(namespace);
        }
    }

    /// SelfSubjectAccessReviews answered so far: (namespace, verb, allowed).
    pub fn access_reviews(&self) -> Vec<(String, String, bool)> {
        self.state().access_reviews.clone()
    }

    /// Creates an unfinished PipelineRun of `pipeline`.
    pub fn create_run(
        &self,
        namespace: &str,
        name: &str,
        pipeline: &str,
        event_id: Option<&str>,
        annotations: &[(&str, &str)],
    ) {
        let labels: Vec<(&str, &str)> = event_id
            .map(|id| ("triggers.tekton.dev/triggers-eventid", id))
            .into_iter()
            .collect();
        self.create_labelled_run(namespace, name, pipeline, &labels, annotations);
    }

    /// Creates an unfinished PipelineRun of `pipeline` with extra labels.
    pub fn create_labelled_run(
        &self,
        namespace: &str,
        name: &str,
        pipeline: &str,
        extra_labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) {
        let mut labels = json!({"tekton.dev/pipeline": pipeline});
        for (k, v) in extra_labels {
            labels[*k] = json!(v);
        }
        let created = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let object = json!({
            "kind": "PipelineRun",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations,
                         "uid": format!("uid-{name}"), "creationTimestamp": created},
            "spec": {"pipelineRef": {"name": pipeline}},
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]},
        });
        let mut state = self.state();
        self.record(&mut state, "ADDED", namespace, object);
    }

    /// Sets the `Succeeded` condition of a run (`"True"`, `"False"` or `"Unknown"`).
    pub fn set_succeeded(&self, namespace: &str, name: &str, status: &str, reason: &str) {
        let mut state = self.state();
        let Some(mut object) = state
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
        else {
            return;
        };
        object["status"] =
            json!({"conditions": [{"type": "Succeeded", "status": status, "reason": reason}]});
        self.record(&mut state, "MODIFIED", namespace, object);
    }

    /// Deletes a run.
    pub fn delete_run(&self, namespace: &str, name: &str) {
        let mut state = self.state();
        let Some(object) = state
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
        else {
            return;
        };
        self.record(&mut state, "DELETED", namespace, object);
    }

    /// Names of unfinished runs of `pipeline`, oldest first.
    pub fn unfinished(&self, pipeline: &str) -> Vec<String> {
        let state = self.state();
        let mut runs: Vec<(u64, String)> = state
            .objects
            .values()
            .filter(|o| {
                !is_finished(o)
                    && o.pointer("/metadata/labels/tekton.dev~1pipeline")
                        .and_then(Value::as_str)
                        == Some(pipeline)
            })
            .map(|o| {
                let created = state
                    .history
                    .iter()
                    .find(|c| {
                        c.kind == "ADDED" && c.object["metadata"]["name"] == o["metadata"]["name"]
                    })
                    .map_or(0, |c| c.rv);
                (
                    created,
                    o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        runs.sort();
        runs.into_iter().map(|(_, n)| n).collect()
    }

    /// The most runs of `pipeline` that were ever unfinished at the same time.
    pub fn max_unfinished(&self, pipeline: &str) -> usize {
        self.state()
            .max_unfinished
            .get(pipeline)
            .copied()
            .unwrap_or(0)
    }

    /// Runs of `pipeline` ever created.
    pub fn created(&self, pipeline: &str) -> usize {
        self.state()
            .history
            .iter()
            .filter(|c| {
                c.kind == "ADDED"
                    && c.object
                        .pointer("/metadata/labels/tekton.dev~1pipeline")
                        .and_then(Value::as_str)
                        == Some(pipeline)
            })
            .count()
    }

    /// Takes the API down (every request answers 503, open watches end) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
        self.inner.changed();
    }

    /// Ends every open watch stream now (as a load balancer or an API server
    /// restart would); the API stays up.
    pub fn drop_watches(&self) {
        self.state().watch_generation += 1;
        self.inner.changed();
    }

    /// Holds every new request unanswered (`true`) until released (`false`),
    /// so a test can look at the client while its request is in flight.
    pub fn hold_requests(&self, hold: bool) {
        self.state().hold = hold;
        self.inner.changed();
    }

    /// Requests received so far, held ones included.
    pub fn arrived_requests(&self) -> usize {
        self.state().arrived
    }

    /// Answers the next `n` watch requests with an in-stream `410 Gone`
    /// (resourceVersion too old), as an API server does after compaction.
    pub fn expire_next_watches(&self, n: u32) {
        self.state().gone_next = n;
    }

    /// (list requests, watch requests) served so far (answers other than 503).
    pub fn request_counts(&self) -> (u64, u64) {
        let s = self.state();
        (s.list_requests, s.watch_requests)
    }

    /// Every request answered so far, 503s included, oldest first.
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.state().requests.clone()
    }

    /// Requests answered with 503 so far.
    pub fn rejected_requests(&self) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|r| r.status == 503)
            .count()
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.state().open_watches
    }

    /// Waits (without polling) until `predicate` holds, or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&FakeKube) -> bool,
    ) -> bool {
        self.inner.wait_until(timeout, || predicate(self)).await
    }
}

fn record(inner: &Inner, state: &mut State, kind: &'static str, namespace: &str, object: Value) {
    state.rv += 1;
    let rv = state.rv;
    let mut object = object;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = (namespace.to_owned(), name);
    let pipeline_of = |o: &Value| {
        o.pointer("/metadata/labels/tekton.dev~1pipeline")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    if let Some(old) = state.objects.get(&key)
        && !is_finished(old)
    {
        let p = pipeline_of(old);
        if let Some(n) = state.unfinished.get_mut(&p) {
            *n = n.saturating_sub(1);
        }
    }
    if kind == "DELETED" {
        state.objects.remove(&key);
    } else {
        if !is_finished(&object) {
            let p = pipeline_of(&object);
            let n = state.unfinished.entry(p.clone()).or_default();
            *n += 1;
            let n = *n;
            let max = state.max_unfinished.entry(p).or_default();
            *max = (*max).max(n);
        }
        state.objects.insert(key, object.clone());
    }
    state.history.push(Change {
        rv,
        kind,
        namespace: namespace.to_owned(),
        object,
    });
    inner.changed();
}

fn status_error(code: StatusCode, reason: &str, message: &str) -> Response<FakeBody> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`: allowed
/// unless the namespace was forbidden ([`FakeKube::forbid_namespace`]);
/// 503 while the API is down.
fn access_review(inner: &Arc<Inner>, request: &FakeRequest) -> Response<FakeBody> {
    if request.parts.method != Method::POST {
        return status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only POST is served",
        );
    }
    let mut state = inner.lock();
    if state.down {
        return status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "down",
        );
    }
    let mut review: Value = serde_json::from_slice(&request.body).unwrap_or_default();
    let attributes = &review["spec"]["resourceAttributes"];
    let namespace = attributes["namespace"].as_str().unwrap_or("").to_owned();
    let verb = attributes["verb"].as_str().unwrap_or("").to_owned();
    let allowed = !state.forbidden.contains(&namespace);
    state.access_reviews.push((namespace, verb, allowed));
    drop(state);
    inner.changed();
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "fake: allowed"})
    } else {
        json!({"allowed": false, "reason": "fake: forbidden in this namespace"})
    };
    json_response(StatusCode::CREATED, &review)
}

fn handle(inner: &Arc<Inner>, request: &FakeRequest) -> Response<FakeBody> {
    let path = request.parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments
        == [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
        ]
    {
        return access_review(inner, request);
    }
    if let [
        "apis",
        "tekton.dev",
        version,
        "namespaces",
        ns,
        "pipelineruns",
        name,
    ] = segments.as_slice()
    {
        return patch_run(inner, request, version, ns, name);
    }
    // /apis/tekton.dev/{version}/namespaces/{ns}/pipelineruns
    let (version, namespace) = match segments.as_slice() {
        [
            "apis",
            "tekton.dev",
            version,
            "namespaces",
            ns,
            "pipelineruns",
        ] => ((*version).to_owned(), (*ns).to_owned()),
        _ => {
            return status_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find {path}"),
            );
        }
    };
    if request.parts.method != Method::GET {
        return status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only GET is served",
        );
    }
    // kube-rs sends `?&labelSelector=...`; form parsing skips the empty pair.
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(request.parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let selector = parse_selector(query.get("labelSelector").map_or("", String::as_str));
    let api_version = format!("tekton.dev/{version}");
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut state = inner.lock();
    let mut log = KubeRequest {
        watch: is_watch,
        resource_version: query.get("resourceVersion").cloned(),
        status: 200,
    };
    if state.down {
        log.status = 503;
        state.requests.push(log);
        drop(state);
        inner.changed();
        return status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API is down",
        );
    }
    let with_version = |o: &Value| {
        let mut o = o.clone();
        o["apiVersion"] = json!(api_version);
        o
    };
    state.requests.push(log);
    if is_watch {
        state.watch_requests += 1;
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(state.rv);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(290u64);
        if state.gone_next > 0 {
            state.gone_next -= 1;
            drop(state);
            inner.changed();
            return gone_stream(from);
        }
        drop(state);
        inner.changed();
        return watch_stream(
            Arc::clone(inner),
            namespace,
            selector,
            api_version,
            from,
            Duration::from_secs(timeout),
        );
    }
    state.list_requests += 1;
    let items: Vec<Value> = state
        .objects
        .iter()
        .filter(|((ns, _), o)| *ns == namespace && labels_match(o, &selector))
        .map(|(_, o)| with_version(o))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": api_version, "kind": "PipelineRunList", "metadata": {"resourceVersion": state.rv.to_string()}, "items": items}),
    )
}

/// The cancel values of `spec.status` (Tekton `v1` and `v1beta1`).
const CANCEL_STATUSES: [&str; 3] = ["Cancelled", "CancelledRunFinally", "PipelineRunCancelled"];

/// `PATCH .../pipelineruns/{name}` with a JSON merge patch, as a real API
/// server takes it for a custom resource (strategic merge is refused). A
/// cancel (`spec.status`) finishes the run a moment later with
/// `Succeeded=False`, reason `Cancelled`, as Tekton does.
fn patch_run(
    inner: &Arc<Inner>,
    request: &FakeRequest,
    version: &str,
    namespace: &str,
    name: &str,
) -> Response<FakeBody> {
    if request.parts.method != Method::PATCH {
        return status_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "only PATCH is served on a PipelineRun",
        );
    }
    let content_type = request
        .parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/merge-patch+json"
        && content_type != "application/json-patch+json"
    {
        return status_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (got {content_type})"
            ),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
        return status_error(StatusCode::BAD_REQUEST, "BadRequest", "invalid JSON");
    };
    let mut state = inner.lock();
    let refused = if state.down {
        Some(503)
    } else if state.refuse_patches.is_empty() {
        None
    } else {
        Some(state.refuse_patches.remove(0))
    };
    if let Some(code) = refused {
        state
            .patches
            .push((namespace.to_owned(), name.to_owned(), patch, code));
        drop(state);
        inner.changed();
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return status_error(
            code,
            code.canonical_reason().unwrap_or("Error"),
            "refused by the test",
        );
    }
    let key = (namespace.to_owned(), name.to_owned());
    let Some(mut object) = state.objects.get(&key).cloned() else {
        state
            .patches
            .push((namespace.to_owned(), name.to_owned(), patch, 404));
        drop(state);
        inner.changed();
        return status_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pipelineruns.tekton.dev \"{name}\" not found"),
        );
    };
    if content_type == "application/json-patch+json" {
        return status_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "the fake applies merge patches only",
        );
    }
    merge(&mut object, &patch);
    state
        .patches
        .push((namespace.to_owned(), name.to_owned(), patch, 200));
    let cancelled = object
        .pointer("/spec/status")
        .and_then(Value::as_str)
        .is_some_and(|s| CANCEL_STATUSES.contains(&s))
        && !is_finished(&object);
    let delay = state.cancel_delay.unwrap_or(Duration::from_millis(200));
    record(inner, &mut state, "MODIFIED", namespace, object.clone());
    drop(state);
    if cancelled {
        let inner = Arc::clone(inner);
        let (namespace, name) = key;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut state = inner.lock();
            let Some(mut object) = state.objects.get(&(namespace.clone(), name)).cloned() else {
                return;
            };
            if is_finished(&object) {
                return;
            }
            object["status"] = json!({"conditions": [{"type": "Succeeded", "status": "False", "reason": "Cancelled",
                "message": "PipelineRun was cancelled"}]});
            record(&inner, &mut state, "MODIFIED", &namespace, object);
        });
    }
    let mut answer = object;
    answer["apiVersion"] = json!(format!("tekton.dev/{version}"));
    json_response(StatusCode::OK, &answer)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in fields {
        if v.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(k);
            }
        } else {
            merge(&mut target[k.as_str()], v);
        }
    }
}

/// A watch answered with one `ERROR` event carrying `410 Gone`, then closed.
fn gone_stream(from: u64) -> Response<FakeBody> {
    let line = format!(
        "{}\n",
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}})
    );
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(line)).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Counts an open watch stream while it lives.
struct OpenWatch(Arc<Inner>);

impl OpenWatch {
    fn new(inner: Arc<Inner>) -> Self {
        inner.lock().open_watches += 1;
        inner.changed();
        Self(inner)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.open_watches = state.open_watches.saturating_sub(1);
        drop(state);
        self.0.changed();
    }
}

fn watch_stream(
    inner: Arc<Inner>,
    namespace: String,
    selector: Vec<(String, String)>,
    api_version: String,
    from: u64,
    timeout: Duration,
) -> Response<FakeBody> {
    let rx = inner.subscribe();
    let generation = inner.lock().watch_generation;
    let open = OpenWatch::new(Arc::clone(&inner));
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures_util::stream::unfold((from, rx, open), move |(mut sent, mut rx, open)| {
        let inner = Arc::clone(&inner);
        let namespace = namespace.clone();
        let selector = selector.clone();
        let api_version = api_version.clone();
        async move {
            loop {
                rx.mark_unchanged();
                let next = {
                    let state = inner.lock();
                    if state.down || state.watch_generation != generation {
                        return None;
                    }
                    // History is in resourceVersion order: start after `sent`.
                    let unseen = state.history.partition_point(|c| c.rv <= sent);
                    state.history[unseen..]
                        .iter()
                        .find(|c| {
                            c.rv > sent
                                && c.namespace == namespace
                                && labels_match(&c.object, &selector)
                        })
                        .cloned()
                        .or_else(|| {
                            // Skip past changes that do not match this watch.
                            sent = sent.max(state.rv);
                            None
                        })
                };
                if let Some(change) = next {
                    sent = change.rv;
                    let mut object = change.object;
                    object["apiVersion"] = json!(api_version);
                    let line = format!("{}\n", json!({"type": change.kind, "object": object}));
                    return Some((
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(line))),
                        (sent, rx, open),
                    ));
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return None },
                    () = tokio::time::sleep_until(deadline) => return None,
                }
            }
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
