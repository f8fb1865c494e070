//! `dispatcher prune [--dry-run]`: one retention pass now, with the
//! configuration's `retention` section (refused when it is absent: nothing
//! is ever deleted unless the operator configured retention). `--dry-run`
//! shows what a pass would delete and drop, changing nothing. The pass is
//! `dispatcher_core::retention::run_pass` over `dispatcher-store`'s
//! `PgRetention`, the same the active replica runs every interval; it is
//! safe beside running replicas (short batches that skip locked rows).

use std::fmt::Write;

use anyhow::{Context, bail};
use dispatcher_core::config::Settings;
use dispatcher_core::domain::rfc3339;
use dispatcher_core::ports::RetentionStore;
use dispatcher_core::retention::{RetentionPolicy, RetentionPreview, format_age as age, run_pass};
use dispatcher_store::{Database, PoolOptions};

/// Runs the command; returns what to print.
pub(crate) async fn prune(settings: &Settings, url: &str, dry_run: bool) -> anyhow::Result<String> {
    let Some(policy) = settings.retention else {
        bail!(
            "retention is off: the configuration has no `retention` section, so nothing is pruned \
             (add e.g. `retention: {{max_age: 30d}}`)"
        );
    };
    let db = Database::connect(
        url,
        PoolOptions {
            max_size: 1,
            connection: crate::options::connection(settings),
            ..PoolOptions::default()
        },
    )
    .context("connecting to the database")?;
    let retention = db.retention();
    if dry_run {
        let preview = retention
            .preview(&policy)
            .await
            .context("reading what retention would prune")?;
        return Ok(describe(&policy, &preview));
    }
    let report = run_pass(&retention, &policy)
        .await
        .context("pruning finished events")?;
    tracing::info!(
        deleted_events = report.deleted_events,
        deleted_label_rows = report.deleted_label_rows,
        dropped_payloads = report.dropped_payloads,
        batches = report.batches,
        "retention: pruned by `dispatcher prune`"
    );
    Ok(format!(
        "deleted {} finished event(s) ({} label row(s)) and dropped {} payload(s) in {} batch(es)\n",
        report.deleted_events, report.deleted_label_rows, report.dropped_payloads, report.batches
    ))
}

/// The dry run's text.
fn describe(policy: &RetentionPolicy, preview: &RetentionPreview) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "retention: max_age {}, payload_max_age {}, batch_size {} (database time {})",
        age(policy.max_age),
        policy.payload_max_age.map_or_else(|| "off".to_owned(), age),
        policy.batch_size,
        rfc3339::format(preview.now)
    );
    let per_status: Vec<String> = preview
        .events_by_status
        .iter()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    let _ = write!(
        out,
        "events finished before {}: {} would be deleted",
        rfc3339::format(preview.event_cutoff),
        preview.events()
    );
    if per_status.is_empty() {
        out.push('\n');
    } else {
        let _ = writeln!(out, " ({})", per_status.join(", "));
    }
    if let Some((oldest, newest)) = preview.finished_between {
        let _ = writeln!(
            out,
            "  oldest finished {}, newest finished {}",
            rfc3339::format(oldest),
            rfc3339::format(newest)
        );
    }
    if let Some(cutoff) = preview.payload_cutoff {
        let _ = writeln!(
            out,
            "payloads of events finished before {}: {} would be dropped",
            rfc3339::format(cutoff),
            preview.payloads
        );
    }
    out.push_str("dry run: nothing was changed\n");
    out
}
