//! The rollout's durable state, written by gate-agent next to the weight it applies.
//!
//! At 0% the weight alone cannot tell "not started yet" from "rolled back", nor can it carry the
//! failed checks counted so far. gate-agent therefore writes a [`RolloutRecord`] into the same
//! configuration document as the weight (`rollout_state`), in the same atomic write, so a
//! restarted agent resumes exactly where the last one stopped. The filter validates the record
//! and otherwise ignores it: it never changes how a request is routed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::weight::Weight;

/// The longest `reason` kept in a record; longer reasons are cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 1024;

/// Where a rollout is. Serialised in snake case (`rolled_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Initializing,
    Progressing,
    Paused,
    Promoting,
    Succeeded,
    RolledBack,
}

impl RolloutPhase {
    pub const ALL: [RolloutPhase; 6] = [
        RolloutPhase::Initializing,
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Promoting,
        RolloutPhase::Succeeded,
        RolloutPhase::RolledBack,
    ];

    /// Nothing more will be decided.
    pub fn is_final(self) -> bool {
        matches!(self, RolloutPhase::Succeeded | RolloutPhase::RolledBack)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Initializing => "initializing",
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Promoting => "promoting",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::RolledBack => "rolled_back",
        }
    }
}

impl fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// gate-agent's durable record of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRecord {
    pub phase: RolloutPhase,
    /// Failed checks counted toward the spec's `threshold` so far.
    #[serde(default)]
    pub failed_checks: u32,
    /// Why the rollout is in this phase, for people reading the file.
    #[serde(default)]
    pub reason: String,
    /// When the record was written (Unix ms, the writer's clock).
    #[serde(default)]
    pub at_unix_ms: u64,
    /// The `canary_weight` gate-agent wrote beside this record. A configuration whose weight
    /// differs was edited by someone else (a `kubectl patch` of the weight alone keeps the
    /// record): gate-agent treats it as a foreign write, also when it finds it at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Weight>,
}

impl RolloutRecord {
    /// A record with `reason` cut to [`MAX_REASON_BYTES`].
    pub fn new(phase: RolloutPhase, failed_checks: u32, reason: &str, at_unix_ms: u64) -> Self {
        RolloutRecord {
            phase,
            failed_checks,
            reason: truncate(reason, MAX_REASON_BYTES).to_owned(),
            at_unix_ms,
            weight: None,
        }
    }

    /// The record stamped with the weight written beside it.
    pub fn written_with(self, weight: Weight) -> Self {
        RolloutRecord { weight: Some(weight), ..self }
    }

    /// Whether `canary_weight` differs from the weight this record was written with (a record
    /// without a stamp, written by an older agent or by hand, proves nothing).
    pub fn weight_edited(&self, canary_weight: Weight) -> bool {
        self.weight.is_some_and(|w| w != canary_weight)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_in_snake_case() {
        for p in RolloutPhase::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<RolloutPhase>(&json).unwrap(), p);
        }
    }

    #[test]
    fn the_weight_stamp_round_trips_and_tells_a_hand_edit() {
        let record = RolloutRecord::new(RolloutPhase::Progressing, 0, "step 1", 7).written_with(Weight::FULL);
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"weight\":100"), "{json}");
        assert_eq!(serde_json::from_str::<RolloutRecord>(&json).unwrap(), record);
        assert!(record.weight_edited(Weight::ZERO) && !record.weight_edited(Weight::FULL));
        // Records written before the stamp existed still parse, and prove nothing.
        let old: RolloutRecord = serde_json::from_str(r#"{"phase":"progressing"}"#).unwrap();
        assert!(old.weight.is_none() && !old.weight_edited(Weight::FULL));
        assert!(!serde_json::to_string(&old).unwrap().contains("weight"));
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let r = RolloutRecord::new(RolloutPhase::RolledBack, 2, &long, 7);
        assert!(r.reason.len() <= MAX_REASON_BYTES);
        assert!(r.reason.len() >= MAX_REASON_BYTES - 1);
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
