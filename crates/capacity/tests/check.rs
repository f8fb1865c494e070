//! `check-config --connect`'s checks: access reviews per namespace and the
//! EventListener probe (a GET: nothing is triggered).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dispatcher_capacity::{kube_client_at, pipelinerun_access, probe_event_listener};
use dispatcher_fakes::{FakeEventListener, FakeKube};

#[tokio::test(flavor = "multi_thread")]
async fn access_reviews_answer_per_namespace() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = FakeKube::start().await.unwrap();
    kube.forbid_namespace("closed", true);
    let client = kube_client_at(&kube.url()).unwrap();
    let open = pipelinerun_access(&client, "open").await.unwrap();
    assert_eq!(
        open.iter().map(|a| (a.verb, a.allowed)).collect::<Vec<_>>(),
        [("list", true), ("watch", true)]
    );
    let closed = pipelinerun_access(&client, "closed").await.unwrap();
    assert!(closed.iter().all(|a| !a.allowed));
    assert_eq!(
        closed[0].reason.as_deref(),
        Some("fake: forbidden in this namespace")
    );
    kube.set_down(true);
    assert!(pipelinerun_access(&client, "open").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_listener_is_reachable_on_any_answer() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = FakeEventListener::start(None, None).await.unwrap();
    let status = probe_event_listener(&listener.url(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert!(listener.accepted().is_empty());
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let err = probe_event_listener(&url, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
}
