//! The start-up line: the version and the effective configuration in one
//! `info` event, so every log begins with what this process runs with.
//!
//! It names items, pools, switches and tuning values, and only counts what
//! is secret (webhook secrets, API tokens) or may hold a credential (the
//! database URL and EventListener URLs are left out entirely).

use dispatcher_core::config::Settings;

/// Logs `version` and the configuration summary of `settings`.
pub(crate) fn log_start(settings: &Settings, version: &str) {
    let items = settings
        .items
        .iter()
        .map(|i| {
            let events: Vec<&str> = i.events.iter().map(String::as_str).collect();
            format!(
                "{} ({} [{}] -> {}{})",
                i.name,
                i.repository,
                events.join(","),
                i.pool,
                if i.filter.is_some() {
                    ", CEL filter"
                } else {
                    ""
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let pools = settings
        .pools
        .values()
        .map(|p| {
            format!(
                "{} (max {}{}{})",
                p.key,
                p.max_capacity,
                if p.dispatch_label.is_some() {
                    ", dispatch label"
                } else {
                    ""
                },
                match p.fairness {
                    dispatcher_core::config::Fairness::Fifo => String::new(),
                    ref f => format!(", {}", f.as_str()),
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let github_labels = settings.github.labels_enabled() && settings.github.queue_status.labels();
    let queue_status = settings.github.queue_status.as_str();
    let github_app = settings.github.app.is_some();
    let d = &settings.dispatch;
    tracing::info!(
        version,
        items = %items,
        pools = %pools,
        priority_labels = settings.priority_labels.len(),
        signatures_verified = settings.security.verify_signatures,
        webhook_secrets = settings.security.webhook_secrets.len(),
        github_labels,
        github_app,
        queue_status,
        metrics_token = settings.metrics_token.is_some(),
        api_tokens = settings.api_tokens.len(),
        database_pool_size = settings.database.pool_size,
        migrate_on_start = settings.database.migrate_on_start,
        max_attempts = d.max_attempts,
        retry_backoff_base = ?d.retry_backoff_base,
        retry_backoff_max = ?d.retry_backoff_max,
        trigger_timeout = ?d.trigger_timeout,
        reservation_timeout = ?d.reservation_timeout,
        safety_pass_interval = ?d.safety_pass_interval,
        min_pass_interval = ?d.min_pass_interval,
        failover_timeout = ?d.failover_timeout,
        capacity_resync_interval = ?d.capacity_resync_interval,
        capacity_stale_after = ?d.capacity_stale_after,
        retention = %settings.retention.map_or_else(
            || "off".to_owned(),
            |r| format!(
                "max_age {}, payload_max_age {}, every {}",
                dispatcher_core::retention::format_age(r.max_age),
                r.payload_max_age
                    .map_or_else(|| "off".to_owned(), dispatcher_core::retention::format_age),
                dispatcher_core::retention::format_age(r.interval)
            )
        ),
        catch_up = %settings.catch_up.as_ref().map_or_else(
            || "off".to_owned(),
            |c| format!(
                "{} hooks, every {}, at most {} per pass, first look back {}",
                c.hooks.len(),
                dispatcher_core::retention::format_age(c.interval),
                c.max_per_pass,
                dispatcher_core::retention::format_age(c.max_age)
            )
        ),
        "starting the webhook dispatcher"
    );
}
