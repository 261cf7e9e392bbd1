//! The proxy's own typo guard: a configuration whose weight breaks the rollout's bounds is
//! rejected in `on_configure`, so a hand-typed 99% never reaches traffic, with or without an
//! agent running.
//!
//! gate-agent writes the bounds from the rollout spec into the configuration (`guard`):
//! `max_weight` (the spec's `maxWeight`) and `max_raise` (its largest step). The filter then
//! rejects a new configuration when
//! - its `canary_weight` is above `max_weight`, unless its `rollout_state` records a promotion
//!   (`promoting` or `succeeded`); or
//! - it raises the weight by more than `max_raise` over the configuration this proxy applies now
//!   (for the same rollout id, when that one carried a guard too), again unless it records a
//!   promotion.
//!
//! A rejection is the path of any bad configuration: `on_configure` returns false with one log
//! line naming the field and both values, Envoy counts `update_rejected`, and the previous weights
//! keep serving. Lowering the weight is never refused: a rollback must always get through.
//! Someone who removes the guard block bypasses this check; gate-agent's foreign-write detection
//! is the second line.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, RouteConfig};
use crate::record::RolloutPhase;
use crate::weight::Weight;

/// The bounds a configuration's weight must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// The highest weight short of a promotion (the spec's `maxWeight`).
    pub max_weight: Weight,
    /// The largest raise over the weight this proxy applies (the spec's largest step).
    pub max_raise: Weight,
}

impl Guard {
    /// Rules serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_raise == Weight::ZERO {
            return Err(ConfigError::new("guard.max_raise", "must be above 0: the canary could never start"));
        }
        if self.max_raise > self.max_weight {
            return Err(ConfigError::new(
                "guard.max_raise",
                format!("{} is above guard.max_weight {}", self.max_raise, self.max_weight),
            ));
        }
        Ok(())
    }
}

/// Whether `config` may replace `applied` (the configuration of the same rollout this proxy
/// applies now, if any). Errors name the field and both values.
pub fn check(config: &RouteConfig, applied: Option<&RouteConfig>) -> Result<(), ConfigError> {
    let Some(guard) = &config.guard else { return Ok(()) };
    let promoting = config
        .rollout_state
        .as_ref()
        .is_some_and(|s| matches!(s.phase, RolloutPhase::Promoting | RolloutPhase::Succeeded));
    if promoting {
        return Ok(());
    }
    let to = config.canary_weight;
    if to > guard.max_weight {
        return Err(ConfigError::new(
            "canary_weight",
            format!(
                "{to} is above guard.max_weight {} and rollout_state records no promotion; the previous weights keep serving",
                guard.max_weight
            ),
        ));
    }
    // The raise is measured from a configuration the guard already vetted. One without a guard
    // (the bootstrap's 0% default that a restarted Envoy applies before reading the durable file,
    // or a rollout before the agent first wrote) is no baseline: against it only max_weight holds.
    let Some(from) = applied
        .filter(|a| a.guard.is_some() && a.effective_rollout_id() == config.effective_rollout_id())
        .map(|a| a.canary_weight)
    else {
        return Ok(());
    };
    let raise = to.basis_points().saturating_sub(from.basis_points());
    if raise > guard.max_raise.basis_points() {
        return Err(ConfigError::new(
            "canary_weight",
            format!(
                "raises the canary from {from} to {to}, more than guard.max_raise {} over the weight this proxy applies; \
                 the previous weights keep serving",
                guard.max_raise
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_route;

    const GUARD: &str = r#","guard":{"max_weight":50,"max_raise":25}"#;

    fn at(weight: f64, extra: &str) -> RouteConfig {
        RouteConfig { canary_weight: Weight::from_percent(weight).unwrap(), ..test_route(&format!("{GUARD}{extra}")) }
    }

    #[test]
    fn the_incident_typo_is_refused_with_both_values() {
        let e = check(&at(99.0, ""), Some(&at(10.0, ""))).unwrap_err();
        assert_eq!(e.field, "canary_weight");
        assert!(e.problem.contains("99%") && e.problem.contains("guard.max_weight 50%"), "{e}");
        // Even in a proxy that applies nothing yet.
        assert!(check(&at(99.0, ""), None).is_err());
    }

    #[test]
    fn raises_are_bounded_by_the_weight_applied_now() {
        assert!(check(&at(35.0, ""), Some(&at(10.0, ""))).is_ok());
        let e = check(&at(40.0, ""), Some(&at(10.0, ""))).unwrap_err();
        assert!(e.problem.contains("from 10% to 40%") && e.problem.contains("max_raise 25%"), "{e}");
        assert!(check(&at(25.0, ""), None).is_ok(), "a fresh proxy checks max_weight only");
    }

    #[test]
    fn lowering_is_never_refused_and_a_promotion_passes() {
        assert!(check(&at(0.0, ""), Some(&at(50.0, ""))).is_ok());
        let promoting = r#","rollout_state":{"phase":"promoting"}"#;
        assert!(check(&at(100.0, promoting), Some(&at(50.0, ""))).is_ok());
        let paused = r#","rollout_state":{"phase":"paused"}"#;
        assert!(check(&at(100.0, paused), Some(&at(50.0, ""))).is_err());
    }

    #[test]
    fn a_restarted_proxy_takes_the_durable_weight_over_its_unguarded_default() {
        // Envoy starts on the bootstrap's 0% default (no guard), then reads the durable 50%.
        let default = RouteConfig { canary_weight: Weight::ZERO, ..test_route("") };
        assert!(check(&at(50.0, ""), Some(&default)).is_ok());
        assert!(check(&at(99.0, ""), Some(&default)).is_err(), "max_weight still holds");
    }

    #[test]
    fn another_rollout_is_not_a_raise() {
        let next = at(20.0, r#","rollout_id":"rel-2""#);
        assert!(check(&next, Some(&at(0.0, ""))).is_ok());
    }

    #[test]
    fn without_a_guard_nothing_is_checked() {
        let plain = RouteConfig { canary_weight: Weight::FULL, ..test_route("") };
        assert!(check(&plain, Some(&test_route(""))).is_ok());
    }

    #[test]
    fn bad_guards_name_the_field() {
        let parse = |g: &str| {
            crate::config::parse_route(
                format!(r#"{{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"guard":{g}}}"#)
                    .as_bytes(),
            )
        };
        assert_eq!(parse(r#"{"max_weight":50,"max_raise":0}"#).unwrap_err().field, "guard.max_raise");
        assert_eq!(parse(r#"{"max_weight":20,"max_raise":30}"#).unwrap_err().field, "guard.max_raise");
        assert_eq!(parse(r#"{"max_weight":150,"max_raise":30}"#).unwrap_err().field, "guard.max_weight");
        assert_eq!(parse(r#"{"max_weight":50}"#).unwrap_err().field, "guard");
        assert_eq!(parse(r#"{"max_weight":50,"max_raise":10,"x":1}"#).unwrap_err().field, "guard.x");
    }
}
