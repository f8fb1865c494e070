//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of every route,
//! request and response, errors included (`assets/openapi.json`, embedded),
//! and [`ROUTES`], the list of what the router serves.
//!
//! Both are kept honest by tests: `tests/openapi.rs` sends a request to each
//! of [`ROUTES`] (served, and every other method answered 405) and the unit
//! tests below require the document's paths × methods to equal [`ROUTES`],
//! every `$ref` to resolve and the enums to equal the domain's vocabularies.
//! The end-to-end test `bins/dispatcher/tests/openapi.rs` validates every
//! answer of a recorded run against the document's schemas
//! (`additionalProperties: false` wherever a shape is fixed, so a field
//! added to an answer but not to the document fails it).

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::response::ApiResponse;

/// Every route the router serves: (method, path template). `{id}` is an
/// event's UUID, `{pool}` a pool key (it contains a `/`). The single source
/// of truth for the route tests and the document's `paths`.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/webhooks/github-pipeline"),
    ("GET", "/api/v1/events/status"),
    ("GET", "/api/v1/events/{id}"),
    ("GET", "/api/v1/events/{id}/explain"),
    ("POST", "/api/v1/events/{id}/replay"),
    ("POST", "/api/v1/events/{id}/cancel"),
    ("GET", "/api/v1/pools"),
    ("GET", "/api/v1/pools/{pool}"),
    ("POST", "/api/v1/pools/{pool}/pause"),
    ("POST", "/api/v1/pools/{pool}/resume"),
    ("GET", "/api/v1/status/ping"),
    ("GET", "/api/v1/status/db"),
    ("GET", "/api/v1/status/ready"),
    ("GET", "/api/v1/status/live"),
    ("GET", "/metrics"),
    ("GET", OPENAPI_PATH),
    // The dashboard (`dashboard::PATHS`, each listed here: tested below).
    ("GET", "/"),
    ("GET", "/ui/events/{id}"),
    ("GET", "/ui/search"),
    ("GET", "/ui/assets/dashboard.css"),
    ("GET", "/ui/assets/dashboard.js"),
];

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// The OpenAPI 3.1 document, as served.
pub const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// The answer of `GET /api/v1/openapi.json` (open, no token).
pub(crate) fn answer() -> ApiResponse {
    let mut response = ApiResponse::new(Full::new(Bytes::from_static(OPENAPI_JSON.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use dispatcher_core::domain::{DispatchState, EventStatus, TimelineKind};
    use serde_json::Value;

    use super::*;

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::from_str(OPENAPI_JSON).unwrap_or_else(|e| panic!("openapi.json: {e}"))
    }

    fn schema<'d>(doc: &'d Value, name: &str) -> &'d Value {
        let s = &doc["components"]["schemas"][name];
        assert!(s.is_object(), "no schema {name}");
        s
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The operations of the document: (METHOD, path, operation).
    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                if METHODS.contains(&method.as_str()) {
                    ops.push((method.to_ascii_uppercase(), path.clone(), op));
                }
            }
        }
        ops
    }

    #[test]
    fn is_openapi_3_1_and_documents_exactly_the_routes_served() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "a route is listed twice");
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "served but not documented: {missing:?}; documented but not served: {extra:?}"
        );
    }

    fn refs<'d>(v: &'d Value, out: &mut Vec<&'d str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_schema_is_used() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in &found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
        for section in ["schemas", "responses", "parameters"] {
            for name in doc["components"][section]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                let r = format!("#/components/{section}/{name}");
                assert!(found.contains(&r.as_str()), "{r} is never used");
            }
        }
    }

    #[test]
    fn every_operation_lists_its_errors_with_the_error_schema() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: no responses"));
            let has = |code: &str| responses.contains_key(code);
            assert!(has("200") && has("405") && has("408"), "{method} {path}");
            let security: Vec<String> = op["security"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: security not stated"))
                .iter()
                .flat_map(|s| s.as_object().into_iter().flatten().map(|(k, _)| k.clone()))
                .collect();
            if !security.is_empty() {
                assert!(has("401"), "{method} {path}: token without 401");
            }
            if security == ["adminToken"] {
                assert!(has("403"), "{method} {path}: admin without 403");
            }
            if path.contains("{id}") || path.contains("{pool}") {
                assert!(has("404"), "{method} {path}: path value without 404");
            }
            for (code, answer) in responses {
                if code.starts_with('4') {
                    let r = answer["$ref"].as_str().unwrap_or_default();
                    assert!(
                        r.starts_with("#/components/responses/"),
                        "{method} {path} {code}: errors use the shared responses"
                    );
                }
            }
        }
        for (name, response) in doc["components"]["responses"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{name}"
            );
        }
    }

    #[test]
    fn enums_are_the_domain_vocabularies() {
        let doc = document();
        let names = |all: &[&str]| all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            strings(&schema(&doc, "EventStatus")["enum"]),
            names(
                &EventStatus::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            )
        );
        assert_eq!(
            strings(&schema(&doc, "DispatchState")["enum"]),
            names(
                &DispatchState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            )
        );
        assert_eq!(
            strings(&schema(&doc, "TimelineKind")["enum"]),
            names(
                &TimelineKind::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            )
        );
    }

    /// `IntakeAnswer` and `EventDetail` repeat `Event`'s fields (they are
    /// flattened on the wire; `additionalProperties: false` cannot see
    /// through `allOf`): the copies must not drift.
    #[test]
    fn answers_that_flatten_the_event_repeat_its_fields_exactly() {
        let doc = document();
        let event = schema(&doc, "Event");
        for name in ["IntakeAnswer", "EventDetail"] {
            let other = schema(&doc, name);
            for (field, _) in event["properties"].as_object().into_iter().flatten() {
                let (a, b) = (&event["properties"][field], &other["properties"][field]);
                let type_of =
                    |v: &Value| (v["type"].clone(), v["$ref"].clone(), v["format"].clone());
                assert_eq!(type_of(a), type_of(b), "{name}.{field}");
                assert!(
                    strings(&other["required"]).contains(field),
                    "{name}: {field} not required"
                );
            }
            assert_eq!(other["additionalProperties"], false, "{name}");
        }
    }

    /// Every path the router's match names is one of [`ROUTES`]: a match
    /// arm `"<path>" =>` in `App::route` names a listed path (`""` is `/`,
    /// trailing slashes are trimmed before matching), a
    /// `starts_with("<prefix>")` guard a prefix of one, and a guard
    /// `<module>::owns(p)` hands paths to a module whose own list of paths
    /// must be listed (the dashboard's [`crate::dashboard::PATHS`], which
    /// its `owns` and `route` are defined by; a module this test does not
    /// know fails it). A route added without listing (and so documenting)
    /// it fails here.
    #[test]
    fn every_path_the_router_names_is_listed() {
        let source = include_str!("lib.rs");
        let start = source
            .find("async fn route")
            .unwrap_or_else(|| panic!("no route fn"));
        let end = start
            + source[start..]
                .find("\n    fn ")
                .unwrap_or_else(|| panic!("no end"));
        let body = &source[start..end];
        let arms: Vec<&str> = body
            .match_indices("\" =>")
            .map(|(i, _)| {
                let before = &body[..i];
                &before[before.rfind('"').map_or(0, |o| o + 1)..]
            })
            .collect();
        let prefixes: Vec<&str> = body
            .match_indices("starts_with(\"")
            .map(|(i, m)| {
                let rest = &body[i + m.len()..];
                &rest[..rest.find('"').unwrap_or(0)]
            })
            .collect();
        assert!(
            arms.len() >= 6 && prefixes.len() >= 2,
            "the router scan found too little: {arms:?} {prefixes:?}"
        );
        for arm in arms {
            let path = if arm.is_empty() { "/" } else { arm };
            assert!(
                ROUTES.iter().any(|(_, t)| *t == path),
                "the router serves {path} but ROUTES does not list it"
            );
        }
        for prefix in prefixes {
            assert!(
                prefix.len() > 1 && ROUTES.iter().any(|(_, t)| t.starts_with(prefix)),
                "the router serves {prefix}... but ROUTES lists nothing under it"
            );
        }
        let delegates: Vec<&str> = body
            .match_indices("::owns(")
            .map(|(i, _)| {
                let before = &body[..i];
                let start = before
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |o| o + 1);
                &before[start..]
            })
            .collect();
        assert_eq!(
            delegates,
            ["dashboard"],
            "the router hands paths to these modules' owns(); this test checks the dashboard's PATHS only"
        );
        for path in crate::dashboard::PATHS {
            assert!(
                ROUTES.contains(&("GET", path)),
                "the dashboard serves GET {path} but ROUTES does not list it"
            );
        }
    }

    #[test]
    fn is_served_as_json() {
        let response = answer();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "application/json"
        );
    }
}
