//! `${VAR}` expansion in every string value of a parsed config tree.
//!
//! The original service's documentation shows `"${GITHUB_WEBHOOK_SECRET}"`
//! in its YAML but never expanded it; we do. `${VAR:-fallback}` uses the
//! fallback when `VAR` is unset or empty, and `$${` writes a literal `${`.
//! The environment is passed in as a lookup function so this stays pure.

use serde_json::Value;

use super::ConfigError;

/// Expands `${VAR}` in every string of `value`, in place. All unset variables
/// are reported, each with the path of the field that names it.
pub fn expand_env(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Vec<ConfigError>> {
    let mut errors = Vec::new();
    walk(value, String::new(), lookup, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        Value::String(s) => match expand_str(s, lookup) {
            Ok(Some(expanded)) => *s = expanded,
            Ok(None) => {}
            Err(message) => errors.push(ConfigError::new(path, message)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(item, child, lookup, errors);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Returns `Ok(None)` when the string has nothing to expand.
fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(inner) = after.strip_prefix("${") {
            let end = inner
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let expr = &inner[..end];
            let (name, fallback) = match expr.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name `{name}` in `${{{expr}}}`"));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || fallback.is_none()),
                fallback,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_nested_strings() {
        let mut v = json!({"security": {"github_webhook_secret": "${SECRET}"}, "list": ["a-${SECRET}-b", 3]});
        expand_env(&mut v, &env).unwrap();
        assert_eq!(
            v,
            json!({"security": {"github_webhook_secret": "s3cr3t"}, "list": ["a-s3cr3t-b", 3]})
        );
    }

    #[test]
    fn unset_variable_names_variable_and_field() {
        let mut v = json!({"dispatcher": {"items": [{"callback_url": "${NOPE}"}]}});
        let errs = expand_env(&mut v, &env).unwrap_err();
        assert_eq!(errs.len(), 1);
        let text = errs[0].to_string();
        assert!(text.contains("dispatcher.items[0].callback_url"), "{text}");
        assert!(text.contains("NOPE"), "{text}");
    }

    #[test]
    fn fallback_escape_and_plain_dollars() {
        let mut v = json!([
            "${NOPE:-dflt}",
            "${EMPTY:-dflt}",
            "$${SECRET}",
            "cost $5",
            "${EMPTY}"
        ]);
        expand_env(&mut v, &env).unwrap();
        assert_eq!(v, json!(["dflt", "dflt", "${SECRET}", "cost $5", ""]));
    }

    #[test]
    fn malformed_references_are_errors() {
        for bad in ["${SECRET", "${}", "${A B}"] {
            let mut v = json!(bad);
            assert!(expand_env(&mut v, &env).is_err(), "{bad}");
        }
    }
}
