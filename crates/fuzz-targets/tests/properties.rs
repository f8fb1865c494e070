//! The fuzz targets as stable property tests (part of `just test`, so CI
//! covers them without nightly): arbitrary bytes, and structure-aware
//! inputs (hostile CEL expressions, JSON payloads of odd shapes, config
//! trees). Each case must end within a generous wall-clock bound; the real
//! bounds are the product's limits (CEL source length, nesting, tree depth;
//! serde_json's recursion limit), not this timer.

use std::time::{Duration, Instant};

use dispatcher_fuzz_targets as targets;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Far above what any case needs (debug build, a loaded machine): it only
/// catches a case that does not end.
const CASE_BOUND: Duration = Duration::from_secs(20);

fn bounded(what: &str, run: impl FnOnce()) {
    let started = Instant::now();
    run();
    let took = started.elapsed();
    assert!(took < CASE_BOUND, "{what} took {took:?}");
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// JSON of odd shapes: deep, wide, big numbers, odd strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("x".repeat(10_000))),
    ];
    leaf.prop_recursive(24, 256, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("action".to_owned()),
                    Just("pull_request".to_owned()),
                    Just("repository".to_owned()),
                    Just("full_name".to_owned()),
                    Just("number".to_owned()),
                    Just("labels".to_owned()),
                    Just("name".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A pull-request payload with any of its fields replaced by odd JSON.
fn pr_payload() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        0u8..16,
    )
        .prop_map(|(action, name, number, labels, mask)| {
            let mut body = targets::default_payload();
            if mask & 1 != 0 {
                body["action"] = action;
            }
            if mask & 2 != 0 {
                body["repository"]["full_name"] = name;
            }
            if mask & 4 != 0 {
                body["pull_request"]["number"] = number;
            }
            if mask & 8 != 0 {
                body["pull_request"]["labels"] = labels;
            }
            body
        })
}

/// Pieces of CEL, hostile ones included.
fn cel_atom() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("body".to_owned()),
        Just("body.pull_request".to_owned()),
        Just("body.pull_request.labels".to_owned()),
        Just("body.repository.full_name".to_owned()),
        Just("headers['X-GitHub-Event']".to_owned()),
        Just("header.canonical('X-GitHub-Event')".to_owned()),
        Just("header.match('X-GitHub-Event', 'pull_request')".to_owned()),
        Just("'a'".to_owned()),
        Just("''".to_owned()),
        Just("9223372036854775807".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("18446744073709551615u".to_owned()),
        Just("1e308".to_owned()),
        Just("[1, 2, 3]".to_owned()),
        Just("{'k': 1}".to_owned()),
        Just("null".to_owned()),
        Just("b'\\xff'".to_owned()),
        (0usize..20_000).prop_map(|n| format!("'{}'", "x".repeat(n))),
        (0usize..2_000).prop_map(|n| format!("[{}]", vec!["1"; n].join(","))),
        "[a-z_]{1,8}",
        "-?[0-9]{1,25}",
    ]
}

/// CEL expressions: deep nesting, long chains, string ops, macros.
fn cel_expression() -> impl Strategy<Value = String> {
    cel_atom().prop_recursive(40, 200, 4, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} + {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} == {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} / {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} % {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} && {b}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{b} in {a}")),
            inner.clone().prop_map(|a| format!("size({a})")),
            inner.clone().prop_map(|a| format!("has({a}.x)")),
            inner.clone().prop_map(|a| format!("!{a}")),
            inner.clone().prop_map(|a| format!("[{a}]")),
            inner.clone().prop_map(|a| format!("{a}.lowerAscii()")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.split({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.replace({b}, {a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.matches({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.substring({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.join({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.map(x, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.exists(x, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.all(x, x == {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.filter(x, {b})")),
            inner.clone().prop_map(|a| format!("int({a})")),
            inner.clone().prop_map(|a| format!("string({a})")),
            inner.prop_map(|a| format!("double({a})")),
        ]
    })
}

/// Deep bracket nesting and long chains, around and over the limits.
fn cel_deep() -> impl Strategy<Value = String> {
    prop_oneof![
        (0usize..200).prop_map(|n| format!("{}true{}", "(".repeat(n), ")".repeat(n))),
        (0usize..200).prop_map(|n| format!("{}1{}", "[".repeat(n), "]".repeat(n))),
        (0usize..200).prop_map(|n| format!("{}1{}", "{1:".repeat(n), "}".repeat(n))),
        (0usize..4_000).prop_map(|n| format!("body{}", ".a".repeat(n))),
        (0usize..4_000).prop_map(|n| vec!["1"; n + 1].join(" + ")),
        (0usize..4_000).prop_map(|n| "!".repeat(n) + "true"),
        (0usize..4_000).prop_map(|n| "-".repeat(n) + "1"),
        (0usize..100).prop_map(|n| {
            let mut e = "body.pull_request.labels".to_owned();
            for i in 0..n {
                e = format!("{e}.map(x{i}, [x{i}])");
            }
            format!("size({e}) > 0")
        }),
        (0usize..100).prop_map(|n| {
            let mut e = "[1,2,3,4,5,6,7,8]".to_owned();
            for i in 0..n {
                e = format!("[1,2,3,4,5,6,7,8].map(y{i}, {e})");
            }
            format!("size({e}) > 0")
        }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn signature_header_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        bounded("signature_header", || targets::signature_header(&data));
    }

    #[test]
    fn signature_header_near_misses(
        hex in "[0-9a-fA-Fg ]{60,68}",
        prefix in prop_oneof![Just("sha256="), Just("SHA256="), Just(" sha256="), Just("sha1=")],
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = format!("{prefix}{hex}").into_bytes();
        data.push(0);
        data.extend_from_slice(&body);
        bounded("signature_header", || targets::signature_header(&data));
    }

    #[test]
    fn intake_bytes(data in prop::collection::vec(any::<u8>(), 0..1024)) {
        bounded("intake", || targets::intake(&data));
    }

    #[test]
    fn intake_odd_payloads(body in pr_payload()) {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        bounded("intake", || targets::intake(&bytes));
    }

    #[test]
    fn intake_deep_json(depth in 0usize..400, open in prop_oneof![Just("["), Just("{\"a\":")]) {
        let close = if open == "[" { "]" } else { "}" };
        let body = format!(
            "{{\"action\":\"opened\",\"repository\":{{\"full_name\":\"o/r\"}},\"pull_request\":{{\"number\":1,\"labels\":{}1{}}}}}",
            open.repeat(depth),
            close.repeat(depth),
        );
        bounded("intake", || targets::intake(body.as_bytes()));
    }

    #[test]
    fn events_query_strings(query in ".{0,200}") {
        bounded("events_query", || targets::events_query(query.as_bytes()));
    }

    #[test]
    fn events_query_structured(
        pairs in prop::collection::vec(
            (
                prop_oneof![Just("page"), Just("page_size"), Just("filter"), Just("x")],
                prop_oneof![
                    "-?[0-9]{0,30}".boxed(),
                    "((status|repository_full_name|pull_request_number|action|delivery_id|processed|id)=[a-zA-Z0-9%;=/]{0,12};?){0,8}".boxed(),
                ],
            ),
            0..6,
        ),
    ) {
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        bounded("events_query", || targets::events_query(query.as_bytes()));
    }

    #[test]
    fn config_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        bounded("config", || targets::config(&data));
    }

    #[test]
    fn config_expansion(text in "([a-z ]|\\$|\\{|\\}|:-|SECRET|EMPTY|NESTED|UNSET){0,40}") {
        let quoted = serde_json::to_vec(&text).unwrap_or_default();
        bounded("config", || {
            targets::config(text.as_bytes());
            targets::config(&quoted);
        });
    }

    #[test]
    fn config_trees(
        port in json_value(),
        max_capacity in json_value(),
        expression in prop_oneof![cel_expression(), cel_deep()],
        secret in prop_oneof![Just(json!("${SECRET}")), Just(json!(["${NESTED}", "${EMPTY:-x}"])), json_value()],
        events in json_value(),
    ) {
        let mut tree = json!({
            "security": {"github_webhook_secret": secret},
            "server": {"port": port},
            "dispatcher": {"items": [{
                "name": "ops", "events": events, "full_repository_name": "o/r",
                "callback_url": "http://el.example:8080",
                "filter": {"cel_expression": expression},
                "capacity": {"type": "ocp_tekton", "pipeline_name": "p", "max_capacity": max_capacity, "namespace": "ns"},
            }]},
        });
        bounded("config", || {
            let _ = targets::config_tree(&mut tree);
        });
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn cel_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        bounded("cel", || targets::cel(&data));
    }

    #[test]
    fn cel_hostile_expressions(expression in cel_expression(), body in pr_payload()) {
        bounded("cel", || targets::cel_eval(&expression, &body));
    }

    #[test]
    fn cel_deep_expressions(expression in cel_deep(), body in json_value()) {
        bounded("cel", || targets::cel_eval(&expression, &body));
    }
}
