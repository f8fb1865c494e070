//! The store's side of the runtime's leadership ports: contention through
//! [`Database::try_lead`], and the [`LeaderSession`] as the active session.

use dispatcher_core::ports::{self, ActiveSession, LeaderElection, StoreError};

use crate::{Database, LeaderOptions, LeaderSession, Lease};

/// [`LeaderElection`] on PostgreSQL: a session advisory lock on a dedicated
/// connection (see [`LeaderSession`]).
#[derive(Debug, Clone)]
pub struct PgLeaderElection {
    db: Database,
    labels_enabled: bool,
    options: LeaderOptions,
}

impl PgLeaderElection {
    /// Contends on `db`; `labels_enabled` turns on `<pipeline>/queued` label
    /// intents (only useful with a GitHub client).
    pub fn new(db: Database, labels_enabled: bool, options: LeaderOptions) -> Self {
        Self {
            db,
            labels_enabled,
            options,
        }
    }
}

impl LeaderElection for PgLeaderElection {
    type Session = LeaderSession;

    async fn try_lead(&self) -> Result<Option<LeaderSession>, StoreError> {
        self.db.try_lead(self.labels_enabled, self.options).await
    }
}

impl ActiveSession for LeaderSession {
    type Lease = Lease;

    async fn wait_for_wakeup(&mut self) -> Result<(), StoreError> {
        LeaderSession::wait_for_wakeup(self).await
    }

    async fn heartbeat(&mut self) -> Result<(), StoreError> {
        LeaderSession::heartbeat(self).await
    }

    fn lease(&self) -> Lease {
        LeaderSession::lease(self)
    }
}

impl ports::Lease for Lease {
    fn is_valid(&self) -> bool {
        Lease::is_valid(self)
    }
}
