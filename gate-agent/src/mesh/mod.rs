//! Running in a Kubernetes mesh (Istio): the durable weights in a `WasmPlugin`'s `pluginConfig`
//! ([`wasmplugin`]), one writer at a time through a `coordination.k8s.io` Lease ([`lease`]), the
//! proxies to read found from pods ([`discovery`]), and phase changes recorded as Kubernetes
//! Events ([`events`]). Every API call is bounded by a timeout.
//!
//! The decision logic does not know about any of this: the control loop sees a
//! [`crate::router::WeightRouter`], a target list and a [`crate::notify::Notifier`].

pub mod discovery;
pub mod envoy_stats;
pub mod events;
pub mod extension;
pub mod lease;
pub mod wasmplugin;
pub mod waypoint;

use std::time::Duration;

/// The field manager of every write the agent makes (`metadata.managedFields`, server-side apply).
pub const FIELD_MANAGER: &str = "gate-agent";

/// The User-Agent of every API call: the API server's audit log and metrics name the agent.
pub const USER_AGENT: &str = concat!("gate-agent/", env!("CARGO_PKG_VERSION"));

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the pod's service account,
/// sending [`USER_AGENT`]. A kubeconfig that turns off TLS verification is said once, here: kube
/// would otherwise warn on every connection (`Server cert bypassed`), and the agent's log filter
/// keeps that line out.
pub async fn client() -> Result<kube::Client, String> {
    let mut config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    config.headers.push((http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)));
    if config.accept_invalid_certs {
        tracing::warn!(
            server = %config.cluster_url,
            "the kubeconfig turns off TLS verification of the API server (insecure-skip-tls-verify): \
             set its certificate-authority instead"
        );
    }
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs `call` with a timeout, turning both failure kinds into one message.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| describe(&e)),
        Err(_) => Err(no_answer(timeout)),
    }
}

/// As [`bounded`] for an optimistic-concurrency write: `Ok(None)` when the API server answered
/// 409 Conflict (someone else wrote first; read again rather than overwrite).
pub(crate) async fn bounded_unless_conflict<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Option<T>, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(None),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(no_answer(timeout)),
    }
}

fn no_answer(timeout: Duration) -> String {
    format!("no answer from the Kubernetes API within {timeout:?}")
}

/// An API error in words: the server's `Status` message when there is one.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        other => other.to_string(),
    }
}
