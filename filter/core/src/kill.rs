//! The fast kill: an order that holds a rollout's weighted canary traffic at 0% in one proxy,
//! without waiting for a configuration push.
//!
//! In a mesh the durable weight travels through the control plane (a WasmPlugin update takes
//! seconds and recreates the plugin). gate-agent therefore also sends every proxy a kill order on
//! the loopback snapshot listener (`POST /canary-gate/v1/kill?rollout=NAME&id=ID&revision=N`).
//! The filter stores it in the proxy's shared data, and every routing stream of that rollout
//! whose configuration has the same rollout id (`rollout_id`, by default the canary subset) and
//! a revision of at most `up_to_revision` sends its would-be canary requests to stable instead.
//! The agent then writes weight 0 with a higher revision, so the durable configuration agrees
//! with the kill and supersedes it.
//!
//! A kill is bound to the rollout it was made for: a new rollout (another canary, or a new
//! `rollout_id`) is never held by an old kill, whatever its revision, and the filter drops the
//! stale record when that configuration arrives. The revision of an order is bounded by what
//! the proxy applies: an order above the applied revision is refused, so nothing that reaches
//! the kill endpoint can block future configurations.
//!
//! Dark-launch requests are held too, unless `dark_launch.during_kill` lets them through.

use serde::{Deserialize, Serialize};

use crate::config::SubsetName;

/// Default path of the kill endpoint on the snapshot listener.
pub const DEFAULT_KILL_PATH: &str = "/canary-gate/v1/kill";

/// A kill in force in one proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillRecord {
    /// The rollout id the kill holds (see [`crate::config::RouteConfig::effective_rollout_id`]).
    pub rollout_id: SubsetName,
    /// Configurations of the rollout with this revision or lower send no weighted traffic to the
    /// canary.
    pub up_to_revision: u64,
    /// When the proxy received the order (Unix ms).
    pub at_unix_ms: u64,
}

impl KillRecord {
    /// Whether the kill holds a configuration of rollout id `id` at `revision`.
    pub fn holds(&self, id: &SubsetName, revision: u64) -> bool {
        self.rollout_id == *id && revision <= self.up_to_revision
    }

    /// The record after another order: kills of the same rollout only widen, never narrow; an
    /// order for another rollout id replaces a record of an older one.
    pub fn widened(existing: Option<&KillRecord>, order: &KillOrder, now_unix_ms: u64) -> KillRecord {
        match existing {
            Some(k) if k.rollout_id == order.id && k.up_to_revision >= order.revision => k.clone(),
            _ => KillRecord { rollout_id: order.id.clone(), up_to_revision: order.revision, at_unix_ms: now_unix_ms },
        }
    }
}

/// A kill order as sent by gate-agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillOrder {
    pub rollout: SubsetName,
    /// The rollout id the order is for.
    pub id: SubsetName,
    pub revision: u64,
}

impl KillOrder {
    /// The query string of the kill request (`rollout=NAME&id=ID&revision=N`).
    pub fn to_query(&self) -> String {
        format!("rollout={}&id={}&revision={}", self.rollout, self.id, self.revision)
    }

    /// Reads `rollout=NAME&id=ID&revision=N` (any order, nothing else). Names and ids are DNS
    /// labels, so no percent-decoding is needed.
    pub fn from_query(query: &str) -> Result<KillOrder, String> {
        let (mut rollout, mut id, mut revision) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("query parameter {pair:?} has no value"))?;
            match k {
                "rollout" if rollout.is_none() => {
                    rollout = Some(SubsetName::try_from(v).map_err(|e| format!("rollout: {e}"))?);
                }
                "id" if id.is_none() => {
                    id = Some(SubsetName::try_from(v).map_err(|e| format!("id: {e}"))?);
                }
                "revision" if revision.is_none() => {
                    revision = Some(v.parse::<u64>().map_err(|_| format!("revision: {v:?} is not a whole number"))?);
                }
                _ => return Err(format!("unexpected or repeated query parameter {k:?}")),
            }
        }
        Ok(KillOrder {
            rollout: rollout.ok_or("query parameter `rollout` is missing")?,
            id: id.ok_or("query parameter `id` (the rollout id) is missing")?,
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
        let o = order("rollout=payment&id=v2&revision=12").unwrap();
        assert_eq!(o.revision, 12);
        assert_eq!((o.rollout.as_str(), o.id.as_str()), ("payment", "v2"));
        assert_eq!(order(&o.to_query()).unwrap(), o);
        assert_eq!(order("revision=3&id=x&rollout=a").unwrap().revision, 3);
    }

    #[test]
    fn bad_orders_say_what_is_wrong() {
        assert!(order("rollout=payment&id=v2").unwrap_err().contains("revision"));
        assert!(order("revision=1&id=v2").unwrap_err().contains("rollout"));
        assert!(order("rollout=p&revision=1").unwrap_err().contains("`id`"));
        assert!(order("rollout=p&id=v2&revision=-1").unwrap_err().contains("whole number"));
        assert!(order("rollout=p&id=v2&revision=1&x=2").unwrap_err().contains("\"x\""));
        assert!(order("rollout=p&rollout=q&id=v2&revision=1").unwrap_err().contains("repeated"));
        assert!(order("rollout=a%20b&id=v2&revision=1").unwrap_err().starts_with("rollout:"));
        assert!(order("rollout=a&id=V2&revision=1").unwrap_err().starts_with("id:"));
    }

    #[test]
    fn kills_only_widen_within_one_rollout() {
        let o = |id: &str, r| KillOrder {
            rollout: SubsetName::try_from("p").unwrap(),
            id: SubsetName::try_from(id).unwrap(),
            revision: r,
        };
        let v2 = SubsetName::try_from("v2").unwrap();
        let v3 = SubsetName::try_from("v3").unwrap();
        let k = KillRecord::widened(None, &o("v2", 5), 100);
        assert!(k.holds(&v2, 5) && k.holds(&v2, 1) && !k.holds(&v2, 6));
        assert!(!k.holds(&v3, 1), "a new rollout is never held by an old kill");
        assert_eq!(KillRecord::widened(Some(&k), &o("v2", 3), 200), k);
        assert_eq!(KillRecord::widened(Some(&k), &o("v2", 9), 200).up_to_revision, 9);
        let replaced = KillRecord::widened(Some(&k), &o("v3", 2), 300);
        assert_eq!((replaced.rollout_id.as_str(), replaced.up_to_revision), ("v3", 2));
    }
}
