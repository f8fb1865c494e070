//! The EventListener client: forwards a stored delivery byte-for-byte with
//! its GitHub headers, so a Tekton GitHub interceptor configured with the
//! same secret accepts it, and reads the `eventID` of the 202 answer.
//! Events adopted from the original's database (re-serialized payloads) are
//! signed again with the first configured webhook secret.

use std::time::Duration;

use dispatcher_core::ports::{DISPATCH_HEADER, Trigger, TriggerError, TriggerRequest};

/// Longest part of an error answer kept for the dispatch's `last_error`.
const ERROR_BODY_LIMIT: usize = 300;

/// POSTs deliveries to EventListeners.
#[derive(Debug, Clone)]
pub struct EventListenerClient {
    http: reqwest::Client,
    resign_secret: Option<ResignSecret>,
}

/// The secret adopted events are signed with. `Debug` never shows it.
#[derive(Clone)]
struct ResignSecret(Vec<u8>);

impl std::fmt::Debug for ResignSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResignSecret(redacted)")
    }
}

impl EventListenerClient {
    /// A client whose every POST times out after `timeout`. It follows no
    /// redirect: a 3xx is a [`TriggerError::Rejected`] like any non-202.
    ///
    /// `resign_secret` (the first configured webhook secret) signs requests
    /// with [`TriggerRequest::resign`] set: their `X-Hub-Signature-256` is
    /// computed over the bytes sent and a stale `X-Hub-Signature` (sha1) is
    /// dropped. Without it they are forwarded as stored.
    pub fn new(timeout: Duration, resign_secret: Option<&[u8]>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect is an ordinary non-202 answer: the delivery (and its
            // signature) goes only to the configured `callback_url`.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            resign_secret: resign_secret.map(|s| ResignSecret(s.to_vec())),
        })
    }
}

impl Trigger for EventListenerClient {
    async fn trigger(&self, request: TriggerRequest<'_>) -> Result<Option<String>, TriggerError> {
        let mut post = self
            .http
            .post(request.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DISPATCH_HEADER, request.dispatch.to_string())
            .body(request.payload.to_owned());
        let resign = self.resign_secret.as_ref().filter(|_| request.resign);
        for (name, value) in request.headers {
            let signature = name.eq_ignore_ascii_case("X-Hub-Signature-256")
                || name.eq_ignore_ascii_case("X-Hub-Signature");
            if resign.is_none() || !signature {
                post = post.header(name.as_str(), value.as_str());
            }
        }
        if let Some(secret) = resign {
            let signature = dispatcher_sig::sign(&secret.0, request.payload.as_bytes());
            post = post.header("X-Hub-Signature-256", signature);
        }
        let response = post.send().await.map_err(classify)?;
        let status = response.status();
        let body = match response.bytes().await {
            Ok(body) => body,
            // The listener said 202: it accepted the event. A body cut off after
            // that changes nothing but the missing eventID (the slot stays
            // reserved until its run shows up or the reservation ends).
            Err(e) if status == reqwest::StatusCode::ACCEPTED => {
                tracing::warn!(error = %e.without_url(), "EventListener answered 202 but its body could not be read");
                return Ok(None);
            }
            Err(e) => return Err(classify(e)),
        };
        if status != reqwest::StatusCode::ACCEPTED {
            let text = String::from_utf8_lossy(&body);
            let mut text: String = text.chars().take(ERROR_BODY_LIMIT).collect();
            if text.is_empty() {
                text = status.canonical_reason().unwrap_or("").to_owned();
            }
            return Err(TriggerError::Rejected {
                status: status.as_u16(),
                body: text,
            });
        }
        // Tekton Triggers answers {"eventListener":..,"namespace":..,"eventListenerUID":..,"eventID":..}.
        let event_id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("eventID")
                    .and_then(|id| id.as_str())
                    .map(str::to_owned)
            })
            .filter(|id| !id.is_empty());
        Ok(event_id)
    }
}

/// Sorts a failure by whether the listener may have acted on the request.
fn classify(e: reqwest::Error) -> TriggerError {
    // The URL is config, not secret, but it may carry credentials in its query.
    let e = e.without_url();
    if e.is_connect() || e.is_builder() {
        // Never sent (refused, DNS, TLS, or the connect timeout).
        TriggerError::Transport(error_chain(&e))
    } else if e.is_timeout() {
        TriggerError::Timeout
    } else {
        // Sent, then the connection broke: the listener may have the event.
        TriggerError::Unanswered(error_chain(&e))
    }
}

/// The error with its sources ("error sending request: connection reset ...").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
