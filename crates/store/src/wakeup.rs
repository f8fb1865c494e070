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
//!
//! When this process itself holds a valid leader session (the usual case
//! with one replica, or for the replica the route happens to pick), the
//! wake-up is an in-process signal instead: no NOTIFY round trip, no
//! delivery through the leader's socket. A session whose lease is revoked
//! or expired no longer counts, so another replica that took over is
//! NOTIFYed again.

use std::sync::{Arc, Mutex, PoisonError};

use diesel_async::AsyncPgConnection;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::deadpool::Pool;
use tokio::sync::{Notify, mpsc};

use crate::lease::Lease;

/// Shortest time between two NOTIFYs from one replica.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// The channel the leader LISTENs on.
pub(crate) const WAKEUP_CHANNEL: &str = "dispatcher_wakeup";

/// Sends coalesced wake-ups; the task ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Wakeups {
    signal: Option<mpsc::Sender<()>>,
    local: Arc<LocalLeader>,
}

/// The leader sessions of this process and the signal that wakes them.
#[derive(Debug, Default)]
pub(crate) struct LocalLeader {
    /// Leases of the sessions opened from this database (revoked or expired
    /// ones are pruned when seen).
    leases: Mutex<Vec<Lease>>,
    notify: Notify,
}

impl LocalLeader {
    /// A session of this process now holds the lock.
    pub(crate) fn holding(&self, lease: Lease) {
        self.leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(lease);
    }

    /// Resolves at the next in-process wake-up (at once for one signalled
    /// while no session was waiting).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Wakes a local session and says so; `false` when none holds a valid lease.
    fn wake(&self) -> bool {
        let mut leases = self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        // An expired lease may be renewed by the session's next round trip;
        // a revoked one is gone for good.
        leases.retain(|l| !l.is_revoked());
        if !leases.iter().any(Lease::is_valid) {
            return false;
        }
        // One stored permit: a session busy in a pass runs one more.
        self.notify.notify_one();
        true
    }
}

impl Wakeups {
    /// Starts the sender task on the current tokio runtime (without one,
    /// wake-ups are off and the dispatcher's safety pass picks events up).
    pub(crate) fn start(pool: Pool<AsyncPgConnection>) -> Self {
        let local = Arc::new(LocalLeader::default());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self {
                signal: None,
                local,
            };
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
        Self {
            signal: Some(tx),
            local,
        }
    }

    /// Where this process's leader sessions register and wait.
    pub(crate) fn local(&self) -> Arc<LocalLeader> {
        Arc::clone(&self.local)
    }

    /// Asks for a NOTIFY (coalesced with any already pending).
    pub(crate) fn wake(&self) {
        if self.local.wake() {
            return;
        }
        if let Some(tx) = &self.signal {
            let _ = tx.try_send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn only_a_valid_local_session_is_woken_in_process() {
        let local = LocalLeader::default();
        assert!(!local.wake(), "no session: NOTIFY");

        let lease = Lease::new(Instant::now(), Duration::from_secs(60));
        local.holding(lease.clone());
        assert!(local.wake(), "a valid session: in process");
        // The permit was stored while nobody waited: the next wait returns.
        local.woken().await;

        let expired = LocalLeader::default();
        expired.holding(Lease::new(
            Instant::now() - Duration::from_secs(2),
            Duration::from_secs(1),
        ));
        assert!(!expired.wake(), "an expired lease: NOTIFY");

        lease.revoke();
        assert!(!local.wake(), "a revoked lease: NOTIFY");
        assert!(local.leases.lock().unwrap().is_empty(), "pruned");
    }
}
