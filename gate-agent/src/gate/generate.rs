//! What the controller creates for each CanaryGate, computed from the gate alone (no I/O): the
//! route and snapshot WasmPlugins (or TrafficExtensions, [`Placement::kind`]), the snapshot
//! Service, and the AuthorizationPolicy and NetworkPolicy that keep the snapshot port to the
//! controller. In waypoint mode ([`Placement::waypoint`]) only the route plugin is generated,
//! attached by `targetRefs` to the gated Service (waypoints ignore `selector`), since a waypoint
//! serves Services, not pod ports: there is no inbound chain for a snapshot plugin (docs/mesh.md). They are today's hand-written
//! deploy/istio objects with the user's values filled in, each labelled with its gate and owned
//! by it (an owner reference with `controller: true`), so deleting the gate removes them.
//!
//! The route WasmPlugin's `canary_weight`, `revision`, `rollout_state` and `guard` are left out:
//! the rollout loop writes them (merge patches under its own field manager), and server-side
//! apply never touches fields another manager owns.

use serde_json::{Value, json};

use super::convert::GatePlan;
use crate::mesh::extension::PluginKind;

/// The label every generated object carries: the name of its CanaryGate.
pub const GATE_LABEL: &str = "canary-gate.dev/gate";
/// `app.kubernetes.io/managed-by` on every generated object.
pub const MANAGED_BY: &str = "canary-gate-controller";

/// What the controller's installation fixes for every gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    /// The filter module, `oci://registry/canary-gate/filter:0.1.0`.
    pub module_url: String,
    /// Its digest, hex without `sha256:`: istio-agent refuses a module that differs.
    pub module_sha256: String,
    /// Where the controller runs, and as which ServiceAccount: the snapshot port admits only it.
    pub namespace: String,
    pub service_account: String,
    /// The controller pods' labels, for the NetworkPolicy.
    pub pod_labels: std::collections::BTreeMap<String, String>,
}

/// The owner of the generated objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

/// The generated objects' names for gate `name`.
pub fn route_plugin_name(gate: &str) -> String {
    format!("{gate}-canary-gate")
}
pub fn snapshot_name(gate: &str) -> String {
    format!("{gate}-canary-gate-snapshot")
}

/// Which kind the plugins are, and where the route plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub kind: PluginKind,
    /// In the gated Service's ambient waypoint (`targetRefs` to the Service), not the callers'
    /// sidecars.
    pub waypoint: bool,
}

impl Default for Placement {
    fn default() -> Self {
        Placement { kind: PluginKind::WasmPlugin, waypoint: false }
    }
}

/// The objects of one gate as sidecar WasmPlugins ([`objects_for`] with the default placement).
pub fn objects(plan: &GatePlan, service_port: u16, owner: &Owner, install: &Install) -> Vec<Value> {
    objects_for(plan, ("", service_port), owner, install, Placement::default())
}

/// A plugin of `kind` with the Wasm fields in `wasm` (url, sha256, pluginName, failStrategy,
/// pluginConfig) and the attachment in `attach` (selector or targetRefs, match, phase, priority):
/// flat in a WasmPlugin, under `spec.wasm` in a TrafficExtension.
fn plugin(kind: PluginKind, metadata: Value, attach: Value, wasm: Value) -> Value {
    let mut spec = attach;
    match (kind, spec.as_object_mut(), wasm) {
        (PluginKind::WasmPlugin, Some(s), Value::Object(w)) => s.extend(w),
        (PluginKind::TrafficExtension, Some(s), w) => {
            s.insert("wasm".into(), w);
        }
        _ => {}
    }
    json!({ "apiVersion": kind.api_version(), "kind": kind.kind(), "metadata": metadata, "spec": spec })
}

/// The objects of one gate, as server-side apply configurations (apiVersion, kind, metadata with
/// name, namespace, labels and the owner reference; spec).
/// `service` is the gated Service's name and port.
pub fn objects_for(
    plan: &GatePlan,
    (service, service_port): (&str, u16),
    owner: &Owner,
    install: &Install,
    placement: Placement,
) -> Vec<Value> {
    let selector = json!({ "matchLabels": selector_of(plan) });
    let meta = |name: String, component: &str| {
        json!({
            "name": name,
            "namespace": plan.namespace,
            "labels": {
                "app.kubernetes.io/name": "canary-gate",
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/managed-by": MANAGED_BY,
                GATE_LABEL: plan.name,
            },
            "ownerReferences": [{
                "apiVersion": "canary-gate.dev/v1alpha1", "kind": "CanaryGate",
                "name": owner.name, "uid": owner.uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        })
    };
    let snapshot = snapshot_name(&plan.name);
    let port = plan.snapshot_port;
    let principal = format!("*/ns/{}/sa/{}", install.namespace, install.service_account);
    let wasm = |fail: &str, config: &Value| {
        json!({ "url": install.module_url, "sha256": install.module_sha256, "pluginName": "canary-gate",
                "failStrategy": fail, "pluginConfig": config })
    };
    // A broken filter means no label, hence stable.
    let route_wasm = wasm("FAIL_OPEN", &plan.plugin_config);
    let route_meta = meta(route_plugin_name(&plan.name), "route-filter");
    if placement.waypoint {
        // The waypoint runs the filter for this Service's requests; there is no client/server
        // side to match and no pod port (docs/mesh.md, "Ambient waypoints"). One waypoint runs
        // several gates' filters, and the controller reads them from its Envoy stats: the
        // metric names carry the rollout.
        // TODO(issue20): also `"envoy_stats": true` once the filter has that key (the waypoint
        // path reads the per-request Envoy stats, so they must stay on).
        let mut config = plan.plugin_config.clone();
        if let Some(c) = config.as_object_mut() {
            c.insert("rollout_in_metric_names".into(), Value::Bool(true));
        }
        let route_wasm = wasm("FAIL_OPEN", &config);
        let attach = json!({
            "targetRefs": [{ "group": "", "kind": "Service", "name": service }],
            "phase": "STATS", "priority": -100,
        });
        return vec![plugin(placement.kind, route_meta, attach, route_wasm)];
    }
    let route_attach = json!({
        "selector": selector, "phase": "STATS", "priority": -100,
        "match": [{ "mode": "CLIENT", "ports": [{ "number": service_port }] }],
    });
    let snapshot_attach = json!({
        "selector": selector, "phase": "STATS",
        "match": [{ "mode": "SERVER", "ports": [{ "number": port }] }],
    });
    vec![
        plugin(placement.kind, route_meta, route_attach, route_wasm),
        plugin(
            placement.kind,
            meta(snapshot.clone(), "snapshot-endpoint"),
            snapshot_attach,
            wasm("FAIL_CLOSE", &json!({ "version": 1, "role": "snapshot" })),
        ),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": with_annotation(meta(snapshot.clone(), "snapshot-endpoint"), "networking.istio.io/exportTo", "."),
            "spec": {
                "clusterIP": "None", "selector": selector_of(plan),
                "ports": [{ "name": "http-canary-gate-snapshot", "appProtocol": "http", "protocol": "TCP",
                            "port": port, "targetPort": port }],
            },
        }),
        json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": meta(snapshot.clone(), "snapshot-endpoint"),
            "spec": {
                "selector": selector, "action": "DENY",
                "rules": [{ "from": [{ "source": { "notPrincipals": [principal] } }],
                            "to": [{ "operation": { "ports": [port.to_string()] } }] }],
            },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": meta(snapshot, "snapshot-endpoint"),
            "spec": {
                "podSelector": selector, "policyTypes": ["Ingress"],
                "ingress": [{
                    "from": [{
                        "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": install.namespace } },
                        "podSelector": { "matchLabels": install.pod_labels },
                    }],
                    "ports": [{ "protocol": "TCP", "port": port }],
                }],
            },
        }),
    ]
}

fn selector_of(plan: &GatePlan) -> Value {
    let mut labels = serde_json::Map::new();
    for pair in plan.pod_selector.split(',') {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.to_owned(), json!(v));
        }
    }
    Value::Object(labels)
}

fn with_annotation(mut meta: Value, key: &str, value: &str) -> Value {
    if let Some(m) = meta.as_object_mut() {
        m.insert("annotations".into(), json!({ key: value }));
    }
    meta
}

/// Whether `live` still holds everything `desired` sets (extra fields, such as the rollout
/// loop's weight or the server's defaults, are allowed). An edit to a field the controller sets
/// makes this false, and the controller applies the object again.
pub fn holds(live: &Value, desired: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(k, v)| have.get(k).is_some_and(|h| holds(h, v)))
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| holds(h, w))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (want, have) => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::convert::plan;
    use crate::gate::crd::CanaryGate;

    fn install() -> Install {
        Install {
            module_url: "oci://r/canary-gate/filter:0.1.0".into(),
            module_sha256: "ab".repeat(32),
            namespace: "canary-gate-system".into(),
            service_account: "canary-gate-controller".into(),
            pod_labels: [("app.kubernetes.io/name".to_owned(), "canary-gate-controller".to_owned())].into(),
        }
    }

    fn gate() -> CanaryGate {
        serde_json::from_value(json!({
            "apiVersion": "canary-gate.dev/v1alpha1", "kind": "CanaryGate",
            "metadata": { "name": "payment-svc", "namespace": "shop", "uid": "u-1" },
            "spec": { "service": { "name": "payment-svc", "port": 8080 },
                      "workload": { "selector": { "app": "frontend" } },
                      "stable": "v1", "canary": "v2", "route": { "name": "payment-svc" },
                      "analysis": { "interval": "30s", "stepWeights": [1, 5, 10] } }
        }))
        .unwrap()
    }

    #[test]
    fn a_gate_generates_five_owned_objects_like_the_hand_written_ones() {
        let p = plan(&gate()).unwrap();
        let owner = Owner { name: "payment-svc".into(), uid: "u-1".into() };
        let objs = objects(&p, 8080, &owner, &install());
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["WasmPlugin", "WasmPlugin", "Service", "AuthorizationPolicy", "NetworkPolicy"]);
        for o in &objs {
            assert_eq!(o["metadata"]["namespace"], "shop");
            assert_eq!(o["metadata"]["ownerReferences"][0]["uid"], "u-1");
            assert_eq!(o["metadata"]["ownerReferences"][0]["controller"], true);
            assert_eq!(o["metadata"]["labels"][GATE_LABEL], "payment-svc");
        }
        assert_eq!(objs[0]["spec"]["match"][0]["ports"][0]["number"], 8080);
        assert_eq!(objs[0]["spec"]["pluginConfig"]["rollout"], "payment-svc");
        assert_eq!(objs[1]["spec"]["match"][0]["ports"][0]["number"], 15290);
        assert_eq!(
            objs[3]["spec"]["rules"][0]["from"][0]["source"]["notPrincipals"][0],
            "*/ns/canary-gate-system/sa/canary-gate-controller"
        );
    }

    #[test]
    fn traffic_extensions_keep_the_wasm_fields_under_wasm_and_the_attachment_at_the_top() {
        let p = plan(&gate()).unwrap();
        let owner = Owner { name: "payment-svc".into(), uid: "u-1".into() };
        let placement = Placement { kind: PluginKind::TrafficExtension, waypoint: false };
        let te = objects_for(&p, ("payment-svc", 8080), &owner, &install(), placement);
        let wp = objects(&p, 8080, &owner, &install());
        assert_eq!(te.len(), wp.len());
        for (t, w) in te.iter().zip(&wp).take(2) {
            assert_eq!(t["kind"], "TrafficExtension");
            for field in ["url", "sha256", "pluginName", "failStrategy", "pluginConfig"] {
                assert_eq!(t["spec"]["wasm"][field], w["spec"][field], "{field}");
                assert!(t["spec"].get(field).is_none(), "{field} only under wasm");
            }
            for field in ["selector", "match", "phase"] {
                assert_eq!(t["spec"][field], w["spec"][field], "{field}");
            }
        }
    }

    #[test]
    fn in_a_waypoint_only_the_route_plugin_is_generated_attached_to_the_service() {
        let p = plan(&gate()).unwrap();
        let owner = Owner { name: "payment-svc".into(), uid: "u-1".into() };
        for kind in [PluginKind::WasmPlugin, PluginKind::TrafficExtension] {
            let objs = objects_for(&p, ("payment-svc", 8080), &owner, &install(), Placement { kind, waypoint: true });
            assert_eq!(objs.len(), 1, "no snapshot plugin, Service or policies on pod ports");
            let spec = &objs[0]["spec"];
            assert_eq!(spec["targetRefs"], json!([{ "group": "", "kind": "Service", "name": "payment-svc" }]));
            assert!(spec.get("selector").is_none() && spec.get("match").is_none(), "{spec}");
            assert_eq!(objs[0]["metadata"]["ownerReferences"][0]["uid"], "u-1");
            // Several gates share a waypoint's Envoy: its metric names carry the rollout.
            let config = objs[0].pointer(kind.config_pointer()).unwrap();
            assert_eq!(config["rollout_in_metric_names"], true, "{config}");
            let parsed = canary_core::config::parse_route(config.to_string().as_bytes()).unwrap();
            assert!(parsed.rollout_in_metric_names);
        }
    }

    #[test]
    fn an_edit_to_a_set_field_is_seen_and_the_loops_fields_are_not() {
        let desired = json!({ "spec": { "url": "oci://a", "pluginConfig": { "rollout": "r" }, "priority": -100 } });
        let live = json!({ "spec": { "url": "oci://a", "priority": -100.0,
                                     "pluginConfig": { "rollout": "r", "canary_weight": 10 } }, "status": {} });
        assert!(holds(&live, &desired));
        let edited = json!({ "spec": { "url": "oci://evil", "priority": -100, "pluginConfig": { "rollout": "r" } } });
        assert!(!holds(&edited, &desired));
    }
}
