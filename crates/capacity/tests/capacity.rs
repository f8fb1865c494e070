//! Capacity and triggers against the local fakes of the Kubernetes API and
//! a Tekton EventListener.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use dispatcher_capacity::{CapacityOptions, EventListenerClient, KubeCapacity};
use dispatcher_core::config::{PoolKey, PoolSpec, TektonApiVersion};
use dispatcher_core::domain::DispatchId;
use dispatcher_core::ports::{CapacitySource, PoolState, Trigger, TriggerError, TriggerRequest};
use dispatcher_fakes::{FakeEventListener, FakeKube};

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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(kube.url().parse().unwrap());
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
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
    let client = EventListenerClient::new(Duration::from_secs(5)).unwrap();
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
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TriggerError::Rejected { status: 403, .. }),
        "tampered body: {err}"
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
    let client = EventListenerClient::new(Duration::from_millis(300)).unwrap();
    let err = client
        .trigger(TriggerRequest {
            dispatch: DispatchId(42),
            url: &url,
            payload: "{}",
            headers: &[],
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
        })
        .await
        .unwrap_err();
    assert!(matches!(err, TriggerError::Transport(_)), "{err}");
}
