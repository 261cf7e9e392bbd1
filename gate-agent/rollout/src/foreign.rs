//! Telling gate-agent's own writes from everyone else's.
//!
//! The agent is the only writer of a rollout's `canary_weight`, `revision` and `rollout_state`.
//! Every tick it holds each configuration it sees — the one each proxy applies (from its
//! snapshot) and the durable one it reads back (the watched file, or the WasmPlugin from the API)
//! — against what it wrote. A configuration is *foreign* when
//! - its `rollout_state` carries the weight the agent wrote beside it and `canary_weight` differs
//!   (a `kubectl patch` or an editor that changed the weight alone, whatever the revision);
//! - its revision is newer than the agent's durable write and its weight or phase is not the
//!   rollout's (a whole new configuration written by someone else; the rollout's own weight and
//!   phase at a newer revision is the agent's write landing before it has been taken in);
//! - its revision is the agent's durable one but its weight or phase is not what the agent wrote
//!   there (a rewrite that kept the revision).
//!
//! An older revision whose record is consistent is a proxy that has not caught up, never a
//! foreign write. Deciding what to do about one is [`crate::rollout::Rollout::foreign_write`]'s job.

use std::fmt;

use canary_core::{RouteConfig, Weight};

use crate::rollout::Phase;

/// What the agent wrote last, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub revision: u64,
    pub weight: Weight,
    /// `None` when the durable configuration holds no record the agent stands by (before the
    /// first write, or right after a foreign write was taken in).
    pub phase: Option<Phase>,
}

/// How a configuration differs from the agent's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// `canary_weight` is not the weight stamped in its own `rollout_state`.
    WeightEdited { written: Weight },
    /// A newer revision than the agent's with another weight or phase.
    NewerRevision,
    /// The agent's revision with another weight or phase.
    Rewritten,
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Foreign::WeightEdited { written } => {
                write!(f, "canary_weight was edited: rollout_state records that gate-agent wrote {written}")
            }
            Foreign::NewerRevision => f.write_str("a newer revision than gate-agent wrote"),
            Foreign::Rewritten => f.write_str("gate-agent's revision rewritten with another weight or phase"),
        }
    }
}

/// Whether `route` is a write the agent did not make. `written` is what is durable by the
/// agent's hand; `rollout` is the weight and phase the rollout wants now (which a write in flight
/// may already have put on the proxies).
pub fn classify(route: &RouteConfig, written: &Written, rollout: (Weight, Phase)) -> Option<Foreign> {
    let state = route.rollout_state.as_ref();
    if let Some(stamp) = state.and_then(|s| s.weight)
        && stamp != route.canary_weight
    {
        return Some(Foreign::WeightEdited { written: stamp });
    }
    let seen = (route.canary_weight, state.map(|s| s.phase));
    if route.revision > written.revision && seen != (rollout.0, Some(rollout.1)) {
        return Some(Foreign::NewerRevision);
    }
    if route.revision == written.revision && written.phase.is_some() && seen != (written.weight, written.phase) {
        return Some(Foreign::Rewritten);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_core::RolloutRecord;
    use canary_core::config::parse_route;

    fn w(p: f64) -> Weight {
        Weight::from_percent(p).unwrap()
    }

    fn route(revision: u64, weight: f64, phase: Phase, stamp: Option<f64>) -> RouteConfig {
        let mut record = RolloutRecord::new(phase, 0, "", 0);
        record.weight = stamp.map(w);
        let base = parse_route(br#"{"version": 1, "rollout": "demo", "stable": "v1", "canary": "v2"}"#).unwrap();
        RouteConfig { canary_weight: w(weight), revision, rollout_state: Some(record), ..base }
    }

    const AT_10: Written = Written {
        revision: 4,
        weight: match Weight::from_basis_points(1000) {
            Some(w) => w,
            None => Weight::ZERO,
        },
        phase: Some(Phase::Progressing),
    };

    #[test]
    fn the_agents_own_writes_are_not_foreign() {
        let progressing = (w(10.0), Phase::Progressing);
        assert_eq!(classify(&route(4, 10.0, Phase::Progressing, Some(10.0)), &AT_10, progressing), None);
        // A proxy that has not caught up yet.
        assert_eq!(classify(&route(2, 0.0, Phase::Initializing, Some(0.0)), &AT_10, progressing), None);
        // The next step landing before the agent has taken its write in.
        let next = (w(25.0), Phase::Progressing);
        assert_eq!(classify(&route(5, 25.0, Phase::Progressing, Some(25.0)), &AT_10, next), None);
    }

    #[test]
    fn a_hand_edited_weight_is_foreign_at_any_revision() {
        let progressing = (w(10.0), Phase::Progressing);
        for revision in [3, 4, 5] {
            assert_eq!(
                classify(&route(revision, 99.0, Phase::Progressing, Some(10.0)), &AT_10, progressing),
                Some(Foreign::WeightEdited { written: w(10.0) }),
                "revision {revision}"
            );
        }
    }

    #[test]
    fn a_newer_revision_or_a_rewrite_with_another_weight_or_phase_is_foreign() {
        let progressing = (w(10.0), Phase::Progressing);
        assert_eq!(
            classify(&route(5, 99.0, Phase::Progressing, None), &AT_10, progressing),
            Some(Foreign::NewerRevision)
        );
        assert_eq!(
            classify(&route(5, 10.0, Phase::Succeeded, Some(10.0)), &AT_10, progressing),
            Some(Foreign::NewerRevision)
        );
        assert_eq!(classify(&route(4, 50.0, Phase::Progressing, None), &AT_10, progressing), Some(Foreign::Rewritten));
        // Nothing the agent stands by at this revision (a foreign write it has taken in).
        let taken_in = Written { phase: None, ..AT_10 };
        assert_eq!(classify(&route(4, 50.0, Phase::Progressing, None), &taken_in, progressing), None);
    }
}
