//! Matching rules: which config items an event routes to.
//!
//! An item matches when the repository is equal, the payload `action` is in
//! its `events`, and its optional CEL filter evaluates to `true`. A filter
//! that errors or yields a non-bool is "no match", reported to the caller so
//! it can be logged once per event.

mod cel_filter;

use serde_json::Value;

pub use cel_filter::{CelCompileError, CelEvalError, CelFilter};

use crate::config::{Item, Settings};

/// What the rules need to know about one stored event.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// Payload `action`.
    pub action: &'a str,
    /// Payload `repository.full_name`.
    pub repository: &'a str,
    /// Raw payload bytes (parsed only when a filter needs them).
    pub payload: &'a [u8],
    /// Forwardable headers.
    pub headers: &'a [(String, String)],
}

/// A filter that could not decide, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterProblem {
    /// The item whose filter failed.
    pub item: String,
    /// Why.
    pub error: String,
}

/// The result of matching one event against every item.
#[derive(Debug, Default)]
pub struct Matches<'s> {
    /// Items the event routes to, in config order.
    pub items: Vec<&'s Item>,
    /// Filters that errored (counted as no match).
    pub problems: Vec<FilterProblem>,
}

/// Whether matching an event of `repository`/`action` needs its payload
/// (some candidate item has a CEL filter). Most events need none, which
/// spares the store from reading the (up to 25 MiB) body back.
pub fn needs_payload(settings: &Settings, repository: &str, action: &str) -> bool {
    settings
        .items
        .iter()
        .any(|i| i.filter.is_some() && i.repository == repository && i.events.contains(action))
}

/// How one item judged one event (see [`explain_items`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemVerdict {
    /// Config item name.
    pub item: String,
    /// Its repository is the event's.
    pub repository: bool,
    /// The event's `action` is in its `events`.
    pub action: bool,
    /// Its CEL filter's answer.
    pub filter: FilterVerdict,
}

impl ItemVerdict {
    /// The event routes to this item.
    pub fn matched(&self) -> bool {
        self.repository
            && self.action
            && matches!(self.filter, FilterVerdict::NoFilter | FilterVerdict::True)
    }
}

/// What an item's filter said about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterVerdict {
    /// The item has no filter.
    NoFilter,
    /// Repository or action did not match, so the filter was not run.
    NotEvaluated,
    /// The expression was `true`.
    True,
    /// The expression was `false`.
    False,
    /// Evaluation failed (counted as no match).
    Error(String),
}

/// Lazily parsed payload shared by the items of one event.
struct Body<'a> {
    raw: &'a [u8],
    parsed: Option<Result<Value, String>>,
}

impl Body<'_> {
    fn judge(&mut self, item: &Item, event: &EventFacts<'_>) -> FilterVerdict {
        if item.repository != event.repository || !item.events.contains(event.action) {
            return FilterVerdict::NotEvaluated;
        }
        let Some(filter) = &item.filter else {
            return FilterVerdict::NoFilter;
        };
        let raw = self.raw;
        let parsed = self
            .parsed
            .get_or_insert_with(|| serde_json::from_slice(raw).map_err(|e| e.to_string()));
        let verdict = match parsed {
            Ok(body) => filter
                .evaluate(body, event.headers)
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("payload is not JSON: {e}")),
        };
        match verdict {
            Ok(true) => FilterVerdict::True,
            Ok(false) => FilterVerdict::False,
            Err(error) => FilterVerdict::Error(error),
        }
    }
}

/// Matches `event` against every configured item.
pub fn match_items<'s>(settings: &'s Settings, event: &EventFacts<'_>) -> Matches<'s> {
    let mut out = Matches::default();
    let mut body = Body {
        raw: event.payload,
        parsed: None,
    };
    for item in &settings.items {
        match body.judge(item, event) {
            FilterVerdict::NoFilter | FilterVerdict::True => out.items.push(item),
            FilterVerdict::NotEvaluated | FilterVerdict::False => {}
            FilterVerdict::Error(error) => out.problems.push(FilterProblem {
                item: item.name.clone(),
                error,
            }),
        }
    }
    out
}

/// Every configured item's verdict on `event`, in config order: the same
/// decisions as [`match_items`], spelled out for `explain`.
pub fn explain_items(settings: &Settings, event: &EventFacts<'_>) -> Vec<ItemVerdict> {
    let mut body = Body {
        raw: event.payload,
        parsed: None,
    };
    settings
        .items
        .iter()
        .map(|item| ItemVerdict {
            item: item.name.clone(),
            repository: item.repository == event.repository,
            action: item.events.contains(event.action),
            filter: body.judge(item, event),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, parse};
    use serde_json::json;

    fn settings() -> Settings {
        let item = |name: &str, repo: &str, filter: Option<&str>| {
            json!({
                "name": name, "events": ["opened", "synchronize"], "full_repository_name": repo,
                "callback_url": "http://el.example:8080",
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": 2, "namespace": "ns"},
                "filter": {"cel_expression": filter},
            })
        };
        let v = json!({
            "dispatcher": {"items": [
                item("plain", "o/r", None),
                item("main-only", "o/r", Some("body.pull_request.base.ref == 'main'")),
                item("by-header", "o/r", Some("header.match('X-GitHub-Event', 'pull_request')")),
                item("broken", "o/r", Some("body.missing.field == 1")),
                item("other-repo", "o/other", None),
            ]},
            "security": {"verify_signatures": false},
        });
        let (raw, _) = parse(v).expect("parses");
        Settings::from_raw(raw).expect("valid")
    }

    fn names<'a>(m: &'a Matches<'a>) -> Vec<&'a str> {
        m.items.iter().map(|i| i.name.as_str()).collect()
    }

    #[test]
    fn explain_agrees_with_matching_and_names_each_reason() {
        let s = settings();
        let payload = json!({"pull_request": {"base": {"ref": "dev"}}}).to_string();
        let facts = EventFacts {
            action: "opened",
            repository: "o/r",
            payload: payload.as_bytes(),
            headers: &[],
        };
        let verdicts = explain_items(&s, &facts);
        let matched: Vec<&str> = verdicts
            .iter()
            .filter(|v| v.matched())
            .map(|v| v.item.as_str())
            .collect();
        assert_eq!(matched, names(&match_items(&s, &facts)));
        let by_name = |n: &str| verdicts.iter().find(|v| v.item == n).cloned();
        assert_eq!(
            by_name("plain").map(|v| v.filter),
            Some(FilterVerdict::NoFilter)
        );
        assert_eq!(
            by_name("main-only").map(|v| v.filter),
            Some(FilterVerdict::False)
        );
        assert!(matches!(
            by_name("broken").map(|v| v.filter),
            Some(FilterVerdict::Error(_))
        ));
        let other = by_name("other-repo").unwrap_or_else(|| panic!("other-repo"));
        assert!(!other.repository && other.action);
        assert_eq!(other.filter, FilterVerdict::NotEvaluated);
    }

    #[test]
    fn repository_action_and_filter_all_count() {
        let s = settings();
        let payload = json!({"pull_request": {"base": {"ref": "main"}}}).to_string();
        let headers = vec![("x-github-event".to_owned(), "pull_request".to_owned())];
        let facts = EventFacts {
            action: "opened",
            repository: "o/r",
            payload: payload.as_bytes(),
            headers: &headers,
        };
        let m = match_items(&s, &facts);
        assert_eq!(names(&m), ["plain", "main-only", "by-header"]);
        assert_eq!(m.problems.len(), 1);
        assert_eq!(m.problems[0].item, "broken");

        let facts = EventFacts {
            action: "closed",
            ..facts
        };
        assert!(match_items(&s, &facts).items.is_empty());

        let other = json!({"pull_request": {"base": {"ref": "dev"}}}).to_string();
        let facts = EventFacts {
            action: "synchronize",
            payload: other.as_bytes(),
            ..facts
        };
        assert_eq!(names(&match_items(&s, &facts)), ["plain", "by-header"]);
    }

    #[test]
    fn unparseable_payload_only_fails_filtered_items() {
        let s = settings();
        let facts = EventFacts {
            action: "opened",
            repository: "o/r",
            payload: b"not json",
            headers: &[],
        };
        let m = match_items(&s, &facts);
        assert_eq!(names(&m), ["plain"]);
        assert_eq!(m.problems.len(), 3);
    }
}
