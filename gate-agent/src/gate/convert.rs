//! From a `CanaryGate` to what the rollout loop and the filter read: the rollout [`Spec`] and the
//! route plugin's configuration. Pure: no I/O, every refusal names the CanaryGate's field path
//! (`spec.analysis.stepWeights[1]`), as `kubectl explain` spells it.

use std::fmt;

use serde_json::{Map, Value, json};

use super::crd::{CanaryGate, CanaryGateSpec};
use crate::spec::Spec;

/// A CanaryGate that gate-agent cannot run: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateError {
    /// `spec.analysis.stepWeights[1]`, `metadata.name`, ...
    pub field: String,
    pub problem: String,
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CanaryGate field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for GateError {}

fn error(field: impl Into<String>, problem: impl Into<String>) -> GateError {
    GateError { field: field.into(), problem: problem.into() }
}

/// The rollout spec of gate `name`: its `analysis`, named after the gate, with its subsets.
/// Checked by gate-agent's own spec parser, so a gate is refused for exactly what `gate-agent run
/// --spec` would refuse.
pub fn rollout_spec(name: &str, spec: &CanaryGateSpec) -> Result<Spec, GateError> {
    let mut doc = match serde_json::to_value(&spec.analysis) {
        Ok(Value::Object(map)) => map,
        _ => return Err(error("spec.analysis", "is not a mapping")),
    };
    doc.insert("name".into(), json!(name));
    doc.insert("stable".into(), json!(spec.stable));
    doc.insert("canary".into(), json!(spec.canary));
    // The CRD writes `noData: {fail: 5m}` and leaves `hold` out; the spec also reads that form.
    let text = Value::Object(doc).to_string();
    Spec::from_yaml_or_json(&text).map_err(|e| error(gate_field(&e.field), e.problem))
}

/// Where a rollout spec field lives in a CanaryGate.
fn gate_field(spec_field: &str) -> String {
    match spec_field {
        "name" => "metadata.name".into(),
        "stable" | "canary" => format!("spec.{spec_field}"),
        "." => "spec.analysis".into(),
        other => format!("spec.analysis.{other}"),
    }
}

/// The route plugin's `pluginConfig` as the controller applies it: everything but the fields the
/// rollout loop owns (`canary_weight`, `revision`, `rollout_state`, `guard`). Checked with the
/// filter's parser (with the weight at 0%), field paths mapped back to the gate.
pub fn route_plugin_config(name: &str, spec: &CanaryGateSpec) -> Result<Value, GateError> {
    let mut config = Map::new();
    config.insert("version".into(), json!(1));
    config.insert("rollout".into(), json!(name));
    config.insert("stable".into(), json!(spec.stable));
    config.insert("canary".into(), json!(spec.canary));
    if let Some(token) = &spec.label_token {
        config.insert("label_token".into(), json!(token));
    }
    if let Some(sticky) = &spec.sticky {
        let key = match (&sticky.header, &sticky.cookie) {
            (Some(h), None) => json!({ "header": h }),
            (None, Some(c)) => json!({ "cookie": c }),
            _ => return Err(error("spec.sticky", "give exactly one of `header` and `cookie`")),
        };
        config.insert("sticky".into(), key);
    }
    if let Some(dl) = &spec.dark_launch {
        let mut d = json!({ "header": dl.header, "value": dl.value });
        if let (Some(during), Some(obj)) = (dl.during_kill, d.as_object_mut()) {
            obj.insert("during_kill".into(), json!(during));
        }
        config.insert("dark_launch".into(), d);
    }
    let config = Value::Object(config);
    let mut checked = config.clone();
    if let Some(obj) = checked.as_object_mut() {
        obj.insert("canary_weight".into(), json!(0));
    }
    crate::mesh::wasmplugin::route_config_of(&checked).map_err(|problem| {
        // The parser names its own field (`sticky.header`, `label_token`): say where that is.
        let field = problem.split('`').nth(1).map_or_else(|| "spec".to_owned(), plugin_field);
        error(field, problem)
    })?;
    Ok(config)
}

/// Where a filter configuration field comes from in a CanaryGate.
fn plugin_field(config_field: &str) -> String {
    match config_field {
        "rollout" => "metadata.name".into(),
        "label_token" => "spec.labelToken".into(),
        "stable" | "canary" => format!("spec.{config_field}"),
        other if other.starts_with("dark_launch") => {
            format!("spec.darkLaunch{}", other.trim_start_matches("dark_launch").replace("during_kill", "duringKill"))
        }
        other => format!("spec.{other}"),
    }
}

/// Everything gate-agent needs from a gate, checked: the spec, the plugin config, the selector.
#[derive(Debug, Clone, PartialEq)]
pub struct GatePlan {
    pub namespace: String,
    pub name: String,
    pub spec: Spec,
    pub plugin_config: Value,
    /// `app=frontend,tier=web`, for pod discovery.
    pub pod_selector: String,
    pub snapshot_port: u16,
}

/// Checks a gate as read from the API server.
pub fn plan(gate: &CanaryGate) -> Result<GatePlan, GateError> {
    let name = gate.metadata.name.clone().ok_or_else(|| error("metadata.name", "is missing"))?;
    let namespace = gate.metadata.namespace.clone().ok_or_else(|| error("metadata.namespace", "is missing"))?;
    let spec = rollout_spec(&name, &gate.spec)?;
    let plugin_config = route_plugin_config(&name, &gate.spec)?;
    if gate.spec.workload.selector.is_empty() {
        return Err(error("spec.workload.selector", "must name at least one label of the calling pods"));
    }
    let pod_selector =
        gate.spec.workload.selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let snapshot_port = gate.spec.workload.snapshot_port.unwrap_or(super::crd::DEFAULT_SNAPSHOT_PORT);
    if snapshot_port == 0 {
        return Err(error("spec.workload.snapshotPort", "must be a port (1-65535)"));
    }
    if gate.spec.service.port == 0 {
        return Err(error("spec.service.port", "must be a port (1-65535)"));
    }
    Ok(GatePlan { namespace, name, spec, plugin_config, pod_selector, snapshot_port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(analysis: Value) -> CanaryGateSpec {
        serde_json::from_value(json!({
            "service": { "name": "payment-svc", "port": 8080 },
            "workload": { "selector": { "app": "frontend" } },
            "stable": "v1", "canary": "v2",
            "route": { "name": "payment-svc" },
            "analysis": analysis,
        }))
        .unwrap()
    }

    #[test]
    fn a_gate_becomes_the_rollout_spec_it_describes() {
        let g = gate(json!({ "interval": "30s", "stepWeights": [1, 5, 10], "maxWeight": 10,
                             "noData": { "fail": "5m" },
                             "metrics": [{ "name": "request-success-rate", "thresholdRange": { "min": 99 } }] }));
        let s = rollout_spec("payment-svc", &g).unwrap();
        assert_eq!(s.name().as_str(), "payment-svc");
        assert_eq!((s.stable().as_str(), s.canary().as_str()), ("v1", "v2"));
        assert_eq!(s.steps().len(), 3);
        assert_eq!(s.no_data(), crate::spec::NoDataPolicy::FailAfter(std::time::Duration::from_secs(300)));
    }

    #[test]
    fn a_refused_gate_names_the_field_in_the_gate() {
        let cases = [
            (gate(json!({ "interval": "30s", "stepWeights": [10, 5] })), "spec.analysis.stepWeights[1]"),
            (gate(json!({ "interval": "30", "stepWeight": 10, "maxWeight": 50 })), "spec.analysis.interval"),
            (gate(json!({ "interval": "1s" })), "spec.analysis"),
            (
                gate(json!({ "interval": "1s", "stepWeight": 10, "maxWeight": 50,
                             "metrics": [{ "name": "error-rate", "thresholdRange": { "max": 1 } }] })),
                "spec.analysis.metrics[0].name",
            ),
        ];
        for (g, field) in cases {
            let e = rollout_spec("r", &g).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut same = gate(json!({ "interval": "1s", "stepWeight": 10, "maxWeight": 50 }));
        same.canary = "v1".into();
        assert_eq!(rollout_spec("r", &same).unwrap_err().field, "spec.canary");
        let ok = gate(json!({ "interval": "1s", "stepWeight": 10, "maxWeight": 50 }));
        assert_eq!(rollout_spec("Bad_Name", &ok).unwrap_err().field, "metadata.name");
    }

    #[test]
    fn the_promotion_block_is_the_rollout_specs_with_its_defaults() {
        let base = json!({ "interval": "1s", "stepWeight": 10, "maxWeight": 50 });
        let default = rollout_spec("r", &gate(base.clone())).unwrap();
        assert!(default.promotion().require_evidence, "on by default");
        let mut analysis = base.clone();
        analysis["promotion"] = json!({ "requireEvidence": false, "errorMargin": { "ratio": 1.5, "absolute": 0.2 },
                                        "latencyMargin": { "p99Increase": "10%" }, "maxWait": "2h" });
        let s = rollout_spec("r", &gate(analysis)).unwrap();
        let p = s.promotion();
        assert!(!p.require_evidence);
        assert_eq!((p.error_margin.ratio, p.error_margin.absolute), (1.5, 0.002));
        assert_eq!((p.p99_increase, p.max_wait), (0.1, Some(std::time::Duration::from_secs(7200))));
        let mut number = base.clone();
        number["promotion"] = json!({ "latencyMargin": { "p99Increase": 30 } });
        assert_eq!(rollout_spec("r", &gate(number)).unwrap().promotion().p99_increase, 0.3);
        for (promotion, field) in [
            (json!({ "errorMargin": { "ratio": 0.5 } }), "spec.analysis.promotion.errorMargin.ratio"),
            (json!({ "errorMargin": { "absolute": -1 } }), "spec.analysis.promotion.errorMargin.absolute"),
            (json!({ "errorMargin": { "ratio": 1, "absolute": 0 } }), "spec.analysis.promotion.errorMargin"),
            (
                json!({ "latencyMargin": { "p99Increase": "150%" } }),
                "spec.analysis.promotion.latencyMargin.p99Increase",
            ),
            (json!({ "maxWait": "0s" }), "spec.analysis.promotion.maxWait"),
        ] {
            let mut analysis = base.clone();
            analysis["promotion"] = promotion.clone();
            let e = rollout_spec("r", &gate(analysis)).unwrap_err();
            assert_eq!(e.field, field, "{promotion}: {e}");
        }
    }

    #[test]
    fn the_plugin_config_leaves_the_loops_fields_out_and_is_checked_by_the_filters_parser() {
        let mut g = gate(json!({ "interval": "1s", "stepWeight": 10, "maxWeight": 50 }));
        g.sticky = Some(super::super::crd::Sticky { header: Some("x-user-id".into()), cookie: None });
        let c = route_plugin_config("payment-svc", &g).unwrap();
        assert_eq!(c["sticky"], json!({ "header": "x-user-id" }));
        for owned in ["canary_weight", "revision", "rollout_state", "guard"] {
            assert!(c.get(owned).is_none(), "{owned} belongs to the rollout loop");
        }
        g.label_token = Some("short".into());
        assert_eq!(route_plugin_config("payment-svc", &g).unwrap_err().field, "spec.labelToken");
    }
}
