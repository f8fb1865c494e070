//! A fake Tekton EventListener: answers 202 with an `eventID` the way Tekton
//! Triggers does, checks the forwarded GitHub signature over the raw bytes
//! (as a GitHub interceptor with the same secret would), and can be told to
//! fail. In "Tekton mode" it also creates a PipelineRun labelled with the
//! event id in a [`FakeKube`] and finishes it after a while (or on demand),
//! so tests can run whole queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use crate::kube::FakeKube;
use crate::observed::Observed;
use crate::server::{FakeRequest, FakeServer, json as json_response};

/// How the fake creates PipelineRuns for accepted events.
#[derive(Debug, Clone)]
pub struct TektonMode {
    /// Where runs are created.
    pub kube: FakeKube,
    /// Namespace of the runs.
    pub namespace: String,
    /// `tekton.dev/pipeline` label.
    pub pipeline: String,
    /// Annotations put on every run.
    pub annotations: Vec<(String, String)>,
    /// Runs succeed after this long; `None` = only when the test says so.
    pub run_for: Option<Duration>,
    /// Label into which the TriggerTemplate copies the
    /// `X-Webhook-Dispatcher-Dispatch` header (as deploy/tekton does).
    pub dispatch_label: Option<String>,
}

/// One POST the listener received.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// Headers as sent (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Raw body.
    pub body: Bytes,
    /// Whether `X-Hub-Signature-256` verified against the raw body (true when no secret is set).
    pub signature_ok: bool,
    /// Status answered.
    pub status: u16,
    /// `eventID` answered on 202.
    pub event_id: Option<String>,
}

impl Received {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct State {
    received: Vec<Received>,
    fail_next: u32,
    fail_all: bool,
    hang: bool,
    arrived: usize,
    answer_delay: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    shared: Observed<State>,
    secret: Option<String>,
    tekton: Option<TektonMode>,
    counter: AtomicU64,
}

/// The fake EventListener. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeEventListener {
    inner: Arc<Inner>,
    server: Arc<FakeServer>,
}

impl FakeEventListener {
    /// Starts a listener; with `secret`, unsigned or badly signed POSTs get 403.
    pub async fn start(secret: Option<&str>, tekton: Option<TektonMode>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            shared: Observed::new(State::default()),
            secret: secret.map(str::to_owned),
            tekton,
            counter: AtomicU64::new(0),
        });
        let handler_inner = Arc::clone(&inner);
        let server = FakeServer::start(move |r| {
            let inner = Arc::clone(&handler_inner);
            async move {
                inner.shared.lock().arrived += 1;
                inner.shared.changed();
                // A hanging listener answers only once released (or never).
                inner
                    .shared
                    .wait_until(Duration::from_secs(3600), || !inner.shared.lock().hang)
                    .await;
                let delay = inner.shared.lock().answer_delay;
                let response = handle(&inner, r);
                if let Some(delay) = delay {
                    // Simulated latency of a slow listener (the run already exists).
                    tokio::time::sleep(delay).await;
                }
                response
            }
        })
        .await?;
        Ok(Self {
            inner,
            server: Arc::new(server),
        })
    }

    /// URL to configure as `callback_url`.
    pub fn url(&self) -> String {
        format!("{}/", self.server.url())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.shared.lock()
    }

    /// Every POST so far.
    pub fn received(&self) -> Vec<Received> {
        self.state().received.clone()
    }

    /// POSTs answered 202.
    pub fn accepted(&self) -> Vec<Received> {
        self.state()
            .received
            .iter()
            .filter(|r| r.status == 202)
            .cloned()
            .collect()
    }

    /// How many POSTs were accepted (202), without copying them: a bench
    /// waiting on this after every event would otherwise copy every body
    /// received so far each time (quadratic, and CPU the dispatcher under
    /// measurement shares).
    pub fn accepted_count(&self) -> usize {
        self.state()
            .received
            .iter()
            .filter(|r| r.status == 202)
            .count()
    }

    /// Answer the next `n` POSTs with 500.
    pub fn fail_next(&self, n: u32) {
        self.state().fail_next = n;
    }

    /// Answer every POST with 500 until called with `false`.
    pub fn fail_all(&self, fail: bool) {
        self.state().fail_all = fail;
    }

    /// POSTs that arrived, answered or not (a hanging listener holds them).
    pub fn arrived(&self) -> usize {
        self.state().arrived
    }

    /// Hold every POST without answering until called with `false`.
    pub fn hang(&self, hang: bool) {
        self.state().hang = hang;
        self.inner.shared.changed();
    }

    /// Acts on every POST at once (creating its run in Tekton mode) but
    /// sends the answer only after `delay` (`None`: at once again).
    pub fn delay_answers(&self, delay: Option<Duration>) {
        self.state().answer_delay = delay;
    }

    /// Finishes the `n` oldest unfinished runs of the Tekton-mode pipeline.
    pub fn finish_runs(&self, n: usize) -> usize {
        let Some(t) = &self.inner.tekton else {
            return 0;
        };
        let runs = t.kube.unfinished(&t.pipeline);
        for name in runs.iter().take(n) {
            t.kube
                .set_succeeded(&t.namespace, name, "True", "Succeeded");
        }
        runs.len().min(n)
    }

    /// Waits (without polling) until `predicate` holds, or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&FakeEventListener) -> bool,
    ) -> bool {
        self.inner
            .shared
            .wait_until(timeout, || predicate(self))
            .await
    }
}

fn handle(inner: &Arc<Inner>, request: FakeRequest) -> http::Response<crate::server::FakeBody> {
    let at = Instant::now();
    let headers: Vec<(String, String)> = request
        .parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let signature = request
        .parts
        .headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let signature_ok = inner.secret.as_ref().is_none_or(|s| {
        dispatcher_sig::SigningKeys::new([s.as_bytes()])
            .verify(&request.body, signature)
            .is_ok()
    });
    let mut state = inner.shared.lock();
    let failing = state.fail_all || state.fail_next > 0;
    state.fail_next = state.fail_next.saturating_sub(1);
    let (status, event_id, response) = if request.parts.method != http::Method::POST {
        (
            405,
            None,
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"message": "POST only"}),
            ),
        )
    } else if failing {
        (
            500,
            None,
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({"message": "fake failure"}),
            ),
        )
    } else if !signature_ok {
        (
            403,
            None,
            json_response(
                StatusCode::FORBIDDEN,
                &json!({"message": "interceptor: invalid signature"}),
            ),
        )
    } else {
        let n = inner.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let event_id = format!("{n:08x}-fake-{:04x}", at.elapsed().subsec_nanos() % 0xffff);
        let body = json!({
            "eventListener": "fake-listener",
            "namespace": "fake",
            "eventListenerUID": "00000000-0000-0000-0000-000000000000",
            "eventID": event_id,
        });
        (
            202,
            Some(event_id),
            json_response(StatusCode::ACCEPTED, &body),
        )
    };
    drop(state);
    let dispatch: Option<String> = request
        .parts
        .headers
        .get("x-webhook-dispatcher-dispatch")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let received = Received {
        at,
        headers,
        body: request.body,
        signature_ok,
        status,
        event_id: event_id.clone(),
    };
    if let (Some(t), Some(event_id)) = (&inner.tekton, event_id) {
        let name = format!("{}-run-{event_id}", t.pipeline);
        let dispatch = dispatch.as_deref();
        let mut labels = vec![("triggers.tekton.dev/triggers-eventid", event_id.as_str())];
        if let (Some(label), Some(dispatch)) = (&t.dispatch_label, dispatch) {
            labels.push((label.as_str(), dispatch));
        }
        let annotations: Vec<(&str, &str)> = t
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        t.kube
            .create_labelled_run(&t.namespace, &name, &t.pipeline, &labels, &annotations);
        // One line per run: in the binary's dev simulation this is how a
        // developer sees a trigger turn into a (pretend) pipeline.
        tracing::info!(
            namespace = %t.namespace,
            pipeline = %t.pipeline,
            run = %name,
            event_id = %event_id,
            dispatch = dispatch.unwrap_or_default(),
            runs_for_ms = t.run_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            "simulated PipelineRun started"
        );
        if let Some(run_for) = t.run_for {
            let kube = t.kube.clone();
            let namespace = t.namespace.clone();
            tokio::spawn(async move {
                // The fake run's duration: simulated work, not test synchronisation.
                tokio::time::sleep(run_for).await;
                kube.set_succeeded(&namespace, &name, "True", "Succeeded");
                tracing::debug!(%namespace, run = %name, "simulated PipelineRun succeeded");
            });
        }
    }
    // Recorded only now: whoever sees an accepted trigger (a test waiting on
    // `accepted()`, woken by another request's change) also sees its run.
    inner.shared.lock().received.push(received);
    inner.shared.changed();
    response
}
