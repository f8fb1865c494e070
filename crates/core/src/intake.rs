//! What an accepted delivery must contain, and how it is stored: the
//! pull-request fields the dispatcher needs and the forwardable headers in
//! GitHub's own spelling.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// A verified pull-request delivery, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// `X-GitHub-Delivery`.
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event_type: String,
    /// Payload `action`.
    pub action: String,
    /// Payload `repository.full_name`.
    pub repository_full_name: String,
    /// Payload `pull_request.number`.
    pub pull_request_number: i64,
    /// The names in payload `pull_request.labels` (`None` when the payload
    /// has no such list), for `dispatcher.priority_labels`.
    pub labels: Option<Vec<String>>,
    /// The body exactly as received (valid UTF-8 JSON).
    pub payload: String,
    /// `X-GitHub-*` / `X-Hub-*` headers, GitHub's spelling, in arrival order.
    pub headers: Vec<(String, String)>,
}

/// The fields every stored pull-request event must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestFields {
    /// `action`.
    pub action: String,
    /// `repository.full_name`.
    pub repository_full_name: String,
    /// `pull_request.number`.
    pub pull_request_number: i64,
    /// The names in `pull_request.labels`; `None` when it is not a list.
    /// Extracted here, where the body is parsed anyway, so the dispatch
    /// pass never reads a payload for them.
    pub labels: Option<Vec<String>>,
}

/// Why a payload cannot be stored; the message is shown to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not parseable JSON (or not UTF-8).
    #[error("Invalid JSON payload: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("Invalid JSON payload: expected a JSON object")]
    NotAnObject,
    /// A required field is absent, null or of the wrong type.
    #[error("Missing or invalid required field: {0}")]
    MissingField(&'static str),
}

#[derive(Deserialize)]
struct Probe<'a> {
    action: Option<serde_json::Value>,
    #[serde(borrow)]
    repository: Option<&'a RawValue>,
    #[serde(borrow)]
    pull_request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RepoProbe {
    full_name: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct PrProbe<'a> {
    number: Option<serde_json::Value>,
    #[serde(borrow)]
    labels: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct LabelProbe {
    name: Option<serde_json::Value>,
}

/// Validates the whole payload as a JSON object and extracts the
/// pull-request fields, without building a tree of the (up to 25 MiB) body.
pub fn pull_request_fields(body: &[u8]) -> Result<PullRequestFields, PayloadError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        // serde would happily read a struct from an array; an event must be an object.
        serde_json::from_slice::<IgnoredAny>(body)
            .map_err(|e| PayloadError::NotJson(e.to_string()))?;
        return Err(PayloadError::NotAnObject);
    }
    // serde_json checks UTF-8 only in the strings it reads, not in the keys
    // and values it skips (found by the fuzz targets): check the whole body.
    let text =
        std::str::from_utf8(body).map_err(|e| PayloadError::NotJson(format!("not UTF-8: {e}")))?;
    let probe: Probe<'_> =
        serde_json::from_str(text).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    if let Some(depth) = too_deep(body) {
        // Each nested parse below starts its own depth count, so a payload
        // deeper than serde_json's limit would pass here and then fail every
        // CEL filter, which reads it whole (found by the fuzz targets).
        return Err(PayloadError::NotJson(format!(
            "nested more than {depth} levels deep, at most {MAX_JSON_DEPTH} are allowed"
        )));
    }
    let action = match probe.action {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err(PayloadError::MissingField("action")),
    };
    let repository_full_name = match nested::<RepoProbe>(probe.repository).and_then(|r| r.full_name)
    {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s,
        _ => return Err(PayloadError::MissingField("repository.full_name")),
    };
    let pr = probe
        .pull_request
        .and_then(|raw| serde_json::from_str::<PrProbe<'_>>(raw.get()).ok());
    let pull_request_number = match pr.as_ref().and_then(|p| p.number.as_ref()) {
        Some(n) => n
            .as_i64()
            .filter(|n| *n > 0)
            .ok_or(PayloadError::MissingField("pull_request.number"))?,
        None => return Err(PayloadError::MissingField("pull_request.number")),
    };
    Ok(PullRequestFields {
        action,
        repository_full_name,
        pull_request_number,
        labels: pr.and_then(|p| label_names(p.labels)),
    })
}

/// The deepest nesting of arrays and objects a payload may have: what
/// `serde_json` reads into a `Value` (its recursion limit of 128), as the
/// rules do for CEL filters.
pub const MAX_JSON_DEPTH: usize = 127;

/// Whether valid JSON `body` nests arrays and objects deeper than
/// [`MAX_JSON_DEPTH`]: returns the depth reached when it does. One pass
/// over the bytes, skipping strings.
fn too_deep(body: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The `name` of every label object in a `labels` list; anything that is
/// not a list is no labels at all (`None`), odd entries are skipped.
fn label_names(raw: Option<&RawValue>) -> Option<Vec<String>> {
    let entries: Vec<&RawValue> = serde_json::from_str(raw?.get()).ok()?;
    Some(
        entries
            .into_iter()
            .filter_map(|l| serde_json::from_str::<LabelProbe>(l.get()).ok())
            .filter_map(|l| match l.name {
                Some(serde_json::Value::String(name)) => Some(name),
                _ => None,
            })
            .collect(),
    )
}

/// Reads the few fields we need from a nested object; anything that is not
/// an object (a string, null, ...) simply has none of them.
fn nested<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// Whether a header is kept and forwarded to the EventListener: every
/// `X-GitHub-*` and `X-Hub-*` header (the GitHub interceptor needs them).
pub fn is_forwardable_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-github-") || lower.starts_with("x-hub-")
}

/// GitHub's spelling of a header name that HTTP libraries hand us in lower
/// case: `x-github-hook-installation-target-id` →
/// `X-GitHub-Hook-Installation-Target-ID`, `x-hub-signature-256` →
/// `X-Hub-Signature-256`.
pub fn github_header_spelling(name: &str) -> String {
    name.split('-')
        .map(|part| match part.to_ascii_lowercase().as_str() {
            "github" => "GitHub".to_owned(),
            "id" => "ID".to_owned(),
            lower => {
                let mut chars = lower.chars();
                match chars.next() {
                    Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
                    None => String::new(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fields() {
        let body = br#"{"action":"opened","number":7,"pull_request":{"number":7,"head":{}},"repository":{"full_name":"o/r","id":1},"extra":[1,2]}"#;
        assert_eq!(
            pull_request_fields(body),
            Ok(PullRequestFields {
                action: "opened".into(),
                repository_full_name: "o/r".into(),
                pull_request_number: 7,
                labels: None,
            })
        );
    }

    #[test]
    fn extracts_label_names_leniently() {
        let labels = |pr: &str| {
            let body = format!(
                r#"{{"action":"labeled","repository":{{"full_name":"o/r"}},"pull_request":{{"number":1{pr}}}}}"#
            );
            pull_request_fields(body.as_bytes()).map(|f| f.labels)
        };
        assert_eq!(
            labels(
                r#","labels":[{"name":"priority/high","color":"f00"},{"id":3},{"name":7},"x",{"name":"b"}]"#
            ),
            Ok(Some(vec!["priority/high".to_owned(), "b".to_owned()]))
        );
        assert_eq!(labels(r#","labels":[]"#), Ok(Some(Vec::new())));
        assert_eq!(labels(""), Ok(None));
        assert_eq!(labels(r#","labels":null"#), Ok(None));
        assert_eq!(labels(r#","labels":{"name":"x"}"#), Ok(None));
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert_eq!(
            pull_request_fields(b"[1,2]"),
            Err(PayloadError::NotAnObject)
        );
        assert_eq!(
            pull_request_fields(b"  \"x\""),
            Err(PayloadError::NotAnObject)
        );
        assert!(matches!(
            pull_request_fields(b"{\"action\":"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            pull_request_fields(b""),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            pull_request_fields(b"[1,"),
            Err(PayloadError::NotJson(_))
        ));
        assert!(matches!(
            pull_request_fields(b"{\"a\":1} trailing"),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn names_the_missing_field() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"repository":{"full_name":"o/r"},"pull_request":{"number":1}}"#, "action"),
            (br#"{"action":"opened","pull_request":{"number":1}}"#, "repository.full_name"),
            (br#"{"action":"opened","repository":{"full_name":5},"pull_request":{"number":1}}"#, "repository.full_name"),
            (br#"{"action":"opened","repository":{"full_name":"o/r"}}"#, "pull_request.number"),
            (br#"{"action":"opened","repository":{"full_name":"o/r"},"pull_request":{"number":"1"}}"#, "pull_request.number"),
            (br#"{"action":"opened","repository":"o/r","pull_request":{"number":1}}"#, "repository.full_name"),
        ];
        for (body, field) in cases {
            assert_eq!(
                pull_request_fields(body),
                Err(PayloadError::MissingField(field)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Found by the fuzz targets: a payload nested deeper than serde_json
    /// reads into a `Value` was accepted (each nested probe counts its own
    /// depth) and then failed every CEL filter.
    #[test]
    fn payloads_nest_only_as_deep_as_the_rules_read() {
        let body = |depth: usize| {
            format!(
                r#"{{"action":"opened","repository":{{"full_name":"o/r"}},"pull_request":{{"number":1,"labels":{}1{},"t":"[[[{{"}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        // The object and pull_request are two levels.
        let deepest = body(MAX_JSON_DEPTH - 2);
        assert!(pull_request_fields(deepest.as_bytes()).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&deepest).is_ok());
        let deeper = body(MAX_JSON_DEPTH - 1);
        assert!(serde_json::from_str::<serde_json::Value>(&deeper).is_err());
        assert!(matches!(
            pull_request_fields(deeper.as_bytes()),
            Err(PayloadError::NotJson(e)) if e.contains("nested more than")
        ));
    }

    /// Found by the fuzz targets: invalid UTF-8 in a key or value the probe
    /// skips was accepted.
    #[test]
    fn rejects_invalid_utf8_anywhere() {
        let body = b"{\"action\":\"opened\",\"repository\":{\"full_name\":\"o/r\"},\"pull_request\":{\"number\":7},\"sender\":{\"log\x81n\":\"octocat\",\"x\":\"\xff\"}}";
        assert!(matches!(
            pull_request_fields(body),
            Err(PayloadError::NotJson(e)) if e.contains("not UTF-8")
        ));
        let fine = String::from_utf8_lossy(body);
        assert!(pull_request_fields(fine.as_bytes()).is_ok());
    }

    #[test]
    fn header_spelling_matches_github() {
        for (lower, github) in [
            ("x-github-event", "X-GitHub-Event"),
            ("x-github-delivery", "X-GitHub-Delivery"),
            ("x-github-hook-id", "X-GitHub-Hook-ID"),
            (
                "x-github-hook-installation-target-id",
                "X-GitHub-Hook-Installation-Target-ID",
            ),
            (
                "x-github-hook-installation-target-type",
                "X-GitHub-Hook-Installation-Target-Type",
            ),
            ("x-hub-signature", "X-Hub-Signature"),
            ("x-hub-signature-256", "X-Hub-Signature-256"),
        ] {
            assert_eq!(github_header_spelling(lower), github);
            assert!(is_forwardable_header(lower));
        }
        assert!(!is_forwardable_header("user-agent"));
        assert!(!is_forwardable_header("x-githubby"));
    }
}
