//! What this replica's dispatcher is doing, for `/api/v1/status/ready`.

use std::sync::{Arc, RwLock};

use dispatcher_capacity::KubeCapacity;
use dispatcher_core::config::Settings;
use dispatcher_core::ports::{CapacitySource, PoolState};
use dispatcher_http::DispatcherReport;
use time::OffsetDateTime;

/// This replica's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Not yet contending.
    Starting,
    /// Holds the dispatcher lock.
    Leader,
    /// Another replica dispatches.
    Standby,
}

#[derive(Debug)]
struct View {
    role: Role,
    last_pass_at: Option<OffsetDateTime>,
    waiting: Vec<(String, u32)>,
}

/// Shared between the dispatch loop (writer) and the HTTP layer (reader).
#[derive(Debug)]
pub(crate) struct DispatcherStatus {
    view: RwLock<View>,
}

impl DispatcherStatus {
    /// A replica that has not contended yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            view: RwLock::new(View {
                role: Role::Starting,
                last_pass_at: None,
                waiting: Vec::new(),
            }),
        })
    }

    /// Records the role.
    pub(crate) fn set_role(&self, role: Role) {
        if let Ok(mut v) = self.view.write() {
            v.role = role;
            if role != Role::Leader {
                v.waiting.clear();
            }
        }
    }

    /// Records a finished pass and the queue lengths it saw.
    pub(crate) fn pass_done(&self, waiting: Vec<(String, u32)>) {
        if let Ok(mut v) = self.view.write() {
            v.last_pass_at = Some(OffsetDateTime::now_utc());
            v.waiting = waiting;
        }
    }

    /// The report: role, last pass, and each pool's Kubernetes view.
    pub(crate) fn report(&self, settings: &Settings, capacity: &KubeCapacity) -> DispatcherReport {
        let (role, last_pass_at, waiting) = match self.view.read() {
            Ok(v) => (v.role, v.last_pass_at, v.waiting.clone()),
            Err(_) => (Role::Starting, None, Vec::new()),
        };
        let mut healthy = true;
        let pools: Vec<serde_json::Value> = settings
            .pools
            .values()
            .map(|pool| {
                let queued = waiting
                    .iter()
                    .find(|(k, _)| *k == pool.key.0)
                    .map(|(_, n)| *n);
                match capacity.pool_state(pool) {
                    PoolState::Known { running, .. } => serde_json::json!({
                        "pool": pool.key, "state": "known", "running": running,
                        "max_capacity": pool.max_capacity, "queued": queued,
                    }),
                    PoolState::Unknown { reason } => {
                        healthy = false;
                        serde_json::json!({
                            "pool": pool.key, "state": "unknown", "reason": reason,
                            "max_capacity": pool.max_capacity, "queued": queued,
                        })
                    }
                }
            })
            .collect();
        let role = match role {
            Role::Starting => "starting",
            Role::Leader => "leader",
            Role::Standby => "standby",
        };
        DispatcherReport {
            healthy,
            details: serde_json::json!({
                "role": role,
                "last_pass_at": last_pass_at.map(dispatcher_core::domain::rfc3339::format),
                "pools": pools,
            }),
        }
    }
}
