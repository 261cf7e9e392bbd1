//! Per-key clusters of sticky requests, so the agent can analyse by the unit of assignment.
//!
//! With a sticky key (a header, a cookie or the affinity cookie) a user is pinned to one subset:
//! the subset is assigned per key, not per request. One key whose requests always fail (its own
//! input is at fault) then puts all its failures on one side, and a test that treats requests as
//! exchangeable reads that as a regression. The counter record therefore also counts keyed
//! requests and failures in [`STICKY_CLUSTERS`] clusters of the key's hash, and the agent's
//! comparison caps what one cluster can contribute (`canary_rollout::stats`).
//!
//! The cluster comes from the **low** bits of the same 64-bit hash whose **high** 32 bits place
//! the key on the canary or the stable ([`crate::hash::Bucket::from_random`]). The hash ends
//! with the murmur3 finaliser, so the two are independent for practical purposes, and:
//! * a key always lands in the same cluster, on every proxy and worker and at any weight, so its
//!   evidence stays in one cluster (what the cap needs);
//! * every cluster holds canary keys and stable keys in the proportion of the weight, so each
//!   cluster is a small canary-versus-stable comparison of its own. A cluster taken from the high
//!   bits (the bucket that decides the subset) would hold only canary keys or only stable keys at
//!   most weights, and compare nothing;
//! * no second hash is computed on the request path.
//!
//! Requests without a key (placed by a random draw) are not clustered: they are exchangeable
//! per request, and the agent takes them as they are.

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;

/// Clusters of the sticky key's hash. Small and fixed: the record carries two counters per
/// cluster on every request, and the agent needs several clusters to show harm (see
/// `canary_rollout::stats`). Changing it changes the snapshot's array lengths, which an agent
/// built with another value refuses.
pub const STICKY_CLUSTERS: usize = 16;

/// One of [`STICKY_CLUSTERS`] clusters of a sticky key's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cluster(u8);

impl Cluster {
    /// The cluster of a 64-bit sticky hash: its low bits.
    pub const fn of_hash(hash: u64) -> Cluster {
        // STICKY_CLUSTERS is a power of two below 256, so the mask keeps a valid index.
        #[allow(clippy::cast_possible_truncation)]
        Cluster((hash & (STICKY_CLUSTERS as u64 - 1)) as u8)
    }

    /// A cluster from an index; `None` at or above [`STICKY_CLUSTERS`].
    pub fn new(index: usize) -> Option<Cluster> {
        (index < STICKY_CLUSTERS).then(|| Cluster::of_hash(index as u64))
    }

    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Keyed requests and failures per cluster, since the proxy started. All zero when no request
/// had a sticky key (then it is left out of the snapshot and of the stored record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCounts {
    pub requests: [u64; STICKY_CLUSTERS],
    pub failures: [u64; STICKY_CLUSTERS],
}

impl StickyCounts {
    pub fn is_empty(&self) -> bool {
        self.requests.iter().chain(&self.failures).all(|n| *n == 0)
    }

    /// Counts one keyed request.
    pub fn record(&mut self, cluster: Cluster, outcome: Outcome) {
        if let Some(n) = self.requests.get_mut(cluster.index()) {
            *n = n.saturating_add(1);
        }
        if outcome == Outcome::Failure
            && let Some(n) = self.failures.get_mut(cluster.index())
        {
            *n = n.saturating_add(1);
        }
    }

    /// Adds another proxy's counts.
    pub fn merge(&mut self, other: &StickyCounts) {
        for (a, b) in self.requests.iter_mut().zip(other.requests) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.failures.iter_mut().zip(other.failures) {
            *a = a.saturating_add(b);
        }
    }

    /// What happened between `earlier` and `self`; `None` if any counter went backwards.
    pub fn since(&self, earlier: &StickyCounts) -> Option<StickyCounts> {
        let mut out = StickyCounts::default();
        for (o, (now, then)) in out.requests.iter_mut().zip(self.requests.iter().zip(earlier.requests)) {
            *o = now.checked_sub(then)?;
        }
        for (o, (now, then)) in out.failures.iter_mut().zip(self.failures.iter().zip(earlier.failures)) {
            *o = now.checked_sub(then)?;
        }
        Some(out)
    }

    /// Keyed requests over all clusters.
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// Keyed failures over all clusters.
    pub fn total_failures(&self) -> u64 {
        self.failures.iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    /// (requests, failures) of each cluster, in cluster order.
    pub fn clusters(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.requests.iter().copied().zip(self.failures.iter().copied())
    }

    /// The invariants against the record's totals: no cluster fails more than it served, and the
    /// clusters hold no more than the record (unkeyed requests are the rest).
    pub fn check(&self, requests: u64, failures: u64) -> Result<(), &'static str> {
        if self.clusters().any(|(n, k)| k > n) {
            return Err("sticky cluster failures > its requests");
        }
        let total = self.requests.iter().try_fold(0u64, |a, n| a.checked_add(*n));
        if total.is_none_or(|t| t > requests) {
            return Err("sticky cluster requests > requests");
        }
        let total = self.failures.iter().try_fold(0u64, |a, n| a.checked_add(*n));
        if total.is_none_or(|t| t > failures) {
            return Err("sticky cluster failures > failures");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_is_the_low_bits_of_the_hash() {
        assert_eq!(Cluster::of_hash(0).index(), 0);
        assert_eq!(Cluster::of_hash(0xffff_ffff_0000_0013).index(), 3);
        assert_eq!(Cluster::of_hash(u64::MAX).index(), STICKY_CLUSTERS - 1);
        assert_eq!(Cluster::new(STICKY_CLUSTERS), None);
        assert_eq!(Cluster::new(5).map(Cluster::index), Some(5));
    }

    #[test]
    fn counts_merge_subtract_and_check() {
        let mut a = StickyCounts::default();
        assert!(a.is_empty());
        a.record(Cluster::of_hash(2), Outcome::Failure);
        a.record(Cluster::of_hash(2), Outcome::Success);
        a.record(Cluster::of_hash(7), Outcome::Success);
        assert_eq!((a.requests[2], a.failures[2], a.requests[7]), (2, 1, 1));
        assert_eq!((a.total_requests(), a.total_failures()), (3, 1));
        let mut b = a;
        b.merge(&a);
        assert_eq!(b.since(&a), Some(a));
        assert_eq!(a.since(&b), None, "going backwards is a reset");
        assert_eq!(a.check(3, 1), Ok(()));
        assert!(a.check(2, 1).is_err() && a.check(3, 0).is_err());
        let mut bad = StickyCounts::default();
        bad.failures[0] = 1;
        assert!(bad.check(5, 5).is_err());
    }
}
