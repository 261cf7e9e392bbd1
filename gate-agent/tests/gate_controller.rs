//! The CanaryGate controller against a **real** kube-apiserver with etcd and Istio's CRDs
//! (tests/support/kube.rs), run in-process as the cluster admin (the Helm chart's RBAC is not
//! exercised here), reading fabricated proxies: pods whose IPs are loopback addresses where a
//! small HTTP server serves snapshots at the weight the gate's route WasmPlugin holds (as if
//! istiod pushed it instantly), with a healthy or a failing canary.
//!
//! One scenario, three namespaces' worth of gates, because the control plane and the controller
//! are the expensive part: gates are generated their objects, judged independently, reconciled
//! back after an edit, blocked with the exact fix when the route has no label match, and rolled
//! back to 0% when deleted.
//!
//! This control plane has no kube-controller-manager, so no garbage collector: deletion is
//! checked as the canary at 0% plus owner references that name the deleted gate's uid (which is
//! what the garbage collector acts on in a real cluster).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use gate_agent::gate::api::{GatesApi, app};
use gate_agent::gate::controller::{GateIndex, run};
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::lease::Leadership;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use gates::{apply, gate, install_crd, proxies, virtual_service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn status(ns: &TestNamespace, name: &str) -> Value {
    let g = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name).get(name).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

async fn plugin(ns: &TestNamespace, name: &str) -> Value {
    serde_json::to_value(Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name).get(name).await.unwrap()).unwrap()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned()).unwrap_or_default()
}

/// Polls `check` on gate `name`'s status until it holds, or fails with the last status.
async fn wait_for(
    ns: &TestNamespace,
    name: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(ns, name).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{name}: {what} not within {within:?}; status: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_json(api: &axum::Router, path: &str) -> Value {
    let response = api.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_in_two_namespaces_are_generated_judged_reconciled_and_deleted_independently() {
    let cp = ControlPlane::shared();
    install_crd(cp);
    let (shop, other) = (cp.namespace("gates-shop").await, cp.namespace("gates-other").await);
    let healthy = Arc::new(AtomicBool::new(false));
    let breaching = Arc::new(AtomicBool::new(true));
    // alpha and beta in one namespace, gamma (slow steps) and delta (no label route) in another.
    let alpha_port = proxies(&shop, "alpha", &[[127, 0, 0, 2], [127, 0, 0, 3]], &healthy).await;
    let beta_port = proxies(&shop, "beta", &[[127, 0, 0, 4]], &breaching).await;
    let gamma_port = proxies(&other, "gamma", &[[127, 0, 0, 5]], &healthy).await;
    let epsilon_port = proxies(&other, "epsilon", &[[127, 0, 0, 6]], &healthy).await;
    for (ns, name, port, interval, labelled) in [
        (&shop, "alpha", alpha_port, "1s", true),
        (&shop, "beta", beta_port, "1s", true),
        (&other, "gamma", gamma_port, "4s", true),
        (&other, "delta", gamma_port, "1s", false),
        (&other, "epsilon", epsilon_port, "1s", true),
        (&shop, "zeta", alpha_port, "1s", true),
    ] {
        apply(cp, &virtual_service(&ns.name, name, labelled));
        let mut g = gate(&ns.name, name, &format!("{name}-caller"), port, interval);
        if name == "epsilon" {
            // The promotion gate on (the default): a healthy canary with too few requests yet.
            g["spec"]["analysis"]["promotion"] = json!({ "requireEvidence": true });
        }
        if name == "zeta" {
            // alpha's service, port and workloads, created after it: a conflict zeta loses.
            g["spec"]["service"]["name"] = json!("alpha");
            g["spec"]["workload"]["selector"] = json!({ "app": "alpha-caller" });
        }
        apply(cp, &g);
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = gates::controller_settings(vec![shop.name.clone(), other.name.clone()], None);
    let index = GateIndex::default();
    let controller = tokio::spawn(run(shop.admin.clone(), settings, Leadership::always(), index.clone(), stop_rx));

    // Creation → generated objects, each owned by its gate.
    let alpha = Api::<CanaryGate>::namespaced(shop.admin.clone(), &shop.name).get("alpha").await.unwrap();
    let uid = alpha.metadata.uid.clone().unwrap();
    wait_for(&shop, "alpha", Duration::from_secs(10), "a running rollout", |s| s["phase"] == "progressing").await;
    let owned = |o: &Value| {
        let r = &o["metadata"]["ownerReferences"][0];
        r["kind"] == "CanaryGate" && r["name"] == "alpha" && r["uid"] == uid.as_str() && r["controller"] == true
    };
    for (kind, name) in [
        ("wasmplugin", "alpha-canary-gate"),
        ("wasmplugin", "alpha-canary-gate-snapshot"),
        ("service", "alpha-canary-gate-snapshot"),
        ("authorizationpolicy", "alpha-canary-gate-snapshot"),
        ("networkpolicy", "alpha-canary-gate-snapshot"),
    ] {
        let out = shop.kubectl(cp).args(["get", kind, name, "-o", "json"]).output().unwrap();
        assert!(out.status.success(), "{kind} {name}: {}", String::from_utf8_lossy(&out.stderr));
        let o: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(owned(&o), "{kind} {name} is not owned by alpha: {:#}", o["metadata"]);
    }
    let route = plugin(&shop, "alpha-canary-gate").await;
    assert_eq!(route["spec"]["pluginConfig"]["rollout"], "alpha");
    assert_eq!(route["spec"]["match"][0]["ports"][0]["number"], 8080);

    // Judged independently: alpha (two healthy proxies) is promoted, beta (failing canary, same
    // namespace) is rolled back, gamma (other namespace) keeps progressing.
    let beta = wait_for(&shop, "beta", Duration::from_secs(20), "a rollback", |s| s["phase"] == "rolled_back").await;
    assert_eq!(condition(&beta, "RolledBack")["status"], "True", "{beta:#}");
    assert_eq!(beta["weight"], 0.0);
    assert_eq!(plugin(&shop, "beta-canary-gate").await["spec"]["pluginConfig"]["canary_weight"], 0);
    let a = wait_for(&shop, "alpha", Duration::from_secs(30), "promotion", |s| s["phase"] == "succeeded").await;
    assert_eq!(condition(&a, "Promoted")["status"], "True", "{a:#}");
    assert_eq!(a["proxiesReporting"], 2);
    assert_eq!(a["observedGeneration"], alpha.metadata.generation.unwrap());
    // The API: every gate in /status, actions per gate under its namespace and name.
    let api = app(GatesApi { index: index.clone(), leadership: Leadership::always(), token: None });
    let listed = get_json(&api, "/status").await;
    let mut names: Vec<&str> = listed.as_array().unwrap().iter().map(|g| g["canarygate"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["alpha", "beta", "epsilon", "gamma"],
        "delta (no label route) and zeta (a conflict) are blocked, so they run no loop: {listed:#}"
    );
    let one = get_json(&api, &format!("/gates/{}/alpha/status", shop.name)).await;
    assert_eq!(one["phase"], "succeeded");
    let refused = api
        .clone()
        .oneshot(Request::post(format!("/gates/{}/beta/promote", shop.name)).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(refused.status(), 409, "a rolled-back gate is not promoted");
    let unknown =
        api.clone().oneshot(Request::get("/gates/nowhere/alpha/status").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(unknown.status(), 404);

    let g = status(&other, "gamma").await;
    assert!(g["phase"] == "progressing" || g["phase"] == "initializing", "{g:#}");

    // The promotion gate on and no evidence yet: the step is held, and the status says so.
    let e = wait_for(&other, "epsilon", Duration::from_secs(15), "insufficient evidence", |s| {
        condition(s, "Progressing")["reason"] == "InsufficientEvidence"
    })
    .await;
    assert_eq!(condition(&e, "Progressing")["status"], "True", "{e:#}");
    assert!(e["message"].as_str().unwrap_or_default().contains("evidence"), "{e:#}");
    assert_eq!(e["step"], "1/3", "held on its first step: {e:#}");

    // An edit that passes admission but that gate-agent refuses (maxWait 0s) does not stop the
    // rollout: the last good spec goes on, the status names the field; fixing it recovers.
    let gates_other = Api::<CanaryGate>::namespaced(other.admin.clone(), &other.name);
    let bad = json!({ "spec": { "analysis": { "promotion": { "maxWait": "0s" } } } });
    gates_other.patch("epsilon", &PatchParams::default(), &Patch::Merge(&bad)).await.unwrap();
    let e = wait_for(&other, "epsilon", Duration::from_secs(10), "the refusal", |s| {
        condition(s, "Ready")["reason"] == "InvalidSpec"
    })
    .await;
    let message = condition(&e, "Ready")["message"].as_str().unwrap().to_owned();
    assert!(message.contains("spec.analysis.promotion.maxWait") && message.contains("last good spec"), "{message}");
    assert_eq!(condition(&e, "Ready")["status"], "False");
    assert_eq!(e["phase"], "progressing", "the rollout goes on: {e:#}");
    assert!(index.read().unwrap().contains_key(&(other.name.clone(), "epsilon".to_owned())), "its loop still runs");
    let good = json!({ "spec": { "analysis": { "promotion": { "maxWait": "1h" } } } });
    gates_other.patch("epsilon", &PatchParams::default(), &Patch::Merge(&good)).await.unwrap();
    let generation = gates_other.get("epsilon").await.unwrap().metadata.generation.unwrap();
    let e = wait_for(&other, "epsilon", Duration::from_secs(10), "the recovery", |s| {
        condition(s, "Ready")["status"] == "True" && s["observedGeneration"] == generation
    })
    .await;
    assert_ne!(e["phase"], "rolled_back", "{e:#}");

    // A missing label route: the rollout does not start, and the condition says what to add.
    let d = wait_for(&other, "delta", Duration::from_secs(10), "a blocked condition", |s| {
        condition(s, "Ready")["reason"] == "RouteLabelMatchMissing"
    })
    .await;
    let message = condition(&d, "Ready")["message"].as_str().unwrap().to_owned();
    assert!(message.contains("exact: v2") && message.contains("subset: v2"), "{message}");
    assert_eq!(d["phase"], "pending");

    // Two gates on one service, port and workloads: the younger one (zeta) loses, names the
    // winner and the fix, and generates nothing; alpha (above) ran to promotion undisturbed.
    let z = wait_for(&shop, "zeta", Duration::from_secs(10), "a conflict", |s| {
        condition(s, "Ready")["reason"] == "Conflict"
    })
    .await;
    let message = condition(&z, "Ready")["message"].as_str().unwrap().to_owned();
    assert!(message.contains("CanaryGate alpha") && message.contains("Fix:"), "{message}");
    assert_eq!(z["phase"], "pending", "{z:#}");
    let out = shop.kubectl(cp).args(["get", "wasmplugin", "zeta-canary-gate"]).output().unwrap();
    assert!(!out.status.success(), "the losing gate generated its route plugin");

    // An edit to a generated WasmPlugin is reconciled back, and the re-apply leaves the rollout
    // loop's fields (weight, revision, rollout state: another field manager's) as they were.
    let before = plugin(&shop, "alpha-canary-gate").await["spec"]["pluginConfig"].clone();
    assert_eq!(before["canary_weight"], 100, "{before}");
    let edit = json!({ "spec": { "url": "oci://evil.invalid/filter:1", "pluginConfig": { "stable": "v9" } } });
    Api::<WasmPlugin>::namespaced(shop.admin.clone(), &shop.name)
        .patch("alpha-canary-gate", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = plugin(&shop, "alpha-canary-gate").await;
        if p["spec"]["url"] == "oci://registry.invalid/canary-gate/filter:0.1.0"
            && p["spec"]["pluginConfig"]["stable"] == "v1"
        {
            assert_eq!(p["spec"]["pluginConfig"], before, "only the edit was undone");
            break;
        }
        assert!(Instant::now() < deadline, "the edited WasmPlugin was not reconciled back: {:#}", p["spec"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deletion of a gate in progress: its canary goes to 0% (no garbage collector here: the
    // owned objects stay, owned by a gate that no longer exists).
    let gamma_uid =
        Api::<CanaryGate>::namespaced(other.admin.clone(), &other.name).get("gamma").await.unwrap().metadata.uid;
    wait_for(&other, "gamma", Duration::from_secs(15), "a step", |s| s["weight"].as_f64().unwrap_or(0.0) > 0.0).await;
    Api::<CanaryGate>::namespaced(other.admin.clone(), &other.name)
        .delete("gamma", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = plugin(&other, "gamma-canary-gate").await;
        if p["spec"]["pluginConfig"]["canary_weight"] == 0 {
            assert_eq!(p["spec"]["pluginConfig"]["rollout_state"]["phase"], "rolled_back");
            assert_eq!(p["metadata"]["ownerReferences"][0]["uid"].as_str(), gamma_uid.as_deref());
            break;
        }
        assert!(Instant::now() < deadline, "the deleted gate's canary is still at {}", p["spec"]["pluginConfig"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(index.read().unwrap().keys().all(|(_, n)| n != "gamma"), "the deleted gate's loop is gone");
    // alpha and beta are untouched by the deletion.
    assert_eq!(status(&shop, "alpha").await["phase"], "succeeded");

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
}
