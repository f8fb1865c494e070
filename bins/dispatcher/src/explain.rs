//! `dispatcher explain <event-id>`: asks a running dispatcher (its HTTP API,
//! `GET /api/v1/events/{id}/explain?format=text`) and prints the answer, so
//! the command and the API can never tell two different stories.

use std::time::Duration;

use anyhow::{Context, bail};

/// What to ask and where.
#[derive(Debug, Clone)]
pub(crate) struct ExplainRequest {
    /// Base URL of a running dispatcher, e.g. `http://127.0.0.1:5000`.
    pub(crate) url: String,
    /// The event's id (UUID).
    pub(crate) id: String,
    /// A read token, when the API is protected.
    pub(crate) token: Option<String>,
}

/// Fetches the explanation as text.
pub(crate) async fn fetch(request: &ExplainRequest) -> anyhow::Result<String> {
    let path = format!("/api/v1/events/{}/explain?format=text", request.id);
    let (status, body) = dispatcher_http::client::get_text(
        &request.url,
        &path,
        request.token.as_deref(),
        Duration::from_secs(30),
    )
    .await
    .context("asking the dispatcher")?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    // Errors are JSON `{"status":..., "message":...}`: show the message.
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or(body);
    bail!("the dispatcher answered {status}: {message}")
}
