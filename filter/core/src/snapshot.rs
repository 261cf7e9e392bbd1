//! The counter snapshot that the filter serves and gate-agent reads.
//!
//! Counters are monotonic since `instance.started_at_unix_ms`; a reader that sees a new
//! `instance.id` (or counters going down) knows the proxy restarted and must not take the drop
//! as a negative delta, nor a quiet period as a restart.

use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, SubsetName};
use crate::counters::SubsetCounters;
use crate::kill::KillRecord;
use crate::served::Misrouted;
use crate::split::Role;

/// Format tag of [`Snapshot`]; bumped on any incompatible change.
pub const SNAPSHOT_FORMAT: &str = "canary-gate.snapshot.v1";

/// Identifies one proxy process (one Envoy, whatever its worker count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// Random at start; changes on every restart.
    pub id: String,
    pub started_at_unix_ms: u64,
}

/// One subset's counters in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsetSnapshot {
    pub subset: SubsetName,
    pub role: Role,
    pub counters: SubsetCounters,
}

/// Everything a reader needs from one proxy at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Always [`SNAPSHOT_FORMAT`].
    pub format: String,
    pub instance: InstanceInfo,
    pub taken_at_unix_ms: u64,
    /// The route configuration the proxy is applying; `None` before any was accepted.
    pub route: Option<RouteConfig>,
    /// Stable first, then canary, for the route's rollout.
    pub subsets: Vec<SubsetSnapshot>,
    /// The kill order in force for the route's rollout, if any (see [`crate::kill`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillRecord>,
    /// Requests whose label the route table did not follow (see [`crate::served`]); absent
    /// when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misrouted: Option<Misrouted>,
    /// Dark-launch requests to the canary, counted apart from the split's (not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_launch: Option<SubsetCounters>,
    /// Every rollout this proxy runs; the snapshot describes one of them (`?rollout=NAME`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<SubsetName>,
}

/// Why bytes are not a snapshot this build can read.
#[derive(Debug)]
pub enum SnapshotError {
    Json(serde_json::Error),
    Format(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json(e) => write!(f, "snapshot is not valid: {e}"),
            Self::Format(got) => write!(f, "snapshot format {got:?} is not {SNAPSHOT_FORMAT:?}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// Reads the snapshot endpoint's query: empty, or `rollout=NAME`.
pub fn snapshot_query(query: &str) -> Result<Option<SubsetName>, String> {
    if query.is_empty() {
        return Ok(None);
    }
    match query.split_once('=') {
        Some(("rollout", v)) => SubsetName::try_from(v).map(Some).map_err(|e| format!("rollout: {e}")),
        _ => Err(format!("unexpected query {query:?}; the only parameter is `rollout`")),
    }
}

impl Snapshot {
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let s: Snapshot = serde_json::from_slice(bytes).map_err(SnapshotError::Json)?;
        if s.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Format(s.format));
        }
        Ok(s)
    }

    pub fn subset(&self, role: Role) -> Option<&SubsetSnapshot> {
        self.subsets.iter().find(|s| s.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_with_sticky_clusters_reads_and_round_trips() {
        // The fuzz seed with keyed counters (36 of 40 stable requests keyed, 1 of 5 canary).
        let bytes = include_bytes!("../../../fuzz/corpus/snapshot/sticky-clusters.json");
        let s = Snapshot::from_json(bytes).unwrap();
        let stable = &s.subset(Role::Stable).unwrap().counters;
        assert_eq!((stable.requests, stable.sticky.total_requests()), (40, 36));
        let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn the_snapshot_query_names_one_rollout() {
        assert_eq!(snapshot_query(""), Ok(None));
        assert_eq!(snapshot_query("rollout=payment").unwrap().unwrap().as_str(), "payment");
        assert!(snapshot_query("rollout=Pay ment").unwrap_err().starts_with("rollout:"));
        assert!(snapshot_query("x=1").unwrap_err().contains("`rollout`"));
        assert!(snapshot_query("rollout=a&rollout=b").is_err());
    }
}
