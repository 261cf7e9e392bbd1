//! A CanaryGate whose route is a Gateway API HTTPRoute (`route: {kind: HTTPRoute}`), against a **real**
//! kube-apiserver with etcd, Istio's and the Gateway API's CRDs (tests/support/kube.rs), the controller in-process
//! as the admin, and fabricated proxies as in gate_controller.rs.
//!
//! One scenario: a gate whose HTTPRoute has no label rule stays `pending` with `Ready=False RouteLabelMatchMissing`
//! and the exact rule to add; a gate whose HTTPRoute has it runs; once the first HTTPRoute gets the rule, its gate
//! starts too (a pending gate is checked again every poll).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use gate_agent::gate::controller::{GateIndex, run};
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::lease::Leadership;
use gates::{apply, gate, install_crd, proxies};
use kube::Api;
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

async fn status(ns: &TestNamespace, name: &str) -> Value {
    let g = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name).get(name).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned()).unwrap_or_default()
}

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

/// The user's HTTPRoute for `service` (GAMMA: the Service as parent), one backend Service per version: with the
/// canary's label rule, or (`labelled` false) only the default rule to stable.
fn http_route(ns: &str, service: &str, labelled: bool) -> Value {
    let stable = json!({ "name": "stable", "backendRefs": [{ "name": format!("{service}-v1"), "port": 8080 }] });
    let canary = json!({ "name": "canary",
        "matches": [{ "headers": [{ "name": "x-canary-subset", "value": format!("{service}-v2") }] }],
        "backendRefs": [{ "name": format!("{service}-v2"), "port": 8080 }] });
    // The label rule after the default one: Gateway API ranks it first all the same.
    let rules = if labelled { json!([stable, canary]) } else { json!([stable]) };
    json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": service, "namespace": ns },
            "spec": { "parentRefs": [{ "group": "", "kind": "Service", "name": service, "port": 8080 }],
                      "rules": rules } })
}

/// gates.rs's gate, routed by an HTTPRoute: stable and canary are the backend Services.
fn http_route_gate(ns: &str, name: &str, port: u16) -> Value {
    let mut g = gate(ns, name, &format!("{name}-caller"), port, "1s");
    g["spec"]["stable"] = json!(format!("{name}-v1"));
    g["spec"]["canary"] = json!(format!("{name}-v2"));
    g["spec"]["route"] = json!({ "kind": "HTTPRoute", "name": name });
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_whose_httproute_lacks_the_label_rule_is_pending_with_the_fix_until_it_has_it() {
    let cp = ControlPlane::shared();
    install_crd(cp);
    let ns = cp.namespace("httproute").await;
    let healthy = Arc::new(AtomicBool::new(false));
    let labelled_port = proxies(&ns, "kappa", &[[127, 0, 0, 21]], &healthy).await;
    let bare_port = proxies(&ns, "lambda", &[[127, 0, 0, 22]], &healthy).await;
    apply(cp, &http_route(&ns.name, "kappa", true));
    apply(cp, &http_route_gate(&ns.name, "kappa", labelled_port));
    apply(cp, &http_route(&ns.name, "lambda", false));
    apply(cp, &http_route_gate(&ns.name, "lambda", bare_port));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = gates::controller_settings(vec![ns.name.clone()], None);
    let controller = tokio::spawn(run(ns.admin.clone(), settings, Leadership::always(), GateIndex::default(), stop_rx));

    // The HTTPRoute without the label rule: pending, and the condition has the rule to add.
    let l = wait_for(&ns, "lambda", Duration::from_secs(15), "a blocked condition", |s| {
        condition(s, "Ready")["reason"] == "RouteLabelMatchMissing"
    })
    .await;
    assert_eq!(l["phase"], "pending", "{l:#}");
    assert_eq!(condition(&l, "Ready")["status"], "False");
    let message = condition(&l, "Ready")["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with("HTTPRoute lambda: no rule matches header x-canary-subset exactly equal to \"lambda-v2\""),
        "{message}"
    );
    let fix = "- name: canary\n  matches:\n  - headers:\n    - name: x-canary-subset\n      value: lambda-v2\n  \
               backendRefs:\n  - name: lambda-v2\n    port: 8080";
    assert!(message.ends_with(fix), "the message ends with the exact rule to add:\n{message}");

    // The HTTPRoute with it (after the default rule): the rollout runs.
    wait_for(&ns, "kappa", Duration::from_secs(15), "a running rollout", |s| {
        s["phase"] == "progressing" && condition(s, "Ready")["status"] == "True"
    })
    .await;

    // The user adds the rule: the pending gate starts.
    apply(cp, &http_route(&ns.name, "lambda", true));
    let l = wait_for(&ns, "lambda", Duration::from_secs(15), "the rollout to start", |s| {
        s["phase"] == "progressing" || s["phase"] == "initializing"
    })
    .await;
    assert_ne!(condition(&l, "Ready")["reason"], "RouteLabelMatchMissing", "{l:#}");

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
}
