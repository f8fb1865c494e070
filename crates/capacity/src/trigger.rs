//! The EventListener client: forwards a stored delivery byte-for-byte with
//! its GitHub headers, so a Tekton GitHub interceptor configured with the
//! same secret accepts it, and reads the `eventID` of the 202 answer.

use std::time::Duration;

use dispatcher_core::ports::{Trigger, TriggerError, TriggerRequest};

/// Longest part of an error answer kept for the dispatch's `last_error`.
const ERROR_BODY_LIMIT: usize = 300;

/// POSTs deliveries to EventListeners.
#[derive(Debug, Clone)]
pub struct EventListenerClient {
    http: reqwest::Client,
}

impl EventListenerClient {
    /// A client whose every POST times out after `timeout`. It follows no
    /// redirect: a 3xx is a [`TriggerError::Rejected`] like any non-202.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // A redirect is an ordinary non-202 answer: the delivery (and its
            // signature) goes only to the configured `callback_url`.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http })
    }
}

impl Trigger for EventListenerClient {
    async fn trigger(&self, request: TriggerRequest<'_>) -> Result<Option<String>, TriggerError> {
        let mut post = self
            .http
            .post(request.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.payload.to_owned());
        for (name, value) in request.headers {
            post = post.header(name.as_str(), value.as_str());
        }
        let response = post.send().await.map_err(classify)?;
        let status = response.status();
        let body = response.bytes().await.map_err(classify)?;
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

fn classify(e: reqwest::Error) -> TriggerError {
    if e.is_timeout() {
        TriggerError::Timeout
    } else {
        // The URL is config, not secret, but it may carry credentials in its query.
        TriggerError::Transport(e.without_url().to_string())
    }
}
