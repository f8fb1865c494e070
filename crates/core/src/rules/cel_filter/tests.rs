//! The tests of [`CelFilter`](super::CelFilter): compiling, the variables,
//! the header contract, the limits, and errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use super::*;
use serde_json::json;

fn payload() -> serde_json::Value {
    json!({
        "action": "opened",
        "number": 42,
        "big": 18_446_744_073_709_551_615_u64,
        "negative": -7,
        "ratio": 0.5,
        "whole_float": 3.0,
        "nothing": null,
        "pull_request": {
            "number": 1,
            "title": "WIP: Add CEL filters",
            "draft": false,
            "base": { "ref": "main" },
            "head": { "ref": "feature/cel" },
            "labels": [ { "name": "bug" }, { "name": "ok-to-test" } ],
        },
        "commits": ["a", "b", "c"],
        "csv": "a,b,c",
    })
}

fn hyper_headers() -> Vec<(String, String)> {
    vec![
        ("x-github-event".to_owned(), "pull_request".to_owned()),
        ("x-github-hook-id".to_owned(), "123".to_owned()),
        ("x-hub-signature-256".to_owned(), "sha256=abc".to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ]
}

fn canonical_headers() -> Vec<(String, String)> {
    vec![
        ("X-GitHub-Event".to_owned(), "pull_request".to_owned()),
        ("X-GitHub-Hook-ID".to_owned(), "123".to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ]
}

fn eval_with(expression: &str, headers: &[(String, String)]) -> Result<bool, CelEvalError> {
    CelFilter::compile(expression)
        .unwrap_or_else(|error| panic!("{expression}: {error}"))
        .evaluate(&payload(), headers)
}

fn eval(expression: &str) -> Result<bool, CelEvalError> {
    eval_with(expression, &hyper_headers())
}

fn assert_true(expression: &str) {
    assert!(eval(expression).unwrap(), "{expression}");
}

fn assert_false(expression: &str) {
    assert!(!eval(expression).unwrap(), "{expression}");
}

fn assert_execution_error(expression: &str) -> String {
    match eval(expression) {
        Err(CelEvalError::Execution(message)) => message,
        other => panic!("{expression}: expected an execution error, got {other:?}"),
    }
}

#[test]
fn body_fields_are_maps_lists_and_scalars() {
    assert_true(r#"body.pull_request.base.ref == "main""#);
    assert_false(r#"body.pull_request.base.ref == "develop""#);
    assert_true("body.action == 'opened'");
    assert_true("body.pull_request.draft == false");
    assert_true("body.nothing == null");
    assert_true("body.commits[1] == 'b'");
    assert_true("body['pull_request']['head']['ref'] == 'feature/cel'");
    assert_true("type(body.pull_request) == map && type(body.commits) == list");
}

#[test]
fn json_numbers_become_int_uint_or_double() {
    assert_true("body.pull_request.number == 1");
    assert_true("body.number == 42 && body.number > 41 && body.number + 1 == 43");
    assert_true("type(body.number) == int");
    assert_true("body.negative == -7 && type(body.negative) == int");
    assert_true("type(body.big) == uint && body.big == 18446744073709551615u");
    assert_true("type(body.ratio) == double && body.ratio == 0.5");
    assert_true("type(body.whole_float) == double");
    // Heterogeneous numeric comparisons follow the CEL spec.
    assert_true("body.whole_float == 3");
    assert_true("body.number == 42u");
    assert_true("body.big > 1");
}

#[test]
fn headers_are_case_insensitive() {
    for headers in [hyper_headers(), canonical_headers()] {
        for expression in [
            "headers['X-GitHub-Event'] == 'pull_request'",
            "headers['x-github-event'] == 'pull_request'",
            "headers['X-GITHUB-EVENT'] == 'pull_request'",
            "headers['X-GitHub-Hook-ID'] == '123'",
            "'X-GitHub-Event' in headers",
            "'x-github-event' in headers",
            "!('X-GitHub-Nope' in headers)",
            "!('x-hub-nope' in header)",
            "headers.exists(name, name == 'x-github-event')",
            "size(headers) >= 3",
        ] {
            assert!(
                eval_with(expression, &headers).unwrap(),
                "{expression} with {headers:?}"
            );
        }
    }
    assert!(matches!(
        eval("headers['X-GitHub-Nope'] == 'x'"),
        Err(CelEvalError::Execution(_))
    ));
}

#[test]
fn repeated_headers_map_to_their_first_value() {
    let headers = vec![
        ("X-Hub-Signature".to_owned(), "sha1=abc".to_owned()),
        ("x-hub-signature".to_owned(), "sha1=def".to_owned()),
    ];
    assert!(eval_with("headers['x-hub-signature'] == 'sha1=abc'", &headers).unwrap());
    assert!(eval_with("size(headers) == 1", &headers).unwrap());
    assert!(eval_with("header.match('X-HUB-SIGNATURE', 'sha1=def')", &headers).unwrap());
    assert!(
        eval_with(
            "header['X-Hub-Signature'] == ['sha1=abc', 'sha1=def']",
            &headers
        )
        .unwrap()
    );
}

#[test]
fn tekton_header_functions() {
    for headers in [hyper_headers(), canonical_headers()] {
        for expression in [
            "header.match('X-GitHub-Event', 'pull_request')",
            "header.match('x-github-event', 'pull_request')",
            "!header.match('X-GitHub-Event', 'Pull_Request')",
            "!header.match('X-GitHub-Nope', 'pull_request')",
            "header.canonical('X-GitHub-Event') == 'pull_request'",
            "header.canonical('X-GitHub-Nope') == ''",
            "header['X-GitHub-Event'][0] == 'pull_request'",
            "'X-GitHub-Event' in header",
        ] {
            assert!(
                eval_with(expression, &headers).unwrap(),
                "{expression} with {headers:?}"
            );
        }
    }
    // `match` is only declared on `header`.
    assert!(matches!(
        eval("headers.match('X-GitHub-Event', 'pull_request')"),
        Err(CelEvalError::Execution(_))
    ));
    assert!(matches!(
        eval("header.match('X-GitHub-Event', 1)"),
        Err(CelEvalError::Execution(_))
    ));
}

#[test]
fn string_and_list_helpers() {
    assert_true(r#"body.pull_request.title.startsWith("WIP")"#);
    assert_true("body.pull_request.title.contains('CEL')");
    assert_true("body.pull_request.title.endsWith('filters')");
    assert_true("body.pull_request.head.ref.matches('^feature/[a-z]+$')");
    assert_false("body.pull_request.head.ref.matches('^release/')");
    assert_true("size(body.commits) == 3 && body.commits.size() == 3");
    assert_true("size(body.pull_request.title) == 20");
    assert_true("'b' in body.commits && !('z' in body.commits)");
    assert_true("body.action in ['opened', 'synchronize']");
    assert_true("has(body.pull_request.draft) && !has(body.pull_request.merged)");
    assert_true("body.pull_request.title.lowerAscii().startsWith('wip:')");
    assert_true("body.pull_request.title.upperAscii() == 'WIP: ADD CEL FILTERS'");
    assert_true("body.csv.split(',') == ['a', 'b', 'c']");
    assert_true("'b' in body.csv.split(',')");
    assert_true("body.pull_request.head.ref.replace('/', '-') == 'feature-cel'");
    assert_true("body.commits.join('') == 'abc'");
    assert_true("body.pull_request.labels.exists(l, l.name == 'ok-to-test')");
    assert_true("body.pull_request.labels.all(l, l.name != 'do-not-merge')");
    assert_true("body.pull_request.labels.map(l, l.name) == ['bug', 'ok-to-test']");
    assert_true("body.pull_request.labels.filter(l, l.name == 'bug').size() == 1");
}

#[test]
fn non_bool_results_are_errors() {
    for (expression, kind) in [
        ("body.action", "string"),
        ("body.number", "int"),
        ("body.pull_request", "map"),
        ("body.commits", "list"),
        ("body.nothing", "null_type"),
        ("headers", "map"),
    ] {
        match eval(expression) {
            Err(CelEvalError::NotABool { kind: actual }) => {
                assert_eq!(actual, kind, "{expression}");
            }
            other => panic!("{expression}: {other:?}"),
        }
    }
}

#[test]
fn runtime_failures_are_execution_errors() {
    let message = assert_execution_error("body.nope.x == 1");
    assert!(message.contains("nope"), "{message}");
    assert_execution_error("body.number / 0 == 1");
    assert_execution_error("body.number % 0 == 1");
    assert_execution_error("body.commits[7] == 'a'");
    assert_execution_error("body.action.matches('(') ");
    assert_execution_error("body.action == 'opened' && body.action > 1");
    assert_execution_error("body.action.nope()");
    assert_execution_error("body.pull_request.title.substring(100) == ''");
    // `||` and `&&` absorb errors when the other side decides.
    assert_true("body.action == 'opened' || body.nope.x == 1");
    assert_false("body.action == 'closed' && body.nope.x == 1");
}

#[test]
fn syntax_errors_fail_to_compile() {
    for expression in [
        "body.action ==",
        "(((",
        "",
        "body.action = 'x'",
        "'unterminated",
    ] {
        match CelFilter::compile(expression) {
            Err(error @ CelCompileError::Syntax { .. }) => {
                let message = error.to_string();
                assert!(
                    message.starts_with(&format!("invalid CEL expression `{expression}`: ")),
                    "{message}"
                );
                assert!(message.len() > expression.len() + 30, "{message}");
            }
            other => panic!("{expression}: {other:?}"),
        }
    }
}

#[test]
fn unknown_variables_fail_to_compile() {
    let error = CelFilter::compile("bdy.action == 'x'").unwrap_err();
    assert!(
        matches!(&error, CelCompileError::UnknownVariable { name, .. } if name == "bdy"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("unknown variable `bdy`"),
        "{error}"
    );
    for expression in [
        "body.labels.exists(l, l.name == x)",
        "[1].map(x, x)[0] == x",
        "request.body == 1",
    ] {
        assert!(
            matches!(
                CelFilter::compile(expression),
                Err(CelCompileError::UnknownVariable { .. })
            ),
            "{expression}"
        );
    }
}

#[test]
fn known_names_compile() {
    for expression in [
        "body.pull_request.labels.exists(l, l.name == 'bug')",
        "body.commits.all(c, body.commits.exists(d, d == c))",
        "type(body.action) == string && type(body.number) != uint",
        "optional.of(body.action).hasValue()",
        "strings.quote(body.action) == '\"opened\"'",
        "header.match('x-github-event', 'push') || headers['x-github-event'] == 'push'",
        "true",
    ] {
        let filter =
            CelFilter::compile(expression).unwrap_or_else(|error| panic!("{expression}: {error}"));
        filter
            .evaluate(&payload(), &hyper_headers())
            .unwrap_or_else(|error| panic!("{expression}: {error}"));
    }
}

#[test]
fn unused_variables_need_no_input() {
    let filter = CelFilter::compile("1 + 1 == 2").unwrap();
    assert!(filter.evaluate(&serde_json::Value::Null, &[]).unwrap());
    let filter = CelFilter::compile("body == null").unwrap();
    assert!(filter.evaluate(&serde_json::Value::Null, &[]).unwrap());
    let filter = CelFilter::compile("size(headers) == 0").unwrap();
    assert!(filter.evaluate(&json!({}), &[]).unwrap());
}

#[test]
fn source_debug_clone_and_eq() {
    let filter = CelFilter::compile("body.action == 'opened'").unwrap();
    assert_eq!(filter.source(), "body.action == 'opened'");
    let debug = format!("{filter:?}");
    assert!(debug.contains("body.action == 'opened'"), "{debug}");
    assert!(!debug.contains("program"), "{debug}");
    let copy = filter.clone();
    assert_eq!(copy, filter);
    assert!(copy.evaluate(&payload(), &[]).unwrap());
}

#[test]
fn error_messages_are_readable() {
    assert_eq!(
        CelEvalError::NotABool {
            kind: "string".to_owned()
        }
        .to_string(),
        "CEL expression evaluated to a value of type `string`, not a bool"
    );
    let error = eval("body.nope == 1").unwrap_err();
    assert_eq!(
        error.to_string(),
        "CEL evaluation failed: No such key: nope"
    );
}

#[test]
fn filters_are_send_and_sync_and_usable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CelFilter>();
    assert_send_sync::<CelCompileError>();
    assert_send_sync::<CelEvalError>();

    let filter = Arc::new(CelFilter::compile("body.number == 42").unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let filter = Arc::clone(&filter);
            std::thread::spawn(move || filter.evaluate(&payload(), &[]).unwrap())
        })
        .collect();
    for handle in handles {
        assert!(handle.join().unwrap());
    }
}

#[test]
fn large_payloads_evaluate() {
    let items: Vec<_> = (0..20_000)
        .map(|i| json!({ "id": i, "name": format!("item-{i}") }))
        .collect();
    let body = json!({ "items": items });
    let filter = CelFilter::compile("body.items.exists(i, i.name == 'item-19999')").unwrap();
    assert!(filter.evaluate(&body, &[]).unwrap());
}

#[test]
fn panics_become_execution_errors() {
    match guard(|| panic!("boom")) {
        Err(CelEvalError::Execution(message)) => {
            assert_eq!(message, "the CEL interpreter panicked: boom");
        }
        other => panic!("{other:?}"),
    }
    assert!(guard(|| Ok(true)).unwrap());
}

#[test]
fn nesting_that_would_overflow_the_stack_is_rejected() {
    // 32 nested parentheses take more than the 2 MiB of this test thread
    // to parse in a debug build: compiling happens on a thread of its own.
    let parens = format!(
        "{}body.action == 'opened'{}",
        "(".repeat(32),
        ")".repeat(32)
    );
    assert!(eval(&parens).unwrap());
    let lists = format!("{}1{} != []", "[".repeat(31), "]".repeat(31));
    assert!(eval(&lists).unwrap());

    let too_deep = format!("{}true{}", "(".repeat(33), ")".repeat(33));
    let error = CelFilter::compile(&too_deep).unwrap_err();
    assert!(
        matches!(error, CelCompileError::TooComplex { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("brackets are nested more than 32 deep"),
        "{error}"
    );
    let too_deep = format!("{}1{} != []", "[".repeat(33), "]".repeat(33));
    assert!(matches!(
        CelFilter::compile(&too_deep),
        Err(CelCompileError::TooComplex { .. })
    ));
    // Brackets in string literals don't count.
    let quoted = format!(
        r#"body.action != '{0}' && body.action != "{0}" && body.action != '''{0}'''"#,
        "(".repeat(100)
    );
    assert!(eval(&quoted).unwrap());
    assert!(eval(r#"body.action + '\'((' + "(\"(" + [(body.action)][0] != ''"#).unwrap());

    // Evaluation recurses on the syntax tree: 48 levels are fine, more are not.
    let sum = format!("{} == 47", vec!["1"; 47].join(" + "));
    assert!(eval(&sum).unwrap());
    let sum = format!("{} == 48", vec!["1"; 48].join(" + "));
    let error = CelFilter::compile(&sum).unwrap_err();
    assert!(
        error.to_string().contains("syntax tree is 49 levels deep"),
        "{error}"
    );
    // Comprehensions nest at most 2 deep: each level multiplies the work.
    let exists = |levels: usize| {
        format!(
            "{}true{}",
            (0..levels)
                .map(|i| format!("body.commits.exists(c{i}, "))
                .collect::<String>(),
            ")".repeat(levels)
        )
    };
    assert!(eval(&exists(2)).unwrap());
    let error = CelFilter::compile(&exists(23)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("comprehensions are nested 23 deep"),
        "{error}"
    );

    let long = format!("body{} == 1", ".a".repeat(10_000));
    let error = CelFilter::compile(&long).unwrap_err();
    assert!(error.to_string().contains("20009 bytes long"), "{error}");
    let chain = format!("body{} == 1", ".a".repeat(5_000));
    assert!(matches!(
        CelFilter::compile(&chain),
        Err(CelCompileError::TooComplex { .. })
    ));
}

/// Found by the property tests of the fuzz targets (docs/FUZZING.md):
/// nested comprehensions over list literals multiply (8^13 elements here at
/// a dozen levels, which never ended), so their nesting and the elements of
/// list literals are limited.
#[test]
fn evaluation_cost_is_bounded() {
    let mut nested = "[1,2,3,4,5,6,7,8]".to_owned();
    for i in 0..6 {
        nested = format!("[1,2,3,4,5,6,7,8].map(y{i}, {nested})");
    }
    let error = CelFilter::compile(&format!("size({nested}) > 0")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("comprehensions are nested 6 deep"),
        "{error}"
    );
    // Two levels are allowed; the range of a comprehension is not a level.
    assert!(eval("size([1,2].map(a, [3,4].map(b, a * b)).map(c, c)) == 2").unwrap());

    let ones = vec!["1"; 1025].join(",");
    let error = CelFilter::compile(&format!("[{ones}].exists(x, x == 2)")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("list literals have 1025 elements"),
        "{error}"
    );
    let ones = vec!["1"; 512].join(",");
    assert!(
        !eval(&format!(
            "[{ones}].exists(x, [{ones}].exists(y, x + y == 3))"
        ))
        .unwrap()
    );
}

#[test]
fn evaluation_never_panics() {
    for expression in [
        "body.action[0] == 'o'",
        "int(body.action) == 1",
        "body.number * 9223372036854775807 == 1",
        "-9223372036854775807 - 2 == 1",
        "body.big + 1u == 0u",
        "'%s %d'.format([]) == ''",
        "body.action.charAt(100) == ''",
        "body.action.indexOf('', 100) == 1",
        "body.action.lastIndexOf('x', -1) == 1",
        "body.action.split('', -5) == []",
        "body.commits.join(1) == ''",
        "{'a': 1, 'a': 2}.a == 1",
        "optional.none().value() == 1",
        "double('nan') == double('nan')",
        "uint(-1) == 1u",
        "body.ratio / 0.0 > 1.0",
    ] {
        let filter =
            CelFilter::compile(expression).unwrap_or_else(|error| panic!("{expression}: {error}"));
        match filter.evaluate(&payload(), &hyper_headers()) {
            Ok(_) | Err(CelEvalError::Execution(_)) => {}
            Err(error) => panic!("{expression}: {error:?}"),
        }
    }
}

#[test]
fn headers_never_stored_with_an_event_fail_to_compile() {
    for (expression, name) in [
        (
            "headers['Content-Type'] == 'application/json'",
            "Content-Type",
        ),
        ("headers[?'content-type'].hasValue()", "content-type"),
        ("header['User-Agent'][0] == 'GitHub-Hookshot'", "User-Agent"),
        (
            "header.match('User-Agent', 'GitHub-Hookshot/1')",
            "User-Agent",
        ),
        ("header.canonical('Host') == ''", "Host"),
        ("'Content-Type' in headers", "Content-Type"),
        ("'accept' in header", "accept"),
        ("has(headers.host) == false", "host"),
        ("headers.x_github_event == 'push'", "x_github_event"),
        (
            "body.action == 'opened' && [1].exists(x, headers['Accept'] == 'x')",
            "Accept",
        ),
        (
            "headers['X-GitHub-Event'] == 'push' || headers['X-Forwarded-For'] == ''",
            "X-Forwarded-For",
        ),
    ] {
        let error = CelFilter::compile(expression).unwrap_err();
        assert!(
            matches!(&error, CelCompileError::UnavailableHeader { name: actual, .. } if actual == name),
            "{expression}: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("header `{name}` is never available to filters")),
            "{message}"
        );
        assert!(message.contains("X-GitHub-* and X-Hub-*"), "{message}");
    }
}

#[test]
fn headers_stored_with_an_event_and_computed_names_compile() {
    for expression in [
        "headers['X-GitHub-Event'] == 'push'",
        "headers['x-github-delivery'] != ''",
        "header.match('X-Hub-Signature-256', 'sha256=abc')",
        "header.canonical('X-GitHub-Hook-Installation-Target-Type') == 'repository'",
        "'X-GitHub-Hook-ID' in headers",
        // Names computed at run time are not checked.
        "headers.exists(h, h == 'content-type')",
        "!(body.action in headers)",
        // A macro variable called `headers` is not the headers.
        "[{'Content-Type': 1}].exists(headers, headers['Content-Type'] == 1)",
        "{'User-Agent': 'x'}.all(header, header == 'User-Agent')",
        // Maps other than the headers.
        "{'Content-Type': 1}['Content-Type'] == 1",
        "body.pull_request.head.ref != 'Host'",
    ] {
        let filter =
            CelFilter::compile(expression).unwrap_or_else(|error| panic!("{expression}: {error}"));
        match filter.evaluate(&payload(), &hyper_headers()) {
            Ok(_) | Err(CelEvalError::Execution(_)) => {}
            Err(error) => panic!("{expression}: {error:?}"),
        }
    }
}
