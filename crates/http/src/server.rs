//! The accept loop: a cap on connections served at once, and a shutdown in
//! three steps that suits rolling updates behind a load balancer.
//!
//! 1. **Serving** until the shutdown future completes (SIGTERM in the binary).
//! 2. **Draining** for `shutdown_delay`: [`App::start_draining`] makes
//!    readiness answer 503 at once, so the load balancer takes the replica
//!    out, while the listener keeps accepting and intake keeps storing
//!    whatever still arrives (endpoints update with a delay); answers carry
//!    `Connection: close` so keep-alive clients reconnect elsewhere.
//! 3. **Closing**: the listener is dropped (new connections are refused),
//!    idle connections close, in-flight requests get up to `shutdown_timeout`
//!    to finish; then `serve` returns.
//!
//! At most `max_connections` connections are served at once. Beyond that the
//! loop stops calling `accept`: new connections wait in the kernel's accept
//! backlog (they are not refused, and are served as soon as a slot frees;
//! once the backlog is full the kernel drops further connection attempts,
//! which clients retry). Slots come back when connections close; idle
//! keep-alive connections are closed after `header_read_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatcher_core::config::ServerSection;
use dispatcher_core::ports::{EventRepository, OperatorStore};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::App;

/// A warning about the connection cap is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How [`serve`] limits connections and shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Time between the shutdown signal and closing the listener, during
    /// which readiness answers 503 and requests are still served.
    pub shutdown_delay: Duration,
    /// Time in-flight requests get after the listener closed.
    pub shutdown_timeout: Duration,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
}

impl From<&ServerSection> for ServeOptions {
    fn from(server: &ServerSection) -> Self {
        Self {
            shutdown_delay: server.shutdown_delay,
            shutdown_timeout: server.shutdown_timeout,
            max_connections: server.max_connections,
        }
    }
}

impl Default for ServeOptions {
    /// The configuration's defaults (`server:` section).
    fn default() -> Self {
        Self::from(&ServerSection::default())
    }
}

/// Serves `app` on `listener`. When `shutdown` completes: readiness turns
/// 503 and serving goes on for `options.shutdown_delay`, then the listener
/// closes and in-flight requests get `options.shutdown_timeout` to finish.
pub async fn serve<R: EventRepository + OperatorStore>(
    listener: TcpListener,
    app: Arc<App<R>>,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config().header_read_timeout)
        .keep_alive(true);
    let mut acceptor = Acceptor {
        listener,
        app: Arc::clone(&app),
        builder,
        graceful: GracefulShutdown::new(),
        slots: Arc::new(Semaphore::new(
            options.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        )),
        max_connections: options.max_connections,
        last_full_warning: None,
    };

    acceptor.run_until(shutdown).await;

    app.start_draining();
    tracing::info!(
        shutdown_delay_ms = options.shutdown_delay.as_millis(),
        "shutdown requested: readiness answers 503; still serving until the delay is over"
    );
    acceptor
        .run_until(tokio::time::sleep(options.shutdown_delay))
        .await;

    let Acceptor {
        listener, graceful, ..
    } = acceptor;
    drop(listener);
    tracing::info!("stopped accepting connections; draining in-flight requests");
    let grace = options.shutdown_timeout;
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(grace_secs = grace.as_secs(), "grace period over; closing remaining connections"),
    }
    Ok(())
}

struct Acceptor<R> {
    listener: TcpListener,
    app: Arc<App<R>>,
    builder: http1::Builder,
    graceful: GracefulShutdown,
    slots: Arc<Semaphore>,
    max_connections: usize,
    last_full_warning: Option<Instant>,
}

impl<R: EventRepository + OperatorStore> Acceptor<R> {
    /// Accepts and serves connections until `stop` completes.
    async fn run_until(&mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    self.warn_full();
                    tokio::select! {
                        slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => return, // never closed
                        },
                        () = &mut stop => return,
                    }
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.spawn_connection(stream, peer, slot),
                    Err(e) => {
                        // Out of file descriptors and the like: log, back off
                        // briefly (the error would repeat at once), keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                            () = &mut stop => return,
                        }
                    }
                },
                () = &mut stop => return,
            }
        }
    }

    fn spawn_connection(
        &self,
        stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        slot: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&self.app);
        let service = service_fn(move |request| {
            let app = Arc::clone(&app);
            async move { Ok::<_, Infallible>(app.handle(request).await) }
        });
        let connection = self
            .graceful
            .watch(self.builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }

    fn warn_full(&mut self) {
        let now = Instant::now();
        if self
            .last_full_warning
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.last_full_warning = Some(now);
            tracing::warn!(
                max_connections = self.max_connections,
                "connection limit reached; new connections wait in the accept backlog"
            );
        }
    }
}
