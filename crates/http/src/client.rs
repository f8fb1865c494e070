//! A minimal HTTP/1.1 client for the service's own API, so command-line
//! tools (`dispatcher explain`) speak to a running dispatcher without a
//! second HTTP stack in the binary. Plain `http://` only: operators reach a
//! replica through `kubectl port-forward` or from inside the cluster.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Why a request to the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a plain `http://host[:port]` URL.
    #[error("{0}")]
    BadUrl(String),
    /// Connecting, sending or reading failed.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No complete answer within the timeout.
    #[error("no answer from {0} in time")]
    Timeout(String),
}

/// GETs `path_and_query` from the service at `base` (e.g.
/// `http://127.0.0.1:5000`) with an optional bearer token; returns the
/// status and the body as text.
pub async fn get_text(
    base: &str,
    path_and_query: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), ClientError> {
    let url = url::Url::parse(base).map_err(|e| ClientError::BadUrl(format!("{base}: {e}")))?;
    if url.scheme() != "http" {
        return Err(ClientError::BadUrl(format!(
            "{base}: only http:// is supported (reach a replica with `kubectl port-forward`)"
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ClientError::BadUrl(format!("{base}: no host")))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let prefix = url.path().trim_end_matches('/');
    let target = format!("{prefix}{path_and_query}");
    let unreachable = |reason: String| ClientError::Unreachable {
        url: base.to_owned(),
        reason,
    };
    let exchange = async {
        // `host_str` keeps IPv6 brackets; the socket address wants them off.
        let connect_host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((connect_host, port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let mut request = http::Request::get(&target).header(http::header::HOST, &host);
        if let Some(token) = bearer {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::BadUrl(format!("{base}{path_and_query}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(base.to_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_http_urls() {
        for bad in ["https://example.com", "not a url", "ftp://x"] {
            let e = get_text(bad, "/", None, Duration::from_secs(1)).await;
            assert!(matches!(e, Err(ClientError::BadUrl(_))), "{bad}: {e:?}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_a_panic() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let e = get_text(
            &format!("http://127.0.0.1:{port}"),
            "/",
            None,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(e, Err(ClientError::Unreachable { .. })), "{e:?}");
    }
}
