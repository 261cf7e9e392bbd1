//! `gate-agent validate`: canary-manifests' checks, with `CanaryGate` objects read by the
//! controller's own conversion ([`crate::gate::convert`]), so the command refuses exactly what
//! the controller would. The checks themselves stay in the pure crate; only this reader needs the
//! CanaryGate types.

pub use canary_manifests::*;

use canary_rollout::Spec;
use serde_json::Value;

use crate::gate::convert::{rollout_spec, route_plugin_config};
use crate::gate::crd::CanaryGate;

/// Reads `kind: CanaryGate` (`canary-gate.dev`): its `spec.analysis` is the rollout spec.
#[derive(Debug, Clone, Copy, Default)]
pub struct CanaryGates;

impl KindReader for CanaryGates {
    fn kind(&self) -> (&'static str, &'static str) {
        ("CanaryGate", "canary-gate.dev")
    }

    fn spec_at(&self) -> &'static str {
        "spec.analysis"
    }

    fn read(&self, object: &Value) -> Result<Spec, KindError> {
        let gate = serde_path_to_error::deserialize::<_, CanaryGate>(object).map_err(|e| KindError {
            field: e.path().to_string(),
            problem: format!("CanaryGate: {}", e.inner()),
            fix: "Fix the field; `kubectl explain canarygate.spec` lists them.".into(),
            schema: true,
        })?;
        let name = gate.metadata.name.clone().unwrap_or_default();
        let spec = rollout_spec(&name, &gate.spec)
            .and_then(|spec| route_plugin_config(&name, &gate.spec).map(|_| spec))
            .map_err(|e| KindError {
                field: e.field.clone(),
                problem: format!("the controller would refuse this CanaryGate: {}", e.problem),
                fix: "Fix the field; the API server's own rules catch some of these at `kubectl apply`.".into(),
                schema: false,
            })?;
        Ok(spec)
    }
}

/// Checks the manifests, `CanaryGate` objects included. Pure: never reads a file.
pub fn validate(inputs: &Inputs) -> Report {
    validate_with(inputs, &[&CanaryGates])
}
