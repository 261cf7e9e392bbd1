//! Per-subset counters as stored in the proxy's VM-wide shared data.
//!
//! Every worker thread updates the same record with compare-and-swap. The stored form is
//! versioned by its first byte: format 2 ([`crate::counter_record`]) is fixed-width and counted in
//! place; format 1 (LEB128 varints, bucket indexes delta-coded), which filters before it wrote and
//! had to decode and re-encode whole on each request, is still read, so counters found in shared
//! data after an upgrade are carried on. Decoding rejects anything malformed instead of guessing.

use serde::{Deserialize, Serialize};

use crate::counter_record::{self, CompletedRequest, FORMAT_V1};
use crate::histogram::{HistogramError, LatencyHistogram};
use crate::outcome::Outcome;
use crate::sticky::{Cluster, STICKY_CLUSTERS, StickyCounts};

/// Tag of the optional section after the histogram that holds [`StickyCounts`]. A record without
/// keyed requests has no section and encodes as before; a build that predates the section reads
/// one as trailing bytes and starts the record again from zero (as for any unreadable record).
const STICKY_SECTION: u8 = 1;

/// Monotonic counters for one subset since the proxy started.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCounters")]
pub struct SubsetCounters {
    /// Completed requests (`successes + failures`).
    pub requests: u64,
    pub successes: u64,
    pub failures: u64,
    /// Latency from request headers to the end of the response, in µs.
    pub latency: LatencyHistogram,
    /// Requests with a sticky key, per cluster of the key's hash (see [`crate::sticky`]); absent
    /// from the snapshot when there were none. An agent that predates it refuses a snapshot
    /// that has it (unknown field `sticky`).
    #[serde(default, skip_serializing_if = "StickyCounts::is_empty")]
    pub sticky: StickyCounts,
}

// By hand for `clone_from`, which reuses the histogram's allocation (see `LatencyHistogram`).
impl Clone for SubsetCounters {
    fn clone(&self) -> Self {
        SubsetCounters {
            requests: self.requests,
            successes: self.successes,
            failures: self.failures,
            latency: self.latency.clone(),
            sticky: self.sticky,
        }
    }

    fn clone_from(&mut self, source: &Self) {
        self.requests = source.requests;
        self.successes = source.successes;
        self.failures = source.failures;
        self.latency.clone_from(&source.latency);
        self.sticky = source.sticky;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCounters {
    requests: u64,
    successes: u64,
    failures: u64,
    latency: LatencyHistogram,
    #[serde(default)]
    sticky: StickyCounts,
}

impl TryFrom<RawCounters> for SubsetCounters {
    type Error = DecodeError;
    fn try_from(r: RawCounters) -> Result<Self, DecodeError> {
        let c = SubsetCounters {
            requests: r.requests,
            successes: r.successes,
            failures: r.failures,
            latency: r.latency,
            sticky: r.sticky,
        };
        c.check()?;
        Ok(c)
    }
}

/// Why stored bytes are not a counter record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    UnknownFormat(u8),
    /// Format 2: flag bits this build does not know.
    UnknownFlags(u8),
    /// Format 2: more latency buckets than the histogram has.
    TooManyBuckets(usize),
    Truncated,
    Overlong,
    TrailingBytes,
    Inconsistent(&'static str),
    Histogram(HistogramError),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownFormat(b) => write!(f, "unknown counter format {b}"),
            Self::UnknownFlags(b) => write!(f, "counter record has unknown flags {b:#04x}"),
            Self::TooManyBuckets(n) => write!(f, "counter record has {n} latency buckets, more than the histogram's"),
            Self::Truncated => write!(f, "counter record is truncated"),
            Self::Overlong => write!(f, "counter record has an over-long number"),
            Self::TrailingBytes => write!(f, "counter record has trailing bytes"),
            Self::Inconsistent(what) => write!(f, "counter record is inconsistent: {what}"),
            Self::Histogram(e) => write!(f, "counter record histogram: {e}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl SubsetCounters {
    /// Counts one completed request whose latency says nothing about an SLO (a stream, an
    /// upgraded connection): its outcome, but no latency.
    pub fn record_unmeasured(&mut self, outcome: Outcome) {
        self.requests = self.requests.saturating_add(1);
        match outcome {
            Outcome::Success => self.successes = self.successes.saturating_add(1),
            Outcome::Failure => self.failures = self.failures.saturating_add(1),
        }
    }

    /// Counts one completed request.
    pub fn record(&mut self, outcome: Outcome, latency_us: u64) {
        self.requests = self.requests.saturating_add(1);
        match outcome {
            Outcome::Success => self.successes = self.successes.saturating_add(1),
            Outcome::Failure => self.failures = self.failures.saturating_add(1),
        }
        self.latency.record(latency_us);
    }

    /// Also counts a request (already counted with [`record`](Self::record) or
    /// [`record_unmeasured`](Self::record_unmeasured)) under its sticky key's cluster.
    pub fn record_sticky(&mut self, cluster: Cluster, outcome: Outcome) {
        self.sticky.record(cluster, outcome);
    }

    /// Counts one completed request: what the stored record's [`counter_record::count`] does to
    /// the bytes, done to the decoded record.
    pub fn count(&mut self, request: &CompletedRequest) {
        match request.latency_us {
            Some(us) => self.record(request.outcome, us),
            None => self.record_unmeasured(request.outcome),
        }
        if let Some(cluster) = request.cluster {
            self.record_sticky(cluster, request.outcome);
        }
    }

    /// Adds another record (from another proxy) to this one.
    pub fn merge(&mut self, other: &SubsetCounters) {
        self.requests = self.requests.saturating_add(other.requests);
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        self.latency.merge(&other.latency);
        self.sticky.merge(&other.sticky);
    }

    /// What happened between `earlier` and `self`; `None` if any counter went backwards (a reset).
    pub fn since(&self, earlier: &SubsetCounters) -> Option<SubsetCounters> {
        Some(SubsetCounters {
            requests: self.requests.checked_sub(earlier.requests)?,
            successes: self.successes.checked_sub(earlier.successes)?,
            failures: self.failures.checked_sub(earlier.failures)?,
            latency: self.latency.since(&earlier.latency)?,
            sticky: self.sticky.since(&earlier.sticky)?,
        })
    }

    /// The stored form this build writes (format 2, [`crate::counter_record`]).
    pub fn encode(&self) -> Vec<u8> {
        counter_record::encode(self)
    }

    /// Format 1, what filters before format 2 wrote: what an older filter can read, what the
    /// module-swap grace keeps writing, and the compact snapshot's encoding (smaller than format 2).
    pub fn encode_v1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.latency.buckets.len() * 3);
        out.push(FORMAT_V1);
        put_varint(&mut out, self.requests);
        put_varint(&mut out, self.successes);
        put_varint(&mut out, self.failures);
        put_varint(&mut out, self.latency.sum_us);
        put_varint(&mut out, self.latency.buckets.len() as u64);
        let mut prev = 0u16;
        for &(i, c) in &self.latency.buckets {
            put_varint(&mut out, u64::from(i - prev));
            put_varint(&mut out, c);
            prev = i;
        }
        put_sticky(&mut out, &self.sticky);
        out
    }

    /// Decodes a stored record of either format; empty input is the zero record (a key created
    /// but never counted).
    pub fn decode(bytes: &[u8]) -> Result<SubsetCounters, DecodeError> {
        match bytes.first() {
            None => Ok(SubsetCounters::default()),
            Some(&FORMAT_V1) => Self::decode_v1(bytes),
            Some(_) => counter_record::decode(bytes),
        }
    }

    /// Decodes a format-1 record.
    pub fn decode_v1(bytes: &[u8]) -> Result<SubsetCounters, DecodeError> {
        let Some((&format, mut rest)) = bytes.split_first() else {
            return Err(DecodeError::Truncated);
        };
        if format != FORMAT_V1 {
            return Err(DecodeError::UnknownFormat(format));
        }
        let requests = take_varint(&mut rest)?;
        let successes = take_varint(&mut rest)?;
        let failures = take_varint(&mut rest)?;
        let sum_us = take_varint(&mut rest)?;
        let n = take_varint(&mut rest)?;
        // Each pair takes at least two bytes: refuse counts the input cannot hold before allocating.
        if n > (rest.len() / 2) as u64 {
            return Err(DecodeError::Truncated);
        }
        let mut buckets = Vec::with_capacity(n as usize);
        let mut index = 0u64;
        for k in 0..n {
            let delta = take_varint(&mut rest)?;
            if k > 0 && delta == 0 {
                return Err(DecodeError::Histogram(HistogramError::NotSorted));
            }
            index = index.checked_add(delta).ok_or(DecodeError::Overlong)?;
            let idx =
                u16::try_from(index).map_err(|_| DecodeError::Histogram(HistogramError::IndexOutOfRange(u16::MAX)))?;
            buckets.push((idx, take_varint(&mut rest)?));
        }
        let sticky = take_sticky(&mut rest)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        let latency = LatencyHistogram::from_parts(sum_us, buckets).map_err(DecodeError::Histogram)?;
        let c = SubsetCounters { requests, successes, failures, latency, sticky };
        c.check()?;
        Ok(c)
    }

    /// The invariants every record keeps: outcomes add up, at most one latency per request
    /// (streams and upgrades are counted without one, see `LatencyPolicy`).
    pub(crate) fn check(&self) -> Result<(), DecodeError> {
        if self.successes.checked_add(self.failures) != Some(self.requests) {
            return Err(DecodeError::Inconsistent("requests != successes + failures"));
        }
        if self.latency.count() > self.requests {
            return Err(DecodeError::Inconsistent("latency count > requests"));
        }
        self.sticky.check(self.requests, self.failures).map_err(DecodeError::Inconsistent)
    }
}

/// The sticky section: its tag, then each cluster's requests, then each cluster's failures.
/// Nothing when no request had a key, so unkeyed rollouts pay nothing for it.
fn put_sticky(out: &mut Vec<u8>, sticky: &StickyCounts) {
    if sticky.is_empty() {
        return;
    }
    out.push(STICKY_SECTION);
    for &n in sticky.requests.iter().chain(&sticky.failures) {
        put_varint(out, n);
    }
}

/// Reads the sticky section if the record has one; anything else after the histogram is left
/// for the caller to refuse as trailing bytes.
fn take_sticky(input: &mut &[u8]) -> Result<StickyCounts, DecodeError> {
    let mut sticky = StickyCounts::default();
    let Some((&tag, rest)) = input.split_first() else {
        return Ok(sticky);
    };
    if tag != STICKY_SECTION {
        return Ok(sticky);
    }
    *input = rest;
    // Each count takes at least one byte.
    if input.len() < 2 * STICKY_CLUSTERS {
        return Err(DecodeError::Truncated);
    }
    for n in sticky.requests.iter_mut().chain(sticky.failures.iter_mut()) {
        *n = take_varint(input)?;
    }
    Ok(sticky)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = input.split_first() else {
            return Err(DecodeError::Truncated);
        };
        *input = rest;
        let bits = u64::from(b & 0x7f);
        if shift == 63 && bits > 1 {
            return Err(DecodeError::Overlong);
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DecodeError::Overlong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_bytes_are_zero_counters() {
        assert_eq!(SubsetCounters::decode(&[]).unwrap(), SubsetCounters::default());
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut c = SubsetCounters::default();
        for (i, us) in [3u64, 3, 120, 4_000, 1 << 40, 55_555].iter().enumerate() {
            let o = if i % 3 == 0 { Outcome::Failure } else { Outcome::Success };
            c.record(o, *us);
        }
        assert_eq!(SubsetCounters::decode(&c.encode()).unwrap(), c);
        assert_eq!(SubsetCounters::decode(&c.encode_v1()).unwrap(), c);
    }

    #[test]
    fn malformed_format_1_records_are_rejected() {
        let mut c = SubsetCounters::default();
        c.record(Outcome::Success, 10);
        let good = c.encode_v1();
        assert_eq!(SubsetCounters::decode(&good[..good.len() - 1]), Err(DecodeError::Truncated));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(SubsetCounters::decode(&long), Err(DecodeError::TrailingBytes));
        assert_eq!(SubsetCounters::decode(&[9]), Err(DecodeError::UnknownFormat(9)));
        assert_eq!(
            SubsetCounters::decode(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::Overlong)
        );
        // requests=1, successes=0, failures=0: does not add up.
        assert!(matches!(SubsetCounters::decode(&[1, 1, 0, 0, 0, 0]), Err(DecodeError::Inconsistent(_))));
    }

    fn keyed() -> SubsetCounters {
        let mut c = SubsetCounters::default();
        for i in 0..40u64 {
            let o = if i % 5 == 0 { Outcome::Failure } else { Outcome::Success };
            c.record(o, 1_000 + i);
            // Every other request has a key; some clusters get none.
            if i % 2 == 0 {
                c.record_sticky(Cluster::of_hash(i * 3), o);
            }
        }
        c
    }

    #[test]
    fn sticky_clusters_round_trip_in_bytes_and_json() {
        let c = keyed();
        assert_eq!(c.sticky.total_requests(), 20);
        assert_eq!(c.sticky.total_failures(), 4);
        assert_eq!(SubsetCounters::decode(&c.encode()).unwrap(), c);
        assert_eq!(SubsetCounters::decode(&c.encode_v1()).unwrap(), c);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"sticky\":{\"requests\":["), "{json}");
        assert_eq!(serde_json::from_str::<SubsetCounters>(&json).unwrap(), c);
    }

    #[test]
    fn a_record_without_keyed_requests_is_encoded_as_before() {
        let mut c = SubsetCounters::default();
        c.record(Outcome::Success, 10);
        let bytes = c.encode_v1();
        // format, requests, successes, failures, sum, one bucket (delta, count): nothing more.
        assert_eq!(bytes.len(), 8, "{bytes:?}");
        // Format 2: the header and one bucket, no sticky section.
        assert_eq!(c.encode().len(), 44 + 10);
        assert_eq!(keyed().encode().len(), 44 + 256 + 10 * keyed().latency.buckets.len());
        assert!(!serde_json::to_string(&c).unwrap().contains("sticky"));
        // A snapshot from a filter that predates the clusters still reads, with none.
        let old = r#"{"requests":1,"successes":1,"failures":0,"latency":{"sum_us":10,"buckets":[[10,1]]}}"#;
        let parsed: SubsetCounters = serde_json::from_str(old).unwrap();
        assert!(parsed.sticky.is_empty() && parsed.requests == 1, "{parsed:?}");
    }

    #[test]
    fn malformed_format_1_sticky_sections_are_rejected() {
        let good = keyed().encode_v1();
        let plain = {
            let mut c = keyed();
            c.sticky = StickyCounts::default();
            c.encode_v1()
        };
        assert_eq!(SubsetCounters::decode(&good[..plain.len() + 5]), Err(DecodeError::Truncated));
        let mut unknown = plain.clone();
        unknown.push(9);
        assert_eq!(SubsetCounters::decode(&unknown), Err(DecodeError::TrailingBytes));
        let mut twice = good.clone();
        twice.extend_from_slice(&good[plain.len()..]);
        assert_eq!(SubsetCounters::decode(&twice), Err(DecodeError::TrailingBytes));
        // Clusters holding more requests than the record.
        let mut more = keyed();
        more.sticky.requests[0] += 1_000;
        assert!(matches!(SubsetCounters::decode(&more.encode_v1()), Err(DecodeError::Inconsistent(_))));
        assert!(matches!(SubsetCounters::decode(&more.encode()), Err(DecodeError::Inconsistent(_))));
        let json = serde_json::to_string(&more).unwrap();
        assert!(serde_json::from_str::<SubsetCounters>(&json).unwrap_err().to_string().contains("sticky"));
        // The wrong number of clusters is refused by name.
        let short = r#"{"requests":1,"successes":1,"failures":0,"latency":{"sum_us":0,"buckets":[]},"sticky":{"requests":[1],"failures":[0]}}"#;
        let e = serde_json::from_str::<SubsetCounters>(short).unwrap_err().to_string();
        assert!(e.contains("array"), "{e}");
    }

    #[test]
    fn sticky_deltas_follow_the_totals() {
        let early = keyed();
        let mut late = early.clone();
        late.record(Outcome::Failure, 5);
        late.record_sticky(Cluster::of_hash(4), Outcome::Failure);
        let d = late.since(&early).unwrap();
        assert_eq!((d.requests, d.failures, d.sticky.requests[4], d.sticky.failures[4]), (1, 1, 1, 1));
        assert_eq!(d.sticky.total_requests(), 1);
    }
}
