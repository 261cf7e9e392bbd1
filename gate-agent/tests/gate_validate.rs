//! `gate-agent validate` reads CanaryGate objects: the controller's checks, with the gate's field
//! paths and lines, and a gate's analysis as the rollout spec for the other checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use gate_agent::validate::{Check, Input, Inputs, Severity, validate};

fn check(text: &str) -> gate_agent::validate::Report {
    validate(&Inputs { files: vec![Input { name: "gate.yaml".into(), text: text.into() }], spec: None, live: vec![] })
}

fn example() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crd/example.yaml");
    std::fs::read_to_string(root).unwrap()
}

#[test]
fn the_shipped_example_is_clean() {
    let report = check(&example());
    assert!(report.findings.iter().all(|f| f.severity != Severity::Error), "{}", report.to_text());
    assert!(report.findings.iter().all(|f| f.check != Check::UnknownKind), "a CanaryGate is a known kind");
}

#[test]
fn a_descending_step_is_reported_at_the_gates_field_and_line() {
    let text = example().replace("stepWeights: [1, 5, 10, 25, 50]", "stepWeights: [1, 50, 10]");
    let report = check(&text);
    let f = report
        .findings
        .iter()
        .find(|f| f.check == Check::RolloutSpec)
        .unwrap_or_else(|| panic!("{}", report.to_text()));
    assert_eq!(f.path, "spec.analysis.stepWeights[2]");
    assert_eq!(f.object.as_deref(), Some("CanaryGate shop/payment-svc"));
    assert!(f.line.is_some(), "{f:?}");
}

#[test]
fn a_gate_as_context_catches_a_virtual_service_above_its_max_weight() {
    let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: payment-svc, namespace: shop }\n\
              spec:\n  hosts: [payment-svc]\n  http:\n  - route:\n    - destination: { host: payment-svc, subset: v1 }\n      weight: 20\n    \
              - destination: { host: payment-svc, subset: v2 }\n      weight: 80\n";
    let report = check(&(example() + vs));
    assert!(
        report.findings.iter().any(|f| f.check == Check::MaxWeight || f.check == Check::DirectionSwap),
        "{}",
        report.to_text()
    );
}

/// deploy/gateway-api's CanaryGate and HTTPRoute, read as a user runs `gate-agent validate` on the directory.
fn gateway_api(file: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway-api").join(file);
    std::fs::read_to_string(root).unwrap()
}

#[test]
fn a_gate_routed_by_an_httproute_decides_who_is_stable_there() {
    let shipped = gateway_api("canarygate.yaml") + "---\n" + &gateway_api("httproute.yaml");
    let report = check(&shipped);
    assert_eq!((report.errors, report.warnings), (0, 0), "{}", report.to_text());
    // The default rule split 20/80 by hand: the gate says payment-svc-v1 is stable, and its maxWeight is 50.
    let split = gateway_api("httproute.yaml").replace(
        "    backendRefs:\n    - name: payment-svc-v1\n      port: 8080\n",
        "    backendRefs:\n    - name: payment-svc-v1\n      port: 8080\n      weight: 20\n    - name: payment-svc-v2\n      port: 8080\n      weight: 80\n",
    );
    assert_ne!(split, gateway_api("httproute.yaml"), "the stable rule was found");
    let report = check(&(gateway_api("canarygate.yaml") + "---\n" + &split));
    let checks: Vec<(Check, &str)> =
        report.findings.iter().filter(|f| f.severity == Severity::Error).map(|f| (f.check, f.path.as_str())).collect();
    assert_eq!(
        checks,
        [
            (Check::DirectionSwap, "spec.rules[1].backendRefs[1].weight"),
            (Check::MaxWeight, "spec.rules[1].backendRefs[1].weight")
        ],
        "{}",
        report.to_text()
    );
    assert!(
        report.to_text().contains("stable is payment-svc-v1 because the rollout spec payment-svc (gate.yaml) says so"),
        "the gate decided:\n{}",
        report.to_text()
    );
}

#[test]
fn a_promotion_margin_out_of_range_is_reported_at_the_gates_field() {
    for (promotion, path) in [
        ("    promotion: { errorMargin: { ratio: 0.5 } }\n", "spec.analysis.promotion.errorMargin.ratio"),
        (
            "    promotion: { latencyMargin: { p99Increase: 150% } }\n",
            "spec.analysis.promotion.latencyMargin.p99Increase",
        ),
        ("    promotion: { maxWait: 0s }\n", "spec.analysis.promotion.maxWait"),
    ] {
        let text = example().replacen("    interval: 30s", &format!("{promotion}    interval: 30s"), 1);
        let report = check(&text);
        let f = report
            .findings
            .iter()
            .find(|f| f.check == Check::RolloutSpec)
            .unwrap_or_else(|| panic!("{promotion}: {}", report.to_text()));
        assert_eq!(f.path, path, "{}", report.to_text());
    }
    let on = example().replacen(
        "    interval: 30s",
        "    promotion: { requireEvidence: false, maxWait: 2h }\n    interval: 30s",
        1,
    );
    let report = check(&on);
    assert!(report.findings.iter().all(|f| f.severity != Severity::Error), "{}", report.to_text());
}
