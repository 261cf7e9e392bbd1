//! The CanaryGate CRD: the shipped YAML is what the Rust types generate, the shipped example
//! reads into the types and converts to a rollout spec, and a **real** kube-apiserver
//! (tests/support/kube.rs) installs the CRD, accepts the example and refuses typos at admission
//! with the message the user sees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use gate_agent::gate::convert::plan;
use gate_agent::gate::crd::{CanaryGate, crd_yaml};
use gate_agent::gate::generate::holds;
use gates::install_crd;
use kube_support::{ControlPlane, workspace_root};
use serde_json::{Value, json};

fn shipped(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap()
}

#[test]
fn the_shipped_crd_is_what_the_types_generate() {
    let generated = crd_yaml().unwrap();
    assert!(
        shipped("deploy/crd/canarygate.yaml") == generated,
        "deploy/crd/canarygate.yaml differs from the types: run `cargo run -p gate-agent -- crd > deploy/crd/canarygate.yaml`"
    );
}

#[test]
fn the_helm_charts_copies_are_the_shipped_files() {
    assert!(
        shipped("deploy/helm/canary-gate/crds/canarygate.yaml") == crd_yaml().unwrap(),
        "deploy/helm/canary-gate/crds/canarygate.yaml differs: `cp deploy/crd/canarygate.yaml deploy/helm/canary-gate/crds/`"
    );
    assert!(
        shipped("deploy/helm/canary-gate/files/rules.yaml") == shipped("deploy/prometheus/rules.yaml"),
        "the chart's Prometheus rules differ: `cp deploy/prometheus/rules.yaml deploy/helm/canary-gate/files/`"
    );
}

#[test]
fn the_shipped_example_reads_into_the_types_and_converts_to_a_rollout_spec() {
    let value: Value = serde_yaml_ng::from_str(&shipped("deploy/crd/example.yaml")).unwrap();
    let gate: CanaryGate = serde_json::from_value(value.clone()).unwrap();
    // Nothing in the example is lost on the way through the types (numbers compare as numbers).
    let back = serde_json::to_value(&gate).unwrap();
    assert!(holds(&back["spec"], &value["spec"]) && holds(&value["spec"], &back["spec"]), "{back}");
    let p = plan(&gate).unwrap();
    assert_eq!(p.spec.name().as_str(), "payment-svc");
    assert_eq!(p.spec.steps().len(), 5);
    assert_eq!(p.pod_selector, "app=frontend");
}

/// `kubectl apply` of `gate` in `ns`: Ok(stdout) or Err(stderr).
fn apply(cp: &ControlPlane, ns: &str, gate: &Value) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gate.yaml");
    std::fs::write(&file, serde_json::to_string(gate).unwrap()).unwrap();
    let out = cp.kubectl().args(["apply", "--namespace", ns, "-f"]).arg(&file).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_installs_the_crd_accepts_the_example_and_refuses_typos_with_the_rules_message() {
    let cp = ControlPlane::shared();
    install_crd(cp);
    let ns = cp.namespace("crd").await;
    let mut example: Value = serde_yaml_ng::from_str(&shipped("deploy/crd/example.yaml")).unwrap();
    example["metadata"]["namespace"] = json!(ns.name);
    apply(cp, &ns.name, &example).unwrap();
    let out = cp.kubectl().args(["get", "canarygates", "-n", &ns.name]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for column in ["PHASE", "WEIGHT", "STEP", "VERDICT", "AGE"] {
        assert!(table.contains(column), "printer columns: {table}");
    }

    let typo = |edit: &dyn Fn(&mut Value)| {
        let mut g = example.clone();
        g["metadata"]["name"] = json!("typo");
        edit(&mut g);
        g
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            typo(&|g| g["spec"]["analysis"]["stepWeights"] = json!([1, 50, 10])),
            "spec.analysis.stepWeights must be strictly ascending",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["stepWeights"] = json!([1, 5, 5])),
            "spec.analysis.stepWeights must be strictly ascending",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["maxWeight"] = json!(500)),
            "spec.analysis.maxWeight must be above 0 and at most 100",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["stepWeights"] = json!([1, 5, 10, 25, 99])),
            "spec.analysis.stepWeights must not go above spec.analysis.maxWeight",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["stepWeight"] = json!(10)),
            "give exactly one of spec.analysis.stepWeight and spec.analysis.stepWeights",
        ),
        (typo(&|g| g["spec"]["canary"] = json!("v1")), "spec.canary must differ from spec.stable"),
        (typo(&|g| g["spec"]["analysis"]["interval"] = json!("30")), "spec.analysis.interval"),
        (
            typo(&|g| g["spec"]["analysis"]["metrics"][0]["thresholdRange"] = json!({ "max": 5 })),
            "request-success-rate takes only thresholdRange.min",
        ),
        (typo(&|g| g["metadata"]["name"] = json!("Payment_Svc")), "metadata.name"),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "errorMargin": { "ratio": 0.5 } })),
            "spec.analysis.promotion.errorMargin.ratio must be at least 1",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "errorMargin": { "absolute": -0.5 } })),
            "spec.analysis.promotion.errorMargin.absolute must be at least 0",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "errorMargin": { "absolute": 150 } })),
            "spec.analysis.promotion.errorMargin.absolute must be at least 0 and below 100",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "latencyMargin": { "p99Increase": "150%" } })),
            "spec.analysis.promotion.latencyMargin.p99Increase must be above 0% and at most 100%",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "latencyMargin": { "p99Increase": -5 } })),
            "spec.analysis.promotion.latencyMargin.p99Increase must be above 0% and at most 100%",
        ),
        (
            typo(&|g| g["spec"]["analysis"]["promotion"] = json!({ "maxWait": "2 hours" })),
            "spec.analysis.promotion.maxWait",
        ),
    ];
    // The promotion block's accepted forms: a percentage as text or as a number.
    for latency in [json!("20%"), json!(20), json!("12.5%")] {
        let mut g = example.clone();
        g["spec"]["analysis"]["promotion"] = json!({ "requireEvidence": false, "maxWait": "2h",
            "errorMargin": { "ratio": 1.5, "absolute": 0.2 }, "latencyMargin": { "p99Increase": latency } });
        apply(cp, &ns.name, &g).unwrap_or_else(|e| panic!("refused {latency}: {e}"));
    }
    for (gate, message) in cases {
        let e = apply(cp, &ns.name, &gate).expect_err(&format!("accepted: {gate}"));
        assert!(e.contains(message), "expected {message:?} in:\n{e}");
    }
    // Nothing refused was stored.
    let out = cp.kubectl().args(["get", "canarygates", "-n", &ns.name, "-o", "name"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "canarygate.canary-gate.dev/payment-svc");
}
