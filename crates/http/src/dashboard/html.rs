//! The dashboard's HTML: pure functions from what the API already computes
//! (pool overviews, event records, explanations) to markup.
//!
//! Every value that comes from the database, the configuration or the
//! request goes through [`esc`]; literal markup is written here only. The
//! functions return the *fragment* (what `#content` holds) and the page
//! [`shell`] around it separately, because the script replaces the fragment
//! in place on each refresh.

use std::fmt::{self, Display, Write as _};

use dispatcher_core::domain::{EventRecord, TimelineEntry, rfc3339};
use dispatcher_core::operate::{PoolOverview, QueuedWork};
use dispatcher_core::rules::FilterVerdict;
use dispatcher_core::timeline::describe;
use time::OffsetDateTime;

use crate::operate::{Explanation, reason_code};

/// The assets' cache-busting tag: assets are embedded, so they change only
/// with the binary.
const ASSET_TAG: &str = env!("CARGO_PKG_VERSION");

/// Seconds between refreshes, shown in the footer (the script's own
/// constant is the one that counts; keep them equal).
pub(crate) const REFRESH_SECONDS: u32 = 3;

/// HTML-escapes a value while it is written (no intermediate string).
pub(crate) struct Esc<'a>(&'a str);

/// `esc(value)`: the value, safe inside element text and quoted attributes.
pub(crate) fn esc(s: &str) -> Esc<'_> {
    Esc(s)
}

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// What every fragment needs besides its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    /// This replica's clock (ages and estimates).
    pub(crate) now: OffsetDateTime,
    /// Web address of pull requests (see `App::pr_base`).
    pub(crate) pr_base: &'a str,
}

impl Ctx<'_> {
    fn pr_link(&self, repository: &str, number: i64) -> String {
        format!(
            r#"<a class="pr" href="{}/{}/pull/{number}">{}#{number}</a>"#,
            esc(self.pr_base),
            esc(repository),
            esc(repository),
        )
    }

    /// `<time>` with the absolute instant as tooltip and `3m ago` as text.
    fn ago(&self, t: OffsetDateTime) -> String {
        let at = rfc3339::format(t);
        let secs = (self.now - t).whole_seconds();
        let text = if secs < 1 {
            "just now".to_owned()
        } else {
            format!("{} ago", span(secs))
        };
        format!(r#"<time datetime="{at}" title="{at}">{text}</time>"#)
    }
}

/// `42s`, `5m 3s`, `2h 5m`, `3d 4h`: a human span of seconds.
pub(crate) fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// `in 5m`, or `now` once due; the absolute time is the tooltip.
fn estimate(ctx: &Ctx<'_>, t: Option<OffsetDateTime>) -> String {
    let Some(t) = t else {
        return r#"<span class="muted" title="no estimate while the typical run time is unknown, the pool is paused or Kubernetes is unknown">unknown</span>"#.to_owned();
    };
    let at = rfc3339::format(t);
    let secs = (t - ctx.now).whole_seconds();
    let text = if secs <= 0 {
        "now".to_owned()
    } else {
        format!("in {}", span(secs))
    };
    format!(r#"<time datetime="{at}" title="{at}">{text}</time>"#)
}

/// Widths in whole percent of the running, reserved and free segments of a
/// pool's bar; they add up to 100. Work beyond `capacity` (runs someone
/// else started) widens the scale instead of overflowing the bar.
pub(crate) fn bar_widths(running: u32, reserved: u32, capacity: u32) -> (u32, u32, u32) {
    let used = u64::from(running) + u64::from(reserved);
    let total = used.max(u64::from(capacity));
    if total == 0 {
        return (0, 0, 100);
    }
    // Rounded cumulatively, so the three always sum to exactly 100.
    let pct = |n: u64| u32::try_from((n * 200 + total) / (2 * total)).unwrap_or(100);
    let r = pct(u64::from(running));
    let rr = pct(used);
    (r, rr - r, 100 - rr)
}

fn pool_card(ctx: &Ctx<'_>, p: &PoolOverview, out: &mut String) {
    let u = &p.usage;
    let key = &p.spec.key.0;
    let _ = write!(
        out,
        r#"<section class="pool" data-pool="{}"><div class="pool-head"><h3>{}</h3>"#,
        esc(key),
        esc(key)
    );
    if let Some(pause) = &p.paused {
        let _ = write!(
            out,
            r#"<span class="badge paused" title="paused at {}">paused by {}</span>"#,
            rfc3339::format(pause.at),
            esc(&pause.by)
        );
    }
    if let Some(reason) = &u.blocked {
        let _ = write!(
            out,
            r#"<span class="badge unknown" title="{}">Kubernetes unknown</span>"#,
            esc(reason)
        );
    }
    if u.max_capacity == 0 {
        out.push_str(r#"<span class="badge paused" title="max_capacity: 0 in the configuration">capacity 0</span>"#);
    }
    out.push_str("</div>");
    match u.running {
        Some(running) => {
            let free = u
                .max_capacity
                .saturating_sub(running.saturating_add(u.reserved));
            let (wr, wres, wfree) = bar_widths(running, u.reserved, u.max_capacity);
            let _ = write!(
                out,
                r#"<div class="bar" role="img" aria-label="{running} running, {res} reserved, {free} free of {cap}">"#,
                res = u.reserved,
                cap = u.max_capacity,
            );
            for (class, width, n, what) in [
                ("running", wr, running, "running"),
                (
                    "reserved",
                    wres,
                    u.reserved,
                    "reserved (triggered, run not seen yet)",
                ),
                ("free", wfree, free, "free"),
            ] {
                if width > 0 {
                    let _ = write!(
                        out,
                        r#"<span class="seg {class}" style="width:{width}%" title="{n} {what}">{n}</span>"#
                    );
                }
            }
            let _ = write!(
                out,
                r#"</div><p class="legend"><span class="key running"></span>{running} running <span class="key reserved"></span>{res} reserved <span class="key free"></span>{free} free <span class="muted">of capacity {cap}</span>"#,
                res = u.reserved,
                cap = u.max_capacity,
            );
        }
        None => {
            let _ = write!(
                out,
                r#"<div class="bar" role="img" aria-label="running unknown"><span class="seg blocked" style="width:100%" title="{}">running unknown</span></div><p class="legend">running unknown, {res} reserved <span class="muted">of capacity {cap}</span>"#,
                esc(u.blocked.as_deref().unwrap_or("Kubernetes state unknown")),
                res = u.reserved,
                cap = u.max_capacity,
            );
        }
    }
    if let Some(run) = p.typical_run {
        let _ = write!(
            out,
            r#" <span class="muted">· typical run {}</span>"#,
            span(i64::try_from(run.as_secs()).unwrap_or(i64::MAX))
        );
    }
    out.push_str("</p>");
    queue_table(ctx, &p.queue, out);
    out.push_str("</section>");
}

fn queue_table(ctx: &Ctx<'_>, queue: &[QueuedWork], out: &mut String) {
    if queue.is_empty() {
        out.push_str(r#"<p class="empty">Queue empty.</p>"#);
        return;
    }
    let _ = write!(
        out,
        r#"<table class="queue"><caption>{} waiting</caption><thead><tr><th>#</th><th>pull request</th><th>item</th><th>waiting</th><th>estimated start</th><th>why</th><th></th></tr></thead><tbody>"#,
        queue.len()
    );
    for w in queue {
        let wait = w
            .queued_at
            .map_or_else(|| "—".to_owned(), |t| span((ctx.now - t).whole_seconds()));
        let explain = w.event.map_or_else(String::new, |e| {
            format!(
                r#"<a href="/ui/events/{}">explain</a>"#,
                esc(&e.to_string())
            )
        });
        let error = w.last_error.as_deref().map_or_else(String::new, |e| {
            format!(r#"<br><span class="error">{}</span>"#, esc(e))
        });
        let _ = write!(
            out,
            r#"<tr class="queued" data-position="{pos}" data-pr="{pr}"><td class="pos">{pos}</td><td>{link}</td><td>{item}</td><td>{wait}</td><td>{start}</td><td><span class="reason {code}">{reason}</span>{error}</td><td>{explain}</td></tr>"#,
            pos = w.position,
            pr = w.pr.number,
            link = ctx.pr_link(&w.pr.repository, w.pr.number),
            item = esc(&w.item),
            start = estimate(ctx, w.estimated_start),
            code = reason_code(&w.reason),
            reason = esc(&w.reason.to_string()),
        );
    }
    out.push_str("</tbody></table>");
}

fn events_table(ctx: &Ctx<'_>, events: &[EventRecord], empty: &str, out: &mut String) {
    if events.is_empty() {
        let _ = write!(out, r#"<p class="empty">{}</p>"#, esc(empty));
        return;
    }
    out.push_str(r#"<table class="events"><thead><tr><th>received</th><th>pull request</th><th>action</th><th>status</th><th>delivery</th><th></th></tr></thead><tbody>"#);
    for e in events {
        let _ = write!(
            out,
            r#"<tr data-event="{id}"><td>{ago}</td><td>{link}</td><td>{action}</td><td>{status}</td><td class="mono">{delivery}</td><td><a href="/ui/events/{id}">explain</a></td></tr>"#,
            id = esc(&e.uuid.to_string()),
            ago = ctx.ago(e.received_at),
            link = ctx.pr_link(&e.repository_full_name, e.pull_request_number),
            action = esc(&e.action),
            status = status_badge(e.status.as_str()),
            delivery = esc(&e.delivery_id),
        );
    }
    out.push_str("</tbody></table>");
}

fn status_badge(status: &str) -> String {
    format!(r#"<span class="status {s}">{s}</span>"#, s = esc(status))
}

/// The home page's fragment: every pool with its queue, then the most
/// recent events.
pub(crate) fn home(ctx: &Ctx<'_>, pools: &[PoolOverview], events: &[EventRecord]) -> String {
    let mut out = String::new();
    out.push_str(r#"<h2>Pools</h2>"#);
    if pools.is_empty() {
        out.push_str(r#"<p class="empty">No pools configured (dispatcher.items is empty).</p>"#);
    }
    out.push_str(r#"<div class="pools">"#);
    for p in pools {
        pool_card(ctx, p, &mut out);
    }
    out.push_str("</div>");
    out.push_str(r#"<h2>Recent events</h2>"#);
    events_table(ctx, events, "No events yet.", &mut out);
    out
}

/// What a search asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Search {
    /// `owner/name`.
    pub(crate) repository: Option<String>,
    /// Pull request number.
    pub(crate) pr: Option<i64>,
}

/// The search page's fragment.
pub(crate) fn search(ctx: &Ctx<'_>, q: &Search, events: &[EventRecord], total: u64) -> String {
    let mut out = String::new();
    let what = match (&q.repository, q.pr) {
        (Some(r), Some(n)) => format!("{r}#{n}"),
        (Some(r), None) => r.clone(),
        (None, Some(n)) => format!("PR #{n} in any repository"),
        (None, None) => "every event".to_owned(),
    };
    let _ = write!(
        out,
        r#"<h2>Events of {}</h2><p class="muted">{total} found{}</p>"#,
        esc(&what),
        if total > events.len() as u64 {
            format!(", the newest {} shown", events.len())
        } else {
            String::new()
        }
    );
    events_table(ctx, events, "No event matches.", &mut out);
    out
}

/// An event's page: what it is, how it matched, what happened to it, and
/// why its waiting work waits.
pub(crate) fn explanation(ctx: &Ctx<'_>, e: &Explanation) -> String {
    let ev = &e.detail.event;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<h2>{link} <span class="muted">{action}</span> {status}</h2><dl class="facts"><dt>event</dt><dd class="mono">{id}</dd><dt>delivery</dt><dd class="mono">{delivery}</dd><dt>received</dt><dd>{received}</dd>"#,
        link = ctx.pr_link(&ev.repository_full_name, ev.pull_request_number),
        action = esc(&ev.action),
        status = status_badge(ev.status.as_str()),
        id = esc(&ev.uuid.to_string()),
        delivery = esc(&ev.delivery_id),
        received = ctx.ago(ev.received_at),
    );
    if let Some(at) = ev.processed_at {
        let _ = write!(out, "<dt>finished</dt><dd>{}</dd>", ctx.ago(at));
    }
    if let Some(err) = &ev.processing_error {
        let _ = write!(out, r#"<dt>note</dt><dd>{}</dd>"#, esc(err));
    }
    out.push_str("</dl>");

    if !e.waiting.is_empty() {
        out.push_str(r#"<h3>Waiting now</h3><ul class="waiting">"#);
        for (pool, of, w) in &e.waiting {
            let _ = write!(
                out,
                r#"<li>position <strong>{pos}</strong> of {of} in pool <strong>{pool}</strong> ({item}): <span class="reason {code}">{reason}</span>; estimated start {start}</li>"#,
                pos = w.position,
                pool = esc(&pool.0),
                item = esc(&w.item),
                code = reason_code(&w.reason),
                reason = esc(&w.reason.to_string()),
                start = estimate(ctx, w.estimated_start),
            );
        }
        out.push_str("</ul>");
    }

    out.push_str(
        r#"<h3>Matching <span class="muted">(against the configuration running now)</span></h3>"#,
    );
    if e.matching.is_empty() {
        out.push_str(r#"<p class="empty">No items configured.</p>"#);
    } else {
        out.push_str(r#"<table class="matching"><thead><tr><th>item</th><th>repository</th><th>action</th><th>filter</th><th>routes here</th></tr></thead><tbody>"#);
        for v in &e.matching {
            let filter = match &v.filter {
                FilterVerdict::NoFilter => "no filter".to_owned(),
                FilterVerdict::NotEvaluated => "not evaluated".to_owned(),
                FilterVerdict::True => "true".to_owned(),
                FilterVerdict::False => "false".to_owned(),
                FilterVerdict::Error(err) => format!("error: {err}"),
            };
            let _ = write!(
                out,
                r#"<tr><td>{item}</td><td>{repo}</td><td>{action}</td><td>{filter}</td><td>{matched}</td></tr>"#,
                item = esc(&v.item),
                repo = verdict(v.repository),
                action = verdict(v.action),
                filter = esc(&filter),
                matched = verdict(v.matched()),
            );
        }
        out.push_str("</tbody></table>");
    }

    out.push_str(r#"<h3>Timeline</h3><ol class="timeline">"#);
    for entry in &e.timeline {
        timeline_entry(entry, &mut out);
    }
    out.push_str("</ol>");

    if !e.detail.dispatches.is_empty() {
        out.push_str(r#"<h3>Dispatches</h3><table class="dispatches"><thead><tr><th>id</th><th>item</th><th>pool</th><th>round</th><th>state</th><th>attempts</th><th>last error</th></tr></thead><tbody>"#);
        for d in &e.detail.dispatches {
            let _ = write!(
                out,
                r#"<tr><td>{id}</td><td>{item}</td><td>{pool}</td><td>{round}</td><td>{state}</td><td>{attempts}</td><td class="error">{error}</td></tr>"#,
                id = d.id.0,
                item = esc(&d.item),
                pool = esc(&d.pool),
                round = d.round,
                state = status_badge(d.state.as_str()),
                attempts = d.attempts,
                error = esc(d.last_error.as_deref().unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>");
    }
    out
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        r#"<span class="yes">✓</span>"#
    } else {
        r#"<span class="no">✗</span>"#
    }
}

/// `2026-12-02 08:47:10.886`: a timeline's instants (UTC), to the
/// millisecond, which orders a burst's entries without the noise of
/// RFC 3339's microseconds (the full value is the `datetime`).
fn clock(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| rfc3339::format(t))
}

fn timeline_entry(entry: &TimelineEntry, out: &mut String) {
    let at = rfc3339::format(entry.at);
    let dispatch = entry.dispatch.map_or_else(String::new, |d| {
        format!(r#" <span class="muted">dispatch {}</span>"#, d.0)
    });
    let _ = write!(
        out,
        r#"<li class="{kind}"><time datetime="{at}" title="{at}">{clock}</time>{dispatch} <span class="message">{message}</span></li>"#,
        kind = entry.kind.as_str(),
        clock = clock(entry.at),
        message = esc(&describe(entry)),
    );
}

/// Where the page shell is and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Shell<'a> {
    /// `<title>` and heading context.
    pub(crate) title: &'a str,
    /// The rendered fragment, or `None` when reading needs a token that did
    /// not come with the request: the script fetches it with the token.
    pub(crate) content: Option<&'a str>,
    /// `api.tokens` is set: the page shows the token form when needed.
    pub(crate) protected: bool,
    /// The search form's current values.
    pub(crate) search: &'a Search,
}

/// The whole page around a fragment (or around the token form).
pub(crate) fn shell(s: &Shell<'_>) -> String {
    let mut out = String::with_capacity(4096 + s.content.map_or(0, str::len));
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Webhook Dispatcher</title>
<link rel="stylesheet" href="/ui/assets/dashboard.css?v={ASSET_TAG}">
<script src="/ui/assets/dashboard.js?v={ASSET_TAG}" defer></script>
</head><body>
<header class="top"><a class="brand" href="/">Webhook Dispatcher</a><span class="muted">{title}</span>
<form class="search" action="/ui/search" method="get"><input name="repository" placeholder="owner/repository" aria-label="repository" value="{repo}"><input name="pr" type="number" min="1" placeholder="PR" aria-label="pull request number" value="{pr}"><button type="submit">Search</button></form>
<span id="refresh-status" class="muted" aria-live="polite"></span></header>
"#,
        title = esc(s.title),
        repo = esc(s.search.repository.as_deref().unwrap_or("")),
        pr = s.search.pr.map_or_else(String::new, |n| n.to_string()),
    );
    if s.protected {
        out.push_str(
            r#"<form id="token-form" class="token" hidden><label>Read token <input name="token" type="password" autocomplete="off" required></label><button type="submit">Show</button> <span class="muted">kept in this tab only (sessionStorage)</span><span id="token-error" class="error"></span></form>
"#,
        );
    }
    let _ = write!(
        out,
        r#"<main id="content" data-locked="{locked}">{content}</main>
<footer class="muted">Read-only view · refreshes every {REFRESH_SECONDS} s while this tab is visible</footer>
</body></html>
"#,
        locked = s.content.is_none(),
        content = s.content.unwrap_or(
            r#"<p class="empty">This dashboard needs a read token (<code>api.tokens</code>).</p>"#
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use dispatcher_core::config::{PoolKey, PoolSpec, TektonApiVersion};
    use dispatcher_core::domain::{
        DispatchId, EventDetail, EventId, EventStatus, PullRequestRef, TimelineKind,
    };
    use dispatcher_core::operate::{PauseInfo, WaitReason};
    use dispatcher_core::planner::PoolUsage;
    use dispatcher_core::rules::ItemVerdict;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-12-02 10:00:00 UTC);
    const EVIL: &str = r#"<script>alert("x")</script>&'"#;

    fn ctx() -> Ctx<'static> {
        Ctx {
            now: NOW,
            pr_base: "https://github.com",
        }
    }

    fn pool(
        running: Option<u32>,
        reserved: u32,
        capacity: u32,
        queue: Vec<QueuedWork>,
    ) -> PoolOverview {
        let key = PoolKey("ns/p".to_owned());
        PoolOverview {
            spec: PoolSpec {
                key: key.clone(),
                namespace: "ns".to_owned(),
                pipeline_name: "p".to_owned(),
                annotation_selector: BTreeMap::new(),
                api_version: TektonApiVersion::V1,
                max_capacity: capacity,
                dispatch_label: None,
                fairness: Default::default(),
            },
            usage: PoolUsage {
                pool: key,
                running,
                reserved,
                max_capacity: capacity,
                waiting: u32::try_from(queue.len()).unwrap(),
                starting: 0,
                oldest_waiting: None,
                blocked: running.is_none().then(|| "watch failed".to_owned()),
                paused: false,
            },
            paused: None,
            typical_run: Some(Duration::from_secs(300)),
            oldest_wait: None,
            queue,
        }
    }

    fn work(position: u32, repository: &str, number: i64, item: &str) -> QueuedWork {
        QueuedWork {
            position,
            dispatch: DispatchId(i64::from(position)),
            event: Some("00000000-0000-4000-8000-000000000001".parse().unwrap()),
            item: item.to_owned(),
            pr: PullRequestRef {
                repository: repository.to_owned(),
                number,
            },
            priority: 0,
            queued_at: Some(NOW - time::Duration::seconds(125)),
            last_error: None,
            reason: WaitReason::PoolFull {
                running: 1,
                reserved: 0,
                capacity: 1,
            },
            estimated_start: Some(NOW + time::Duration::minutes(5)),
        }
    }

    fn event(repository: &str, action: &str) -> EventRecord {
        EventRecord {
            id: EventId(1),
            uuid: "00000000-0000-4000-8000-000000000001".parse().unwrap(),
            delivery_id: "d1".to_owned(),
            action: action.to_owned(),
            repository_full_name: repository.to_owned(),
            pull_request_number: 7,
            processed: false,
            processing_error: None,
            received_at: NOW - time::Duration::seconds(3),
            processed_at: None,
            status: EventStatus::Queued,
        }
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(EVIL).to_string(),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
        assert_eq!(esc("plain é ✓").to_string(), "plain é ✓");
        assert_eq!(esc("").to_string(), "");
    }

    #[test]
    fn values_from_the_database_and_config_are_escaped() {
        let mut p = pool(Some(1), 0, 1, vec![work(1, EVIL, 2, EVIL)]);
        p.paused = Some(PauseInfo {
            by: EVIL.to_owned(),
            at: NOW,
        });
        let page = home(&ctx(), &[p], &[event(EVIL, EVIL)]);
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains(r#"alert("x")"#), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        let found = search(
            &ctx(),
            &Search {
                repository: Some(EVIL.to_owned()),
                pr: None,
            },
            &[event(EVIL, "opened")],
            1,
        );
        assert!(!found.contains("<script>"), "{found}");
        let page = shell(&Shell {
            title: EVIL,
            content: Some("<p>ok</p>"),
            protected: false,
            search: &Search {
                repository: Some(EVIL.to_owned()),
                pr: Some(3),
            },
        });
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains(r#"value="&lt;script&gt;"#), "{page}");
    }

    #[test]
    fn bars_split_capacity_into_running_reserved_and_free() {
        assert_eq!(bar_widths(1, 1, 4), (25, 25, 50));
        assert_eq!(bar_widths(1, 0, 1), (100, 0, 0));
        assert_eq!(bar_widths(0, 0, 3), (0, 0, 100));
        assert_eq!(bar_widths(1, 1, 3), (33, 34, 33));
        // More than the capacity (runs started by someone else): the scale widens.
        assert_eq!(bar_widths(3, 1, 2), (75, 25, 0));
        assert_eq!(bar_widths(0, 0, 0), (0, 0, 100));
        for (r, res, cap) in [(1, 2, 7), (5, 0, 9), (2, 2, 3), (0, 1, 6)] {
            let (a, b, c) = bar_widths(r, res, cap);
            assert_eq!(a + b + c, 100, "{r} {res} {cap}");
        }
        let page = home(&ctx(), &[pool(Some(1), 1, 4, vec![])], &[]);
        assert!(
            page.contains(r#"class="seg running" style="width:25%""#),
            "{page}"
        );
        assert!(
            page.contains(r#"class="seg reserved" style="width:25%""#),
            "{page}"
        );
        assert!(
            page.contains(r#"class="seg free" style="width:50%""#),
            "{page}"
        );
        assert!(page.contains("1 running"), "{page}");
        assert!(page.contains("2 free"), "{page}");
    }

    #[test]
    fn queues_show_position_pr_link_wait_and_estimate() {
        let p = pool(
            Some(1),
            0,
            1,
            vec![work(1, "o/r", 2, "ops"), work(2, "o/r", 3, "ops")],
        );
        let page = home(&ctx(), &[p], &[]);
        assert!(
            page.contains(r#"<tr class="queued" data-position="1" data-pr="2">"#),
            "{page}"
        );
        assert!(page.contains(r#"data-position="2" data-pr="3""#), "{page}");
        assert!(
            page.contains(r#"href="https://github.com/o/r/pull/2">o/r#2</a>"#),
            "{page}"
        );
        assert!(page.contains(">2m 5s<"), "{page}");
        assert!(page.contains(">in 5m 0s</time>"), "{page}");
        assert!(page.contains("pool full: 1 running"), "{page}");
        assert!(page.contains("typical run 5m 0s"), "{page}");
    }

    #[test]
    fn empty_states_and_unknown_kubernetes() {
        let page = home(&ctx(), &[], &[]);
        assert!(page.contains("No pools configured"), "{page}");
        assert!(page.contains("No events yet."), "{page}");
        let page = home(&ctx(), &[pool(None, 1, 2, vec![])], &[]);
        assert!(page.contains("Kubernetes unknown"), "{page}");
        assert!(page.contains("running unknown"), "{page}");
        assert!(page.contains("Queue empty."), "{page}");
        let found = search(&ctx(), &Search::default(), &[], 0);
        assert!(found.contains("No event matches."), "{found}");
    }

    #[test]
    fn recent_events_link_to_their_explanation() {
        let page = home(&ctx(), &[], &[event("o/r", "opened")]);
        assert!(
            page.contains(
                r#"<a href="/ui/events/00000000-0000-4000-8000-000000000001">explain</a>"#
            ),
            "{page}"
        );
        assert!(
            page.contains(r#"<span class="status queued">queued</span>"#),
            "{page}"
        );
        assert!(page.contains(">3s ago</time>"), "{page}");
    }

    #[test]
    fn explanations_show_matching_timeline_and_waiting() {
        let e = Explanation {
            detail: EventDetail {
                event: event("o/r", "opened"),
                event_type: "pull_request".to_owned(),
                headers: vec![],
                dispatches: vec![],
            },
            matching: vec![ItemVerdict {
                item: EVIL.to_owned(),
                repository: true,
                action: false,
                filter: FilterVerdict::Error(EVIL.to_owned()),
            }],
            timeline: vec![TimelineEntry {
                at: NOW,
                dispatch: None,
                kind: TimelineKind::Received,
                detail: serde_json::json!({"delivery_id": EVIL, "action": "opened"}),
                actor: None,
            }],
            waiting: vec![(PoolKey("ns/p".to_owned()), 2, work(2, "o/r", 7, "ops"))],
        };
        let page = explanation(&ctx(), &e);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains(r#"<li class="received">"#), "{page}");
        assert!(page.contains(">2026-12-02 10:00:00.000</time>"), "{page}");
        assert!(page.contains("position <strong>2</strong> of 2"), "{page}");
        assert!(page.contains(r#"<span class="no">✗</span>"#), "{page}");
    }

    #[test]
    fn the_locked_shell_has_the_token_form_and_no_data() {
        let page = shell(&Shell {
            title: "Pools",
            content: None,
            protected: true,
            search: &Search::default(),
        });
        assert!(page.contains(r#"id="token-form""#), "{page}");
        assert!(page.contains(r#"data-locked="true""#), "{page}");
        assert!(page.contains("needs a read token"), "{page}");
        let open = shell(&Shell {
            title: "Pools",
            content: Some("<p>data</p>"),
            protected: false,
            search: &Search::default(),
        });
        assert!(!open.contains("token-form"), "{open}");
        assert!(
            open.contains(r#"data-locked="false"><p>data</p></main>"#),
            "{open}"
        );
    }

    #[test]
    fn spans_read_like_people_write_them() {
        assert_eq!(span(-5), "0s");
        assert_eq!(span(59), "59s");
        assert_eq!(span(61), "1m 1s");
        assert_eq!(span(7260), "2h 1m");
        assert_eq!(span(90_000), "1d 1h");
    }
}
