//! The counter snapshot that the filter serves and gate-agent reads.
//!
//! Counters are monotonic since `instance.started_at_unix_ms`; a reader that sees a new
//! `instance.id` (or counters going down) knows the proxy restarted and must not take the drop
//! as a negative delta, nor a quiet period as a restart.

use serde::{Deserialize, Serialize};

use crate::config::{RouteConfig, SubsetName};
use crate::counters::SubsetCounters;
use crate::kill::KillRecord;
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
