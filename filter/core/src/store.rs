//! Exact counting across worker threads on top of the proxy's shared key-value store.
//!
//! Envoy gives each VM id one process-wide map with a compare-and-swap token per write. A counter
//! update is read, modify, write-if-unchanged, retried on conflict, so no increment from any
//! worker is lost. Key creation is the one unguarded step (a write to a missing key ignores the
//! token), so keys are created empty in `on_configure`, which Envoy runs on the main thread
//! before any worker serves a request with that configuration.

use crate::config::{RouteConfig, SubsetName};
use crate::counters::{DecodeError, SubsetCounters};
use crate::kill::{KillOrder, KillRecord};
use crate::snapshot::InstanceInfo;

/// Prefix of every key this project stores; the `v1` changes with the stored formats, so a new
/// filter build never misreads an old build's bytes in a VM that survived the upgrade.
pub const KEY_PREFIX: &str = "canary-gate/v1/";
/// The proxy instance (id and start time).
pub const INSTANCE_KEY: &str = "canary-gate/v1/instance";
/// The route configuration most recently applied, for the snapshot endpoint.
pub const ROUTE_KEY: &str = "canary-gate/v1/route";

/// Key of one rollout's kill record.
pub fn kill_key(rollout: &SubsetName) -> String {
    format!("{KEY_PREFIX}kill/{rollout}")
}

/// Reads a rollout's kill record. An unreadable record holds everything: a kill must not be lost
/// to a parse error.
pub fn kill_record(store: &dyn SharedStore, rollout: &SubsetName) -> Result<Option<KillRecord>, ReadError> {
    match store.get(&kill_key(rollout)).map_err(ReadError::Host)? {
        (Some(bytes), _) if bytes.is_empty() => Ok(None),
        (Some(bytes), _) => {
            Ok(Some(serde_json::from_slice(&bytes).unwrap_or(KillRecord { up_to_revision: u64::MAX, at_unix_ms: 0 })))
        }
        (None, _) => Ok(None),
    }
}

/// Whether a kill holds the rollout's configuration at `revision`. A failed read holds it too.
pub fn kill_holds(store: &dyn SharedStore, rollout: &SubsetName, revision: u64) -> bool {
    match kill_record(store, rollout) {
        Ok(Some(k)) => k.holds(revision),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Records a kill order, widening any kill already in force; returns the record now in force.
pub fn record_kill(store: &dyn SharedStore, order: &KillOrder, now_unix_ms: u64) -> Result<KillRecord, UpdateError> {
    let key = kill_key(&order.rollout);
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let (bytes, cas) = store.get(&key).map_err(UpdateError::Host)?;
        let existing = bytes.filter(|b| !b.is_empty()).and_then(|b| serde_json::from_slice::<KillRecord>(&b).ok());
        let next = KillRecord::widened(existing.as_ref(), order, now_unix_ms);
        if existing.as_ref() == Some(&next) {
            return Ok(next);
        }
        let encoded = serde_json::to_vec(&next).map_err(|_| UpdateError::Host(0))?;
        match store.set(&key, &encoded, cas) {
            Ok(()) => return Ok(next),
            Err(SetError::CasMismatch) if attempts < 16 => continue,
            Err(SetError::CasMismatch) => return Err(UpdateError::Contended { attempts }),
            Err(SetError::Host(s)) => return Err(UpdateError::Host(s)),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// An in-memory store with Envoy's semantics: a token per write; a set with a stale token fails.
    #[derive(Default)]
    struct Map(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedStore for Map {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), u32> {
            Ok(self.0.borrow().get(key).map_or((None, None), |(v, cas)| (Some(v.clone()), Some(*cas))))
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            let mut map = self.0.borrow_mut();
            let current = map.get(key).map(|(_, c)| *c);
            if let (Some(want), Some(have)) = (cas, current)
                && want != have
            {
                return Err(SetError::CasMismatch);
            }
            map.insert(key.to_owned(), (value.to_vec(), current.unwrap_or(0) + 1));
            Ok(())
        }
    }

    fn order(rollout: &str, revision: u64) -> KillOrder {
        KillOrder { rollout: SubsetName::try_from(rollout).unwrap(), revision }
    }

    #[test]
    fn a_kill_holds_its_rollout_up_to_its_revision_only() {
        let store = Map::default();
        let pay = SubsetName::try_from("payment").unwrap();
        let other = SubsetName::try_from("search").unwrap();
        assert!(!kill_holds(&store, &pay, 3));
        let k = record_kill(&store, &order("payment", 3), 1_000).unwrap();
        assert_eq!(k, KillRecord { up_to_revision: 3, at_unix_ms: 1_000 });
        assert!(kill_holds(&store, &pay, 3) && kill_holds(&store, &pay, 0));
        assert!(!kill_holds(&store, &pay, 4), "a later configuration supersedes the kill");
        assert!(!kill_holds(&store, &other, 3));
        // An older order does not narrow the kill; a newer one widens it.
        assert_eq!(record_kill(&store, &order("payment", 1), 2_000).unwrap().up_to_revision, 3);
        assert_eq!(record_kill(&store, &order("payment", 7), 3_000).unwrap().up_to_revision, 7);
        assert_eq!(kill_record(&store, &pay).unwrap().unwrap().at_unix_ms, 3_000);
    }

    #[test]
    fn an_unreadable_kill_record_still_holds() {
        let store = Map::default();
        let pay = SubsetName::try_from("payment").unwrap();
        store.set(&kill_key(&pay), b"{garbage", None).unwrap();
        assert!(kill_holds(&store, &pay, u64::MAX));
        // A new order replaces the unreadable record with a readable one.
        assert_eq!(record_kill(&store, &order("payment", 4), 5).unwrap().up_to_revision, 4);
    }
}
