//! Wake-ups of the active dispatcher after deliveries commit.
//!
//! Stored deliveries are announced with `NOTIFY dispatcher_wakeup` from a
//! statement of its own, after the insert committed, never inside the insert:
//! PostgreSQL holds its notification-queue lock through the commit of any
//! transaction that notified, which would serialise all concurrent intake.
//! Requests only signal a local task; signals arriving while a NOTIFY is on
//! its way, or within [`MIN_INTERVAL`] of the last one, collapse into the
//! next, so a flood of deliveries costs a few hundred NOTIFYs a second at most
//! (the dispatcher batches its passes more coarsely than that anyway).

use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::Pool;
use tokio::sync::mpsc;

/// Shortest time between two NOTIFYs from one replica.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// The channel the leader LISTENs on.
pub(crate) const WAKEUP_CHANNEL: &str = "dispatcher_wakeup";

/// Sends coalesced wake-ups; the task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Wakeups {
    signal: Option<mpsc::Sender<()>>,
}

impl Wakeups {
    /// Starts the sender task on the current tokio runtime (without one,
    /// wake-ups are off and the dispatcher's safety pass picks events up).
    pub(crate) fn start(pool: Pool<AsyncPgConnection>) -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self { signal: None };
        };
        let (tx, mut rx) = mpsc::channel::<()>(1);
        runtime.spawn(async move {
            while rx.recv().await.is_some() {
                let sent = match pool.get().await {
                    Ok(mut conn) => diesel::sql_query(format!("NOTIFY {WAKEUP_CHANNEL}"))
                        .execute(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(error) = sent {
                    tracing::warn!(%error, "could not wake the dispatcher; its safety pass will pick the delivery up");
                }
                tokio::time::sleep(MIN_INTERVAL).await;
            }
        });
        Self { signal: Some(tx) }
    }

    /// Asks for a NOTIFY (coalesced with any already pending).
    pub(crate) fn wake(&self) {
        if let Some(tx) = &self.signal {
            let _ = tx.try_send(());
        }
    }
}
