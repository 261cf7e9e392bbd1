//! Exact counting across worker threads on top of the proxy's shared key-value store.
//!
//! Envoy gives each VM id one process-wide map with a compare-and-swap token per write. A counter
//! update is read, modify, write-if-unchanged, retried on conflict, so no increment from any
//! worker is lost. Key creation is the one unguarded step (a write to a missing key ignores the
//! token), so keys are created empty in `on_configure`, which Envoy runs on the main thread
//! before any worker serves a request with that configuration.

use crate::config::{RouteConfig, SubsetName};
use crate::counters::{DecodeError, SubsetCounters};
use crate::snapshot::InstanceInfo;

/// Prefix of every key this project stores; the `v1` changes with the stored formats, so a new
/// filter build never misreads an old build's bytes in a VM that survived the upgrade.
pub const KEY_PREFIX: &str = "canary-gate/v1/";
/// The proxy instance (id and start time).
pub const INSTANCE_KEY: &str = "canary-gate/v1/instance";
/// The route configuration most recently applied, for the snapshot endpoint.
pub const ROUTE_KEY: &str = "canary-gate/v1/route";

/// Key of one subset's counters in one rollout.
pub fn counters_key(rollout: &SubsetName, subset: &SubsetName) -> String {
    format!("{KEY_PREFIX}counters/{rollout}/{subset}")
}

/// A failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Another writer changed the value since it was read.
    CasMismatch,
    /// The host refused for another reason (its status code).
    Host(u32),
}

/// The host's shared data, as the logic needs it. The filter's host module implements it with
/// proxy-wasm calls; tests implement it with a map.
pub trait SharedStore {
    /// The value and its compare-and-swap token; `(None, None)` for a missing key.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), u32>;
    /// Writes `value` if the key's token still equals `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError>;
}

/// Why a counter update did not land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// Every attempt lost a race; the update was dropped.
    Contended {
        attempts: u32,
    },
    Host(u32),
}

/// How an update went, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateReport {
    /// Attempts it took (1 when uncontended).
    pub attempts: u32,
    /// The stored record was unreadable and was replaced by a fresh one.
    pub replaced_corrupt: Option<DecodeError>,
}

/// Applies `change` to the counters under `key`, exactly once, retrying on conflict.
pub fn update_counters(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    change: impl Fn(&mut SubsetCounters),
) -> Result<UpdateReport, UpdateError> {
    let mut report = UpdateReport::default();
    for attempt in 1..=max_attempts.max(1) {
        report.attempts = attempt;
        let (bytes, cas) = store.get(key).map_err(UpdateError::Host)?;
        let mut counters = match SubsetCounters::decode(bytes.as_deref().unwrap_or_default()) {
            Ok(c) => c,
            Err(e) => {
                report.replaced_corrupt = Some(e);
                SubsetCounters::default()
            }
        };
        change(&mut counters);
        // A present key always has a token; a missing one is written unconditionally (see the
        // module docs for why that cannot lose an update in practice).
        match store.set(key, &counters.encode(), cas) {
            Ok(()) => return Ok(report),
            Err(SetError::CasMismatch) => continue,
            Err(SetError::Host(s)) => return Err(UpdateError::Host(s)),
        }
    }
    Err(UpdateError::Contended { attempts: report.attempts })
}

/// Creates a key with an empty value unless it exists. Returns true if it created it.
pub fn ensure_key(store: &dyn SharedStore, key: &str, initial: &[u8]) -> Result<bool, u32> {
    match store.get(key)? {
        (Some(_), _) => Ok(false),
        (None, _) => match store.set(key, initial, None) {
            Ok(()) => Ok(true),
            Err(SetError::CasMismatch) => Ok(false),
            Err(SetError::Host(s)) => Err(s),
        },
    }
}

/// Reads one subset's counters; a missing key is zero.
pub fn read_counters(store: &dyn SharedStore, key: &str) -> Result<SubsetCounters, ReadError> {
    let (bytes, _) = store.get(key).map_err(ReadError::Host)?;
    SubsetCounters::decode(bytes.as_deref().unwrap_or_default()).map_err(ReadError::Decode)
}

/// Reads the instance record, creating it (with the given candidate) if it is missing. Whoever
/// writes last wins a start-up race, and every reader goes through the store, so all workers
/// agree on the id from then on.
pub fn instance(store: &dyn SharedStore, candidate: &InstanceInfo) -> Result<InstanceInfo, ReadError> {
    if let (Some(bytes), _) = store.get(INSTANCE_KEY).map_err(ReadError::Host)?
        && let Ok(info) = serde_json::from_slice::<InstanceInfo>(&bytes)
    {
        return Ok(info);
    }
    let bytes = serde_json::to_vec(candidate).map_err(|_| ReadError::Host(0))?;
    match store.set(INSTANCE_KEY, &bytes, None) {
        Ok(()) | Err(SetError::CasMismatch) => Ok(candidate.clone()),
        Err(SetError::Host(s)) => Err(ReadError::Host(s)),
    }
}

/// Records the applied route configuration for the snapshot endpoint.
pub fn publish_route(store: &dyn SharedStore, route: &RouteConfig) -> Result<(), u32> {
    let bytes = serde_json::to_vec(route).map_err(|_| 0u32)?;
    match store.set(ROUTE_KEY, &bytes, None) {
        Ok(()) => Ok(()),
        Err(SetError::CasMismatch) => Ok(()),
        Err(SetError::Host(s)) => Err(s),
    }
}

/// The last published route configuration, if any.
pub fn published_route(store: &dyn SharedStore) -> Result<Option<RouteConfig>, ReadError> {
    match store.get(ROUTE_KEY).map_err(ReadError::Host)? {
        (Some(bytes), _) => crate::config::parse_route(&bytes).map(Some).map_err(|e| ReadError::Route(e.to_string())),
        (None, _) => Ok(None),
    }
}

/// A failed read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Host(u32),
    Decode(DecodeError),
    Route(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host(s) => write!(f, "shared data call failed with status {s}"),
            Self::Decode(e) => write!(f, "{e}"),
            Self::Route(e) => write!(f, "stored route config: {e}"),
        }
    }
}

impl std::error::Error for ReadError {}
