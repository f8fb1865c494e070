//! # dispatcher-fuzz-targets
//!
//! The bodies of the fuzz targets, in one place for both drivers:
//! `fuzz/` (cargo-fuzz with libFuzzer on the nightly toolchain, outside the
//! workspace, see docs/FUZZING.md) calls each function on the fuzzer's bytes,
//! and `tests/properties.rs` (stable, part of `just test`) calls the same
//! functions with proptest's arbitrary bytes and structure-aware generators.
//!
//! Each target feeds untrusted input to one entry point of the product and
//! checks what must hold for any input: no panic (not even one the product
//! catches: a caught panic of the CEL parser or interpreter fails a target
//! too), errors of the documented kind, and a few invariants of the result.
//! Hangs and memory are bounded by the drivers (libFuzzer's `-timeout` and
//! `-rss_limit_mb`, a wall-clock bound per proptest case).
//!
//! **Owns:** nothing of the product. **Must not:** be a dependency of any
//! crate but test support (`scripts/check-layers`).

use dispatcher_core::config::{self, Settings};
use dispatcher_core::intake::{github_header_spelling, is_forwardable_header, pull_request_fields};
use dispatcher_core::rules::{CelCompileError, CelEvalError, CelFilter};
use dispatcher_http::{ApiError, MAX_PAGE_SIZE, parse_query};
use dispatcher_sig::{SignatureError, SigningKeys, check_header_syntax, sign};
use serde_json::Value;

/// The names of the targets, as `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` spell them.
pub const TARGETS: &[&str] = &[
    "signature_header",
    "intake",
    "events_query",
    "config",
    "cel",
];

/// Splits `data` at its first NUL byte: the part before it and the part
/// after it (empty when there is none).
pub fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

const FUZZ_SECRET: &[u8] = b"It's a Secret to Everybody";

/// `X-Hub-Signature-256` parsing and verification: `header\0body`.
///
/// The form check before the body and the verification after it agree on
/// every header; a signature made by [`sign`] always verifies.
pub fn signature_header(data: &[u8]) {
    let (header, body) = split_at_nul(data);
    let header = String::from_utf8_lossy(header);
    let syntax = check_header_syntax(Some(&header));
    let keys = SigningKeys::new([FUZZ_SECRET, body]);
    let verdict = keys.verify(body, header.as_ref());
    match syntax {
        Ok(()) => {
            assert!(
                matches!(verdict, Ok(()) | Err(SignatureError::Mismatch)),
                "well-formed header {header:?} verified as {verdict:?}"
            );
            assert_eq!(header.trim().len(), "sha256=".len() + 64, "{header:?}");
        }
        Err(reason) => assert_eq!(verdict, Err(reason), "{header:?}"),
    }
    let signed = sign(FUZZ_SECRET, body);
    assert_eq!(check_header_syntax(Some(&signed)), Ok(()));
    assert_eq!(keys.verify(body, signed.as_str()), Ok(()));
    assert_eq!(
        SigningKeys::new(Vec::<&[u8]>::new()).verify(body, header.as_ref()),
        Err(SignatureError::NoSecrets)
    );
}

/// Field extraction of the intake (`pull_request_fields`) on a raw body, and
/// the header-name helpers on the same bytes as a header name.
///
/// An accepted body is a JSON object the rules can parse again (CEL filters
/// read it as a `serde_json::Value`), with a non-empty action and repository
/// and a positive pull-request number.
pub fn intake(data: &[u8]) {
    if let Ok(fields) = pull_request_fields(data) {
        assert!(!fields.action.is_empty());
        assert!(!fields.repository_full_name.is_empty());
        assert!(fields.pull_request_number > 0);
        let reparsed = serde_json::from_slice::<Value>(data);
        assert!(
            reparsed.as_ref().is_ok_and(Value::is_object),
            "accepted a body the rules cannot read: {reparsed:?}"
        );
    }
    let name = String::from_utf8_lossy(data);
    let spelled = github_header_spelling(&name);
    assert!(
        spelled.eq_ignore_ascii_case(&name),
        "{name:?} → {spelled:?}"
    );
    assert_eq!(
        is_forwardable_header(&name),
        is_forwardable_header(&spelled)
    );
}

/// The events API's query string (`page`, `page_size`, `filter=k=v;...`):
/// the bytes as a whole query and as the value of `filter`.
///
/// Any answer is a query within the documented bounds or a 400.
pub fn events_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for query in [text.to_string(), format!("filter={text}")] {
        match parse_query(Some(&query)) {
            Ok(q) => {
                assert!(q.page >= 1, "{query:?}");
                assert!((1..=MAX_PAGE_SIZE).contains(&q.page_size), "{query:?}");
            }
            Err(e) => {
                assert!(matches!(e, ApiError::BadRequest(_)), "{query:?}: {e:?}");
                assert_eq!(e.status().as_u16(), 400);
                let _ = e.to_string();
            }
        }
    }
}

/// The environment the config target expands `${VAR}` with.
pub fn fuzz_env(name: &str) -> Option<String> {
    match name {
        "SECRET" | "GITHUB_WEBHOOK_SECRET" => Some("s3cr3t".to_owned()),
        "EMPTY" => Some(String::new()),
        // Expanded text is never expanded again.
        "NESTED" => Some("${SECRET}".to_owned()),
        "PORT" => Some("8080".to_owned()),
        _ => None,
    }
}

/// Config loading after the file is read: `${VAR}` expansion, the
/// environment overrides, parsing and validation into [`Settings`] (which
/// compiles every CEL filter). Bytes that are not JSON are expanded as one
/// string.
pub fn config(data: &[u8]) {
    let Ok(mut tree) = serde_json::from_slice::<Value>(data) else {
        let text = String::from_utf8_lossy(data);
        let mut value = Value::String(text.to_string());
        match config::expand_env(&mut value, &fuzz_env) {
            Ok(()) if !text.contains("${") => assert_eq!(value.as_str(), Some(text.as_ref())),
            Ok(()) => assert!(value.is_string()),
            Err(errors) => assert!(!errors.is_empty()),
        }
        return;
    };
    let _ = config_tree(&mut tree);
}

/// [`config`] on a parsed tree: the [`Settings`] when the tree is valid.
pub fn config_tree(tree: &mut Value) -> Option<Settings> {
    config::expand_env(tree, &fuzz_env).ok()?;
    config::apply_env_overrides(tree, &fuzz_env).ok()?;
    let (raw, _unknown) = config::parse(tree.clone()).ok()?;
    let settings = Settings::from_raw(raw).ok()?;
    for item in &settings.items {
        assert!(settings.pools.contains_key(&item.pool), "{}", item.name);
    }
    Some(settings)
}

/// The payload the CEL target evaluates with when its bytes carry none
/// that parses.
pub fn default_payload() -> Value {
    serde_json::json!({
        "action": "opened",
        "number": 7,
        "repository": {"full_name": "o/r"},
        "pull_request": {
            "number": 7,
            "title": "Fix it",
            "base": {"ref": "main"},
            "labels": [{"name": "bug"}, {"name": "priority/high"}],
        },
    })
}

/// The headers every CEL evaluation sees.
pub fn fuzz_headers() -> Vec<(String, String)> {
    [
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-hub-signature-256", "sha256=00"),
        ("X-GitHub-Hook-ID", "1"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect()
}

/// CEL compile and evaluate: `expression\0payload`. A payload that is not
/// JSON is replaced by [`default_payload`].
pub fn cel(data: &[u8]) {
    let (expression, payload) = split_at_nul(data);
    let body = serde_json::from_slice(payload).unwrap_or_else(|_| default_payload());
    cel_eval(&String::from_utf8_lossy(expression), &body);
}

/// Compiles `expression` and evaluates it on `body` with [`fuzz_headers`]:
/// any error but a caught panic (or an internal compile error) is fine.
pub fn cel_eval(expression: &str, body: &Value) {
    let filter = match CelFilter::compile(expression) {
        Ok(filter) => filter,
        Err(error) => {
            assert!(
                !matches!(error, CelCompileError::Internal { .. }),
                "{expression:?}: {error}"
            );
            return;
        }
    };
    match filter.evaluate(body, &fuzz_headers()) {
        Ok(_) | Err(CelEvalError::NotABool { .. }) => {}
        Err(CelEvalError::Execution(error)) => assert!(
            !error.contains("the CEL interpreter panicked"),
            "{expression:?}: {error}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_first_nul() {
        assert_eq!(split_at_nul(b"a\0b\0c"), (&b"a"[..], &b"b\0c"[..]));
        assert_eq!(split_at_nul(b"abc"), (&b"abc"[..], &b""[..]));
    }

    #[test]
    fn every_target_takes_empty_input() {
        signature_header(b"");
        intake(b"");
        events_query(b"");
        config(b"");
        cel(b"");
    }
}
