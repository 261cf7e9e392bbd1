//! Which proxies run the route filter in ambient mode: the gated Service's **waypoint**.
//!
//! In Istio's ambient mode ztunnel never runs Wasm; a Service's L7 traffic goes through the
//! waypoint the Service (or else its namespace) names in the label `istio.io/use-waypoint`
//! (`istio.io/use-waypoint-namespace` when the waypoint lives elsewhere). A waypoint is a Gateway
//! API `Gateway` whose pods carry `gateway.networking.k8s.io/gateway-name: <gateway>`. Istio runs
//! Wasm only in its Envoy waypoints (GatewayClass `istio-waypoint`); an agentgateway waypoint is
//! programmed through Gateway API alone and runs no WasmPlugin or TrafficExtension.
//!
//! [`resolve`] is the pure decision (labels and the Gateway in, a waypoint or a
//! [`WaypointProblem`] with its fix out); [`discover`] reads those objects. A problem becomes the
//! gate's `Ready=False` condition, never a rollout that silently reads nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};

use super::bounded;

/// The label a Service or namespace names its waypoint with (`none`: no waypoint).
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// The waypoint's namespace, when it is not the Service's.
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// The label Gateway API implementations put on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Istio's Envoy waypoint class: the only one that runs Wasm.
pub const ISTIO_WAYPOINT_CLASS: &str = "istio-waypoint";

/// A usable waypoint: where its pods are and how to select them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waypoint {
    pub namespace: String,
    pub name: String,
    /// `gateway.networking.k8s.io/gateway-name=<name>`, for pod discovery.
    pub pod_selector: String,
}

/// Why the gated Service has no waypoint that can run the filter: a condition reason and a
/// message that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointProblem {
    /// `NoWaypoint`, `WaypointNotFound`, `WaypointCannotRunWasm`, `WaypointUnreadable`.
    pub reason: &'static str,
    pub message: String,
}

fn problem(reason: &'static str, message: String) -> WaypointProblem {
    WaypointProblem { reason, message }
}

/// The waypoint named for `service`: the gate's own choice, else the Service's label, else the
/// namespace's. `Ok((namespace, name))`; a ztunnel-only Service is a [`WaypointProblem`].
pub fn waypoint_ref(
    namespace: &str,
    service: &str,
    explicit: Option<&str>,
    service_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<(String, String), WaypointProblem> {
    if let Some(name) = explicit {
        return Ok((namespace.to_owned(), name.to_owned()));
    }
    // The Service's label wins over its namespace's, `none` included (an explicit opt-out).
    let labels = if service_labels.contains_key(USE_WAYPOINT) { service_labels } else { namespace_labels };
    match labels.get(USE_WAYPOINT).map(String::as_str) {
        Some(name) if name != "none" && !name.is_empty() => {
            let ns = labels.get(USE_WAYPOINT_NAMESPACE).cloned().unwrap_or_else(|| namespace.to_owned());
            Ok((ns, name.to_owned()))
        }
        _ => Err(problem(
            "NoWaypoint",
            format!(
                "Service {namespace}/{service} has no waypoint (namespace {namespace} is ztunnel-only for it: neither \
                 the Service nor the namespace has a `{USE_WAYPOINT}` label naming one), and ztunnel never runs Wasm. \
                 Fix: deploy a waypoint (`istioctl waypoint apply -n {namespace}`) and label the Service \
                 `{USE_WAYPOINT}=waypoint`, or name it in spec.attachment.waypoint; or use spec.attachment.mode: \
                 sidecar with sidecar-injected callers"
            ),
        )),
    }
}

/// Checks the waypoint's Gateway (as JSON, `None` when it does not exist) and gives its pods'
/// selector.
pub fn resolve(namespace: &str, name: &str, gateway: Option<&serde_json::Value>) -> Result<Waypoint, WaypointProblem> {
    let Some(gateway) = gateway else {
        return Err(problem(
            "WaypointNotFound",
            format!(
                "the waypoint Gateway {namespace}/{name} does not exist. Fix: `istioctl waypoint apply -n {namespace} \
                 --name {name}`, or correct the `{USE_WAYPOINT}` label or spec.attachment.waypoint"
            ),
        ));
    };
    let class = gateway.pointer("/spec/gatewayClassName").and_then(serde_json::Value::as_str).unwrap_or_default();
    if class != ISTIO_WAYPOINT_CLASS {
        let what =
            if class.contains("agentgateway") { "an agentgateway waypoint" } else { "not Istio's Envoy waypoint" };
        return Err(problem(
            "WaypointCannotRunWasm",
            format!(
                "the waypoint Gateway {namespace}/{name} has gatewayClassName `{class}`, {what}: Istio runs \
                 WasmPlugins and TrafficExtensions only in `{ISTIO_WAYPOINT_CLASS}` waypoints, so the filter would \
                 never run. Fix: point the Service at a waypoint of class `{ISTIO_WAYPOINT_CLASS}` (`istioctl \
                 waypoint apply -n {namespace} --name <name>`), or gate its callers in sidecar mode"
            ),
        ));
    }
    Ok(Waypoint {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: format!("{GATEWAY_NAME_LABEL}={name}"),
    })
}

/// Reads the Service, its namespace and the named Gateway, and [`resolve`]s the waypoint.
pub async fn discover(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    explicit: Option<&str>,
    timeout: Duration,
) -> Result<Waypoint, WaypointProblem> {
    let unreadable = |what: String, e: String| problem("WaypointUnreadable", format!("reading {what}: {e}"));
    let (svc_labels, ns_labels) = if explicit.is_some() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        let svc = bounded(timeout, Api::<Service>::namespaced(client.clone(), namespace).get(service))
            .await
            .map_err(|e| unreadable(format!("Service {namespace}/{service}"), e))?;
        let ns = bounded(timeout, Api::<Namespace>::all(client.clone()).get(namespace))
            .await
            .map_err(|e| unreadable(format!("Namespace {namespace}"), e))?;
        (svc.metadata.labels.unwrap_or_default(), ns.metadata.labels.unwrap_or_default())
    };
    let (wp_ns, name) = waypoint_ref(namespace, service, explicit, &svc_labels, &ns_labels)?;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway"),
        "gateways",
    );
    let gateways: Api<DynamicObject> = Api::namespaced_with(client.clone(), &wp_ns, &ar);
    let gateway = bounded(timeout, gateways.get_opt(&name))
        .await
        .map_err(|e| unreadable(format!("Gateway {wp_ns}/{name}"), e))?
        .map(|g| serde_json::to_value(g).unwrap_or_default());
    resolve(&wp_ns, &name, gateway.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_service_label_wins_then_the_namespace_then_nothing_is_ztunnel_only() {
        let none = labels(&[]);
        let ns = labels(&[(USE_WAYPOINT, "ns-waypoint")]);
        let svc = labels(&[(USE_WAYPOINT, "svc-waypoint")]);
        assert_eq!(waypoint_ref("shop", "pay", None, &svc, &ns), Ok(("shop".into(), "svc-waypoint".into())));
        assert_eq!(waypoint_ref("shop", "pay", None, &none, &ns), Ok(("shop".into(), "ns-waypoint".into())));
        assert_eq!(waypoint_ref("shop", "pay", Some("mine"), &svc, &ns), Ok(("shop".into(), "mine".into())));
        let elsewhere = labels(&[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "istio-waypoints")]);
        assert_eq!(
            waypoint_ref("shop", "pay", None, &elsewhere, &none),
            Ok(("istio-waypoints".into(), "shared".into()))
        );
        let e = waypoint_ref("shop", "pay", None, &none, &none).unwrap_err();
        assert_eq!(e.reason, "NoWaypoint");
        assert!(e.message.contains("ztunnel-only") && e.message.contains("istioctl waypoint apply"), "{}", e.message);
        // A Service that opts out is ztunnel-only even in a namespace with a waypoint.
        let opted_out = labels(&[(USE_WAYPOINT, "none")]);
        assert_eq!(waypoint_ref("shop", "pay", None, &opted_out, &ns).unwrap_err().reason, "NoWaypoint");
    }

    #[test]
    fn only_istios_envoy_waypoint_runs_the_filter() {
        let gw = |class: &str| json!({ "spec": { "gatewayClassName": class } });
        let ok = resolve("shop", "waypoint", Some(&gw("istio-waypoint"))).unwrap();
        assert_eq!(ok.pod_selector, "gateway.networking.k8s.io/gateway-name=waypoint");
        let e = resolve("shop", "waypoint", Some(&gw("agentgateway-waypoint"))).unwrap_err();
        assert_eq!(e.reason, "WaypointCannotRunWasm");
        assert!(e.message.contains("agentgateway") && e.message.contains("Fix:"), "{}", e.message);
        assert_eq!(resolve("shop", "w", Some(&gw("istio"))).unwrap_err().reason, "WaypointCannotRunWasm");
        assert_eq!(resolve("shop", "w", None).unwrap_err().reason, "WaypointNotFound");
    }
}
