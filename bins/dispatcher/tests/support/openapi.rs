//! Checks answers against the service's OpenAPI 3.1 document: finds the
//! response for (method, path template, status), picks its media type and
//! validates a JSON body against the schema.
//!
//! A small JSON Schema validator for the subset the document uses: `type`
//! (a name or a list, `integer` included), `properties`, `required`,
//! `additionalProperties` (`false` or a schema), `items`, `enum`, `const`,
//! `$ref` (into this document), `allOf`/`anyOf`/`oneOf`, `minimum`/`maximum`
//! and `format` (`date-time`, `uuid`, `uri`, loosely). Any other keyword
//! that constrains values makes it panic, so the document cannot grow a rule
//! that is silently not checked. (The `jsonschema` crate would do the same
//! with a dozen more dependencies to build; this is what the document needs.)

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

/// Keywords that only describe.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "default",
    "example",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

pub struct Spec {
    doc: Value,
    /// (METHOD, template, status) of every answer checked.
    seen: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Spec {
    pub fn new(doc: Value) -> Self {
        assert_eq!(doc["openapi"], "3.1.0", "not an OpenAPI 3.1 document");
        Self {
            doc,
            seen: Mutex::new(BTreeSet::new()),
        }
    }

    /// Every (METHOD, path template) the document describes.
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    ops.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    /// Every answer checked so far.
    pub fn seen(&self) -> BTreeSet<(String, String, u16)> {
        self.seen.lock().unwrap().clone()
    }

    /// Follows `$ref`s (into this document) until a value without one.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else {
                return v;
            };
            v = self.target(r);
        }
        panic!("$ref loop at {v}");
    }

    fn target(&self, r: &str) -> &Value {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("$ref {r} leaves the document"));
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {r} does not resolve"))
    }

    /// Checks one answer: the document must describe `status` for the
    /// operation, with `content_type`'s media type, and a JSON body must
    /// validate against its schema.
    pub fn check(
        &self,
        method: &str,
        template: &str,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<(), Vec<String>> {
        self.seen
            .lock()
            .unwrap()
            .insert((method.to_owned(), template.to_owned(), status));
        let item = &self.doc["paths"][template];
        let mut op = &item[method.to_ascii_lowercase()];
        if !op.is_object() && status == 405 {
            // A method the route does not serve: the route's 405 answer
            // (every operation documents the same one).
            op = item
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, op)| op)
                .find(|op| op["responses"].get("405").is_some())
                .unwrap_or(op);
        }
        if !op.is_object() {
            return Err(vec![format!("{method} {template} is not documented")]);
        }
        let responses = &op["responses"];
        let class = format!("{}XX", status / 100);
        let Some(response) = [status.to_string().as_str(), class.as_str(), "default"]
            .iter()
            .find_map(|k| responses.get(*k))
        else {
            return Err(vec![format!(
                "{method} {template}: status {status} is not documented"
            )]);
        };
        let response = self.resolve(response);
        let essence = |t: &str| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        };
        let wanted = essence(content_type);
        let Some((_, media)) = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, _)| essence(k) == wanted)
        else {
            return Err(vec![format!(
                "{method} {template} {status}: content type {content_type} is not documented"
            )]);
        };
        let schema = &media["schema"];
        let value = if wanted == "application/json" {
            serde_json::from_slice(body)
                .map_err(|e| vec![format!("{method} {template} {status}: not JSON: {e}")])?
        } else {
            Value::String(
                String::from_utf8(body.to_vec())
                    .map_err(|e| vec![format!("{method} {template} {status}: not UTF-8: {e}")])?,
            )
        };
        let mut errors = Vec::new();
        self.validate(schema, &value, "$", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors
                .into_iter()
                .map(|e| format!("{method} {template} {status}: {e}"))
                .collect())
        }
    }

    /// Validates `value` against `schema`, adding what fails to `errors`
    /// (`at` is the JSON path shown).
    pub fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let map = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                errors.push(format!("{at}: nothing is allowed here"));
                return;
            }
            Value::Object(map) => map,
            other => panic!("not a schema: {other}"),
        };
        for (keyword, arg) in map {
            match keyword.as_str() {
                "$ref" => self.validate(self.target(arg.as_str().unwrap()), value, at, errors),
                "type" => {
                    let names: Vec<&str> = match arg {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
                        other => panic!("bad type {other}"),
                    };
                    if !names.iter().any(|t| has_type(value, t)) {
                        errors.push(format!("{at}: {value} is not of type {arg}"));
                    }
                }
                "enum" => {
                    if !arg.as_array().unwrap().contains(value) {
                        errors.push(format!("{at}: {value} is not one of {arg}"));
                    }
                }
                "const" => {
                    if arg != value {
                        errors.push(format!("{at}: {value} is not {arg}"));
                    }
                }
                "format" => {
                    if let Some(s) = value.as_str()
                        && !has_format(s, arg.as_str().unwrap())
                    {
                        errors.push(format!("{at}: '{s}' is not a {arg}"));
                    }
                }
                "minimum" | "maximum" => {
                    if let (Some(n), Some(bound)) = (value.as_f64(), arg.as_f64()) {
                        let ok = if keyword == "minimum" {
                            n >= bound
                        } else {
                            n <= bound
                        };
                        if !ok {
                            errors.push(format!("{at}: {n} is out of its {keyword} {bound}"));
                        }
                    }
                }
                "required" => {
                    if let Some(obj) = value.as_object() {
                        for name in arg.as_array().unwrap() {
                            if !obj.contains_key(name.as_str().unwrap()) {
                                errors.push(format!("{at}: required field {name} is missing"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(obj) = value.as_object() {
                        for (name, sub) in arg.as_object().unwrap() {
                            if let Some(v) = obj.get(name) {
                                self.validate(sub, v, &format!("{at}.{name}"), errors);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(obj) = value.as_object() {
                        let declared = map.get("properties").and_then(Value::as_object);
                        for (name, v) in obj {
                            if declared.is_some_and(|d| d.contains_key(name)) {
                                continue;
                            }
                            if arg == &Value::Bool(false) {
                                errors.push(format!("{at}: field '{name}' is not in the document"));
                            } else {
                                self.validate(arg, v, &format!("{at}.{name}"), errors);
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(items) = value.as_array() {
                        for (i, v) in items.iter().enumerate() {
                            self.validate(arg, v, &format!("{at}[{i}]"), errors);
                        }
                    }
                }
                "allOf" => {
                    for sub in arg.as_array().unwrap() {
                        self.validate(sub, value, at, errors);
                    }
                }
                "anyOf" | "oneOf" => {
                    let outcomes: Vec<Vec<String>> = arg
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|sub| {
                            let mut e = Vec::new();
                            self.validate(sub, value, at, &mut e);
                            e
                        })
                        .collect();
                    let passed = outcomes.iter().filter(|e| e.is_empty()).count();
                    if passed == 0 || (keyword == "oneOf" && passed > 1) {
                        errors.push(format!(
                            "{at}: {passed} of the {keyword} alternatives match; each: {outcomes:?}"
                        ));
                    }
                }
                k if ANNOTATIONS.contains(&k) => {}
                other => panic!("the validator does not know the keyword '{other}' ({at})"),
            }
        }
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown type {other}"),
    }
}

/// Loose format checks: the shape, not every rule of the RFCs.
fn has_format(s: &str, format: &str) -> bool {
    match format {
        // 2026-12-02T10:00:00Z, 2026-12-02T10:00:00.123456+02:00
        "date-time" => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
        }
        "uuid" => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
                && parts
                    .iter()
                    .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        }
        "uri" => s.starts_with("http://") || s.starts_with("https://"),
        other => panic!("the validator does not know the format '{other}'"),
    }
}
