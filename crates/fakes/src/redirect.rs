//! A server that redirects: every request is answered `307 Temporary
//! Redirect` to the same path under `/moved`, where it would be accepted
//! (202 with an `eventID`). Tests use it to prove a client follows no
//! redirect: the target must see no request.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use crate::observed::Observed;
use crate::server::{FakeBody, FakeRequest, FakeServer, json as json_response};

/// Prefix of the redirect target.
const TARGET: &str = "/moved";

#[derive(Debug, Default)]
struct State {
    redirected: usize,
    target_hits: usize,
}

/// The redirecting server. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeRedirect {
    inner: Arc<Observed<State>>,
    server: Arc<FakeServer>,
}

impl FakeRedirect {
    /// Starts the server on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Observed::new(State::default()));
        let server = FakeServer::start_shared(Arc::clone(&inner), handle).await?;
        Ok(Self {
            inner,
            server: Arc::new(server),
        })
    }

    /// Base URL; every path under it redirects.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Requests answered with a redirect.
    pub fn redirected(&self) -> usize {
        self.inner.lock().redirected
    }

    /// Requests that arrived at the redirect target.
    pub fn target_hits(&self) -> usize {
        self.inner.lock().target_hits
    }
}

fn handle(inner: &Arc<Observed<State>>, request: &FakeRequest) -> http::Response<FakeBody> {
    let path = request.parts.uri.path();
    let mut state = inner.lock();
    let response = if path.starts_with(TARGET) {
        state.target_hits += 1;
        json_response(StatusCode::ACCEPTED, &json!({"eventID": "redirected"}))
    } else {
        state.redirected += 1;
        let mut r = json_response(StatusCode::TEMPORARY_REDIRECT, &json!({"message": "moved"}));
        if let Ok(location) = http::HeaderValue::from_str(&format!("{TARGET}{path}")) {
            r.headers_mut().insert(http::header::LOCATION, location);
        }
        r
    };
    drop(state);
    inner.changed();
    response
}
