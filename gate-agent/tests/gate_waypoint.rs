//! The controller's TrafficExtension generation and ambient-waypoint discovery against a **real**
//! kube-apiserver with Istio's and Gateway API's CRDs (tests/support/kube.rs), run in-process as
//! the cluster admin. The Services, Gateways and pods are created by the test (no istiod, no
//! ztunnel, no waypoint proxy runs here: the pods are objects with a status written as a kubelet
//! would).
//!
//! - With `plugin_kind: TrafficExtension`, a sidecar gate gets TrafficExtensions (configuration under
//!   `spec.wasm`) and its rollout loop writes the weight into the route TrafficExtension.
//! - Waypoint discovery finds a Service's waypoint pods from its `istio.io/use-waypoint` label,
//!   the Gateway and the `gateway.networking.k8s.io/gateway-name` pod label.
//! - A ztunnel-only Service and an agentgateway waypoint each give `Ready=False` with a reason and
//!   the fix; a usable waypoint gets the route plugin attached by `targetRefs` to the Service.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use gate_agent::gate::controller::{ControllerSettings, GateIndex, run};
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::discovery::PodTargets;
use gate_agent::mesh::extension::{PluginKind, TrafficExtension};
use gate_agent::mesh::lease::Leadership;
use gate_agent::mesh::waypoint;
use gates::{apply, gate, install_crd, proxies, virtual_service};
use kube::Api;
use kube::api::DynamicObject;
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

fn settings(ns: &TestNamespace, kind: Option<PluginKind>) -> ControllerSettings {
    gates::controller_settings(vec![ns.name.clone()], kind)
}

async fn status(ns: &TestNamespace, name: &str) -> Value {
    let g = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name).get(name).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

fn ready(status: &Value) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned()).unwrap_or_default()
}

/// Polls gate `name`'s status until `check` holds, or fails with the last status.
async fn wait_for(ns: &TestNamespace, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(ns, name).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{name}: {what} not within 15 s; status: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_dynamic(ns: &TestNamespace, kind: PluginKind, name: &str) -> Option<Value> {
    let api: Api<DynamicObject> = Api::namespaced_with(ns.admin.clone(), &ns.name, &kind.api_resource());
    api.get_opt(name).await.unwrap().map(|o| serde_json::to_value(o).unwrap())
}

fn service(ns: &str, name: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": ns, "labels": labels },
            "spec": { "selector": { "app": name }, "ports": [{ "name": "http", "port": 8080 }] } })
}

/// A waypoint Gateway as `istioctl waypoint apply` writes it, of `class`.
fn waypoint_gateway(ns: &str, name: &str, class: &str) -> Value {
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": { "name": name, "namespace": ns, "labels": { "istio.io/waypoint-for": "service" } },
            "spec": { "gatewayClassName": class,
                      "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }] } })
}

fn waypoint_gate(ns: &str, name: &str, explicit: Option<&str>) -> Value {
    let mut g = gate(ns, name, &format!("{name}-caller"), 15290, "1s");
    g["spec"]["attachment"] = match explicit {
        Some(w) => json!({ "mode": "waypoint", "waypoint": w }),
        None => json!({ "mode": "waypoint" }),
    };
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_traffic_extension_configured_a_gate_gets_traffic_extensions_and_its_weight_is_written_there() {
    let cp = ControlPlane::shared();
    install_crd(cp);
    let ns = cp.namespace("te-gate").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let port = proxies(&ns, "alpha", &[[127, 0, 0, 41]], &healthy).await;
    apply(cp, &virtual_service(&ns.name, "alpha", true));
    apply(cp, &gate(&ns.name, "alpha", "alpha-caller", port, "1s"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let s = settings(&ns, Some(PluginKind::TrafficExtension));
    let controller = tokio::spawn(run(ns.admin.clone(), s, Leadership::always(), GateIndex::default(), stop_rx));
    wait_for(&ns, "alpha", "a running rollout", |s| s["phase"] == "progressing").await;
    for name in ["alpha-canary-gate", "alpha-canary-gate-snapshot"] {
        let te = get_dynamic(&ns, PluginKind::TrafficExtension, name).await.unwrap_or_else(|| panic!("{name}"));
        assert_eq!(te["metadata"]["ownerReferences"][0]["name"], "alpha", "{name}");
        assert_eq!(te["spec"]["wasm"]["url"], "oci://registry.invalid/canary-gate/filter:0.1.0", "{name}");
        assert!(te["spec"].get("pluginConfig").is_none() && te["spec"].get("url").is_none(), "{te}");
        assert_eq!(te["spec"]["selector"]["matchLabels"]["app"], "alpha-caller");
        assert!(get_dynamic(&ns, PluginKind::WasmPlugin, name).await.is_none(), "no WasmPlugin {name}");
    }
    // The rollout loop writes its fields into the route TrafficExtension, under gate-agent's name.
    let deadline = Instant::now() + Duration::from_secs(10);
    let te = loop {
        let te =
            Api::<TrafficExtension>::namespaced(ns.admin.clone(), &ns.name).get("alpha-canary-gate").await.unwrap();
        let cfg = te.spec.wasm.as_ref().and_then(|w| w.plugin_config.clone()).unwrap_or_default();
        if cfg.get("rollout_state").is_some() {
            break serde_json::to_value(te).unwrap();
        }
        assert!(Instant::now() < deadline, "the loop never wrote into the TrafficExtension: {cfg}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cfg = &te["spec"]["wasm"]["pluginConfig"];
    assert_eq!(cfg["rollout"], "alpha");
    assert!(cfg["revision"].as_u64().unwrap() >= 1, "{cfg}");
    assert!(te["metadata"]["managedFields"].as_array().unwrap().iter().any(|m| m["manager"] == "gate-agent"));
    stop_tx.send(true).unwrap();
    controller.await.unwrap();
}

#[tokio::test]
async fn the_cluster_serves_both_kinds_and_auto_picks_wasmplugin() {
    let ns = ControlPlane::shared().namespace("te-served").await;
    let served = PluginKind::served(&ns.admin, Duration::from_secs(2)).await.unwrap();
    assert_eq!(served, Some(PluginKind::WasmPlugin), "Istio's CRDs here have both kinds");
}

#[tokio::test]
async fn waypoint_discovery_finds_the_ready_pods_of_the_services_waypoint() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("waypoint-find").await;
    apply(cp, &service(&ns.name, "payment-svc", json!({ "istio.io/use-waypoint": "pay-waypoint" })));
    apply(cp, &service(&ns.name, "other-svc", json!({})));
    apply(cp, &waypoint_gateway(&ns.name, "pay-waypoint", "istio-waypoint"));
    let gw = |name: &str| json!({ "gateway.networking.k8s.io/gateway-name": name });
    ns.pod("pay-waypoint-a", gw("pay-waypoint"), "10.1.0.1", true).await;
    ns.pod("pay-waypoint-b", gw("pay-waypoint"), "10.1.0.2", true).await;
    ns.pod("pay-waypoint-c", gw("pay-waypoint"), "10.1.0.3", false).await;
    ns.pod("another-waypoint-a", gw("another-waypoint"), "10.1.0.9", true).await;
    ns.pod("payment-svc-v1", json!({ "app": "payment-svc" }), "10.1.0.20", true).await;
    let t = Duration::from_secs(2);
    let found = waypoint::discover(&ns.admin, &ns.name, "payment-svc", None, t).await.unwrap();
    assert_eq!((found.namespace.as_str(), found.name.as_str()), (ns.name.as_str(), "pay-waypoint"));
    let pods = PodTargets::new(Api::namespaced(ns.admin.clone(), &found.namespace), &found.pod_selector, 15290, t);
    assert_eq!(pods.list().await.unwrap(), vec!["10.1.0.1:15290", "10.1.0.2:15290"]);
    // The namespace's label names a waypoint for every Service without its own.
    let e = waypoint::discover(&ns.admin, &ns.name, "other-svc", None, t).await.unwrap_err();
    assert_eq!(e.reason, "NoWaypoint", "{}", e.message);
    ns.kubectl(cp).args(["label", "namespace", &ns.name, "istio.io/use-waypoint=pay-waypoint"]).status().unwrap();
    let found = waypoint::discover(&ns.admin, &ns.name, "other-svc", None, t).await.unwrap();
    assert_eq!(found.name, "pay-waypoint");
    // A missing Service is an error that names it, not an empty list.
    let e = waypoint::discover(&ns.admin, &ns.name, "no-such-svc", None, t).await.unwrap_err();
    assert!(e.reason == "WaypointUnreadable" && e.message.contains("no-such-svc"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_gates_that_cannot_run_the_filter_say_why_in_ready_false() {
    let cp = ControlPlane::shared();
    install_crd(cp);
    let ns = cp.namespace("waypoint-gates").await;
    // ztunnel: no waypoint anywhere. agw: an agentgateway waypoint. wp: Istio's Envoy waypoint.
    apply(cp, &service(&ns.name, "ztunnel", json!({})));
    apply(cp, &service(&ns.name, "agw", json!({ "istio.io/use-waypoint": "agw-waypoint" })));
    apply(cp, &service(&ns.name, "wp", json!({ "istio.io/use-waypoint": "waypoint" })));
    apply(cp, &waypoint_gateway(&ns.name, "agw-waypoint", "agentgateway-waypoint"));
    apply(cp, &waypoint_gateway(&ns.name, "waypoint", "istio-waypoint"));
    let gw = json!({ "gateway.networking.k8s.io/gateway-name": "waypoint" });
    ns.pod("waypoint-a", gw.clone(), "10.2.0.1", true).await;
    ns.pod("waypoint-b", gw, "10.2.0.2", true).await;
    for name in ["ztunnel", "agw", "wp"] {
        apply(cp, &virtual_service(&ns.name, name, true));
        apply(cp, &waypoint_gate(&ns.name, name, None));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let s = settings(&ns, None);
    let controller = tokio::spawn(run(ns.admin.clone(), s, Leadership::always(), GateIndex::default(), stop_rx));

    let st = wait_for(&ns, "ztunnel", "NoWaypoint", |s| ready(s)["reason"] == "NoWaypoint").await;
    let msg = ready(&st)["message"].as_str().unwrap().to_owned();
    assert_eq!(ready(&st)["status"], "False");
    assert!(msg.contains("ztunnel-only") && msg.contains("Fix:"), "{msg}");
    let st = wait_for(&ns, "agw", "WaypointCannotRunWasm", |s| ready(s)["reason"] == "WaypointCannotRunWasm").await;
    let msg = ready(&st)["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("agentgateway-waypoint") && msg.contains("istio-waypoint") && msg.contains("Fix:"), "{msg}");
    // The usable waypoint: its rollout runs and reads each replica's Envoy stats at its pod IP
    // and the stats port (15090); these pods have no Envoy, so it says that no replica answered.
    let st = wait_for(&ns, "wp", "the replicas read", |s| {
        ready(s)["message"].as_str().is_some_and(|m| m.contains("10.2.0.2:15090"))
    })
    .await;
    let msg = ready(&st)["message"].as_str().unwrap().to_owned();
    assert_eq!(
        (ready(&st)["status"].as_str(), ready(&st)["reason"].as_str()),
        (Some("False"), Some("NotReady")),
        "{st:#}"
    );
    assert!(msg.contains("no proxy answered") && msg.contains("10.2.0.1:15090"), "{msg}");
    // Its route plugin names its metrics per rollout: one waypoint runs several gates' filters.
    let config =
        get_dynamic(&ns, PluginKind::WasmPlugin, "wp-canary-gate").await.unwrap()["spec"]["pluginConfig"].clone();
    assert_eq!(config["rollout_in_metric_names"], true, "{config}");
    // In waypoint mode the route plugin attaches by targetRefs to the Service: no selector, no
    // snapshot plugin on pod ports.
    let route = get_dynamic(&ns, PluginKind::WasmPlugin, "wp-canary-gate").await.expect("the route WasmPlugin");
    assert_eq!(route["spec"]["targetRefs"], json!([{ "group": "", "kind": "Service", "name": "wp" }]));
    assert!(route["spec"].get("selector").is_none() && route["spec"].get("match").is_none(), "{route}");
    assert!(get_dynamic(&ns, PluginKind::WasmPlugin, "wp-canary-gate-snapshot").await.is_none());
    // Naming an Envoy waypoint in the gate overrides the Service's label.
    let fixed = waypoint_gate(&ns.name, "agw", Some("waypoint"));
    apply(cp, &fixed);
    wait_for(&ns, "agw", "the named waypoint", |s| {
        ready(s)["message"].as_str().is_some_and(|m| m.contains("10.2.0.1:15090"))
    })
    .await;
    stop_tx.send(true).unwrap();
    controller.await.unwrap();
}
