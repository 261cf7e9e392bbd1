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
