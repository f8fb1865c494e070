//! Capacity and triggers against the local fakes of the Kubernetes API and
//! a Tekton EventListener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dispatcher_capacity::{CapacityOptions, EventListenerClient, KubeCapacity};
use dispatcher_core::config::{PoolKey, PoolSpec, TektonApiVersion};
use dispatcher_core::domain::DispatchId;
use dispatcher_core::ports::{CapacitySource, PoolState, Trigger, TriggerError, TriggerRequest};
use dispatcher_fakes::{FakeEventListener, FakeKube, FakeRedirect, KubeRequest};

const WAIT: Duration = Duration::from_secs(20);

fn pool(selector: &[(&str, &str)], version: TektonApiVersion) -> PoolSpec {
    let annotation_selector: BTreeMap<String, String> = selector
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    PoolSpec {
        key: PoolKey(format!("ns/p{selector:?}")),
        namespace: "ns".into(),
        pipeline_name: "p".into(),
        annotation_selector,
        api_version: version,
        max_capacity: 3,
        dispatch_label: None,
        fairness: Default::default(),
    }
}

fn options(resync: Duration) -> CapacityOptions {
    CapacityOptions {
        resync_interval: resync,
        stale_after: resync * 3,
        list_timeout: Duration::from_secs(2),
    }
}

async fn client(kube: &FakeKube) -> kube::Client {
    client_for(&kube.url())
}

/// The client the dev simulation uses, so every test here covers it too.
fn client_for(url: &str) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    dispatcher_capacity::kube_client_at(url).unwrap()
}

/// Periodic lists and staleness far beyond any test: only the watch loop
/// itself can change the pool's health.
fn watch_only() -> CapacityOptions {
    options(Duration::from_secs(3600))
}

/// Polls `pool_state` (not only on change notifications) until `pred` holds.
async fn poll_state(
    capacity: &KubeCapacity,
    pool: &PoolSpec,
    within: Duration,
    pred: impl Fn(&PoolState) -> bool,
) -> PoolState {
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let result = tokio::time::timeout(within, async {
        loop {
            tick.tick().await;
            let state = capacity.pool_state(pool);
            if pred(&state) {
                return state;
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("state never matched; last: {:?}", capacity.pool_state(pool)))
}

/// Waits on the capacity's own change notifications until `pred` holds.
async fn wait_state(
    capacity: &KubeCapacity,
    pool: &PoolSpec,
    pred: impl Fn(&PoolState) -> bool,
) -> PoolState {
    let result = tokio::time::timeout(WAIT, async {
        loop {
            let notified = capacity.changed();
            let state = capacity.pool_state(pool);
            if pred(&state) {
                return state;
            }
            notified.await;
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("state never matched; last: {:?}", capacity.pool_state(pool)))
}

/// The `triggers-eventid`s of the pool's runs.
fn seen(state: &PoolState) -> Vec<String> {
    match state {
        PoolState::Known { runs, .. } => runs.iter().filter_map(|r| r.event_id.clone()).collect(),
        PoolState::Unknown { .. } => Vec::new(),
    }
}

fn running(state: &PoolState) -> Option<u32> {
    match state {
        PoolState::Known { running, .. } => Some(*running),
        PoolState::Unknown { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_unfinished_runs_from_list_and_watch() {
    let kube = FakeKube::start().await.unwrap();
    kube.create_run("ns", "old", "p", Some("ev-old"), &[("repo", "o/r")]);
    kube.create_run("ns", "other-pipeline", "q", None, &[]);
    kube.create_run("other-ns", "elsewhere", "p", None, &[]);
    let all = pool(&[], TektonApiVersion::V1);
    let narrowed = pool(&[("repo", "o/r")], TektonApiVersion::V1);
    let capacity = KubeCapacity::start(
        &client(&kube).await,
        [&all, &narrowed],
        options(Duration::from_secs(30)),
    );

    wait_state(&capacity, &all, |s| running(s) == Some(1)).await;
    kube.create_run("ns", "new", "p", Some("ev-new"), &[("repo", "o/other")]);
    let state = wait_state(&capacity, &all, |s| running(s) == Some(2)).await;
    let ids = seen(&state);
    assert!(ids.contains(&"ev-old".to_owned()) && ids.contains(&"ev-new".to_owned()));
    assert_eq!(
        seen(&capacity.pool_state(&narrowed)),
        ["ev-old"],
        "a run outside the selector confirms nothing in this pool"
    );
    assert_eq!(
        running(&capacity.pool_state(&narrowed)),
        Some(1),
        "annotation selector narrows the pool"
    );

    kube.set_succeeded("ns", "old", "True", "Succeeded");
    wait_state(&capacity, &all, |s| running(s) == Some(1)).await;
    assert_eq!(running(&capacity.pool_state(&narrowed)), Some(0));
    // A finished run still proves its trigger was seen.
    assert!(seen(&capacity.pool_state(&all)).contains(&"ev-old".to_owned()));
    kube.set_succeeded("ns", "new", "False", "Cancelled");
    wait_state(&capacity, &all, |s| running(s) == Some(0)).await;
    kube.delete_run("ns", "new");
    let state = wait_state(&capacity, &all, |s| {
        running(s).is_some() && !seen(s).contains(&"ev-new".to_owned())
    })
    .await;
    assert!(seen(&state).contains(&"ev-old".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_added_by_a_reload_is_watched_with_the_same_client() {
    let kube = FakeKube::start().await.unwrap();
    kube.create_run("ns", "r", "p", None, &[]);
    kube.create_run("ns2", "s", "q", None, &[]);
    let first = pool(&[], TektonApiVersion::V1);
    let added = PoolSpec {
        key: PoolKey("ns2/q".into()),
        namespace: "ns2".into(),
        pipeline_name: "q".into(),
        ..pool(&[], TektonApiVersion::V1)
    };
    let capacity = KubeCapacity::start(
        &client(&kube).await,
        [&first],
        options(Duration::from_secs(30)),
    );
    wait_state(&capacity, &first, |s| running(s) == Some(1)).await;
    assert!(matches!(
        capacity.pool_state(&added),
        PoolState::Unknown { .. }
    ));
    capacity.watch_pools([&first, &added]);
    wait_state(&capacity, &added, |s| running(s) == Some(1)).await;
    kube.create_run("ns2", "t", "q", None, &[]);
    wait_state(&capacity, &added, |s| running(s) == Some(2)).await;
    assert_eq!(running(&capacity.pool_state(&first)), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn v1beta1_pools_use_the_old_api() {
    let kube = FakeKube::start().await.unwrap();
    kube.create_run("ns", "r", "p", None, &[]);
    let old = pool(&[], TektonApiVersion::V1Beta1);
    let capacity = KubeCapacity::start(
        &client(&kube).await,
        [&old],
        options(Duration::from_secs(30)),
    );
    wait_state(&capacity, &old, |s| running(s) == Some(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_outage_makes_the_pool_unknown_until_it_recovers() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    let capacity = KubeCapacity::start(
        &client(&kube).await,
        [&p],
        options(Duration::from_millis(200)),
    );
    wait_state(&capacity, &p, |s| running(s) == Some(0)).await;

    kube.set_down(true);
    let state = wait_state(&capacity, &p, |s| matches!(s, PoolState::Unknown { .. })).await;
    let PoolState::Unknown { reason } = state else {
        unreachable!()
    };
    assert!(reason.contains("Kubernetes"), "{reason}");

    kube.create_run("ns", "r", "p", None, &[]);
    kube.set_down(false);
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_is_unknown_from_the_start() {
    let kube = FakeKube::start().await.unwrap();
    kube.set_down(true);
    let p = pool(&[], TektonApiVersion::V1);
    let capacity = KubeCapacity::start(
        &client(&kube).await,
        [&p],
        options(Duration::from_millis(200)),
    );
    assert!(matches!(capacity.pool_state(&p), PoolState::Unknown { .. }));
    wait_state(
        &capacity,
        &p,
        |s| matches!(s, PoolState::Unknown { reason } if reason.contains("error")),
    )
    .await;
    let none = KubeCapacity::unavailable("no kubeconfig", options(Duration::from_secs(1)));
    assert_eq!(
        none.pool_state(&p),
        PoolState::Unknown {
            reason: "no kubeconfig".into()
        }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_forward_exact_bytes_and_headers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = "s3cr3t";
    let listener = FakeEventListener::start(Some(secret), None).await.unwrap();
    let client = EventListenerClient::new(Duration::from_secs(5), None).unwrap();
    let payload = "{ \"action\" : \"opened\",\n \"number\": 1 }";
    let headers = vec![
        ("X-GitHub-Event".to_owned(), "pull_request".to_owned()),
        ("X-GitHub-Delivery".to_owned(), "d-1".to_owned()),
        (
            "X-Hub-Signature-256".to_owned(),
            dispatcher_sig::sign(secret.as_bytes(), payload.as_bytes()),
        ),
    ];
    let url = listener.url().parse().unwrap();
    let event_id = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &url,
            payload,
            headers: &headers,
            resign: false,
        })
        .await
        .unwrap();
    let received = listener.received();
    assert_eq!(received.len(), 1);
    assert_eq!(event_id, received[0].event_id);
    assert!(
        received[0].signature_ok,
        "a GitHub interceptor with the same secret accepts it"
    );
    assert_eq!(received[0].body, payload.as_bytes());
    assert_eq!(received[0].header("content-type"), Some("application/json"));
    assert_eq!(received[0].header("x-github-delivery"), Some("d-1"));
    assert_eq!(
        received[0].header("x-webhook-dispatcher-dispatch"),
        Some("42"),
        "the dispatch id travels with the trigger"
    );

    listener.fail_next(1);
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &url,
            payload,
            headers: &headers,
            resign: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TriggerError::Rejected { status: 500, .. }),
        "{err}"
    );
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &url,
            payload: "{}",
            headers: &headers,
            resign: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TriggerError::Rejected { status: 403, .. }),
        "tampered body: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adopted_events_are_signed_again_and_new_ones_are_not() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secret = "s3cr3t";
    let listener = FakeEventListener::start(Some(secret), None).await.unwrap();
    let client = EventListenerClient::new(Duration::from_secs(5), Some(secret.as_bytes())).unwrap();
    // The original re-serialized the payload: GitHub's signatures are stale.
    let payload = "{\"action\": \"opened\", \"number\": 1}";
    let headers = vec![
        ("X-GitHub-Event".to_owned(), "pull_request".to_owned()),
        ("X-Hub-Signature-256".to_owned(), "sha256=00".to_owned()),
        ("X-Hub-Signature".to_owned(), "sha1=00".to_owned()),
    ];
    let url = listener.url().parse().unwrap();
    let request = |resign| TriggerRequest {
        dispatch: DispatchId(1),
        url: &url,
        payload,
        headers: &headers,
        resign,
    };
    client.trigger(request(true)).await.unwrap();
    let received = listener.received();
    assert!(received[0].signature_ok, "signed over the bytes sent");
    assert_eq!(
        received[0].header("x-hub-signature-256"),
        Some(dispatcher_sig::sign(secret.as_bytes(), payload.as_bytes()).as_str())
    );
    assert_eq!(
        received[0].header("x-hub-signature"),
        None,
        "the stale sha1 is dropped"
    );
    // A new event keeps GitHub's own headers byte for byte (stale here, so refused).
    let err = client.trigger(request(false)).await.unwrap_err();
    assert!(
        matches!(err, TriggerError::Rejected { status: 403, .. }),
        "{err}"
    );
    assert_eq!(
        listener.received()[1].header("x-hub-signature-256"),
        Some("sha256=00")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_time_out_and_report_transport_errors() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Accepts connections (kernel backlog) but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap())
        .parse()
        .unwrap();
    let client = EventListenerClient::new(Duration::from_millis(300), None).unwrap();
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &url,
            payload: "{}",
            headers: &[],
            resign: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err, TriggerError::Timeout);
    drop(silent);
    let closed: url::Url = "http://127.0.0.1:9/".parse().unwrap();
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &closed,
            payload: "{}",
            headers: &[],
            resign: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, TriggerError::Transport(_)), "{err}");
}

/// A watch that drops while the API answers 503 makes the pool unknown at
/// once, and it stays unknown until the API is back and a full list succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_watch_is_unknown_until_a_fresh_list_succeeds() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    let capacity = Arc::new(KubeCapacity::start(
        &client(&kube).await,
        [&p],
        watch_only(),
    ));
    wait_state(&capacity, &p, |s| running(s) == Some(0)).await;

    kube.set_down(true); // 503 to everything; the open watch ends
    let lists_while_down = kube.request_counts().0;
    let state = poll_state(&capacity, &p, Duration::from_secs(5), |s| {
        matches!(s, PoolState::Unknown { .. })
    })
    .await;
    let PoolState::Unknown { reason } = state else {
        unreachable!()
    };
    // The watch end, or already the failed re-list after it.
    assert!(reason.contains("Kubernetes API error"), "{reason}");

    // From now on, a Known state needs a list the fake answered after coming back.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn({
        let (capacity, p, kube, done) = (
            Arc::clone(&capacity),
            p.clone(),
            kube.clone(),
            Arc::clone(&done),
        );
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut violations = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let state = capacity.pool_state(&p);
                if matches!(state, PoolState::Known { .. })
                    && kube.request_counts().0 <= lists_while_down
                {
                    violations.push(state);
                }
                tokio::select! {
                    () = capacity.changed() => {}
                    _ = tick.tick() => {}
                }
            }
            violations
        }
    });

    // Several re-lists fail while the API is down.
    assert!(
        kube.wait_until(WAIT, |k| k.rejected_requests() >= 3).await,
        "the capacity keeps re-listing"
    );
    assert!(matches!(capacity.pool_state(&p), PoolState::Unknown { .. }));
    assert_eq!(kube.open_watches(), 0, "no watch without a list first");

    kube.create_run("ns", "r", "p", None, &[]);
    kube.set_down(false);
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
    done.store(true, Ordering::SeqCst);
    let violations = monitor.await.unwrap();
    assert!(
        violations.is_empty(),
        "Known before a fresh list: {violations:?}"
    );
    assert!(kube.request_counts().0 > lists_while_down);
}

/// The pool is unknown from the moment the client sees its watch end, not
/// only once the next request fails: checked while that request is held.
#[tokio::test(flavor = "multi_thread")]
async fn the_pool_is_unknown_as_soon_as_the_watch_ends() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    let capacity = KubeCapacity::start(&client(&kube).await, [&p], watch_only());
    wait_state(&capacity, &p, |s| running(s) == Some(0)).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);

    kube.hold_requests(true);
    let arrived = kube.arrived_requests();
    kube.set_down(true);
    // The client saw the watch end and asks again; that request is held.
    assert!(
        kube.wait_until(WAIT, |k| k.arrived_requests() > arrived)
            .await
    );
    assert!(
        matches!(capacity.pool_state(&p), PoolState::Unknown { .. }),
        "{:?}",
        capacity.pool_state(&p)
    );
    kube.hold_requests(false);
    kube.set_down(false);
    wait_state(&capacity, &p, |s| running(s) == Some(0)).await;
}

fn list(status: u16) -> KubeRequest {
    KubeRequest {
        watch: false,
        resource_version: None,
        status,
    }
}

fn watch_from(rv: &str) -> KubeRequest {
    KubeRequest {
        watch: true,
        resource_version: Some(rv.to_owned()),
        status: 200,
    }
}

/// Any watch end, even with the API up, means a fresh list before watching
/// again, from that list's resourceVersion.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_watch_relists_and_resumes_from_the_list() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    let capacity = KubeCapacity::start(&client(&kube).await, [&p], watch_only());
    kube.create_run("ns", "a", "p", None, &[]);
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);
    kube.create_run("ns", "b", "p", None, &[]); // resourceVersion 2
    wait_state(&capacity, &p, |s| running(s) == Some(2)).await;

    let before = kube.requests().len();
    kube.drop_watches();
    assert!(
        kube.wait_until(WAIT, |k| k.open_watches() == 1
            && k.requests().len() >= before + 2)
            .await
    );
    assert_eq!(
        kube.requests()[before..],
        [list(200), watch_from("2")],
        "re-listed, then watched from the list's version"
    );
    kube.set_succeeded("ns", "a", "True", "Succeeded");
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
}

/// A watch answered 410 Gone re-lists and watches again from the new list.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_watch_relists() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    kube.create_run("ns", "a", "p", None, &[]);
    let capacity = KubeCapacity::start(&client(&kube).await, [&p], watch_only());
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 1).await);

    let before = kube.requests().len();
    kube.expire_next_watches(1);
    kube.drop_watches();
    assert!(
        kube.wait_until(WAIT, |k| k.open_watches() == 1
            && k.requests().len() >= before + 4)
            .await
    );
    assert_eq!(
        kube.requests()[before..],
        [list(200), watch_from("1"), list(200), watch_from("1")]
    );
    kube.create_run("ns", "b", "p", None, &[]);
    wait_state(&capacity, &p, |s| running(s) == Some(2)).await;
}

/// Without a working Kubernetes configuration every pool is unknown; the
/// client is retried in the background and the watches start once it works.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_configuration_is_retried_until_it_loads() {
    let kube = FakeKube::start().await.unwrap();
    let p = pool(&[], TektonApiVersion::V1);
    let attempts = Arc::new(AtomicUsize::new(0));
    let factory = {
        let (attempts, url) = (Arc::clone(&attempts), kube.url());
        move || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            let url = url.clone();
            async move {
                if n < 2 {
                    Err(format!("no kubeconfig yet (attempt {})", n + 1))
                } else {
                    Ok(client_for(&url))
                }
            }
        }
    };
    let capacity = KubeCapacity::connect(factory, [&p], options(Duration::from_millis(200)));
    let no_config = |s: &PoolState| matches!(s, PoolState::Unknown { reason } if reason.starts_with("no Kubernetes configuration: "));
    assert!(
        no_config(&capacity.pool_state(&p)),
        "{:?}",
        capacity.pool_state(&p)
    );
    wait_state(&capacity, &p, |s| {
        no_config(s)
            && matches!(s, PoolState::Unknown { reason } if reason.contains("no kubeconfig yet"))
    })
    .await;
    kube.create_run("ns", "r", "p", None, &[]);
    wait_state(&capacity, &p, |s| running(s) == Some(1)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);

    // Dropping the capacity stops its watches too.
    drop(capacity);
    assert!(kube.wait_until(WAIT, |k| k.open_watches() == 0).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn triggers_follow_no_redirect() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirect = FakeRedirect::start().await.unwrap();
    let client = EventListenerClient::new(Duration::from_secs(5), None).unwrap();
    let url = format!("{}/listener", redirect.url()).parse().unwrap();
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(1),
            url: &url,
            payload: "{}",
            headers: &[],
            resign: false,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TriggerError::Rejected { status: 307, .. }),
        "{err}"
    );
    assert_eq!(redirect.redirected(), 1);
    assert_eq!(
        redirect.target_hits(),
        0,
        "the delivery never went elsewhere"
    );
}

#[test]
fn kube_client_at_rejects_what_is_not_a_url() {
    let Err(err) = dispatcher_capacity::kube_client_at("not a url") else {
        panic!("a client for 'not a url'");
    };
    assert!(err.to_string().contains("'not a url'"), "{err}");
}
