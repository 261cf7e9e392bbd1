//! Collecting: from each proxy's cumulative snapshot to one fleet-wide window of deltas per tick.
//!
//! The filter's counters are cumulative since its proxy started. [`Fleet`] keeps the last counters
//! of every (target, instance id, subset) and adds only what is new since then, so counts from
//! many proxies add up before anything is tested (one test on the fleet, not one per proxy).
//!
//! Rules, because counters reset and proxies disappear:
//! * **Same instance, counters grew**: the difference is added.
//! * **Same instance, a counter went backwards**: the subset's record was reset; what it holds
//!   now was counted after our last look, so it is added in full (from a zero baseline). Never a
//!   negative delta, and never a silent zero that would read as "healthy".
//! * **New instance on a target we already read, started after our last snapshot from that
//!   target**: the proxy restarted while we watched; its counters are all new and are added in
//!   full.
//! * **New instance otherwise** (the agent just started, a new target, or a second proxy behind
//!   the same address that was already running): its counters hold history from before we
//!   looked, at weights we cannot know, so the first snapshot is only a baseline.
//! * **A subset name appearing in a known instance**: a baseline too (its key may be older).
//! * **A target that stops answering** is reported as failing with its last error; once it has
//!   given no snapshot for the staleness period it is reported stale and its baselines age out.
//!
//! Cumulative totals per role since the fleet was created are kept for display ([`Fleet::totals`]);
//! counts per rollout step are the rollout's business (see `rollout`).

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::{Role, Snapshot, SubsetCounters, SubsetName};
use serde::Serialize;

use crate::time::millis;

/// Counters per side of the split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ByRole {
    pub stable: SubsetCounters,
    pub canary: SubsetCounters,
}

impl ByRole {
    pub fn get(&self, role: Role) -> &SubsetCounters {
        match role {
            Role::Stable => &self.stable,
            Role::Canary => &self.canary,
        }
    }

    fn get_mut(&mut self, role: Role) -> &mut SubsetCounters {
        match role {
            Role::Stable => &mut self.stable,
            Role::Canary => &mut self.canary,
        }
    }

    /// Adds `other`'s counts (histograms merge).
    pub fn merge(&mut self, other: &ByRole) {
        self.stable.merge(&other.stable);
        self.canary.merge(&other.canary);
    }
}

/// A target that did not give a usable snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyProblem {
    pub target: String,
    /// The last error, in words.
    pub error: String,
    /// When the failures began (ms, the caller's clock).
    pub since_ms: u64,
    /// Failed reads in a row.
    pub failures: u32,
}

/// What happened in the fleet between two ticks: the input of one judgement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Start and end of the window (ms, the caller's clock).
    pub from_ms: u64,
    pub to_ms: u64,
    /// New requests per role, summed over every proxy.
    pub counts: ByRole,
    /// The same counts per target (one entry per proxy that counted anything), so that the
    /// comparison tests can use each proxy's own canary share: while a new weight propagates,
    /// proxies apply different weights, and pooling their counts would mix those shares.
    /// Empty in hand-built windows; then the pooled counts stand for one proxy.
    #[serde(skip)]
    pub by_proxy: Vec<ByRole>,
    /// Targets that gave at least one usable snapshot in the window.
    pub proxies_reporting: usize,
    /// Targets whose last read failed.
    pub failing: Vec<ProxyProblem>,
    /// Targets with no usable snapshot for the staleness period; their baselines were dropped.
    pub stale: Vec<String>,
    /// Counter resets and proxy restarts seen in the window.
    pub resets: u32,
    /// Requests whose label the route table did not follow (the filter's `misrouted`): the
    /// comparison is not stable against canary while this is above zero.
    pub misrouted: u64,
    /// The cluster of the latest misrouted request, for the operator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misrouted_cluster: Option<String>,
    /// The configuration revision each target applies, as its latest snapshot in the staleness
    /// period said (a proxy whose read fails now and then is still known to apply it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, AppliedRevision>,
}

/// The configuration revision one proxy applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppliedRevision {
    /// `None` before the proxy accepted any configuration.
    pub revision: Option<u64>,
    /// Since when it has reported this revision (ms, the caller's clock).
    pub since_ms: u64,
}

impl Window {
    pub fn stable(&self) -> &SubsetCounters {
        &self.counts.stable
    }
    pub fn canary(&self) -> &SubsetCounters {
        &self.counts.canary
    }
}

/// How one snapshot was taken into account (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Differences since the last snapshot of the same instance were added.
    Counted,
    /// The first sighting of an instance with history from before we looked: baseline only.
    Baseline,
    /// A restart or a counter reset: counts since the reset were added from zero.
    Reset,
    /// The snapshot is for another rollout; counted as a failed read.
    Rejected(String),
}

#[derive(Debug, Default)]
struct Proxy {
    instances: BTreeMap<String, Instance>,
    /// Latest `taken_at_unix_ms` of any snapshot from this target (the proxy's clock).
    last_taken_at_unix_ms: Option<u64>,
    last_ok_ms: Option<u64>,
    failing: Option<ProxyProblem>,
    reported_in_window: bool,
    applied: Option<AppliedRevision>,
}

#[derive(Debug)]
struct Instance {
    /// Keyed by subset name, not role: after a promotion a subset may change role while its
    /// counters go on.
    baseline: BTreeMap<SubsetName, SubsetCounters>,
    /// The instance's misrouted-request total at its last snapshot.
    misrouted: u64,
    last_seen_ms: u64,
}

/// The fleet of proxies for one rollout: last counters per (target, instance) and the deltas
/// not yet handed out in a [`Window`].
#[derive(Debug)]
pub struct Fleet {
    rollout: SubsetName,
    staleness_ms: u64,
    proxies: BTreeMap<String, Proxy>,
    pending: ByRole,
    /// `pending` per target.
    pending_by_proxy: BTreeMap<String, ByRole>,
    pending_misrouted: u64,
    misrouted_cluster: Option<String>,
    resets: u32,
    window_from_ms: Option<u64>,
    totals: ByRole,
}

impl Fleet {
    /// A fleet serving `rollout`; a target with no usable snapshot for `staleness` ages out.
    pub fn new(rollout: SubsetName, staleness: Duration) -> Fleet {
        Fleet {
            rollout,
            staleness_ms: millis(staleness),
            proxies: BTreeMap::new(),
            pending: ByRole::default(),
            pending_by_proxy: BTreeMap::new(),
            pending_misrouted: 0,
            misrouted_cluster: None,
            resets: 0,
            window_from_ms: None,
            totals: ByRole::default(),
        }
    }

    /// Takes in one snapshot read from `target` at `now_ms`.
    pub fn observe(&mut self, target: &str, snapshot: &Snapshot, now_ms: u64) -> Observation {
        if let Some(route) = &snapshot.route
            && route.rollout != self.rollout
        {
            let why = format!("serves rollout `{}`, not `{}`", route.rollout, self.rollout);
            self.observe_failure(target, &why, now_ms);
            return Observation::Rejected(why);
        }
        let proxy = self.proxies.entry(target.to_owned()).or_default();
        let id = &snapshot.instance.id;
        let known = proxy.instances.contains_key(id);
        // Both times come from the proxy's own clock, so they compare.
        let restarted_while_watched =
            !known && proxy.last_taken_at_unix_ms.is_some_and(|last| snapshot.instance.started_at_unix_ms >= last);
        let instance = proxy.instances.entry(id.clone()).or_insert_with(|| Instance {
            baseline: BTreeMap::new(),
            misrouted: 0,
            last_seen_ms: now_ms,
        });
        let mut observation = if known { Observation::Counted } else { Observation::Baseline };
        if restarted_while_watched {
            observation = Observation::Reset;
        }
        for s in &snapshot.subsets {
            let delta = match instance.baseline.get(&s.subset) {
                Some(before) => match s.counters.since(before) {
                    Some(d) => Some(d),
                    None => {
                        observation = Observation::Reset;
                        Some(s.counters.clone())
                    }
                },
                None if restarted_while_watched => Some(s.counters.clone()),
                None => None,
            };
            if let Some(d) = delta {
                self.pending.get_mut(s.role).merge(&d);
                self.pending_by_proxy.entry(target.to_owned()).or_default().get_mut(s.role).merge(&d);
            }
            // The next read's baseline, in the previous one's allocation where there is one.
            match instance.baseline.get_mut(&s.subset) {
                Some(b) => b.clone_from(&s.counters),
                None => {
                    instance.baseline.insert(s.subset.clone(), s.counters.clone());
                }
            }
        }
        instance.baseline.retain(|name, _| snapshot.subsets.iter().any(|s| &s.subset == name));
        let misrouted = snapshot.misrouted.as_ref().map_or(0, canary_core::served::Misrouted::total);
        let misrouted_delta = match observation {
            Observation::Baseline => 0,
            _ if restarted_while_watched || misrouted < instance.misrouted => misrouted,
            _ => misrouted - instance.misrouted,
        };
        if misrouted_delta > 0 {
            self.pending_misrouted = self.pending_misrouted.saturating_add(misrouted_delta);
            self.misrouted_cluster = snapshot.misrouted.as_ref().and_then(|m| m.last_cluster.clone());
        }
        instance.misrouted = misrouted;
        if observation == Observation::Reset {
            self.resets = self.resets.saturating_add(1);
        }
        instance.last_seen_ms = now_ms;
        proxy.last_taken_at_unix_ms =
            Some(proxy.last_taken_at_unix_ms.map_or(snapshot.taken_at_unix_ms, |t| t.max(snapshot.taken_at_unix_ms)));
        let revision = snapshot.route.as_ref().map(|r| r.revision);
        if proxy.applied.is_none_or(|a| a.revision != revision) {
            proxy.applied = Some(AppliedRevision { revision, since_ms: now_ms });
        }
        proxy.last_ok_ms = Some(now_ms);
        proxy.failing = None;
        proxy.reported_in_window = true;
        observation
    }

    /// Records that reading `target` failed at `now_ms`.
    pub fn observe_failure(&mut self, target: &str, error: &str, now_ms: u64) {
        let proxy = self.proxies.entry(target.to_owned()).or_default();
        let (since_ms, failures) = proxy.failing.as_ref().map_or((now_ms, 0), |p| (p.since_ms, p.failures));
        proxy.failing = Some(ProxyProblem {
            target: target.to_owned(),
            error: error.to_owned(),
            since_ms,
            failures: failures.saturating_add(1),
        });
    }

    /// Hands out everything counted since the previous call, and ages out silent proxies.
    pub fn take_window(&mut self, now_ms: u64) -> Window {
        let staleness = self.staleness_ms;
        let mut stale = Vec::new();
        let mut failing = Vec::new();
        let mut reporting = 0;
        let mut applied = BTreeMap::new();
        for (target, proxy) in &mut self.proxies {
            proxy.instances.retain(|_, i| now_ms.saturating_sub(i.last_seen_ms) < staleness);
            if proxy.last_ok_ms.is_some_and(|t| now_ms.saturating_sub(t) >= staleness) {
                stale.push(target.clone());
                proxy.applied = None;
            }
            if let Some(a) = proxy.applied {
                applied.insert(target.clone(), a);
            }
            if let Some(p) = &proxy.failing {
                failing.push(p.clone());
            }
            if proxy.reported_in_window {
                reporting += 1;
            }
            proxy.reported_in_window = false;
        }
        let counts = std::mem::take(&mut self.pending);
        let by_proxy = std::mem::take(&mut self.pending_by_proxy).into_values().collect();
        self.totals.merge(&counts);
        let from_ms = self.window_from_ms.unwrap_or(now_ms);
        self.window_from_ms = Some(now_ms);
        Window {
            from_ms,
            to_ms: now_ms,
            counts,
            by_proxy,
            proxies_reporting: reporting,
            failing,
            stale,
            resets: std::mem::take(&mut self.resets),
            misrouted: std::mem::take(&mut self.pending_misrouted),
            misrouted_cluster: self.misrouted_cluster.take(),
            applied,
        }
    }

    /// Everything handed out in windows since the fleet was created.
    pub fn totals(&self) -> &ByRole {
        &self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_core::snapshot::SNAPSHOT_FORMAT;
    use canary_core::{InstanceInfo, Outcome, SubsetSnapshot};

    fn name(s: &str) -> SubsetName {
        SubsetName::try_from(s).unwrap()
    }

    fn counters(ok: u64, failed: u64) -> SubsetCounters {
        let mut c = SubsetCounters::default();
        for _ in 0..ok {
            c.record(Outcome::Success, 1_000);
        }
        for _ in 0..failed {
            c.record(Outcome::Failure, 1_000);
        }
        c
    }

    /// A snapshot from instance `id` started at `started`, taken at `taken`.
    fn snap(id: &str, started: u64, taken: u64, stable: (u64, u64), canary: (u64, u64)) -> Snapshot {
        Snapshot {
            format: SNAPSHOT_FORMAT.to_owned(),
            instance: InstanceInfo { id: id.to_owned(), started_at_unix_ms: started },
            taken_at_unix_ms: taken,
            route: None,
            kill: None,
            misrouted: None,
            dark_launch: None,
            rollouts: Vec::new(),
            subsets: vec![
                SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: counters(stable.0, stable.1) },
                SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: counters(canary.0, canary.1) },
            ],
        }
    }

    fn fleet() -> Fleet {
        Fleet::new(name("demo"), Duration::from_secs(10))
    }

    #[test]
    fn misrouted_requests_are_windowed_like_counters() {
        let mut f = fleet();
        let with = |taken, canary_label| Snapshot {
            misrouted: Some(canary_core::served::Misrouted {
                canary_label,
                stable_label: 0,
                last_cluster: Some("stable".into()),
            }),
            ..snap("i1", 0, taken, (10, 0), (5, 0))
        };
        f.observe("a", &with(1_000, 7), 0);
        assert_eq!(f.take_window(1).misrouted, 0, "history from before we looked is a baseline");
        f.observe("a", &with(2_000, 10), 2);
        let w = f.take_window(3);
        assert_eq!((w.misrouted, w.misrouted_cluster.as_deref()), (3, Some("stable")));
        f.observe("a", &with(3_000, 10), 4);
        assert_eq!(f.take_window(5).misrouted, 0);
        f.observe("a", &snap("i1", 0, 4_000, (10, 0), (5, 0)), 6);
        assert_eq!(f.take_window(7).misrouted, 0, "a snapshot without the record counts nothing");
    }

    #[test]
    fn the_first_snapshot_is_a_baseline_and_the_next_one_a_delta() {
        let mut f = fleet();
        assert_eq!(f.observe("a", &snap("i1", 0, 1_000, (500, 5), (50, 1)), 0), Observation::Baseline);
        let w = f.take_window(0);
        assert_eq!((w.stable().requests, w.canary().requests), (0, 0), "history before we looked is not counted");
        assert_eq!(w.proxies_reporting, 1);
        assert_eq!(f.observe("a", &snap("i1", 0, 2_000, (590, 6), (60, 3)), 1_000), Observation::Counted);
        let w = f.take_window(1_000);
        assert_eq!((w.stable().requests, w.stable().failures), (91, 1));
        assert_eq!((w.canary().requests, w.canary().failures), (12, 2));
        assert_eq!(w.canary().latency.count(), 12, "histograms are deltas too");
        assert_eq!((w.from_ms, w.to_ms), (0, 1_000));
    }

    #[test]
    fn proxies_add_up() {
        let mut f = fleet();
        f.observe("a", &snap("i1", 0, 0, (0, 0), (0, 0)), 0);
        f.observe("b", &snap("i2", 0, 0, (10, 0), (10, 0)), 0);
        f.take_window(0);
        f.observe("a", &snap("i1", 0, 1_000, (100, 1), (10, 1)), 1_000);
        f.observe("b", &snap("i2", 0, 1_000, (110, 0), (30, 4)), 1_000);
        let w = f.take_window(1_000);
        assert_eq!((w.stable().requests, w.stable().failures), (201, 1));
        assert_eq!((w.canary().requests, w.canary().failures), (35, 5));
        assert_eq!(w.proxies_reporting, 2);
        assert_eq!(f.totals().canary.requests, 35);
        // Each proxy's own counts are kept beside the sum, for the comparisons' strata.
        let per: Vec<(u64, u64, u64, u64)> = w
            .by_proxy
            .iter()
            .map(|p| (p.stable.requests, p.stable.failures, p.canary.requests, p.canary.failures))
            .collect();
        assert_eq!(per, vec![(101, 1, 11, 1), (100, 0, 24, 4)], "proxy a, then b; they sum to the window");
        assert!(f.take_window(2_000).by_proxy.is_empty(), "handed out once");
    }

    #[test]
    fn a_restart_is_counted_from_zero_never_as_a_negative_delta() {
        let mut f = fleet();
        f.observe("a", &snap("i1", 0, 1_000, (1_000, 0), (100, 0)), 0);
        f.take_window(0);
        // The proxy restarted at 1_500 and has since served 20 canary requests, 8 failed.
        assert_eq!(f.observe("a", &snap("i2", 1_500, 2_000, (40, 0), (12, 8)), 1_000), Observation::Reset);
        let w = f.take_window(1_000);
        assert_eq!((w.canary().requests, w.canary().failures), (20, 8), "the failures after the restart count");
        assert_eq!(w.resets, 1);
        f.observe("a", &snap("i2", 1_500, 3_000, (50, 0), (12, 9)), 2_000);
        let w = f.take_window(2_000);
        assert_eq!((w.canary().requests, w.canary().failures), (1, 1));
    }

    #[test]
    fn counters_going_backwards_on_the_same_instance_are_a_reset() {
        let mut f = fleet();
        f.observe("a", &snap("i1", 0, 1_000, (1_000, 0), (100, 0)), 0);
        f.take_window(0);
        assert_eq!(f.observe("a", &snap("i1", 0, 2_000, (5, 0), (3, 3)), 1_000), Observation::Reset);
        let w = f.take_window(1_000);
        assert_eq!((w.canary().requests, w.canary().failures), (6, 3), "not read as healthy");
        assert_eq!(w.stable().requests, 5);
    }

    #[test]
    fn an_instance_older_than_our_last_look_is_only_a_baseline() {
        // Two proxies behind one address: the second was running before we first read the target.
        let mut f = fleet();
        f.observe("svc", &snap("i1", 0, 5_000, (0, 0), (0, 0)), 0);
        assert_eq!(f.observe("svc", &snap("i2", 1_000, 5_100, (900, 9), (90, 9)), 100), Observation::Baseline);
        let w = f.take_window(1_000);
        assert_eq!(w.canary().requests, 0);
        // Alternating between them gives each its own deltas.
        f.observe("svc", &snap("i1", 0, 6_000, (10, 0), (1, 0)), 1_100);
        f.observe("svc", &snap("i2", 1_000, 6_100, (905, 9), (92, 9)), 1_200);
        let w = f.take_window(2_000);
        assert_eq!((w.stable().requests, w.canary().requests), (15, 3));
    }

    #[test]
    fn a_silent_proxy_is_reported_and_ages_out() {
        let mut f = fleet();
        f.observe("a", &snap("i1", 0, 500, (100, 0), (10, 0)), 0);
        f.take_window(0);
        f.observe_failure("a", "connection refused", 1_000);
        f.observe_failure("a", "timed out after 500ms", 2_000);
        let w = f.take_window(2_000);
        assert_eq!(w.proxies_reporting, 0);
        assert_eq!(
            w.failing,
            vec![ProxyProblem {
                target: "a".into(),
                error: "timed out after 500ms".into(),
                since_ms: 1_000,
                failures: 2
            }]
        );
        assert!(w.stale.is_empty());
        let w = f.take_window(10_000);
        assert_eq!(w.stale, vec!["a".to_owned()]);
        // It comes back with the same instance: its baseline aged out, so the gap is not lumped
        // into one tick, and it is no longer failing.
        assert_eq!(f.observe("a", &snap("i1", 0, 11_000, (5_000, 0), (500, 0)), 11_000), Observation::Baseline);
        let w = f.take_window(11_000);
        assert_eq!(w.canary().requests, 0);
        assert!(w.failing.is_empty() && w.stale.is_empty());
        assert_eq!(w.proxies_reporting, 1);
    }

    #[test]
    fn a_snapshot_for_another_rollout_is_a_failed_read() {
        let mut f = fleet();
        let mut s = snap("i1", 0, 0, (1, 0), (1, 0));
        s.route = Some(
            canary_core::config::parse_route(
                br#"{"version":1,"rollout":"other","stable":"v1","canary":"v2","canary_weight":10}"#,
            )
            .unwrap(),
        );
        assert!(matches!(f.observe("a", &s, 0), Observation::Rejected(_)));
        let w = f.take_window(0);
        assert_eq!(w.proxies_reporting, 0);
        assert_eq!(w.failing.len(), 1);
    }

    proptest::proptest! {
        /// Whatever sequence of snapshots arrives (restarts, resets, reordering), the deltas
        /// never exceed what the proxies reported in total.
        #[test]
        fn deltas_never_exceed_what_was_reported(steps in proptest::collection::vec((0u8..3, 0u64..50, 0u64..5), 1..30)) {
            let mut f = fleet();
            let mut reported = 0u64;
            let mut now = 0;
            for (inst, canary_ok, canary_failed) in steps {
                now += 100;
                let id = format!("i{inst}");
                f.observe("a", &snap(&id, u64::from(inst) * 1_000, now, (0, 0), (canary_ok, canary_failed)), now);
                reported += canary_ok + canary_failed;
            }
            let w = f.take_window(now);
            proptest::prop_assert!(w.canary().requests <= reported);
            proptest::prop_assert_eq!(w.canary().requests, w.canary().successes + w.canary().failures);
            proptest::prop_assert_eq!(w.canary().latency.count(), w.canary().requests);
        }
    }
}
