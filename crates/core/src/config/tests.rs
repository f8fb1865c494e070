use serde_json::{Value, json};

use super::*;

fn original_example() -> Value {
    json!({
        "dispatcher": {"items": [{
            "name": "Community Operators",
            "events": ["opened", "synchronize", "ready_for_review"],
            "full_repository_name": "redhat-openshift-ecosystem/community-operators",
            "capacity": {
                "type": "ocp_tekton",
                "pipeline_name": "operator-hosted-pipeline",
                "max_capacity": 5,
                "namespace": "operator-pipeline-prod",
                "annotation_selector": {
                    "operator-pipelines.redhat.com/repository": "redhat-openshift-ecosystem/community-operators"
                }
            },
            "filter": {"cel_expression": "body.pull_request.base.ref == \"main\""},
            "callback_url": "https://el-operator-pipeline.example.com"
        }]},
        "security": {
            "github_webhook_secret": "s3cr3t",
            "verify_signatures": true,
            "allowed_github_events": ["pull_request"]
        }
    })
}

fn settings(v: Value) -> Result<Settings, ConfigErrors> {
    let (raw, _) = parse(v)?;
    Settings::from_raw(raw)
}

/// Applies `edit` to the example and returns the single error it causes.
fn single_error(edit: impl FnOnce(&mut Value)) -> ConfigError {
    let mut v = original_example();
    edit(&mut v);
    let errs = settings(v).expect_err("config should be rejected").0;
    assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
    errs.into_iter().next().expect("one error")
}

fn item(v: &mut Value) -> &mut Value {
    &mut v["dispatcher"]["items"][0]
}

#[test]
fn original_example_is_accepted_with_defaults() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(s.items.len(), 1);
    let item = &s.items[0];
    assert_eq!(
        item.repository,
        "redhat-openshift-ecosystem/community-operators"
    );
    assert!(item.events.contains("synchronize"));
    assert!(item.filter.is_some());
    let pool = &s.pools[&item.pool];
    assert_eq!(pool.max_capacity, 5);
    assert_eq!(pool.api_version, TektonApiVersion::V1);
    assert_eq!(pool.queued_label(), "operator-hosted-pipeline/queued");
    assert_eq!(
        pool.key.0,
        "operator-pipeline-prod/operator-hosted-pipeline?operator-pipelines.redhat.com/repository=redhat-openshift-ecosystem/community-operators"
    );
    assert_eq!(s.server.port, 5000);
    assert_eq!(s.server.body_limit_bytes, 25 * 1024 * 1024);
    assert!(s.database.migrate_on_start);
    assert_eq!(s.github_api_url.as_str(), "https://api.github.com/");
    assert_eq!(s.dispatch, DispatchTuning::default());
    assert_eq!(s.dispatch.max_attempts, 5);
    assert_eq!(s.security.webhook_secrets.len(), 1);
}

#[test]
fn unknown_keys_are_reported_not_fatal() {
    let mut v = original_example();
    v["dispatch"] = json!({"max_atempts": 3});
    let (_, unknown) = parse(v).expect("parses");
    assert_eq!(unknown, vec!["dispatch.max_atempts".to_owned()]);
}

#[test]
fn secret_may_be_a_list() {
    let mut v = original_example();
    v["security"]["github_webhook_secret"] = json!(["new", "old", ""]);
    let s = settings(v).expect("valid");
    let secrets: Vec<&str> = s
        .security
        .webhook_secrets
        .iter()
        .map(Secret::expose)
        .collect();
    assert_eq!(secrets, ["new", "old"]);
}

#[test]
fn durations_are_humantime() {
    let mut v = original_example();
    v["dispatch"] = json!({"retry_backoff_base": "250ms", "reservation_timeout": "5m"});
    let s = settings(v).expect("valid");
    assert_eq!(s.dispatch.retry_backoff_base, Duration::from_millis(250));
    assert_eq!(s.dispatch.reservation_timeout, Duration::from_secs(300));
}

#[test]
fn rejects_unknown_capacity_type() {
    let e = single_error(|v| item(v)["capacity"]["type"] = json!("k8s_jobs"));
    assert_eq!(e.field, "dispatcher.items[0].capacity.type");
    assert!(e.message.contains("k8s_jobs"));
}

#[test]
fn rejects_negative_max_capacity_and_zero_pauses() {
    for bad in [-1, -3] {
        let e = single_error(|v| item(v)["capacity"]["max_capacity"] = json!(bad));
        assert_eq!(e.field, "dispatcher.items[0].capacity.max_capacity");
    }
    // 0 is the original's way of pausing a pipeline.
    let mut v = original_example();
    item(&mut v)["capacity"]["max_capacity"] = json!(0);
    let s = settings(v).expect("max_capacity 0 is accepted");
    assert!(s.pools.values().all(PoolSpec::is_paused));
}

#[test]
fn rejects_bad_callback_url() {
    for bad in ["not a url", "ftp://host/x", "http://"] {
        let e = single_error(|v| item(v)["callback_url"] = json!(bad));
        assert_eq!(e.field, "dispatcher.items[0].callback_url", "{bad}");
    }
}

#[test]
fn rejects_duplicate_item_names() {
    let mut v = original_example();
    let copy = item(&mut v).clone();
    v["dispatcher"]["items"]
        .as_array_mut()
        .expect("array")
        .push(copy);
    let errs = settings(v).expect_err("duplicate").0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "dispatcher.items[1].name");
    assert!(errs[0].message.contains("dispatcher.items[0]"));
}

#[test]
fn rejects_cel_syntax_errors() {
    let e = single_error(|v| item(v)["filter"]["cel_expression"] = json!("body.action =="));
    assert_eq!(e.field, "dispatcher.items[0].filter.cel_expression");
}

#[test]
fn rejects_cel_filters_reading_headers_never_stored() {
    for (expression, name) in [
        (
            "headers['Content-Type'] == 'application/json'",
            "Content-Type",
        ),
        (
            "header.match('User-Agent', 'GitHub-Hookshot/1')",
            "User-Agent",
        ),
    ] {
        let e = single_error(|v| item(v)["filter"]["cel_expression"] = json!(expression));
        assert_eq!(e.field, "dispatcher.items[0].filter.cel_expression");
        assert!(
            e.message
                .contains(&format!("header `{name}` is never available to filters")),
            "{}",
            e.message
        );
    }
    let mut v = original_example();
    item(&mut v)["filter"]["cel_expression"] = json!(
        "header.match('X-GitHub-Event', 'pull_request') && headers['x-hub-signature-256'] != ''"
    );
    assert!(settings(v).expect("valid").items[0].filter.is_some());
}

#[test]
fn rejects_missing_secret_when_verifying() {
    let e = single_error(|v| {
        v["security"]
            .as_object_mut()
            .expect("object")
            .remove("github_webhook_secret");
    });
    assert_eq!(e.field, "security.github_webhook_secret");
    let mut v = original_example();
    v["security"] = json!({"verify_signatures": false});
    assert!(settings(v).is_ok());
}

#[test]
fn rejects_other_item_mistakes() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "dispatcher.items[0].events",
            Box::new(|v| item(v)["events"] = json!([])),
        ),
        (
            "dispatcher.items[0].full_repository_name",
            Box::new(|v| item(v)["full_repository_name"] = json!("noslash")),
        ),
        (
            "dispatcher.items[0].name",
            Box::new(|v| item(v)["name"] = json!(" ")),
        ),
        (
            "dispatcher.items[0].capacity.pipeline_name",
            Box::new(|v| item(v)["capacity"]["pipeline_name"] = json!("")),
        ),
        (
            "dispatcher.items[0].capacity.namespace",
            Box::new(|v| item(v)["capacity"]["namespace"] = json!("Bad_NS")),
        ),
        (
            "dispatcher.items[0].capacity.api_version",
            Box::new(|v| item(v)["capacity"]["api_version"] = json!("v2")),
        ),
        (
            "security.allowed_github_events",
            Box::new(|v| v["security"]["allowed_github_events"] = json!([])),
        ),
        (
            "github.api_url",
            Box::new(|v| v["github"] = json!({"api_url": "nope"})),
        ),
        (
            "database.pool_size",
            Box::new(|v| v["database"] = json!({"pool_size": 0})),
        ),
        (
            "dispatch.max_attempts",
            Box::new(|v| v["dispatch"] = json!({"max_attempts": 0})),
        ),
        (
            "dispatch.retry_backoff_base",
            Box::new(|v| v["dispatch"] = json!({"retry_backoff_base": "2m"})),
        ),
        (
            "dispatch.capacity_stale_after",
            Box::new(|v| v["dispatch"] = json!({"capacity_stale_after": "1s"})),
        ),
        (
            "server.body_limit_bytes",
            Box::new(|v| v["server"] = json!({"body_limit_bytes": 0})),
        ),
        (
            "logging.format",
            Box::new(|v| v["logging"] = json!({"format": "xml"})),
        ),
        (
            "api.tokens[0]",
            Box::new(|v| v["api"] = json!({"tokens": [""]})),
        ),
        (
            "api.admin_tokens[0]",
            Box::new(|v| v["api"] = json!({"admin_tokens": [{"name": "alice", "token": " "}]})),
        ),
        (
            "api.admin_tokens[0].name",
            Box::new(|v| v["api"] = json!({"admin_tokens": [{"name": "", "token": "t"}]})),
        ),
    ];
    for (field, edit) in cases {
        let e = single_error(|v| edit(v));
        assert_eq!(e.field, field);
    }
}

#[test]
fn api_tokens_are_plain_or_named() {
    let mut v = original_example();
    v["api"] = json!({
        "tokens": ["r1", {"name": "grafana", "token": "r2"}],
        "admin_tokens": [{"name": "alice", "token": "a1"}, "a2"],
    });
    let s = settings(v).expect("valid");
    let names = |t: &[NamedToken]| -> Vec<(String, String)> {
        t.iter()
            .map(|t| (t.name.clone(), t.token.expose().to_owned()))
            .collect()
    };
    assert_eq!(
        names(&s.api_tokens),
        [
            ("reader-1".into(), "r1".into()),
            ("grafana".into(), "r2".into())
        ]
    );
    assert_eq!(
        names(&s.admin_tokens),
        [
            ("alice".into(), "a1".into()),
            ("admin-2".into(), "a2".into())
        ]
    );
    assert!(
        !format!("{:?}", s.admin_tokens).contains("a1"),
        "tokens stay redacted"
    );
}

#[test]
fn type_errors_are_reported() {
    let mut v = original_example();
    item(&mut v)["capacity"]["max_capacity"] = json!("five");
    let errs = settings(v).expect_err("type error").0;
    assert!(
        errs[0].message.contains("max_capacity") || errs[0].message.contains("invalid type"),
        "{errs:?}"
    );
}

#[test]
fn one_pool_one_limit() {
    let mut v = original_example();
    let mut copy = item(&mut v).clone();
    copy["name"] = json!("second");
    copy["capacity"]["max_capacity"] = json!(7);
    v["dispatcher"]["items"]
        .as_array_mut()
        .expect("array")
        .push(copy);
    let errs = settings(v).expect_err("conflict").0;
    assert_eq!(errs[0].field, "dispatcher.items[1].capacity.max_capacity");
}

#[test]
fn one_pool_one_api_version() {
    let mut v = original_example();
    let mut copy = item(&mut v).clone();
    copy["name"] = json!("second");
    copy["capacity"]["api_version"] = json!("v1beta1");
    v["dispatcher"]["items"]
        .as_array_mut()
        .expect("array")
        .push(copy);
    let errs = settings(v).expect_err("conflict").0;
    assert_eq!(errs[0].field, "dispatcher.items[1].capacity.api_version");
}

#[test]
fn reports_all_errors_at_once() {
    let mut v = original_example();
    item(&mut v)["capacity"]["max_capacity"] = json!(-1);
    item(&mut v)["callback_url"] = json!("nope");
    let errs = settings(v).expect_err("two errors");
    assert_eq!(errs.0.len(), 2);
    let text = errs.to_string();
    assert!(text.contains("2 problems"), "{text}");
}

#[test]
fn database_url_escapes_parts() {
    assert_eq!(
        database_url_from_parts("us er", Some("p@ss:w/rd%"), "db.example", 5432, "my db"),
        "postgres://us%20er:p%40ss%3Aw%2Frd%25@db.example:5432/my%20db"
    );
    assert_eq!(
        database_url_from_parts("u", None, "::1", 5433, "d"),
        "postgres://u@[::1]:5433/d"
    );
}

#[test]
fn python_level_names_are_filter_directives() {
    assert_eq!(log_filter_directive("WARNING"), "warn");
    assert_eq!(log_filter_directive("INFO"), "info");
    assert_eq!(log_filter_directive(" Critical "), "error");
    assert_eq!(log_filter_directive(""), "info");
    assert_eq!(
        log_filter_directive("dispatcher_core=debug,info"),
        "dispatcher_core=debug,info"
    );
}

#[test]
fn leader_timings_follow_the_failover_timeout() {
    let d = DispatchTuning {
        failover_timeout: Duration::from_secs(15),
        ..DispatchTuning::default()
    };
    assert_eq!(d.leader_idle_timeout(), Duration::from_secs(10));
    assert_eq!(d.heartbeat_interval(), Duration::from_millis(2500));
    assert_eq!(d.leader_lease_margin(), Duration::from_secs(3));
}

#[test]
fn queued_label_must_fit_githubs_50_characters() {
    // 43 + "/queued" = 50 characters: the longest label GitHub accepts.
    let longest = "p".repeat(43);
    let mut v = original_example();
    item(&mut v)["capacity"]["pipeline_name"] = json!(longest);
    let s = settings(v).expect("a 50-character label is fine");
    assert_eq!(
        s.pools.values().next().expect("pool").queued_label().len(),
        50
    );

    let e = single_error(|v| item(v)["capacity"]["pipeline_name"] = json!("p".repeat(44)));
    assert_eq!(e.field, "dispatcher.items[0].capacity.pipeline_name");
    assert!(e.message.contains("51 characters"), "{}", e.message);
    assert!(e.message.contains("at most 50"), "{}", e.message);
}

#[test]
fn server_limits_have_defaults_and_are_validated() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(s.server.max_buffered_bytes, 128 * 1024 * 1024);
    assert_eq!(s.server.max_connections, 1024);
    assert_eq!(s.server.shutdown_delay, Duration::from_secs(5));

    let mut v = original_example();
    v["server"] = json!({"shutdown_delay": "250ms", "max_buffered_bytes": 1_048_576, "body_limit_bytes": 65536, "max_connections": 8});
    let s = settings(v).expect("valid");
    assert_eq!(s.server.shutdown_delay, Duration::from_millis(250));
    assert_eq!(s.server.max_buffered_bytes, 1_048_576);
    assert_eq!(s.server.max_connections, 8);

    let e = single_error(|v| v["server"] = json!({"max_connections": 0}));
    assert_eq!(e.field, "server.max_connections");
    let e = single_error(|v| {
        v["server"] = json!({"body_limit_bytes": 4096, "max_buffered_bytes": 4095});
    });
    assert_eq!(e.field, "server.max_buffered_bytes");
    let e = single_error(|v| v["server"] = json!({"max_buffered_bytes": 1_u64 << 32}));
    assert_eq!(e.field, "server.max_buffered_bytes");
}

#[test]
fn dev_section_is_off_by_default_and_validated() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(s.dev, DevSection::default());
    assert!(!s.dev.simulate_tekton);
    assert_eq!(s.dev.run_duration, Duration::from_secs(20));

    let mut v = original_example();
    v["dev"] = json!({"simulate_tekton": true, "run_duration": "1500ms"});
    let s = settings(v).expect("valid");
    assert!(s.dev.simulate_tekton);
    assert_eq!(s.dev.run_duration, Duration::from_millis(1500));

    // Checked while the simulation is off too.
    let e = single_error(|v| v["dev"] = json!({"run_duration": "0s"}));
    assert_eq!(e.field, "dev.run_duration");
    let mut v = original_example();
    v["dev"] = json!({"simulate_tekton": "yes"});
    assert!(settings(v).is_err(), "simulate_tekton is a bool");

    // A misspelt key is reported like any other unknown key (and leaves the simulation off).
    let mut v = original_example();
    v["dev"] = json!({"simulate_tekon": true});
    let (raw, unknown) = parse(v).expect("parses");
    assert_eq!(unknown, vec!["dev.simulate_tekon".to_owned()]);
    assert!(!raw.dev.simulate_tekton);
}

#[test]
fn database_tls_keys_are_validated() {
    let e = single_error(|v| v["database"] = json!({"sslmode": "verify"}));
    assert_eq!(e.field, "database.sslmode");
    assert!(e.message.contains("verify-full"), "{}", e.message);
    let e = single_error(|v| v["database"] = json!({"sslrootcert": "/nonexistent/ca.pem"}));
    assert_eq!(e.field, "database.sslrootcert");
    assert!(
        e.message.contains("cannot read /nonexistent/ca.pem"),
        "{}",
        e.message
    );
    // Any readable file will do for the pairing check.
    let readable = env!("CARGO_MANIFEST_PATH");
    let e = single_error(|v| v["database"] = json!({"sslcert": readable}));
    assert_eq!(e.field, "database.sslkey");
    let mut v = original_example();
    v["database"] = json!({
        "sslmode": "verify-full", "sslrootcert": readable, "sslcert": readable, "sslkey": readable
    });
    let s = settings(v).unwrap();
    assert_eq!(s.database.sslmode.as_deref(), Some("verify-full"));
}

#[test]
fn retention_is_off_by_default_and_validated() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(s.retention, None);

    let mut v = original_example();
    v["retention"] = json!({"max_age": "30d", "payload_max_age": "7days"});
    let r = settings(v).expect("valid").retention.expect("on");
    assert_eq!(r.max_age, std::time::Duration::from_secs(30 * 86_400));
    assert_eq!(
        r.payload_max_age,
        Some(std::time::Duration::from_secs(7 * 86_400))
    );
    assert_eq!(r.interval, std::time::Duration::from_secs(3600));
    assert_eq!(r.batch_size, 1000);

    let e = single_error(|v| v["retention"] = json!({"max_age": "7d", "payload_max_age": "30d"}));
    assert_eq!(e.field, "retention.payload_max_age");
    assert!(e.message.contains("shorter than retention.max_age"), "{e}");
    let e = single_error(|v| v["retention"] = json!({"max_age": "30d", "interval": "30s"}));
    assert_eq!(e.field, "retention.interval");
    let e = single_error(|v| v["retention"] = json!({"max_age": "30d", "batch_size": 0}));
    assert_eq!(e.field, "retention.batch_size");
    // max_age is required once the section is there.
    let mut v = original_example();
    v["retention"] = json!({"interval": "1h"});
    let errs = settings(v).expect_err("no max_age").0;
    assert!(errs[0].message.contains("max_age"), "{errs:?}");
}

#[test]
fn a_github_app_is_validated_and_exclusive_with_a_token() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fakes/fixtures/test-app-key.pkcs1.pem"
    );
    let app = json!({"app_id": 12, "private_key_file": key, "installation_id": 34});
    let mut v = original_example();
    v["github"] = json!({"app": app});
    let s = settings(v).expect("valid");
    let parsed = s.github.app.as_ref().expect("app");
    assert_eq!((parsed.app_id, parsed.installation_id), (12, 34));
    assert!(s.github.labels_enabled());
    assert!(
        !settings(original_example())
            .expect("valid")
            .github
            .labels_enabled()
    );

    let e = single_error(|v| v["github"] = json!({"app": app, "token": "ghp_x"}));
    assert_eq!(e.field, "github.app");
    assert!(e.message.contains("exclusive"), "{e}");
    // An empty token (an unset GITHUB_TOKEN expanded to "") is no token.
    let mut v = original_example();
    v["github"] = json!({"app": app, "token": ""});
    settings(v).expect("valid");

    let e = single_error(|v| {
        v["github"] = json!({"app": {"app_id": 12, "private_key_file": "/nonexistent/app.pem", "installation_id": 34}});
    });
    assert_eq!(e.field, "github.app.private_key_file");
    assert!(
        e.message.contains("cannot read /nonexistent/app.pem"),
        "{e}"
    );
    let e = single_error(|v| {
        v["github"] = json!({"app": {"app_id": 12, "private_key_file": env!("CARGO_MANIFEST_PATH"), "installation_id": 34}});
    });
    assert_eq!(e.field, "github.app.private_key_file");
    assert!(e.message.contains("no PEM private key"), "{e}");
    let e = single_error(|v| {
        v["github"] = json!({"app": {"app_id": 0, "private_key_file": key, "installation_id": 34}});
    });
    assert_eq!(e.field, "github.app.app_id");
    let e = single_error(|v| {
        v["github"] = json!({"app": {"app_id": 12, "private_key_file": key, "installation_id": 0}});
    });
    assert_eq!(e.field, "github.app.installation_id");
}

#[test]
fn fairness_defaults_to_fifo_and_round_robin_takes_weights() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(
        s.pools.values().next().map(|p| p.fairness.clone()),
        Some(Fairness::Fifo)
    );
    assert!(s.priority_labels.is_empty());

    let mut v = original_example();
    item(&mut v)["capacity"]["fairness"] = json!("round_robin_repository");
    item(&mut v)["capacity"]["weights"] = json!({"o/busy": 3});
    v["dispatcher"]["priority_labels"] = json!([
        {"label": "priority/critical", "priority": 100},
        {"label": "priority/low", "priority": -10},
    ]);
    let s = settings(v).expect("valid");
    let pool = s.pools.values().next().expect("a pool");
    assert_eq!(pool.fairness.as_str(), "round_robin_repository");
    assert_eq!(pool.fairness.weight("o/busy"), 3);
    assert_eq!(pool.fairness.weight("o/other"), 1);
    assert_eq!(s.priority_labels.priority(&["x", "Priority/Critical"]), 100);
    assert_eq!(s.priority_labels.priority(&["priority/low"]), -10);
    assert_eq!(s.priority_labels.priority::<&str>(&[]), 0);
}

#[test]
fn fairness_weights_and_priority_labels_are_checked() {
    let e = single_error(|v| item(v)["capacity"]["fairness"] = json!("lottery"));
    assert_eq!(e.field, "dispatcher.items[0].capacity.fairness");
    let e = single_error(|v| item(v)["capacity"]["weights"] = json!({"o/r": 2}));
    assert_eq!(e.field, "dispatcher.items[0].capacity.weights");
    assert!(e.message.contains("round_robin_repository"), "{e}");
    for bad in [json!(0), json!(11), json!(-1)] {
        let e = single_error(|v| {
            item(v)["capacity"]["fairness"] = json!("round_robin_repository");
            item(v)["capacity"]["weights"] = json!({"o/r": bad});
        });
        assert_eq!(e.field, "dispatcher.items[0].capacity.weights.o/r");
    }
    let e = single_error(|v| {
        item(v)["capacity"]["fairness"] = json!("round_robin_repository");
        item(v)["capacity"]["weights"] = json!({"not-a-repo": 2});
    });
    assert_eq!(e.field, "dispatcher.items[0].capacity.weights.not-a-repo");
    let e = single_error(|v| {
        v["dispatcher"]["priority_labels"] = json!([{"label": " ", "priority": 1}]);
    });
    assert_eq!(e.field, "dispatcher.priority_labels[0].label");
    let e = single_error(|v| {
        v["dispatcher"]["priority_labels"] =
            json!([{"label": "p/high", "priority": 1}, {"label": "P/High", "priority": 2}]);
    });
    assert_eq!(e.field, "dispatcher.priority_labels[1].label");
}

#[test]
fn items_sharing_a_pool_agree_on_fairness() {
    let second = |v: &mut Value| {
        let mut other = item(v).clone();
        other["name"] = json!("second");
        other["full_repository_name"] = json!("o/second");
        v["dispatcher"]["items"]
            .as_array_mut()
            .expect("items")
            .push(other);
    };
    let mut v = original_example();
    item(&mut v)["capacity"]["fairness"] = json!("round_robin_repository");
    second(&mut v);
    assert!(settings(v).is_ok());

    let e = single_error(|v| {
        second(v);
        v["dispatcher"]["items"][1]["capacity"]["fairness"] = json!("round_robin_repository");
    });
    assert_eq!(e.field, "dispatcher.items[1].capacity.fairness");
    let e = single_error(|v| {
        item(v)["capacity"]["fairness"] = json!("round_robin_repository");
        second(v);
        v["dispatcher"]["items"][1]["capacity"]["weights"] = json!({"o/second": 2});
    });
    assert_eq!(e.field, "dispatcher.items[1].capacity.fairness");
}

#[test]
fn queue_status_defaults_to_the_label_and_is_validated() {
    let s = settings(original_example()).expect("valid");
    assert_eq!(s.github.queue_status, QueueStatusMode::Label);
    assert!(s.github.queue_status.labels() && !s.github.queue_status.posts_status());
    assert_eq!(
        s.github.queue_status_interval,
        std::time::Duration::from_secs(30)
    );
    for (text, mode, labels, posts) in [
        ("check_run", QueueStatusMode::CheckRun, true, true),
        ("commit_status", QueueStatusMode::CommitStatus, true, true),
        ("label", QueueStatusMode::Label, true, false),
        ("off", QueueStatusMode::Off, false, false),
    ] {
        let mut v = original_example();
        v["github"] = json!({"queue_status": text, "queue_status_interval": "200ms"});
        let s = settings(v).expect("valid");
        assert_eq!(s.github.queue_status, mode);
        assert_eq!(mode.as_str(), text);
        assert_eq!(
            (mode.labels(), mode.posts_status()),
            (labels, posts),
            "{text}"
        );
        assert_eq!(
            s.github.queue_status_interval,
            std::time::Duration::from_millis(200)
        );
    }
    let mut v = original_example();
    v["github"] = json!({"queue_status": "comment"});
    assert!(settings(v).is_err(), "unknown mode");
    let e = single_error(|v| v["github"] = json!({"queue_status_interval": "0s"}));
    assert_eq!(e.field, "github.queue_status_interval");
}

#[test]
fn cancel_flags_are_off_by_default_and_per_item() {
    let s = settings(original_example()).expect("valid");
    assert!(
        s.items
            .iter()
            .all(|i| !i.cancel_superseded && !i.cancel_on_close)
    );
    let mut v = original_example();
    v["dispatcher"]["items"][0]["cancel_superseded"] = json!(true);
    v["dispatcher"]["items"][0]["cancel_on_close"] = json!(true);
    let (_, unknown) = parse(v.clone()).expect("parses");
    assert!(unknown.is_empty(), "{unknown:?}");
    let s = settings(v).expect("valid");
    assert!(s.items[0].cancel_superseded && s.items[0].cancel_on_close);
    let mut v = original_example();
    v["dispatcher"]["items"][0]["cancel_on_close"] = json!("yes");
    assert!(settings(v).is_err(), "cancel_on_close is a bool");
}
