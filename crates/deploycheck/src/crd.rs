//! Schemas of the two custom resources `deploy/` uses, which `k8s-openapi`
//! does not have: OpenShift's `route.openshift.io/v1` Route and the
//! Prometheus Operator's `monitoring.coreos.com/v1` ServiceMonitor. They list
//! the fields of the upstream CRDs a deployment of this service plausibly
//! sets (not every field upstream knows): an unknown one is rejected, so a
//! field used for the first time is added here after checking upstream.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

/// `route.openshift.io/v1` Route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// Always `route.openshift.io/v1`.
    pub api_version: String,
    /// Always `Route`.
    pub kind: String,
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The route.
    pub spec: RouteSpec,
}

/// A Route's spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// Host name; the router picks one when absent.
    pub host: Option<String>,
    /// Prefix of the paths routed.
    pub path: Option<String>,
    /// Subdomain under the router's domain (instead of `host`).
    pub subdomain: Option<String>,
    /// The backend.
    pub to: RouteTarget,
    /// More backends, weighted.
    pub alternate_backends: Option<Vec<RouteTarget>>,
    /// The Service port.
    pub port: Option<RoutePort>,
    /// TLS settings.
    pub tls: Option<RouteTls>,
    /// `None` or `Subdomain`.
    pub wildcard_policy: Option<WildcardPolicy>,
}

/// A Route backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTarget {
    /// `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
    /// Relative weight (0-256).
    pub weight: Option<i32>,
}

/// The Service port of a Route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutePort {
    /// Port name or number.
    pub target_port: IntOrString,
}

/// A Route's TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteTls {
    /// Where TLS ends.
    pub termination: Termination,
    /// What plain HTTP gets.
    pub insecure_edge_termination_policy: Option<InsecurePolicy>,
    /// PEM certificate.
    pub certificate: Option<String>,
    /// PEM key.
    pub key: Option<String>,
    /// PEM CA certificate.
    pub ca_certificate: Option<String>,
    /// PEM CA of the backend (`reencrypt`).
    pub destination_ca_certificate: Option<String>,
}

/// TLS termination of a Route.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Termination {
    /// At the router.
    Edge,
    /// At the pod.
    Passthrough,
    /// At the router, then again to the pod.
    Reencrypt,
}

/// Plain HTTP on a TLS Route.
#[derive(Debug, Deserialize)]
pub enum InsecurePolicy {
    /// Refused.
    None,
    /// Served.
    Allow,
    /// Redirected to HTTPS.
    Redirect,
}

/// Wildcard policy of a Route.
#[derive(Debug, Deserialize)]
pub enum WildcardPolicy {
    /// The host only.
    None,
    /// The host's subdomains.
    Subdomain,
}

/// `monitoring.coreos.com/v1` ServiceMonitor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitor {
    /// Always `monitoring.coreos.com/v1`.
    pub api_version: String,
    /// Always `ServiceMonitor`.
    pub kind: String,
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// What to scrape.
    pub spec: ServiceMonitorSpec,
}

/// A ServiceMonitor's spec.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Services to scrape.
    pub selector: LabelSelector,
    /// Namespaces to look in (default: the ServiceMonitor's).
    pub namespace_selector: Option<NamespaceSelector>,
    /// The endpoints to scrape.
    pub endpoints: Vec<Endpoint>,
    /// Label whose value becomes the `job` label.
    pub job_label: Option<String>,
}

/// Namespaces of a ServiceMonitor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSelector {
    /// Every namespace.
    pub any: Option<bool>,
    /// These namespaces.
    pub match_names: Option<Vec<String>>,
}

/// One scraped endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Endpoint {
    /// The Service port's name.
    pub port: Option<String>,
    /// The HTTP path (default `/metrics`).
    pub path: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Scrape interval (`30s`).
    pub interval: Option<String>,
    /// Scrape timeout (`10s`).
    pub scrape_timeout: Option<String>,
    /// Credentials sent.
    pub authorization: Option<Authorization>,
    /// Whether to keep the target's labels on conflict.
    pub honor_labels: Option<bool>,
}

/// The `Authorization` header of a scrape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    /// The scheme (`Bearer`).
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// The Secret key holding the credentials.
    pub credentials: Option<k8s_openapi::api::core::v1::SecretKeySelector>,
}
