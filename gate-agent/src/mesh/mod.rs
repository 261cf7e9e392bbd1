//! Running in a Kubernetes mesh (Istio): the durable weights in a `WasmPlugin`'s `pluginConfig`
//! ([`wasmplugin`]), one writer at a time through a `coordination.k8s.io` Lease ([`lease`]), the
//! proxies to read found from pods ([`discovery`]), and phase changes recorded as Kubernetes
//! Events ([`events`]). Every API call is bounded by a timeout.
//!
//! The decision logic does not know about any of this: the control loop sees a
//! [`crate::router::WeightRouter`], a target list and a [`crate::notify::Notifier`].

pub mod discovery;
pub mod events;
pub mod lease;
pub mod wasmplugin;

use std::time::Duration;

/// Runs `call` with a timeout, turning both failure kinds into one message.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!("no answer from the Kubernetes API within {timeout:?}")),
    }
}

/// The HTTP status of an API error, if the API server answered with a `Status`.
pub(crate) fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// An API error in words: the server's `Status` message when there is one.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        other => other.to_string(),
    }
}
