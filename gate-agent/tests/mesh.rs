//! gate-agent's Kubernetes parts against a **real** kube-apiserver with etcd and Istio's CRDs
//! (tests/support/kube.rs; `make tools` builds it): the WasmPlugin router, Lease leader election,
//! pod discovery and Events, every call made as the agent's ServiceAccount bound to the Role
//! shipped in deploy/istio/agent-rbac.yaml, so a missing verb fails here. Real time, short leases.
//!
//! Faults a real server cannot be made to produce on cue (a 500, a slow answer, an edit landing
//! exactly between a read and a write, a refused renewal) are in mesh_faults.rs, on the test double.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/fixtures.rs"]
mod fixtures;
#[path = "support/kube.rs"]
mod kube_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use canary_core::{RolloutPhase, Weight};
use fixtures::{hand_lease_to, handover_lease_settings, lease_settings, record, w};
use gate_agent::evidence::EvidenceStore;
use gate_agent::mesh::discovery::PodTargets;
use gate_agent::mesh::events::KubeEvents;
use gate_agent::mesh::lease::{EVIDENCE_ANNOTATION, LeaderGated, LeaseEvidence, spawn_election, spawn_election_with};
use gate_agent::mesh::wasmplugin::{WasmPlugin, WasmPluginRouter};
use gate_agent::notify::{Notice, NoticeKind, Notifier};
use gate_agent::router::{RouterError, WeightRouter};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

fn wasmplugin(weight: u32, revision: u64) -> Value {
    fixtures::wasmplugin(None, weight, revision)
}

async fn create_plugin(ns: &TestNamespace, plugin: Value) {
    let plugin: WasmPlugin = serde_json::from_value(plugin).unwrap();
    let pp = PostParams { field_manager: Some("canary-gate-tests".into()), ..PostParams::default() };
    Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name).create(&pp, &plugin).await.unwrap();
}

async fn get_plugin(ns: &TestNamespace) -> Value {
    let plugin = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name).get("canary-gate").await.unwrap();
    serde_json::to_value(plugin).unwrap()
}

/// A namespace with the WasmPlugin at `weight`% and revision 4, and the agent's router for it.
async fn setup(prefix: &str) -> (TestNamespace, WasmPluginRouter) {
    let ns = ControlPlane::shared().namespace(prefix).await;
    create_plugin(&ns, wasmplugin(10, 4)).await;
    let router =
        WasmPluginRouter::new(Api::namespaced(ns.agent.clone(), &ns.name), "canary-gate", Duration::from_secs(2));
    (ns, router)
}

#[tokio::test]
async fn the_router_writes_only_its_fields_as_gate_agent_and_keeps_everything_else() {
    let (ns, router) = setup("router").await;
    let before = get_plugin(&ns).await;
    assert_eq!(router.current().await.unwrap().canary_weight, w(10.0));
    let written = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!((written.canary_weight, written.revision), (w(25.0), 5));
    let after = get_plugin(&ns).await;
    let cfg = &after["spec"]["pluginConfig"];
    assert_eq!(cfg["canary_weight"], 25);
    assert_eq!(cfg["rollout_state"]["phase"], "progressing");
    for field in ["url", "failStrategy", "phase", "match"] {
        assert_eq!(after["spec"][field], before["spec"][field], "{field}");
    }
    assert_eq!(cfg["sticky"], before["spec"]["pluginConfig"]["sticky"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    // The write shows as the agent's, and owns exactly the agent's three fields.
    let managers = after["metadata"]["managedFields"].as_array().unwrap();
    let ours: Vec<&Value> = managers.iter().filter(|m| m["manager"] == "gate-agent").collect();
    assert_eq!(ours.len(), 1, "{managers:?}");
    let owned = &ours[0]["fieldsV1"]["f:spec"]["f:pluginConfig"];
    let mut keys: Vec<&str> = owned.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["f:canary_weight", "f:revision", "f:rollout_state"], "{owned}");
    assert!(managers.iter().all(|m| m["manager"] != "unknown"), "{managers:?}");
}

#[tokio::test]
async fn a_stale_resource_version_is_refused_by_the_real_server_and_the_router_reads_again() {
    let (ns, router) = setup("stale").await;
    // What the router does, by hand: a merge patch carrying an old resourceVersion gets 409.
    let api = Api::<WasmPlugin>::namespaced(ns.agent.clone(), &ns.name);
    let old = api.get("canary-gate").await.unwrap().metadata.resource_version.unwrap();
    router.apply(w(5.0), record(RolloutPhase::Progressing)).await.unwrap();
    let stale = json!({ "metadata": { "resourceVersion": old }, "spec": { "pluginConfig": { "canary_weight": 50 } } });
    match api.patch("canary-gate", &PatchParams::default(), &Patch::Merge(&stale)).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale write must be refused: {other:?}"),
    }
    assert_eq!(router.current().await.unwrap().canary_weight, w(5.0));
}

#[tokio::test]
async fn a_missing_wasmplugin_and_a_config_the_filter_rejects_are_errors_naming_it() {
    let (ns, router) = setup("bad").await;
    let admin = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
    let weight = json!({ "spec": { "pluginConfig": { "canary_weight": 150 } } });
    admin.patch("canary-gate", &PatchParams::default(), &Patch::Merge(&weight)).await.unwrap();
    let e = router.current().await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("WasmPlugin canary-gate spec.pluginConfig") && text.contains("canary_weight"), "{text}");
    assert!(!text.contains("watched file"), "mesh wording, not the file router's: {text}");
    admin.delete("canary-gate", &Default::default()).await.unwrap();
    let e = router.current().await.unwrap_err();
    assert!(matches!(e, RouterError::Remote { .. }), "{e}");
    assert!(e.to_string().contains("WasmPlugin canary-gate") && e.to_string().contains("404"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_exactly_one_writes() {
    let (ns, router) = setup("leader").await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut agents = Vec::new();
    for id in ["agent-a", "agent-b"] {
        let s = Arc::clone(&stop);
        let leases = Api::<Lease>::namespaced(ns.agent.clone(), &ns.name);
        let (leadership, task) = spawn_election(leases, lease_settings(id), async move { s.notified().await });
        agents.push((id, LeaderGated::new(router.clone(), leadership.clone()), leadership, task));
    }
    let writes = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let both = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pct = 1.0;
    while Instant::now() < deadline {
        if agents.iter().all(|(_, _, l, _)| l.is_leader()) {
            both.store(true, Ordering::SeqCst);
        }
        for (i, (_, gated, _, _)) in agents.iter().enumerate() {
            match gated.apply(w(pct), record(RolloutPhase::Progressing)).await {
                Ok(_) => {
                    writes[i].fetch_add(1, Ordering::SeqCst);
                }
                Err(RouterError::NotLeader) => {}
                Err(e) => panic!("{e}"),
            }
        }
        pct = if pct >= 50.0 { 1.0 } else { pct + 1.0 };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a, b) = (writes[0].load(Ordering::SeqCst), writes[1].load(Ordering::SeqCst));
    assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    assert!((a > 0) != (b > 0), "exactly one agent wrote: a {a}, b {b}");
    let lease = Api::<Lease>::namespaced(ns.admin.clone(), &ns.name).get("canary-gate-agent").await.unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert_eq!(holder, if a > 0 { "agent-a" } else { "agent-b" });
    assert!(
        lease.metadata.managed_fields.unwrap().iter().all(|m| m.manager.as_deref() == Some("gate-agent")),
        "the Lease is written by gate-agent only"
    );
    stop.notify_waiters();
}

#[tokio::test]
async fn a_leader_that_shuts_down_releases_the_lease_at_once() {
    let ns = ControlPlane::shared().namespace("release").await;
    let leases = || Api::<Lease>::namespaced(ns.agent.clone(), &ns.name);
    let stop_a = Arc::new(tokio::sync::Notify::new());
    let s = Arc::clone(&stop_a);
    let (a, ta) = spawn_election(leases(), lease_settings("agent-a"), async move { s.notified().await });
    let mut a_wait = a.clone();
    tokio::time::timeout(Duration::from_secs(3), a_wait.acquired()).await.unwrap();
    let (b, _tb) = spawn_election(leases(), lease_settings("agent-b"), std::future::pending());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_leader(), "b waits while a renews");
    stop_a.notify_waiters();
    ta.await.unwrap();
    assert!(!a.is_leader());
    let released = Instant::now();
    let mut b_wait = b.clone();
    tokio::time::timeout(Duration::from_secs(3), b_wait.acquired()).await.unwrap();
    assert!(released.elapsed() < Duration::from_millis(1_000), "no need to wait for expiry after a release");
    let lease = leases().get("canary-gate-agent").await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("agent-b"));
    assert_eq!(lease.lease_transitions, Some(1));
}

/// The evidence annotation on the Lease, as the API server has it.
async fn evidence_on(leases: &Api<Lease>) -> Option<String> {
    leases.get("canary-gate-agent").await.unwrap().metadata.annotations?.get(EVIDENCE_ANNOTATION).cloned()
}

#[tokio::test]
async fn the_evidence_checkpoint_rides_on_the_leaders_renewals_and_reaches_the_next_leader() {
    let ns = ControlPlane::shared().namespace("evidence").await;
    let leases = || Api::<Lease>::namespaced(ns.agent.clone(), &ns.name);
    let admin = Api::<Lease>::namespaced(ns.admin.clone(), &ns.name);
    let stop_a = Arc::new(tokio::sync::Notify::new());
    let s = Arc::clone(&stop_a);
    let (ea, eb) = (LeaseEvidence::new("canary-gate-agent"), LeaseEvidence::new("canary-gate-agent"));
    let (a, ta) =
        spawn_election_with(leases(), lease_settings("agent-a"), Some(ea.clone()), async move { s.notified().await });
    let mut a_wait = a.clone();
    tokio::time::timeout(Duration::from_secs(3), a_wait.acquired()).await.unwrap();
    assert!(ea.load().unwrap().is_none(), "a new Lease holds no checkpoint");
    let (b, _tb) = spawn_election_with(leases(), lease_settings("agent-b"), Some(eb.clone()), std::future::pending());

    // The leader's next renewal writes what it saved.
    ea.save(br#"{"checkpoint":1}"#).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while evidence_on(&admin).await.as_deref() != Some(r#"{"checkpoint":1}"#) {
        assert!(Instant::now() < deadline, "never written: {:?}", evidence_on(&admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A standby's save is never written: only the holder's renewals write the Lease.
    eb.save(b"from the standby").unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!b.is_leader());
    assert_eq!(evidence_on(&admin).await.as_deref(), Some(r#"{"checkpoint":1}"#));

    // The leader saves once more and shuts down: the release carries it, and the next leader
    // reads it in the read that makes it the holder (its own stale save is dropped).
    ea.save(br#"{"checkpoint":2}"#).unwrap();
    stop_a.notify_waiters();
    ta.await.unwrap();
    let mut b_wait = b.clone();
    tokio::time::timeout(Duration::from_secs(3), b_wait.acquired()).await.unwrap();
    assert_eq!(eb.load().unwrap().as_deref(), Some(br#"{"checkpoint":2}"#.as_slice()));
    tokio::time::sleep(Duration::from_millis(600)).await; // a few renewals by b
    assert!(b.is_leader());
    assert_eq!(evidence_on(&admin).await.as_deref(), Some(r#"{"checkpoint":2}"#), "b's stale save was dropped");
    // Too large for an annotation: refused with the reason, nothing written.
    let e = eb.save(&vec![b'x'; 200 * 1024]).unwrap_err();
    assert!(e.to_string().contains("more than the"), "{e}");
}

#[tokio::test]
async fn discovery_reads_the_ready_pods_behind_the_selector() {
    let ns = ControlPlane::shared().namespace("discovery").await;
    ns.pod("web-1", json!({ "app": "web" }), "10.0.0.1", true).await;
    ns.pod("web-2", json!({ "app": "web" }), "10.0.0.2", true).await;
    ns.pod("web-3", json!({ "app": "web" }), "10.0.0.3", false).await;
    ns.pod("db-1", json!({ "app": "db" }), "10.0.0.9", true).await;
    let targets =
        PodTargets::new(Api::namespaced(ns.agent.clone(), &ns.name), "app=web", 15290, Duration::from_secs(2));
    assert_eq!(targets.list().await.unwrap(), vec!["10.0.0.1:15290", "10.0.0.2:15290"]);
    // Pods come and go: the refreshed list follows.
    let mut rx = targets.clone().spawn(vec![], Duration::from_millis(100));
    ns.delete_pod("web-1").await;
    ns.pod("web-4", json!({ "app": "web" }), "10.0.0.4", true).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            rx.changed().await.unwrap();
            let now = rx.borrow().clone();
            if now == vec!["10.0.0.2:15290", "10.0.0.4:15290"] {
                return now;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "last list: {:?}", rx.borrow());
}

#[tokio::test]
async fn phase_changes_become_events_that_kubectl_describe_lists() {
    let (ns, router) = setup("events").await;
    let regarding = router.reference().await.unwrap();
    let uid = regarding.uid.clone().expect("the WasmPlugin's uid");
    let events =
        KubeEvents::new(Api::namespaced(ns.agent.clone(), &ns.name), regarding, "agent-a", Duration::from_secs(2));
    let notice = Notice {
        kind: NoticeKind::PhaseChange,
        rollout: "demo".into(),
        from: "progressing".into(),
        to: "rolled_back".into(),
        weight_percent: 0.0,
        reason: "rollback: decisive breach: errors".into(),
    };
    events.post(&notice).await.unwrap();
    // The field selector `kubectl describe` uses.
    let selector = format!("involvedObject.uid={uid}");
    let listed = Api::<Event>::namespaced(ns.admin.clone(), &ns.name)
        .list(&ListParams::default().fields(&selector))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1, "{selector}");
    let e = &listed.items[0];
    assert_eq!((e.type_.as_deref(), e.reason.as_deref()), (Some("Warning"), Some("RolledBack")));
    assert_eq!(e.involved_object.name.as_deref(), Some("canary-gate"));
    assert!(e.message.as_deref().unwrap().contains("decisive breach"));
    let out = ns.kubectl(ControlPlane::shared()).args(["describe", "wasmplugin", "canary-gate"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("RolledBack") && text.contains("decisive breach"), "kubectl describe lists it:\n{text}");
}

/// Applies `file` (with `pluginConfig` edited by `edit`) as kubectl does, client-side or server-side.
fn kubectl_apply(ns: &TestNamespace, file: &str, server_side: bool, edit: impl Fn(&mut Value)) {
    let text = std::fs::read_to_string(kube_support::workspace_root().join(file)).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .map(|mut v: Value| {
            if v["metadata"]["name"] == "canary-gate" {
                edit(&mut v["spec"]["pluginConfig"]);
            }
            v
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_string(&json!({ "apiVersion": "v1", "kind": "List", "items": docs })).unwrap(),
    )
    .unwrap();
    let mut cmd: Command = ns.kubectl(ControlPlane::shared());
    cmd.arg("apply");
    if server_side {
        // As a GitOps controller does (Flux's kustomize-controller, Argo CD with ServerSideApply).
        cmd.args(["--server-side", "--force-conflicts", "--field-manager=kustomize-controller"]);
    }
    let out = cmd.arg("-f").arg(&path).output().unwrap();
    assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn re_applying_the_shipped_wasmplugin_mid_rollout_moves_neither_weight_nor_revision() {
    let ns = ControlPlane::shared().namespace("gitops").await;
    kubectl_apply(&ns, "deploy/istio/wasmplugin.yaml", false, |_| {});
    let router =
        WasmPluginRouter::new(Api::namespaced(ns.agent.clone(), &ns.name), "canary-gate", Duration::from_secs(2));
    let start = router.current().await.unwrap();
    assert_eq!((start.canary_weight, start.revision), (Weight::ZERO, 0), "0% until the agent writes");
    router.apply(w(5.0), record(RolloutPhase::Progressing)).await.unwrap();
    let mid = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!((mid.canary_weight, mid.revision), (w(25.0), 2));

    // A client-side `kubectl apply` (Argo CD's default), then a server-side apply (Flux), of the
    // shipped manifest, unchanged: the agent's fields are not in it, so both leave them alone.
    for server_side in [false, true] {
        kubectl_apply(&ns, "deploy/istio/wasmplugin.yaml", server_side, |_| {});
        let after = router.current().await.unwrap();
        assert_eq!(
            (after.canary_weight, after.revision, after.rollout_state.map(|s| s.phase)),
            (w(25.0), 2, Some(RolloutPhase::Progressing)),
            "server-side: {server_side}"
        );
    }
    // A GitOps change to another field of the pluginConfig lands, and still moves nothing of the agent's.
    kubectl_apply(&ns, "deploy/istio/wasmplugin.yaml", true, |c| c["sticky_salt"] = json!("release-7"));
    let after = get_plugin(&ns).await;
    assert_eq!(after["spec"]["pluginConfig"]["sticky_salt"], "release-7");
    assert_eq!(router.current().await.unwrap().canary_weight, w(25.0));
    let next = router.apply(w(50.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!(next.revision, 3, "the revision only ever goes up");

    // Why the fields are left out: a manifest that sets them (as the shipped one used to) puts
    // them back on every apply, and the revision goes backwards.
    kubectl_apply(&ns, "deploy/istio/wasmplugin.yaml", false, |c| {
        c["canary_weight"] = json!(0);
        c["revision"] = json!(1);
    });
    let reset = router.current().await.unwrap();
    assert_eq!((reset.canary_weight, reset.revision), (Weight::ZERO, 1), "a manifest that sets them wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_across_a_lease_handover_never_interleave_writes() {
    let (ns, _) = setup("fence").await;
    let leases = || Api::<Lease>::namespaced(ns.agent.clone(), &ns.name);
    let settings = handover_lease_settings;
    let (a, _ta) = spawn_election(leases(), settings("agent-a"), std::future::pending());
    tokio::time::timeout(Duration::from_secs(3), a.clone().acquired()).await.unwrap();
    let (b, _tb) = spawn_election(leases(), settings("agent-b"), std::future::pending());
    let fenced = |l: &gate_agent::mesh::lease::Leadership| {
        let router =
            WasmPluginRouter::new(Api::namespaced(ns.agent.clone(), &ns.name), "canary-gate", Duration::from_secs(2));
        LeaderGated::new(router.with_fence(l.clone()), l.clone())
    };
    // Both write as fast as they can for 4 s, each recording what became of every write.
    let writes = Arc::new(std::sync::Mutex::new(Vec::<(Instant, &str, Result<u64, String>)>::new()));
    let mut writers = Vec::new();
    for (who, router) in [("agent-a", fenced(&a)), ("agent-b", fenced(&b))] {
        let writes = Arc::clone(&writes);
        writers.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(4);
            let mut pct = 1.0;
            while Instant::now() < end {
                let result = router.apply(w(pct), record(RolloutPhase::Progressing)).await;
                let kind = result.map(|r| r.revision).map_err(|e| e.kind().to_owned());
                writes.lock().unwrap().push((Instant::now(), who, kind));
                pct = if pct >= 50.0 { 1.0 } else { pct + 1.0 };
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }
    // a stalls, as far as the Lease is concerned: b takes it over (what b's own election does once
    // a's lease has expired), while a still believes it leads until its renew deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handover = hand_lease_to(&Api::<Lease>::namespaced(ns.admin.clone(), &ns.name), "agent-b").await;
    for writer in writers {
        writer.await.unwrap();
    }
    let writes = writes.lock().unwrap().clone();
    let first_b = writes.iter().find(|(_, who, r)| *who == "agent-b" && r.is_ok()).map(|(t, _, _)| *t);
    let first_b = first_b.unwrap_or_else(|| panic!("b never wrote: {writes:?}"));
    assert!(writes.iter().any(|(t, who, r)| *who == "agent-a" && r.is_ok() && *t < handover), "a wrote in its term");
    let late_a: Vec<_> = writes.iter().filter(|(t, who, r)| *who == "agent-a" && r.is_ok() && *t > first_b).collect();
    assert!(late_a.is_empty(), "a wrote after b's term began: {late_a:?}");
    let refused: Vec<_> = writes
        .iter()
        .filter(|(_, who, r)| *who == "agent-a" && r.as_ref().err().is_some_and(|k| k == "fenced"))
        .collect();
    assert!(!refused.is_empty(), "a still believed it led, and the fence refused it: {writes:?}");
    // The revisions written only ever went up, and the object names b's term.
    let revisions: Vec<u64> = writes.iter().filter_map(|(_, _, r)| r.as_ref().ok().copied()).collect();
    assert!(revisions.windows(2).all(|p| p[0] < p[1]), "{revisions:?}");
    let plugin = get_plugin(&ns).await;
    assert_eq!(plugin["metadata"]["annotations"]["canary-gate.io/leader-term"], "1/agent-b");
}
