//! Exact counting across worker threads on top of the proxy's shared key-value store.
//!
//! Envoy gives each VM id one process-wide map with a compare-and-swap token per write. A counter
//! update is read, modify, write-if-unchanged, retried on conflict, so no increment from any
//! worker is lost. Key creation is the one unguarded step (a write to a missing key ignores the
//! token), so keys are created empty in `on_configure`, which Envoy runs on the main thread
//! before any worker serves a request with that configuration.

use crate::config::{RouteConfig, SubsetName};
use crate::counter_record::{self, CompletedRequest, Found};
use crate::counters::{DecodeError, SubsetCounters};
use crate::kill::{KillOrder, KillRecord};
use crate::served::Misrouted;
use crate::snapshot::InstanceInfo;
use crate::split::Role;

/// Prefix of every key this project stores; the `v1` changes with the stored formats, so a new
/// filter build never misreads an old build's bytes in a VM that survived the upgrade.
pub const KEY_PREFIX: &str = "canary-gate/v1/";
/// The proxy instance (id and start time).
pub const INSTANCE_KEY: &str = "canary-gate/v1/instance";
/// The names of every rollout this proxy has applied a configuration for (a JSON list).
pub const ROLLOUTS_KEY: &str = "canary-gate/v1/rollouts";

/// Key of the route configuration most recently applied for `rollout`, for the snapshot endpoint.
pub fn route_key(rollout: &SubsetName) -> String {
    format!("{KEY_PREFIX}route/{rollout}")
}

/// Key of one rollout's kill record.
pub fn kill_key(rollout: &SubsetName) -> String {
    format!("{KEY_PREFIX}kill/{rollout}")
}

/// Key of one rollout's misrouted-request record (see [`crate::served`]).
pub fn misrouted_key(rollout: &SubsetName) -> String {
    format!("{KEY_PREFIX}misrouted/{rollout}")
}

/// Key of the counters of dark-launch requests to `canary`: kept apart from the canary's, so the
/// judgement sees only requests the split chose.
pub fn dark_launch_key(rollout: &SubsetName, canary: &SubsetName) -> String {
    format!("{KEY_PREFIX}counters/{rollout}/{canary}/dark-launch")
}

/// Reads a JSON record; a missing or empty value is `None`.
fn read_json<T: serde::de::DeserializeOwned>(store: &dyn SharedStore, key: &str) -> Result<Option<T>, ReadError> {
    match store.get(key).map_err(ReadError::Host)? {
        (Some(bytes), _) if !bytes.is_empty() => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| ReadError::Record(format!("{key}: {e}")))
        }
        _ => Ok(None),
    }
}

/// Read, change, write-if-unchanged of a JSON record, retried on conflict. `change` gets the
/// current record (`None` when missing or unreadable) and returns the new one, or `None` to
/// leave the store as it is. Returns what is stored afterwards.
fn update_json<T, E>(
    store: &dyn SharedStore,
    key: &str,
    change: impl Fn(Option<T>) -> Result<Option<T>, E>,
) -> Result<Option<T>, UpdateOrRefuse<E>>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone,
{
    let mut attempts = 0u32;
    loop {
        attempts = attempts.saturating_add(1);
        let (bytes, cas) = store.get(key).map_err(|s| UpdateOrRefuse::Update(UpdateError::Host(s)))?;
        let existing = bytes.filter(|b| !b.is_empty()).and_then(|b| serde_json::from_slice::<T>(&b).ok());
        let Some(next) = change(existing.clone()).map_err(UpdateOrRefuse::Refused)? else {
            return Ok(existing);
        };
        let encoded = serde_json::to_vec(&next).map_err(|_| UpdateOrRefuse::Update(UpdateError::Host(0)))?;
        match store.set(key, &encoded, cas) {
            Ok(()) => return Ok(Some(next)),
            Err(SetError::CasMismatch) if attempts < 16 => continue,
            Err(SetError::CasMismatch) => return Err(UpdateOrRefuse::Update(UpdateError::Contended { attempts })),
            Err(SetError::Host(s)) => return Err(UpdateOrRefuse::Update(UpdateError::Host(s))),
        }
    }
}

/// A JSON update that failed, or that `change` refused with its own reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOrRefuse<E> {
    Update(UpdateError),
    Refused(E),
}

/// Reads a rollout's kill record. An unreadable record is an error, and [`kill_holds`] takes an
/// error as holding: a kill must not be lost to a parse error.
pub fn kill_record(store: &dyn SharedStore, rollout: &SubsetName) -> Result<Option<KillRecord>, ReadError> {
    read_json(store, &kill_key(rollout))
}

/// Whether a kill holds configuration `cfg` (its rollout id and revision). A failed read holds it.
pub fn kill_holds(store: &dyn SharedStore, cfg: &RouteConfig) -> bool {
    match kill_record(store, &cfg.rollout) {
        Ok(Some(k)) => k.holds(cfg.effective_rollout_id(), cfg.revision),
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Records a kill order, widening any kill of the same rollout id in force; returns the record
/// now in force. Refused (with the reason) when this proxy applies no configuration of the
/// order's rollout, applies another rollout id, or applies a lower revision than the order's.
pub fn record_kill(
    store: &dyn SharedStore,
    order: &KillOrder,
    now_unix_ms: u64,
) -> Result<KillRecord, UpdateOrRefuse<String>> {
    let route = published_route(store, &order.rollout)
        .map_err(|e| UpdateOrRefuse::Refused(format!("cannot read the applied configuration: {e}")))?
        .ok_or_else(|| UpdateOrRefuse::Refused(format!("this proxy runs no rollout {}", order.rollout)))?;
    let applied_id = route.effective_rollout_id();
    if *applied_id != order.id {
        return Err(UpdateOrRefuse::Refused(format!(
            "rollout {} here has rollout id {applied_id}, not {}",
            order.rollout, order.id
        )));
    }
    if order.revision > route.revision {
        return Err(UpdateOrRefuse::Refused(format!(
            "revision {} is above revision {} that this proxy applies for rollout {}",
            order.revision, route.revision, order.rollout
        )));
    }
    let stored = update_json(store, &kill_key(&order.rollout), |existing: Option<KillRecord>| {
        let next = KillRecord::widened(existing.as_ref(), order, now_unix_ms);
        Ok::<_, String>((existing.as_ref() != Some(&next)).then_some(next))
    })?;
    stored.ok_or(UpdateOrRefuse::Update(UpdateError::Host(0)))
}

/// Drops a kill record made for another rollout id than `cfg`'s: the new rollout is not held by
/// it anyway, and a reader should not see it as in force. Returns the record it dropped.
pub fn clear_stale_kill(store: &dyn SharedStore, cfg: &RouteConfig) -> Result<Option<KillRecord>, UpdateError> {
    let key = kill_key(&cfg.rollout);
    let (bytes, cas) = store.get(&key).map_err(UpdateError::Host)?;
    let Some(record) = bytes.filter(|b| !b.is_empty()).and_then(|b| serde_json::from_slice::<KillRecord>(&b).ok())
    else {
        return Ok(None);
    };
    if record.rollout_id == *cfg.effective_rollout_id() {
        return Ok(None);
    }
    match store.set(&key, &[], cas) {
        Ok(()) => Ok(Some(record)),
        // Someone changed it meanwhile (a new kill order): leave theirs.
        Err(SetError::CasMismatch) => Ok(None),
        Err(SetError::Host(s)) => Err(UpdateError::Host(s)),
    }
}

/// Counts one request whose label the route table did not follow.
pub fn record_misrouted(
    store: &dyn SharedStore,
    rollout: &SubsetName,
    labelled: Role,
    cluster: Option<&[u8]>,
) -> Result<(), UpdateError> {
    update_json(store, &misrouted_key(rollout), |existing: Option<Misrouted>| {
        let mut m = existing.unwrap_or_default();
        m.record(labelled, cluster);
        Ok::<_, ()>(Some(m))
    })
    .map(|_| ())
    .map_err(|e| match e {
        UpdateOrRefuse::Update(u) => u,
        UpdateOrRefuse::Refused(()) => UpdateError::Host(0),
    })
}

/// A rollout's misrouted-request record (zero when none was recorded).
pub fn misrouted(store: &dyn SharedStore, rollout: &SubsetName) -> Result<Misrouted, ReadError> {
    Ok(read_json(store, &misrouted_key(rollout))?.unwrap_or_default())
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
    /// The stored record was in format 1 (an earlier filter's) and was converted, counts kept.
    pub converted: bool,
}

/// Which stored format an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// Format 2, counted in place; a format-1 record is converted.
    Current,
    /// An empty or format-1 record stays in format 1 ([`counter_record::count_keeping_format_1`]):
    /// the grace after a module swap, while an older filter may still finish requests.
    KeepFormat1,
}

/// How long after a module swap the new module keeps empty and format-1 records in format 1.
/// Longer than the shipped routes' 10 s timeout, so a request the older module was serving at
/// the swap ends inside it (a longer stream may not: docs/filter.md).
pub const FORMAT_1_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

impl RecordFormat {
    /// The format for a request that started at `request_started`, in a VM whose module started
    /// at `module_started`, in a proxy started at `process_started` (host time since the Unix
    /// epoch). A module that started with the process is the first this process runs: no older
    /// one can be finishing requests, so there is no grace.
    pub fn at(
        process_started: std::time::Duration,
        module_started: std::time::Duration,
        request_started: std::time::Duration,
    ) -> RecordFormat {
        let swapped_in = module_started >= process_started.saturating_add(FORMAT_1_GRACE);
        if swapped_in && request_started < module_started.saturating_add(FORMAT_1_GRACE) {
            RecordFormat::KeepFormat1
        } else {
            RecordFormat::Current
        }
    }
}

/// Counts one completed request into the counters under `key`, exactly once, retrying on
/// conflict. The record is counted in its stored bytes ([`counter_record::count`]), without
/// decoding every latency bucket; a format-1 record is converted on the way unless `format` says
/// to keep it.
pub fn update_counters(
    store: &dyn SharedStore,
    key: &str,
    max_attempts: u32,
    request: &CompletedRequest,
    format: RecordFormat,
) -> Result<UpdateReport, UpdateError> {
    let count = |bytes: &mut Vec<u8>| match format {
        RecordFormat::Current => counter_record::count(bytes, request),
        RecordFormat::KeepFormat1 => counter_record::count_keeping_format_1(bytes, request),
    };
    let mut report = UpdateReport::default();
    for attempt in 1..=max_attempts.max(1) {
        report.attempts = attempt;
        let (bytes, cas) = store.get(key).map_err(UpdateError::Host)?;
        let mut bytes = bytes.unwrap_or_default();
        (report.replaced_corrupt, report.converted) = match count(&mut bytes) {
            Ok(found) => (None, found == Found::Converted),
            Err(e) => {
                // Unreadable: start again from zero, as with any record no build can read.
                bytes.clear();
                count(&mut bytes).map_err(|_| UpdateError::Host(0))?;
                (Some(e), false)
            }
        };
        // A present key always has a token; a missing one is written unconditionally (see the
        // module docs for why that cannot lose an update in practice).
        match store.set(key, &bytes, cas) {
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

/// Records the applied route configuration of its rollout for the snapshot endpoint, and adds
/// the rollout to the list of rollouts this proxy runs.
pub fn publish_route(store: &dyn SharedStore, route: &RouteConfig) -> Result<(), u32> {
    let bytes = serde_json::to_vec(route).map_err(|_| 0u32)?;
    match store.set(&route_key(&route.rollout), &bytes, None) {
        Ok(()) | Err(SetError::CasMismatch) => {}
        Err(SetError::Host(s)) => return Err(s),
    }
    update_json(store, ROLLOUTS_KEY, |existing: Option<Vec<SubsetName>>| {
        let mut names = existing.unwrap_or_default();
        if names.contains(&route.rollout) {
            return Ok::<_, ()>(None);
        }
        names.push(route.rollout.clone());
        names.sort();
        Ok(Some(names))
    })
    .map(|_| ())
    .map_err(|e| match e {
        UpdateOrRefuse::Update(UpdateError::Host(s)) => s,
        _ => 0,
    })
}

/// The last published route configuration of `rollout`, if any.
pub fn published_route(store: &dyn SharedStore, rollout: &SubsetName) -> Result<Option<RouteConfig>, ReadError> {
    match store.get(&route_key(rollout)).map_err(ReadError::Host)? {
        (Some(bytes), _) if !bytes.is_empty() => {
            crate::config::parse_route(&bytes).map(Some).map_err(|e| ReadError::Route(e.to_string()))
        }
        _ => Ok(None),
    }
}

/// Every rollout this proxy has applied a configuration for, sorted.
pub fn rollouts(store: &dyn SharedStore) -> Result<Vec<SubsetName>, ReadError> {
    Ok(read_json(store, ROLLOUTS_KEY)?.unwrap_or_default())
}

/// A failed read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Host(u32),
    Decode(DecodeError),
    Route(String),
    Record(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host(s) => write!(f, "shared data call failed with status {s}"),
            Self::Decode(e) => write!(f, "{e}"),
            Self::Route(e) => write!(f, "stored route config: {e}"),
            Self::Record(e) => write!(f, "stored record {e}"),
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

    fn name(s: &str) -> SubsetName {
        SubsetName::try_from(s).unwrap()
    }

    fn order(rollout: &str, id: &str, revision: u64) -> KillOrder {
        KillOrder { rollout: name(rollout), id: name(id), revision }
    }

    fn route(rollout: &str, canary: &str, revision: u64) -> RouteConfig {
        crate::config::parse_route(
            format!(r#"{{"version":1,"rollout":"{rollout}","stable":"v1","canary":"{canary}","canary_weight":10,"revision":{revision}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_kill_holds_its_rollout_up_to_its_revision_only() {
        let store = Map::default();
        publish_route(&store, &route("payment", "v2", 7)).unwrap();
        let at = |rev| route("payment", "v2", rev);
        assert!(!kill_holds(&store, &at(3)));
        let k = record_kill(&store, &order("payment", "v2", 3), 1_000).unwrap();
        assert_eq!(k, KillRecord { rollout_id: name("v2"), up_to_revision: 3, at_unix_ms: 1_000 });
        assert!(kill_holds(&store, &at(3)) && kill_holds(&store, &at(0)));
        assert!(!kill_holds(&store, &at(4)), "a later configuration supersedes the kill");
        assert!(!kill_holds(&store, &route("search", "v2", 3)));
        // An older order does not narrow the kill; a newer one widens it.
        assert_eq!(record_kill(&store, &order("payment", "v2", 1), 2_000).unwrap().up_to_revision, 3);
        assert_eq!(record_kill(&store, &order("payment", "v2", 7), 3_000).unwrap().up_to_revision, 7);
        assert_eq!(kill_record(&store, &name("payment")).unwrap().unwrap().at_unix_ms, 3_000);
    }

    #[test]
    fn a_new_rollout_is_not_held_by_an_old_kill_and_the_stale_record_is_dropped() {
        let store = Map::default();
        publish_route(&store, &route("payment", "v2", 9)).unwrap();
        record_kill(&store, &order("payment", "v2", 9), 1).unwrap();
        // The next release comes with the shipped manifest's revision 1.
        let next = route("payment", "v3", 1);
        assert!(!kill_holds(&store, &next));
        assert_eq!(clear_stale_kill(&store, &next).unwrap().map(|k| k.rollout_id), Some(name("v2")));
        assert_eq!(kill_record(&store, &name("payment")).unwrap(), None);
        assert_eq!(clear_stale_kill(&store, &next).unwrap(), None);
    }

    #[test]
    fn kill_orders_beyond_what_the_proxy_applies_are_refused() {
        let store = Map::default();
        let refused = |o| match record_kill(&store, &o, 1) {
            Err(UpdateOrRefuse::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        };
        assert!(refused(order("payment", "v2", 1)).contains("no rollout payment"));
        publish_route(&store, &route("payment", "v2", 5)).unwrap();
        assert!(refused(order("payment", "v2", u64::MAX)).contains("above revision 5"));
        assert!(refused(order("payment", "v1", 5)).contains("rollout id v2, not v1"));
        assert_eq!(kill_record(&store, &name("payment")).unwrap(), None, "nothing was recorded");
    }

    #[test]
    fn an_unreadable_kill_record_still_holds() {
        let store = Map::default();
        publish_route(&store, &route("payment", "v2", 5)).unwrap();
        store.set(&kill_key(&name("payment")), b"{garbage", None).unwrap();
        assert!(kill_holds(&store, &route("payment", "v2", u64::MAX)));
        // A new order replaces the unreadable record with a readable one.
        assert_eq!(record_kill(&store, &order("payment", "v2", 4), 5).unwrap().up_to_revision, 4);
    }

    #[test]
    fn every_rollout_is_listed_and_keeps_its_own_route() {
        let store = Map::default();
        publish_route(&store, &route("search", "v2", 1)).unwrap();
        publish_route(&store, &route("payment", "v3", 2)).unwrap();
        publish_route(&store, &route("search", "v2", 4)).unwrap();
        assert_eq!(rollouts(&store).unwrap(), vec![name("payment"), name("search")]);
        assert_eq!(published_route(&store, &name("search")).unwrap().unwrap().revision, 4);
        assert_eq!(published_route(&store, &name("payment")).unwrap().unwrap().canary, name("v3"));
        assert_eq!(published_route(&store, &name("other")).unwrap(), None);
    }

    #[test]
    fn misrouted_requests_are_counted_per_rollout() {
        let store = Map::default();
        record_misrouted(&store, &name("payment"), Role::Canary, Some(b"outbound|80|v1|svc")).unwrap();
        record_misrouted(&store, &name("payment"), Role::Canary, None).unwrap();
        let m = misrouted(&store, &name("payment")).unwrap();
        assert_eq!((m.canary_label, m.stable_label), (2, 0));
        assert_eq!(misrouted(&store, &name("search")).unwrap(), Misrouted::default());
    }

    fn ok(latency_us: Option<u64>) -> CompletedRequest {
        CompletedRequest { outcome: crate::Outcome::Success, latency_us, cluster: None }
    }

    #[test]
    fn an_earlier_filters_record_is_carried_on_and_rewritten_in_the_current_format() {
        let store = Map::default();
        let mut before = SubsetCounters::default();
        for us in [100, 2_000, 2_000, 70_000] {
            before.record(crate::Outcome::Success, us);
        }
        store.set("k", &before.encode_v1(), None).unwrap();
        let report = update_counters(&store, "k", 4, &ok(Some(2_000)), RecordFormat::Current).unwrap();
        assert!(report.converted && report.replaced_corrupt.is_none(), "{report:?}");
        before.record(crate::Outcome::Success, 2_000);
        assert_eq!(read_counters(&store, "k").unwrap(), before);
        assert_eq!(store.get("k").unwrap().0.unwrap().first(), Some(&counter_record::FORMAT));
        let report = update_counters(&store, "k", 4, &ok(None), RecordFormat::Current).unwrap();
        assert!(!report.converted, "converted once only");
        assert_eq!(read_counters(&store, "k").unwrap().requests, 6);
    }

    #[test]
    fn format_2_is_written_from_the_start_of_a_process_and_from_the_end_of_a_swaps_grace_on() {
        use std::time::Duration;
        let process = Duration::from_secs(1_000);
        let first = process + Duration::from_secs(2);
        assert_eq!(RecordFormat::at(process, first, first), RecordFormat::Current, "the process's first module");
        let swap = process + Duration::from_secs(3_600);
        let at = |request| RecordFormat::at(process, swap, request);
        assert_eq!(at(swap), RecordFormat::KeepFormat1);
        assert_eq!(at(swap + FORMAT_1_GRACE - Duration::from_millis(1)), RecordFormat::KeepFormat1);
        assert_eq!(at(swap + FORMAT_1_GRACE), RecordFormat::Current);
        assert_eq!(RecordFormat::at(Duration::MAX, Duration::MAX, Duration::MAX), RecordFormat::Current, "no overflow");
    }

    #[test]
    fn in_the_grace_after_a_swap_a_format_1_record_stays_format_1_and_a_format_2_one_stays_format_2() {
        let store = Map::default();
        let first = |s: &Map| s.get("k").unwrap().0.unwrap().first().copied();
        update_counters(&store, "k", 4, &ok(Some(10)), RecordFormat::KeepFormat1).unwrap();
        assert_eq!(first(&store), Some(counter_record::FORMAT_V1));
        update_counters(&store, "k", 4, &ok(None), RecordFormat::KeepFormat1).unwrap();
        assert_eq!(first(&store), Some(counter_record::FORMAT_V1));
        let report = update_counters(&store, "k", 4, &ok(Some(10)), RecordFormat::Current).unwrap();
        assert!(report.converted);
        update_counters(&store, "k", 4, &ok(Some(10)), RecordFormat::KeepFormat1).unwrap();
        assert_eq!(first(&store), Some(counter_record::FORMAT));
        let c = read_counters(&store, "k").unwrap();
        assert_eq!((c.requests, c.latency.count()), (4, 3));
    }

    #[test]
    fn an_unreadable_record_starts_again_from_zero_and_says_why() {
        let store = Map::default();
        store.set("k", &[counter_record::FORMAT, 0, 0], None).unwrap();
        let report = update_counters(&store, "k", 4, &ok(Some(5)), RecordFormat::Current).unwrap();
        assert_eq!(report.replaced_corrupt, Some(DecodeError::Truncated));
        assert_eq!(read_counters(&store, "k").unwrap().requests, 1);
        // A later format (a newer filter's, after a downgrade) cannot be read either.
        store.set("k", &[3, 0], None).unwrap();
        let report = update_counters(&store, "k", 4, &ok(Some(5)), RecordFormat::Current).unwrap();
        assert_eq!(report.replaced_corrupt, Some(DecodeError::UnknownFormat(3)));
        assert_eq!(read_counters(&store, "k").unwrap().requests, 1);
    }

    /// A store whose first write loses a race against another worker, which
    /// counts its own request in between.
    struct Racing {
        map: Map,
        raced: RefCell<bool>,
    }

    impl SharedStore for Racing {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), u32> {
            self.map.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SetError> {
            if !self.raced.replace(true) {
                update_counters(&self.map, key, 1, &ok(Some(7)), RecordFormat::Current)
                    .map_err(|_| SetError::Host(1))?;
            }
            self.map.set(key, value, cas)
        }
    }

    #[test]
    fn a_lost_race_is_retried_and_both_requests_are_counted() {
        let store = Racing { map: Map::default(), raced: RefCell::new(false) };
        ensure_key(&store.map, "k", &[]).unwrap();
        let report = update_counters(&store, "k", 4, &ok(Some(9_000)), RecordFormat::Current).unwrap();
        assert_eq!(report.attempts, 2);
        let c = read_counters(&store, "k").unwrap();
        assert_eq!((c.requests, c.latency.count(), c.latency.buckets.len()), (2, 2, 2));
    }
}
