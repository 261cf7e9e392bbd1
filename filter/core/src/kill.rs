//! The fast kill: an order that holds a rollout's weighted canary traffic at 0% in one proxy,
//! without waiting for a configuration push.
//!
//! In a mesh the durable weight travels through the control plane (a WasmPlugin update takes
//! seconds and recreates the plugin). gate-agent therefore also sends every proxy a kill order on
//! the loopback snapshot listener (`POST /canary-gate/v1/kill?rollout=NAME&revision=N`). The
//! filter stores it in the proxy's shared data, and every routing stream of that rollout whose
//! configuration revision is at most `up_to_revision` sends its would-be canary requests to
//! stable instead. The agent then writes weight 0 with a higher revision, so the durable
//! configuration agrees with the kill and supersedes it; a later, deliberate configuration (a
//! new rollout, a higher revision) is not held back by an old kill.
//!
//! The kill holds only the weighted and sticky split. Dark-launch requests still reach the
//! canary, exactly as they do in the durable configuration at 0%.

use serde::{Deserialize, Serialize};

use crate::config::SubsetName;

/// Default path of the kill endpoint on the snapshot listener.
pub const DEFAULT_KILL_PATH: &str = "/canary-gate/v1/kill";

/// A kill in force in one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRecord {
    /// Configurations of the rollout with this revision or lower send no weighted traffic to the
    /// canary.
    pub up_to_revision: u64,
    /// When the proxy received the order (Unix ms).
    pub at_unix_ms: u64,
}

impl KillRecord {
    /// Whether the kill holds a configuration with `revision`.
    pub fn holds(&self, revision: u64) -> bool {
        revision <= self.up_to_revision
    }

    /// The record after another order: kills only widen, never narrow.
    pub fn widened(existing: Option<&KillRecord>, order: &KillOrder, now_unix_ms: u64) -> KillRecord {
        match existing {
            Some(k) if k.up_to_revision >= order.revision => k.clone(),
            _ => KillRecord { up_to_revision: order.revision, at_unix_ms: now_unix_ms },
        }
    }
}

/// A kill order as sent by gate-agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillOrder {
    pub rollout: SubsetName,
    pub revision: u64,
}

impl KillOrder {
    /// The query string of the kill request (`rollout=NAME&revision=N`).
    pub fn to_query(&self) -> String {
        format!("rollout={}&revision={}", self.rollout, self.revision)
    }

    /// Reads `rollout=NAME&revision=N` (any order, nothing else). Rollout names are restricted to
    /// token characters, so no percent-decoding is needed.
    pub fn from_query(query: &str) -> Result<KillOrder, String> {
        let (mut rollout, mut revision) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("query parameter {pair:?} has no value"))?;
            match k {
                "rollout" if rollout.is_none() => {
                    rollout = Some(SubsetName::try_from(v).map_err(|e| format!("rollout: {e}"))?);
                }
                "revision" if revision.is_none() => {
                    revision = Some(v.parse::<u64>().map_err(|_| format!("revision: {v:?} is not a whole number"))?);
                }
                _ => return Err(format!("unexpected or repeated query parameter {k:?}")),
            }
        }
        Ok(KillOrder {
            rollout: rollout.ok_or("query parameter `rollout` is missing")?,
            revision: revision.ok_or("query parameter `revision` is missing")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(q: &str) -> Result<KillOrder, String> {
        KillOrder::from_query(q)
    }

    #[test]
    fn orders_round_trip_through_the_query() {
        let o = order("rollout=payment&revision=12").unwrap();
        assert_eq!(o.revision, 12);
        assert_eq!(o.rollout.as_str(), "payment");
        assert_eq!(order(&o.to_query()).unwrap(), o);
        assert_eq!(order("revision=3&rollout=a").unwrap().revision, 3);
    }

    #[test]
    fn bad_orders_say_what_is_wrong() {
        assert!(order("rollout=payment").unwrap_err().contains("revision"));
        assert!(order("revision=1").unwrap_err().contains("rollout"));
        assert!(order("rollout=p&revision=-1").unwrap_err().contains("whole number"));
        assert!(order("rollout=p&revision=1&x=2").unwrap_err().contains("\"x\""));
        assert!(order("rollout=p&rollout=q&revision=1").unwrap_err().contains("repeated"));
        assert!(order("rollout=a%20b&revision=1").unwrap_err().starts_with("rollout:"));
    }

    #[test]
    fn kills_only_widen() {
        let o = |r| KillOrder { rollout: order("rollout=p&revision=0").unwrap().rollout, revision: r };
        let k = KillRecord::widened(None, &o(5), 100);
        assert!(k.holds(5) && k.holds(1) && !k.holds(6));
        assert_eq!(KillRecord::widened(Some(&k), &o(3), 200), k);
        assert_eq!(KillRecord::widened(Some(&k), &o(9), 200).up_to_revision, 9);
    }
}
