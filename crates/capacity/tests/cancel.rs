//! Cancelling PipelineRuns against the fake Kubernetes API: the merge patch
//! of `spec.status`, runs found by eventID or dispatch label, refusals
//! surfaced as errors (the cancel worker retries them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use dispatcher_capacity::KubeRunCanceller;
use dispatcher_core::config::TektonApiVersion;
use dispatcher_core::domain::DispatchId;
use dispatcher_core::ports::{CancelRunOutcome, RunCanceller, RunTarget};
use dispatcher_fakes::FakeKube;

const WAIT: Duration = Duration::from_secs(20);

fn canceller(kube: &FakeKube) -> KubeRunCanceller {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = kube.url();
    KubeRunCanceller::new(move || {
        let url = url.clone();
        async move { dispatcher_capacity::kube_client_at(&url) }
    })
}

fn target(version: TektonApiVersion, label: Option<&str>) -> RunTarget {
    RunTarget {
        namespace: "ns".to_owned(),
        api_version: version,
        dispatch_label: label.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_run_is_cancelled_by_its_event_id_and_finishes_soon_after() {
    let kube = FakeKube::start().await.unwrap();
    kube.create_run("ns", "run-1", "p", Some("ev-1"), &[]);
    kube.create_run("ns", "run-2", "p", Some("ev-2"), &[]);
    let c = canceller(&kube);
    let t = target(TektonApiVersion::V1, None);
    let out = c.cancel_run(&t, DispatchId(1), Some("ev-1")).await.unwrap();
    assert_eq!(out, CancelRunOutcome::Cancelled(vec!["run-1".to_owned()]));
    let patches = kube.patches();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].2,
        serde_json::json!({"spec": {"status": "CancelledRunFinally"}})
    );
    // The fake Tekton finishes it a moment later; the other run keeps running.
    assert!(
        kube.wait_until(WAIT, |k| k.unfinished("p") == ["run-2"])
            .await
    );
    // Finished now: nothing left to cancel. Unknown eventID: not found.
    assert_eq!(
        c.cancel_run(&t, DispatchId(1), Some("ev-1")).await.unwrap(),
        CancelRunOutcome::NothingRunning
    );
    assert_eq!(
        c.cancel_run(&t, DispatchId(9), Some("ev-9")).await.unwrap(),
        CancelRunOutcome::NotFound
    );
    // Without an eventID or a label the run cannot be found yet.
    assert!(c.cancel_run(&t, DispatchId(9), None).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn v1beta1_runs_by_dispatch_label_and_refusals_are_errors() {
    let kube = FakeKube::start().await.unwrap();
    kube.create_labelled_run("ns", "run-7", "p", &[("example.com/dispatch", "7")], &[]);
    let c = canceller(&kube);
    let t = target(TektonApiVersion::V1Beta1, Some("example.com/dispatch"));
    kube.refuse_patches(&[403, 409]);
    let e = c.cancel_run(&t, DispatchId(7), None).await.unwrap_err();
    assert!(e.contains("403") || e.contains("Forbidden"), "{e}");
    let e = c.cancel_run(&t, DispatchId(7), None).await.unwrap_err();
    assert!(e.contains("409") || e.contains("Conflict"), "{e}");
    let out = c.cancel_run(&t, DispatchId(7), None).await.unwrap();
    assert_eq!(out, CancelRunOutcome::Cancelled(vec!["run-7".to_owned()]));
    assert_eq!(
        kube.patches().last().unwrap().2,
        serde_json::json!({"spec": {"status": "PipelineRunCancelled"}})
    );
    assert!(
        kube.wait_until(WAIT, |k| k.unfinished("p").is_empty())
            .await
    );
}
