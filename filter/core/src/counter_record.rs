//! The stored counter record: the bytes one subset's [`SubsetCounters`] occupy in shared data, and
//! counting one request straight into them.
//!
//! Format 1 (delta-coded varints, [`SubsetCounters::encode_v1`]) had to be decoded and re-encoded
//! whole on every request, walking every latency bucket the record held: 25,000 to 44,000
//! instructions per request in bench/PROFILE.md, growing with traffic. Format 2 is fixed-width, so
//! [`count`] reads and writes the header, one sticky cluster and one bucket found by binary search.
//! Only a latency bucket the record has never seen is inserted (a copy of the record's tail), which
//! a long-running proxy rarely needs.
//!
//! Layout, integers little-endian:
//!
//! | offset | bytes | field |
//! |---:|---:|---|
//! | 0 | 1 | format, 2 |
//! | 1 | 1 | flags: bit 0 set when the sticky section is present; the other bits are zero |
//! | 2 | 2 | `n`, the number of latency buckets |
//! | 4 | 5 × 8 | requests, successes, failures, latency sum (µs), latency count |
//! | 44 | 32 × 8 | sticky section (if flagged): requests per cluster, then failures per cluster |
//! | … | `n` × 10 | buckets: index (u16), count (u64); indexes strictly increasing, counts above zero |
//!
//! The length must be exactly what the header announces, so a record holds at most
//! [`MAX_RECORD_BYTES`] bytes. The latency count is stored (rather than summed from the buckets) so
//! that [`count`] checks "at most one latency per request" without walking the buckets; [`decode`]
//! checks that the buckets add up to it.
//!
//! What [`count`] checks on every request is what it can check without the walk: the format, the
//! flags, the length, that outcomes add up and that no more requests were timed than counted. Every
//! [`FULL_CHECK_EVERY`]-th request of a record it also checks the whole record as [`decode`] does,
//! so a record that is well-formed on the outside but wrong inside (unsorted buckets, a zero count)
//! is still found and started again, as format 1's update did on the next request; and every
//! snapshot read decodes, and so checks, the whole record.

use crate::counters::{DecodeError, SubsetCounters};
use crate::histogram::{BUCKETS, LatencyHistogram, bucket_of};
use crate::outcome::Outcome;
use crate::sticky::{Cluster, STICKY_CLUSTERS, StickyCounts};

/// First byte of a format-2 record.
pub const FORMAT: u8 = 2;
/// First byte of a record written by filters before format 2 (see [`SubsetCounters::encode_v1`]).
pub const FORMAT_V1: u8 = 1;

/// Flag bit: the sticky section is present.
const STICKY_FLAG: u8 = 1;
const REQUESTS: usize = 4;
const SUCCESSES: usize = 12;
const FAILURES: usize = 20;
const LATENCY_SUM: usize = 28;
const LATENCY_COUNT: usize = 36;
/// Bytes before the sticky section (or the buckets, without one).
const HEADER_BYTES: usize = 44;
const STICKY_BYTES: usize = 2 * STICKY_CLUSTERS * 8;
const BUCKET_BYTES: usize = 10;
/// The largest record: every latency bucket and the sticky section.
pub const MAX_RECORD_BYTES: usize = HEADER_BYTES + STICKY_BYTES + BUCKETS as usize * BUCKET_BYTES;
/// [`count`] checks the whole record when the request it counts is a multiple of this.
pub const FULL_CHECK_EVERY: u64 = 64;

/// One completed request, as the counters take it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletedRequest {
    pub outcome: Outcome,
    /// `None` for a request whose latency says nothing about an SLO (a stream, an upgrade).
    pub latency_us: Option<u64>,
    /// The sticky key's cluster, for a request that had a key.
    pub cluster: Option<Cluster>,
}

/// What [`count`] found in the stored bytes before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing (a key created but never counted): a new record.
    Empty,
    /// A format-2 record, updated in place.
    Current,
    /// A format-1 record written by an earlier filter: its counts were carried into format 2.
    Converted,
    /// Empty or format 1, counted and left in format 1 ([`count_keeping_format_1`]).
    KeptFormat1,
}

/// Counts `request` into the stored bytes of one subset's record, leaving format-2 bytes in
/// `bytes`. Empty bytes start a new record; a format-1 record is converted (its counts are kept).
/// On an error `bytes` are left in no particular state: the caller starts a new record.
pub fn count(bytes: &mut Vec<u8>, request: &CompletedRequest) -> Result<Found, DecodeError> {
    let found = match bytes.first() {
        None => {
            *bytes = encode(&SubsetCounters::default());
            Found::Empty
        }
        Some(&FORMAT) => Found::Current,
        Some(&FORMAT_V1) => {
            *bytes = encode(&SubsetCounters::decode_v1(bytes)?);
            Found::Converted
        }
        Some(&other) => return Err(DecodeError::UnknownFormat(other)),
    };
    count_in_place(bytes, request)?;
    Ok(found)
}

/// Counts like [`count`], but a record that is empty or in format 1 stays in format 1 (decoded,
/// counted and encoded whole, as filters before format 2 did); a format-2 record is counted in
/// place. For the first moments after a module swap: a filter older than format 2 may still be
/// finishing requests it started, and it would start a format-2 record again from zero
/// (docs/filter.md).
pub fn count_keeping_format_1(bytes: &mut Vec<u8>, request: &CompletedRequest) -> Result<Found, DecodeError> {
    match bytes.first() {
        None | Some(&FORMAT_V1) => {
            let mut c = SubsetCounters::decode(bytes)?;
            c.count(request);
            *bytes = c.encode_v1();
            Ok(Found::KeptFormat1)
        }
        Some(_) => count(bytes, request),
    }
}

/// The byte offsets of a record's parts, from its header; checks the format, the flags and that
/// the length is exactly what the header announces.
#[derive(Debug, Clone, Copy)]
struct Layout {
    sticky: bool,
    buckets: usize,
    buckets_at: usize,
}

impl Layout {
    fn of(bytes: &[u8]) -> Result<Layout, DecodeError> {
        let (&format, _) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if format != FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let header = bytes.get(..HEADER_BYTES).ok_or(DecodeError::Truncated)?;
        let flags = header.get(1).copied().unwrap_or_default();
        if flags & !STICKY_FLAG != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let sticky = flags & STICKY_FLAG != 0;
        let buckets = usize::from(u16_at(header, 2)?);
        if buckets > usize::from(BUCKETS) {
            return Err(DecodeError::TooManyBuckets(buckets));
        }
        let buckets_at = HEADER_BYTES + if sticky { STICKY_BYTES } else { 0 };
        let len = buckets_at + buckets * BUCKET_BYTES;
        match bytes.len().cmp(&len) {
            std::cmp::Ordering::Less => Err(DecodeError::Truncated),
            std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes),
            std::cmp::Ordering::Equal => Ok(Layout { sticky, buckets, buckets_at }),
        }
    }

    fn bucket_at(self, k: usize) -> usize {
        self.buckets_at + k * BUCKET_BYTES
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, DecodeError> {
    let b = bytes.get(at..at + 2).and_then(|s| <[u8; 2]>::try_from(s).ok()).ok_or(DecodeError::Truncated)?;
    Ok(u16::from_le_bytes(b))
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, DecodeError> {
    let b = bytes.get(at..at + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).ok_or(DecodeError::Truncated)?;
    Ok(u64::from_le_bytes(b))
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) -> Result<(), DecodeError> {
    let s = bytes.get_mut(at..at + 8).ok_or(DecodeError::Truncated)?;
    s.copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Adds one (saturating) to the u64 at `at`; returns the new value.
fn add_one(bytes: &mut [u8], at: usize) -> Result<u64, DecodeError> {
    let v = u64_at(bytes, at)?.saturating_add(1);
    put_u64(bytes, at, v)?;
    Ok(v)
}

/// Counts into format-2 bytes, as [`SubsetCounters::count`] counts into the decoded record.
fn count_in_place(bytes: &mut Vec<u8>, request: &CompletedRequest) -> Result<(), DecodeError> {
    let mut layout = Layout::of(bytes)?;
    let requests = u64_at(bytes, REQUESTS)?;
    if u64_at(bytes, SUCCESSES)?.checked_add(u64_at(bytes, FAILURES)?) != Some(requests) {
        return Err(DecodeError::Inconsistent("requests != successes + failures"));
    }
    if u64_at(bytes, LATENCY_COUNT)? > requests {
        return Err(DecodeError::Inconsistent("latency count > requests"));
    }
    let requests = add_one(bytes, REQUESTS)?;
    add_one(bytes, if request.outcome == Outcome::Success { SUCCESSES } else { FAILURES })?;

    if let Some(cluster) = request.cluster {
        if !layout.sticky {
            // The first keyed request of this record: the section goes in, zeroed.
            bytes.splice(HEADER_BYTES..HEADER_BYTES, [0u8; STICKY_BYTES]);
            if let Some(flags) = bytes.get_mut(1) {
                *flags |= STICKY_FLAG;
            }
            layout = Layout::of(bytes)?;
        }
        add_one(bytes, HEADER_BYTES + 8 * cluster.index())?;
        if request.outcome == Outcome::Failure {
            add_one(bytes, HEADER_BYTES + 8 * (STICKY_CLUSTERS + cluster.index()))?;
        }
    }

    if let Some(us) = request.latency_us {
        let sum = u64_at(bytes, LATENCY_SUM)?.saturating_add(us);
        put_u64(bytes, LATENCY_SUM, sum)?;
        add_one(bytes, LATENCY_COUNT)?;
        let index = bucket_of(us);
        // Binary search over the fixed-width pairs: the first bucket whose index is not below.
        let (mut lo, mut hi) = (0usize, layout.buckets);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if u16_at(bytes, layout.bucket_at(mid))? < index {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let at = layout.bucket_at(lo);
        if lo < layout.buckets && u16_at(bytes, at)? == index {
            add_one(bytes, at + 2)?;
        } else {
            // Distinct indexes below BUCKETS: a record that already holds BUCKETS of them and
            // lacks this one is not sorted.
            let n = u16::try_from(layout.buckets + 1)
                .ok()
                .filter(|n| *n <= BUCKETS)
                .ok_or(DecodeError::TooManyBuckets(layout.buckets + 1))?;
            let mut pair = [0u8; BUCKET_BYTES];
            pair[..2].copy_from_slice(&index.to_le_bytes());
            pair[2..].copy_from_slice(&1u64.to_le_bytes());
            bytes.splice(at..at, pair);
            if let Some(s) = bytes.get_mut(2..4) {
                s.copy_from_slice(&n.to_le_bytes());
            }
        }
    }

    if requests % FULL_CHECK_EVERY == 0 {
        decode(bytes)?;
    }
    Ok(())
}

/// The format-2 bytes of `c`.
pub fn encode(c: &SubsetCounters) -> Vec<u8> {
    let sticky = !c.sticky.is_empty();
    let buckets_at = HEADER_BYTES + if sticky { STICKY_BYTES } else { 0 };
    let mut out = Vec::with_capacity(buckets_at + c.latency.buckets.len() * BUCKET_BYTES);
    out.push(FORMAT);
    out.push(if sticky { STICKY_FLAG } else { 0 });
    // A histogram holds at most BUCKETS distinct indexes (`LatencyHistogram::from_parts`).
    let n = u16::try_from(c.latency.buckets.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for v in [c.requests, c.successes, c.failures, c.latency.sum_us, c.latency.count()] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if sticky {
        for v in c.sticky.requests.iter().chain(&c.sticky.failures) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for &(i, count) in &c.latency.buckets {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

/// Reads a whole format-2 record, checking every invariant.
pub fn decode(bytes: &[u8]) -> Result<SubsetCounters, DecodeError> {
    let layout = Layout::of(bytes)?;
    let mut sticky = StickyCounts::default();
    if layout.sticky {
        let counts = sticky.requests.iter_mut().chain(sticky.failures.iter_mut());
        for (k, n) in counts.enumerate() {
            *n = u64_at(bytes, HEADER_BYTES + 8 * k)?;
        }
    }
    let mut buckets = Vec::with_capacity(layout.buckets);
    for k in 0..layout.buckets {
        let at = layout.bucket_at(k);
        buckets.push((u16_at(bytes, at)?, u64_at(bytes, at + 2)?));
    }
    let latency = LatencyHistogram::from_parts(u64_at(bytes, LATENCY_SUM)?, buckets).map_err(DecodeError::Histogram)?;
    if latency.count() != u64_at(bytes, LATENCY_COUNT)? {
        return Err(DecodeError::Inconsistent("latency count differs from its buckets"));
    }
    let c = SubsetCounters {
        requests: u64_at(bytes, REQUESTS)?,
        successes: u64_at(bytes, SUCCESSES)?,
        failures: u64_at(bytes, FAILURES)?,
        latency,
        sticky,
    };
    c.check()?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::MAX_VALUE_US;

    fn req(ok: bool, latency_us: Option<u64>, cluster: Option<u64>) -> CompletedRequest {
        CompletedRequest {
            outcome: if ok { Outcome::Success } else { Outcome::Failure },
            latency_us,
            cluster: cluster.map(Cluster::of_hash),
        }
    }

    /// Counts `requests` both ways: into bytes, and into a decoded record.
    fn both(requests: &[CompletedRequest]) -> (Vec<u8>, SubsetCounters) {
        let mut bytes = Vec::new();
        let mut c = SubsetCounters::default();
        for r in requests {
            count(&mut bytes, r).unwrap();
            c.count(r);
        }
        (bytes, c)
    }

    #[test]
    fn counting_in_place_matches_counting_the_decoded_record() {
        let requests = [
            req(true, Some(900), None),
            req(false, Some(3), Some(5)),
            req(true, None, Some(5)),
            req(true, Some(900), None),
            req(true, Some(50_000), Some(7)),
            req(false, Some(u64::MAX), None),
            req(true, Some(0), None),
        ];
        let (bytes, c) = both(&requests);
        assert_eq!(decode(&bytes).unwrap(), c);
        assert_eq!(bytes, encode(&c), "in place writes what encode writes");
        assert_eq!(c.latency.buckets.len(), 5);
        assert_eq!(c.latency.buckets.last().map(|b| b.0), Some(bucket_of(MAX_VALUE_US)));
    }

    #[test]
    fn an_empty_value_is_a_new_record_and_a_format_1_record_is_carried_on() {
        let mut c = SubsetCounters::default();
        for i in 0..300u64 {
            c.count(&req(i % 7 != 0, (i % 5 != 0).then_some(i * 1_000), (i % 3 == 0).then_some(i)));
        }
        let mut bytes = c.encode_v1();
        let next = req(false, Some(12_345), Some(2));
        assert_eq!(count(&mut bytes, &next), Ok(Found::Converted));
        c.count(&next);
        assert_eq!(decode(&bytes).unwrap(), c);
        assert_eq!(count(&mut bytes, &next), Ok(Found::Current));
        let mut empty = Vec::new();
        assert_eq!(count(&mut empty, &next), Ok(Found::Empty));
    }

    #[test]
    fn keeping_format_1_counts_the_same_and_never_writes_format_1_over_format_2() {
        let requests = [req(true, Some(900), Some(3)), req(false, None, None), req(true, Some(7), None)];
        let mut kept = Vec::new();
        for r in &requests {
            assert_eq!(count_keeping_format_1(&mut kept, r), Ok(Found::KeptFormat1));
        }
        let (current, c) = both(&requests);
        assert_eq!(kept, c.encode_v1());
        assert_eq!(SubsetCounters::decode(&kept).unwrap(), c);
        let mut current = current;
        assert_eq!(count_keeping_format_1(&mut current, &requests[0]), Ok(Found::Current));
        assert_eq!(current.first(), Some(&FORMAT));
        assert_eq!(count_keeping_format_1(&mut vec![FORMAT_V1, 1], &requests[0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn the_record_is_bounded_with_every_bucket_and_the_sticky_section() {
        let mut bytes = Vec::new();
        for i in 0..BUCKETS {
            let (lo, _) = crate::histogram::bucket_bounds(i).unwrap();
            count(&mut bytes, &req(true, Some(lo), Some(u64::from(i)))).unwrap();
        }
        assert_eq!(bytes.len(), MAX_RECORD_BYTES);
        // A new value lands in a bucket the record holds: the size does not change.
        count(&mut bytes, &req(true, Some(u64::MAX), Some(1))).unwrap();
        assert_eq!(bytes.len(), MAX_RECORD_BYTES);
        assert_eq!(decode(&bytes).unwrap().latency.buckets.len(), usize::from(BUCKETS));
    }

    #[test]
    fn malformed_records_are_refused_by_name() {
        let (good, _) = both(&[req(true, Some(10), Some(1)), req(false, Some(5_000), None)]);
        let refuse = |b: &[u8]| {
            let decoded = decode(b).unwrap_err();
            let mut counted = b.to_vec();
            let refused = count(&mut counted, &req(true, Some(1), None)).unwrap_err();
            // The same kind of fault (the wording may differ: count does not walk the buckets).
            assert_eq!(std::mem::discriminant(&refused), std::mem::discriminant(&decoded), "{refused} / {decoded}");
            decoded
        };
        assert_eq!(refuse(&good[..good.len() - 1]), DecodeError::Truncated);
        assert_eq!(refuse(&good[..10]), DecodeError::Truncated);
        assert_eq!(refuse(&[FORMAT]), DecodeError::Truncated);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(refuse(&long), DecodeError::TrailingBytes);
        assert_eq!(refuse(&[9, 0, 0]), DecodeError::UnknownFormat(9));
        let mut flags = good.clone();
        flags[1] = 0x81;
        assert_eq!(refuse(&flags), DecodeError::UnknownFlags(0x81));
        let mut many = encode(&SubsetCounters::default());
        many[2..4].copy_from_slice(&(BUCKETS + 1).to_le_bytes());
        assert_eq!(refuse(&many), DecodeError::TooManyBuckets(usize::from(BUCKETS) + 1));
        let mut sum = good.clone();
        sum[REQUESTS] = 3;
        assert!(matches!(refuse(&sum), DecodeError::Inconsistent(_)));
        let mut timed = good.clone();
        timed[LATENCY_COUNT] = 9;
        assert!(matches!(refuse(&timed), DecodeError::Inconsistent(_)));
        let s = refuse(&sum).to_string();
        assert!(s.contains("requests != successes + failures"), "{s}");
    }

    #[test]
    fn damage_inside_a_well_formed_record_is_found_within_a_full_check() {
        // Two buckets swapped: the outside is fine, so counting goes on until the full check.
        let mut c = SubsetCounters::default();
        c.count(&req(true, Some(10), None));
        c.count(&req(true, Some(20), None));
        let mut bytes = encode(&c);
        let first = HEADER_BYTES;
        let (a, b) = (bytes[first..first + 10].to_vec(), bytes[first + 10..first + 20].to_vec());
        bytes[first..first + 10].copy_from_slice(&b);
        bytes[first + 10..first + 20].copy_from_slice(&a);
        assert!(matches!(decode(&bytes), Err(DecodeError::Histogram(_))));
        let mut counted = 2u64;
        let err = loop {
            match count(&mut bytes, &req(true, Some(30), None)) {
                Ok(_) => counted += 1,
                Err(e) => break e,
            }
            assert!(counted < 2 * FULL_CHECK_EVERY, "never found");
        };
        assert!(matches!(err, DecodeError::Histogram(_)), "{err}");
        assert_eq!(counted + 1, FULL_CHECK_EVERY);
    }
}
