//! `dispatcher check-config --connect`: does the Kubernetes API let this
//! identity do what the capacity watch needs, and does each EventListener
//! answer? Nothing is created but the access reviews, nothing triggered.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// The verbs the capacity watch uses on `tekton.dev` PipelineRuns.
pub const PIPELINERUN_VERBS: [&str; 2] = ["list", "watch"];

/// The API server's answer for one verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbAccess {
    /// `list` or `watch`.
    pub verb: &'static str,
    /// Whether it is allowed.
    pub allowed: bool,
    /// The authorizer's reason or evaluation error, when it gave one.
    pub reason: Option<String>,
}

/// The verb cancelling a run needs (`cancel_superseded`, `cancel_on_close`).
pub const CANCEL_VERB: &str = "patch";

/// Asks the API server (a SelfSubjectAccessReview per verb) whether this
/// client may list and watch `tekton.dev` PipelineRuns in `namespace`.
pub async fn pipelinerun_access(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<VerbAccess>, kube::Error> {
    pipelinerun_verbs_access(client, namespace, &PIPELINERUN_VERBS).await
}

/// Like [`pipelinerun_access`], for the given `verbs` (e.g. [`CANCEL_VERB`]).
pub async fn pipelinerun_verbs_access(
    client: &kube::Client,
    namespace: &str,
    verbs: &[&'static str],
) -> Result<Vec<VerbAccess>, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut answers = Vec::new();
    for &verb in verbs {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("tekton.dev".to_owned()),
                    resource: Some("pipelineruns".to_owned()),
                    verb: Some(verb.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        let status = answer.status.unwrap_or_default();
        let reason = [status.reason, status.evaluation_error]
            .into_iter()
            .flatten()
            .find(|r| !r.is_empty());
        answers.push(VerbAccess {
            verb,
            allowed: status.allowed && !status.denied.unwrap_or(false),
            reason,
        });
    }
    Ok(answers)
}

/// Sends a `GET` to an EventListener's `callback_url` (no redirect followed,
/// no body, no GitHub headers: nothing is triggered) and returns the HTTP
/// status: any answer means it is reachable. Errors are connection failures
/// and timeouts, as text without the URL.
pub async fn probe_event_listener(url: &str, timeout: Duration) -> Result<u16, String> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("webhook-dispatcher/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())?;
    let response = http.get(url).send().await.map_err(|e| {
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        message
    })?;
    Ok(response.status().as_u16())
}
