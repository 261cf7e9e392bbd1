//! What the filter tells a reader through Envoy's own stats, for proxies the agent cannot reach
//! on a dedicated snapshot listener (ambient waypoints, docs/mesh.md): the configuration it
//! applies, as gauges set once per accepted configuration (never per request), and the names of
//! its per-rollout counters.
//!
//! A waypoint runs the route filter of every gated Service it serves in one Envoy, so two gates
//! with subsets `v1`/`v2` would share `canary_gate_requests_total.subset.v2`. With
//! [`crate::config::RouteConfig::rollout_in_metric_names`] the filter names its per-subset
//! metrics `<base>.rollout.<rollout>.subset.<subset>` instead; the gauges always carry the rollout.
//!
//! Envoy 1.40 shows a wasm metric `N` as `wasmcustom.N` in `/stats` and, in `/stats/prometheus`,
//! as `N` with every character outside `[a-zA-Z0-9_]` turned into `_` and no `envoy_` prefix
//! (`canary_gate_requests_total_rollout_pay_subset_v2{} 10`): [`prometheus_name`].

use crate::RouteConfig;
use crate::record::RolloutPhase;

/// The revision of the configuration the filter applies.
pub const APPLIED_REVISION: &str = "canary_gate_applied_revision";
/// The canary weight it applies, in basis points (0..=10000).
pub const APPLIED_WEIGHT_BP: &str = "canary_gate_applied_weight_basis_points";
/// The phase of the rollout record it applies ([`phase_code`]; 0 without a record).
pub const APPLIED_PHASE: &str = "canary_gate_applied_phase";
/// 1 while the applied configuration holds the canary at 0% because the rollout was rolled back
/// (the durable kill), else 0.
pub const KILLED: &str = "canary_gate_killed";
/// When this proxy process's filter started (Unix seconds, as `process_start_time_seconds`; the
/// snapshot's `instance.started_at`, rounded down): a reader that sees it change knows the
/// counters restarted from zero.
pub const START_TIME_SECONDS: &str = "canary_gate_start_time_seconds";

/// A per-rollout stat name: `<base>.rollout.<rollout>`.
pub fn per_rollout(base: &str, rollout: &str) -> String {
    format!("{base}.rollout.{rollout}")
}

/// A per-rollout, per-subset stat name: `<base>.rollout.<rollout>.subset.<subset>`.
pub fn per_rollout_subset(base: &str, rollout: &str, subset: &str) -> String {
    format!("{base}.rollout.{rollout}.subset.{subset}")
}

/// The name Envoy's `/stats/prometheus` gives a wasm metric named `name`.
pub fn prometheus_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The gauge value of a phase: 1 + its index in [`RolloutPhase::ALL`] (0 means no record).
pub fn phase_code(phase: RolloutPhase) -> u64 {
    RolloutPhase::ALL.iter().position(|p| *p == phase).map_or(0, |i| i as u64 + 1)
}

/// The phase a gauge value stands for; `None` for 0 (no record) or an unknown code.
pub fn phase_of(code: u64) -> Option<RolloutPhase> {
    let index = usize::try_from(code.checked_sub(1)?).ok()?;
    RolloutPhase::ALL.get(index).copied()
}

/// Whether `config` is the durable kill: rolled back, canary at 0%.
pub fn killed(config: &RouteConfig) -> bool {
    config.canary_weight == crate::Weight::ZERO
        && config.rollout_state.as_ref().is_some_and(|r| r.phase == RolloutPhase::RolledBack)
}

/// The gauges' values for an accepted configuration: `(name, value)`, set together.
pub fn values(config: &RouteConfig) -> [(String, u64); 4] {
    let rollout = config.rollout.as_str();
    [
        (per_rollout(APPLIED_REVISION, rollout), config.revision),
        (per_rollout(APPLIED_WEIGHT_BP, rollout), u64::from(config.canary_weight.basis_points())),
        (per_rollout(APPLIED_PHASE, rollout), config.rollout_state.as_ref().map_or(0, |r| phase_code(r.phase))),
        (per_rollout(KILLED, rollout), u64::from(killed(config))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_route;

    #[test]
    fn every_phase_has_its_own_code_and_back() {
        for phase in RolloutPhase::ALL {
            assert_eq!(phase_of(phase_code(phase)), Some(phase));
            assert_ne!(phase_code(phase), 0);
        }
        assert_eq!(phase_of(0), None);
        assert_eq!(phase_of(7), None);
    }

    #[test]
    fn the_prometheus_name_is_envoys() {
        let name = per_rollout_subset("canary_gate_requests_total", "pay-ment", "v2-b");
        assert_eq!(prometheus_name(&name), "canary_gate_requests_total_rollout_pay_ment_subset_v2_b");
    }

    #[test]
    fn a_rolled_back_configuration_at_zero_is_the_kill_and_nothing_else_is() {
        let at = |weight: u32, phase: Option<&str>| {
            let state = phase.map_or(String::new(), |p| {
                format!(r#","rollout_state":{{"phase":"{p}","failed_checks":0,"reason":"","at_unix_ms":1}}"#)
            });
            parse_route(
                format!(
                    r#"{{"version":1,"rollout":"pay","stable":"v1","canary":"v2","canary_weight":{weight},"revision":7{state}}}"#
                )
                .as_bytes(),
            )
            .unwrap()
        };
        assert!(killed(&at(0, Some("rolled_back"))));
        assert!(!killed(&at(0, Some("progressing"))));
        assert!(!killed(&at(0, None)));
        assert!(!killed(&at(10, Some("rolled_back"))), "a rolled-back record with weight is not held at 0%");
        let v = values(&at(0, Some("rolled_back")));
        assert_eq!(v[0], ("canary_gate_applied_revision.rollout.pay".to_owned(), 7));
        assert_eq!(v[2].1, phase_code(RolloutPhase::RolledBack));
        assert_eq!(v[3].1, 1);
        assert_eq!(values(&at(25, None))[1].1, 2500);
    }
}
