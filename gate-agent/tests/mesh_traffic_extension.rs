//! The agent's router on an Istio **TrafficExtension** (WasmPlugin's successor, Istio 1.30+, CRD
//! from istio.io/api v1.32.0) against a **real** kube-apiserver with Istio's CRDs
//! (tests/support/kube.rs): the same protocol as for WasmPlugin (mesh.rs) with the configuration at
//! `spec.wasm.pluginConfig`. Every call is made as the agent's ServiceAccount with the shipped
//! Role plus the one rule a TrafficExtension needs (`trafficextensions` get/patch on the one name,
//! the rule docs/mesh.md tells users to add), so a missing verb fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/fixtures.rs"]
mod fixtures;
#[path = "support/kube.rs"]
mod kube_support;

use std::time::{Duration, Instant};

use canary_core::RolloutPhase;
use fixtures::{hand_lease_to, handover_lease_settings, record, w};
use gate_agent::mesh::extension::{PluginKind, TrafficExtension};
use gate_agent::mesh::lease::{LeaderGated, Leadership, spawn_election};
use gate_agent::mesh::wasmplugin::PluginRouter;
use gate_agent::router::{RouterError, WeightRouter};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube_support::{AGENT_ACCOUNT, ControlPlane, TestNamespace};
use serde_json::{Value, json};

/// canary-gate's route TrafficExtension as a waypoint has it: attached by `targetRefs` to the
/// Service, the Wasm fields under `wasm`.
fn traffic_extension(weight: u32, revision: u64) -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
        "metadata": { "name": "canary-gate", "labels": { "team": "web" } },
        "spec": {
            "targetRefs": [{ "group": "", "kind": "Service", "name": "payment-svc" }],
            "phase": "STATS", "priority": -100,
            "wasm": {
                "url": "oci://registry.example/canary-gate/filter@sha256:0123",
                "failStrategy": "FAIL_OPEN", "pluginName": "canary-gate",
                "pluginConfig": {
                    "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                    "canary_weight": weight, "sticky": { "header": "x-user-id" }, "revision": revision
                }
            }
        }
    })
}

/// The rule a TrafficExtension adds to the agent's Role: get and patch of the one object.
async fn grant_traffic_extension(ns: &TestNamespace) {
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "canary-gate-agent-trafficextension" },
        "rules": [{ "apiGroups": ["extensions.istio.io"], "resources": ["trafficextensions"],
                    "resourceNames": ["canary-gate"], "verbs": ["get", "patch"] }]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "canary-gate-agent-trafficextension" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "canary-gate-agent-trafficextension" },
        "subjects": [{ "kind": "ServiceAccount", "name": AGENT_ACCOUNT }]
    }))
    .unwrap();
    Api::<Role>::namespaced(ns.admin.clone(), &ns.name).create(&PostParams::default(), &role).await.unwrap();
    Api::<RoleBinding>::namespaced(ns.admin.clone(), &ns.name).create(&PostParams::default(), &binding).await.unwrap();
}

async fn get_te(ns: &TestNamespace) -> Value {
    let te = Api::<TrafficExtension>::namespaced(ns.admin.clone(), &ns.name).get("canary-gate").await.unwrap();
    serde_json::to_value(te).unwrap()
}

fn router_for(ns: &TestNamespace) -> PluginRouter {
    PluginRouter::traffic_extension(Api::namespaced(ns.agent.clone(), &ns.name), "canary-gate", Duration::from_secs(2))
}

/// A namespace with the TrafficExtension at `weight`% and revision 4, and the agent's router for it.
async fn setup(prefix: &str) -> (TestNamespace, PluginRouter) {
    let ns = ControlPlane::shared().namespace(prefix).await;
    grant_traffic_extension(&ns).await;
    let te: TrafficExtension = serde_json::from_value(traffic_extension(10, 4)).unwrap();
    let pp = PostParams { field_manager: Some("canary-gate-tests".into()), ..PostParams::default() };
    Api::<TrafficExtension>::namespaced(ns.admin.clone(), &ns.name).create(&pp, &te).await.unwrap();
    let router = router_for(&ns);
    assert_eq!(router.kind(), PluginKind::TrafficExtension);
    (ns, router)
}

#[tokio::test]
async fn the_router_writes_only_its_fields_in_a_traffic_extension_and_keeps_everything_else() {
    let (ns, router) = setup("te-router").await;
    let before = get_te(&ns).await;
    assert_eq!(router.current().await.unwrap().canary_weight, w(10.0));
    let written = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!((written.canary_weight, written.revision), (w(25.0), 5));
    let after = get_te(&ns).await;
    let cfg = &after["spec"]["wasm"]["pluginConfig"];
    assert_eq!(cfg["canary_weight"], 25);
    assert_eq!(cfg["revision"], 5);
    assert_eq!(cfg["rollout_state"]["phase"], "progressing");
    assert!(after["spec"].get("pluginConfig").is_none(), "nothing written where a WasmPlugin keeps it: {after}");
    for field in ["targetRefs", "phase", "priority"] {
        assert_eq!(after["spec"][field], before["spec"][field], "{field}");
    }
    for field in ["url", "failStrategy", "pluginName"] {
        assert_eq!(after["spec"]["wasm"][field], before["spec"]["wasm"][field], "wasm.{field}");
    }
    assert_eq!(cfg["sticky"], before["spec"]["wasm"]["pluginConfig"]["sticky"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    // The write shows as the agent's, and owns exactly the agent's three fields.
    let managers = after["metadata"]["managedFields"].as_array().unwrap();
    let ours: Vec<&Value> = managers.iter().filter(|m| m["manager"] == "gate-agent").collect();
    assert_eq!(ours.len(), 1, "{managers:?}");
    let owned = &ours[0]["fieldsV1"]["f:spec"]["f:wasm"]["f:pluginConfig"];
    let mut keys: Vec<&str> = owned.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["f:canary_weight", "f:revision", "f:rollout_state"], "{owned}");
    let reference = router.reference().await.unwrap();
    assert_eq!(reference.kind.as_deref(), Some("TrafficExtension"));
    assert_eq!(reference.uid, after["metadata"]["uid"].as_str().map(str::to_owned));
}

#[tokio::test]
async fn a_stale_resource_version_on_a_traffic_extension_is_refused_and_the_router_reads_again() {
    let (ns, router) = setup("te-stale").await;
    let api = Api::<TrafficExtension>::namespaced(ns.agent.clone(), &ns.name);
    let old = api.get("canary-gate").await.unwrap().metadata.resource_version.unwrap();
    router.apply(w(5.0), record(RolloutPhase::Progressing)).await.unwrap();
    let stale = json!({ "metadata": { "resourceVersion": old },
                        "spec": { "wasm": { "pluginConfig": { "canary_weight": 50 } } } });
    match api.patch("canary-gate", &PatchParams::default(), &Patch::Merge(&stale)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale write must be refused: {other:?}"),
    }
    // Someone else writes in between (a newer version): the router's next write starts from it.
    let admin = Api::<TrafficExtension>::namespaced(ns.admin.clone(), &ns.name);
    let edit = json!({ "spec": { "wasm": { "pluginConfig": { "revision": 40, "sticky_salt": "x" } } } });
    admin.patch("canary-gate", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    let next = router.apply(w(10.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!(next.revision, 41, "recomputed from what is there, never overwritten blindly");
    assert_eq!(get_te(&ns).await["spec"]["wasm"]["pluginConfig"]["sticky_salt"], "x");
}

#[tokio::test]
async fn a_missing_traffic_extension_a_lua_one_and_a_rejected_config_are_errors_naming_it() {
    let (ns, router) = setup("te-bad").await;
    let admin = Api::<TrafficExtension>::namespaced(ns.admin.clone(), &ns.name);
    let weight = json!({ "spec": { "wasm": { "pluginConfig": { "canary_weight": 150 } } } });
    admin.patch("canary-gate", &PatchParams::default(), &Patch::Merge(&weight)).await.unwrap();
    let text = router.current().await.unwrap_err().to_string();
    assert!(
        text.contains("TrafficExtension canary-gate spec.wasm.pluginConfig") && text.contains("canary_weight"),
        "{text}"
    );
    admin.delete("canary-gate", &Default::default()).await.unwrap();
    let e = router.current().await.unwrap_err();
    assert!(matches!(e, RouterError::Remote { .. }), "{e}");
    assert!(e.to_string().contains("TrafficExtension canary-gate") && e.to_string().contains("404"), "{e}");
    // A TrafficExtension holding Lua instead of Wasm has no pluginConfig: refused, not taken as 0%.
    let lua: TrafficExtension = serde_json::from_value(json!({
        "metadata": { "name": "canary-gate" },
        "spec": { "targetRefs": [{ "group": "", "kind": "Service", "name": "payment-svc" }],
                  "lua": { "inlineCode": "function envoy_on_request(h) end" } }
    }))
    .unwrap();
    admin.create(&PostParams::default(), &lua).await.unwrap();
    let e = router.apply(w(5.0), record(RolloutPhase::Progressing)).await.unwrap_err();
    assert!(e.to_string().contains("spec.wasm.pluginConfig: is missing"), "{e}");
    assert!(get_te(&ns).await["spec"].get("wasm").is_none(), "nothing written");
}

/// A fenced router as replica `l` runs it.
fn fenced(ns: &TestNamespace, l: &Leadership) -> LeaderGated<PluginRouter> {
    LeaderGated::new(router_for(ns).with_fence(l.clone()), l.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_leader_is_fenced_off_a_traffic_extension() {
    let (ns, _) = setup("te-fence").await;
    let leases = || Api::<Lease>::namespaced(ns.agent.clone(), &ns.name);
    let settings = handover_lease_settings;
    let (a, _ta) = spawn_election(leases(), settings("agent-a"), std::future::pending());
    tokio::time::timeout(Duration::from_secs(3), a.clone().acquired()).await.unwrap();
    let (b, _tb) = spawn_election(leases(), settings("agent-b"), std::future::pending());
    let router_a = fenced(&ns, &a);
    router_a.apply(w(5.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!(get_te(&ns).await["metadata"]["annotations"]["canary-gate.io/leader-term"], "0/agent-a");
    // b takes the Lease over while a still believes it leads (its renew deadline has not passed).
    hand_lease_to(&Api::<Lease>::namespaced(ns.admin.clone(), &ns.name), "agent-b").await;
    let router_b = fenced(&ns, &b);
    let deadline = Instant::now() + Duration::from_secs(3);
    let written_by_b = loop {
        match router_b.apply(w(10.0), record(RolloutPhase::Progressing)).await {
            Ok(r) => break r,
            Err(RouterError::NotLeader) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("b never wrote: {e}"),
        }
    };
    assert_eq!(get_te(&ns).await["metadata"]["annotations"]["canary-gate.io/leader-term"], "1/agent-b");
    // a's next write, if it still believes it leads, meets b's term on the object and is refused;
    // once its election notices, it is refused as not the leader. Either way nothing lands.
    let late = router_a.apply(w(50.0), record(RolloutPhase::Progressing)).await.unwrap_err();
    assert!(matches!(late, RouterError::Fenced { .. } | RouterError::NotLeader), "{late}");
    let cfg = &get_te(&ns).await["spec"]["wasm"]["pluginConfig"];
    assert_eq!((cfg["canary_weight"].as_u64(), cfg["revision"].as_u64()), (Some(10), Some(written_by_b.revision)));
}
