//! Adapter options derived from the validated settings.

use dispatcher_core::config::Settings;
use dispatcher_store::{ConnectionOptions, LeaderOptions, PoolOptions};

/// Every PostgreSQL connection: keepalives, `tcp_user_timeout` and a
/// statement timeout (the store's defaults) with the configured connect timeout.
pub(crate) fn connection(settings: &Settings) -> ConnectionOptions {
    ConnectionOptions {
        connect_timeout: settings.database.connect_timeout,
        ..ConnectionOptions::default()
    }
}

/// The shared pool.
pub(crate) fn pool(settings: &Settings) -> PoolOptions {
    PoolOptions {
        max_size: settings.database.pool_size,
        acquire_timeout: settings.database.acquire_timeout,
        connection: connection(settings),
    }
}

/// The active replica's session: PostgreSQL ends it (releasing the lock)
/// after `leader_idle_timeout` of silence, well inside `failover_timeout`.
pub(crate) fn leader(settings: &Settings) -> LeaderOptions {
    let d = &settings.dispatch;
    LeaderOptions {
        idle_session_timeout: d.leader_idle_timeout(),
        heartbeat_interval: d.heartbeat_interval(),
        lease_margin: d.leader_lease_margin(),
    }
}
