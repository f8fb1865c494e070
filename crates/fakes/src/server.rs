//! A minimal hyper server on 127.0.0.1, port 0, for the fakes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Body type of fake responses (watch streams need streaming bodies).
pub type FakeBody = BoxBody<Bytes, Infallible>;

/// A request with its body already read.
#[derive(Debug)]
pub struct FakeRequest {
    /// Method, URI and headers.
    pub parts: http::request::Parts,
    /// The whole body.
    pub body: Bytes,
}

type Handler = Arc<
    dyn Fn(FakeRequest) -> Pin<Box<dyn Future<Output = Response<FakeBody>> + Send>> + Send + Sync,
>;

/// A running fake server; stops when dropped.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// Serves `handler` on a free loopback port.
    pub async fn start<F, Fut>(handler: F) -> std::io::Result<Self>
    where
        F: Fn(FakeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<FakeBody>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, Infallible>(handler(FakeRequest { parts, body }).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// Serves a synchronous `handler` over state shared with the test handle.
    pub(crate) async fn start_shared<I: Send + Sync + 'static>(
        inner: Arc<I>,
        handler: fn(&Arc<I>, &FakeRequest) -> Response<FakeBody>,
    ) -> std::io::Result<Self> {
        Self::start(move |r| {
            let inner = Arc::clone(&inner);
            async move { handler(&inner, &r) }
        })
        .await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<FakeBody> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
