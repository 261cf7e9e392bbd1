//! A log-linear latency histogram in microseconds.
//!
//! Values below 128 µs have a bucket each; above, every power of two is cut into 64 equal
//! buckets, so a bucket is at most 1/64 of its lower bound wide and a quantile read at the
//! bucket's midpoint is within 0.8% of the recorded value. Buckets are kept sparse (sorted
//! `(index, count)` pairs) because requests cluster in a few dozen of the ~1,900 buckets, and the
//! stored record copies them on every request (see `crate::counter_record`).

use serde::{Deserialize, Serialize};

/// Values below this have exact buckets.
const LINEAR: u64 = 128;
/// Buckets per power of two above [`LINEAR`], as a shift.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Highest power of two kept; larger values land in the last bucket (2^36 µs ≈ 19 hours).
const MAX_EXP: u32 = 35;
/// Number of buckets.
pub const BUCKETS: u16 = (LINEAR + (MAX_EXP as u64 - 7 + 1) * SUB) as u16;

/// The largest value recorded without clamping, in µs.
pub const MAX_VALUE_US: u64 = (1u64 << (MAX_EXP + 1)) - 1;

/// Bucket index of a latency.
pub fn bucket_of(us: u64) -> u16 {
    let v = us.min(MAX_VALUE_US);
    if v < LINEAR {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros(); // 7..=MAX_EXP
    let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
    // < BUCKETS, which fits in u16.
    #[allow(clippy::cast_possible_truncation)]
    let idx = (LINEAR + u64::from(exp - 7) * SUB + sub) as u16;
    idx
}

/// Inclusive bounds `[low, high]` of a bucket, in µs; `None` for an index out of range.
pub fn bucket_bounds(index: u16) -> Option<(u64, u64)> {
    if index >= BUCKETS {
        return None;
    }
    let i = u64::from(index);
    if i < LINEAR {
        return Some((i, i));
    }
    let exp = (i - LINEAR) / SUB + 7;
    let sub = (i - LINEAR) % SUB;
    let width = 1u64 << (exp - u64::from(SUB_BITS));
    let low = (1u64 << exp) + sub * width;
    Some((low, low + width - 1))
}

/// The value that stands for a bucket: its midpoint.
pub fn bucket_value(index: u16) -> Option<u64> {
    bucket_bounds(index).map(|(lo, hi)| lo + (hi - lo) / 2)
}

/// Sparse counts per bucket, plus the exact sum (for means and Prometheus `_sum`).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawHistogram")]
pub struct LatencyHistogram {
    /// Sum of recorded values in µs (saturating).
    pub sum_us: u64,
    /// `(bucket index, count)`, sorted by index, no zero counts.
    pub buckets: Vec<(u16, u64)>,
}

// By hand for `clone_from`, which reuses the buckets' allocation: the agent keeps each proxy's
// last counters as the baseline of the next read, a few hundred buckets per subset per read.
impl Clone for LatencyHistogram {
    fn clone(&self) -> Self {
        LatencyHistogram { sum_us: self.sum_us, buckets: self.buckets.clone() }
    }

    fn clone_from(&mut self, source: &Self) {
        self.sum_us = source.sum_us;
        self.buckets.clone_from(&source.buckets);
    }
}

/// The serialised form, checked by [`LatencyHistogram::from_parts`] on the way in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistogram {
    sum_us: u64,
    buckets: Vec<(u16, u64)>,
}

impl TryFrom<RawHistogram> for LatencyHistogram {
    type Error = HistogramError;
    fn try_from(raw: RawHistogram) -> Result<Self, HistogramError> {
        LatencyHistogram::from_parts(raw.sum_us, raw.buckets)
    }
}

/// Why stored bucket pairs are not a histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistogramError {
    IndexOutOfRange(u16),
    NotSorted,
    ZeroCount,
}

impl std::fmt::Display for HistogramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::IndexOutOfRange(i) => write!(f, "bucket index {i} is not below {BUCKETS}"),
            Self::NotSorted => write!(f, "bucket indexes are not strictly increasing"),
            Self::ZeroCount => write!(f, "a bucket has a zero count"),
        }
    }
}

impl std::error::Error for HistogramError {}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from stored pairs, checking the invariants.
    pub fn from_parts(sum_us: u64, buckets: Vec<(u16, u64)>) -> Result<Self, HistogramError> {
        let mut prev: Option<u16> = None;
        for &(i, c) in &buckets {
            if i >= BUCKETS {
                return Err(HistogramError::IndexOutOfRange(i));
            }
            if prev.is_some_and(|p| p >= i) {
                return Err(HistogramError::NotSorted);
            }
            if c == 0 {
                return Err(HistogramError::ZeroCount);
            }
            prev = Some(i);
        }
        Ok(LatencyHistogram { sum_us, buckets })
    }

    pub fn record(&mut self, us: u64) {
        self.record_n(us, 1);
    }

    pub fn record_n(&mut self, us: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
        let idx = bucket_of(us);
        match self.buckets.binary_search_by_key(&idx, |&(i, _)| i) {
            Ok(pos) => {
                if let Some(b) = self.buckets.get_mut(pos) {
                    b.1 = b.1.saturating_add(n);
                }
            }
            Err(pos) => self.buckets.insert(pos, (idx, n)),
        }
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        if self.buckets.is_empty() {
            self.buckets.clone_from(&other.buckets);
            return;
        }
        // A few buckets into many (a proxy's delta into the fleet's window, every read of every
        // tick): in place, each found by binary search, instead of a new vector of all of them.
        if other.buckets.len().saturating_mul(8) <= self.buckets.len() {
            for &(i, c) in &other.buckets {
                match self.buckets.binary_search_by_key(&i, |&(j, _)| j) {
                    Ok(pos) => {
                        if let Some(b) = self.buckets.get_mut(pos) {
                            b.1 = b.1.saturating_add(c);
                        }
                    }
                    Err(pos) => self.buckets.insert(pos, (i, c)),
                }
            }
            return;
        }
        let mut out = Vec::with_capacity(self.buckets.len().max(other.buckets.len()));
        let (mut a, mut b) = (self.buckets.iter().peekable(), other.buckets.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, ca)), Some(&&(ib, cb))) => {
                    if ia == ib {
                        out.push((ia, ca.saturating_add(cb)));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        out.push((ia, ca));
                        a.next();
                    } else {
                        out.push((ib, cb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    out.push(x);
                    a.next();
                }
                (None, Some(&&y)) => {
                    out.push(y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.buckets = out;
    }

    /// Counts in `self` that are not in `earlier` (for per-window deltas). `None` when `earlier`
    /// has a count that `self` lacks: the two are not from the same monotonic series.
    pub fn since(&self, earlier: &LatencyHistogram) -> Option<LatencyHistogram> {
        // Grown as needed: between two reads of a running proxy only a few buckets change.
        let mut out = Vec::new();
        let mut e = earlier.buckets.iter().peekable();
        for &(i, c) in &self.buckets {
            let mut before = 0;
            if let Some(&&(ie, ce)) = e.peek() {
                if ie < i {
                    return None; // earlier has a bucket that vanished
                }
                if ie == i {
                    before = ce;
                    e.next();
                }
            }
            let d = c.checked_sub(before)?;
            if d > 0 {
                out.push((i, d));
            }
        }
        if e.next().is_some() {
            return None;
        }
        Some(LatencyHistogram { sum_us: self.sum_us.checked_sub(earlier.sum_us)?, buckets: out })
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |acc, &(_, c)| acc.saturating_add(c))
    }

    /// Count of recorded values strictly above `us` by bucket: buckets whose lower bound exceeds
    /// `us`. Exact when `us` is a bucket's upper bound.
    pub fn count_above(&self, us: u64) -> u64 {
        self.buckets
            .iter()
            .filter(|&&(i, _)| bucket_bounds(i).is_some_and(|(lo, _)| lo > us))
            .fold(0u64, |acc, &(_, c)| acc.saturating_add(c))
    }

    /// The value at quantile `q` (0.0..=1.0) in µs: the midpoint of the bucket holding the
    /// `ceil(q * count)`-th smallest value. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        // total <= u64::MAX; ranks above 2^53 lose precision but stay in range.
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for &(i, c) in &self.buckets {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return bucket_value(i);
            }
        }
        self.buckets.last().and_then(|&(i, _)| bucket_value(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut expect_low = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_bounds(i).unwrap();
            assert_eq!(lo, expect_low, "bucket {i}");
            assert!(hi >= lo);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
            expect_low = hi + 1;
        }
        assert_eq!(expect_low, MAX_VALUE_US + 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_bounds(BUCKETS), None);
    }

    #[test]
    fn since_is_the_inverse_of_merge() {
        let mut a = LatencyHistogram::new();
        for v in [5, 900, 50_000, 50_100] {
            a.record(v);
        }
        let mut later = a.clone();
        let mut add = LatencyHistogram::new();
        add.record(900);
        add.record(7_000_000);
        later.merge(&add);
        assert_eq!(later.since(&a).unwrap(), add);
        assert_eq!(a.since(&later), None, "counts going backwards are not a delta");
    }

    #[test]
    fn from_parts_checks_invariants() {
        assert_eq!(LatencyHistogram::from_parts(0, vec![(3, 1), (3, 1)]), Err(HistogramError::NotSorted));
        assert_eq!(LatencyHistogram::from_parts(0, vec![(BUCKETS, 1)]), Err(HistogramError::IndexOutOfRange(BUCKETS)));
        assert_eq!(LatencyHistogram::from_parts(0, vec![(1, 0)]), Err(HistogramError::ZeroCount));
    }

    #[test]
    fn count_above_uses_bucket_lower_bounds() {
        let mut h = LatencyHistogram::new();
        h.record(100);
        h.record(250_000);
        h.record(600_000);
        assert_eq!(h.count_above(500_000), 1);
        assert_eq!(h.count_above(99), 3);
    }
}
