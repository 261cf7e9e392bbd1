//! One request counted straight into an encoded counter record, for the filter's request path.
//!
//! The filter counts every request with a read, change, write-if-unchanged of the subset's record
//! in shared data. Decoding the record into a [`SubsetCounters`] (a `Vec` of bucket pairs,
//! checked), recording, and encoding it again cost the module a few instructions per latency
//! bucket three times over, and the record holds hundreds of buckets once latencies spread
//! (bench/PROFILE.md). [`count_encoded`] makes one pass instead: it reads each varint once,
//! checks everything [`SubsetCounters::decode`] checks, and writes the new record as it goes.
//! Its output is byte for byte what decode, record and encode give, and it refuses exactly the
//! records decode refuses (`tests/properties.rs` checks both).

use crate::counters::{DecodeError, FORMAT, SubsetCounters, put_varint, take_varint};
use crate::histogram::{BUCKETS, HistogramError, bucket_of};
use crate::outcome::Outcome;

/// The record `bytes` with one more request of `outcome` counted, and its latency when
/// `latency_us` is given (`None`: counted but not timed, as `record_unmeasured`). Empty bytes
/// are the zero record. A record decode would refuse is refused with decode's reason class.
pub fn count_encoded(bytes: &[u8], outcome: Outcome, latency_us: Option<u64>) -> Result<Vec<u8>, DecodeError> {
    let Some((&format, mut rest)) = bytes.split_first() else {
        let mut c = SubsetCounters::default();
        match latency_us {
            Some(us) => c.record(outcome, us),
            None => c.record_unmeasured(outcome),
        }
        return Ok(c.encode());
    };
    if format != FORMAT {
        return Err(DecodeError::UnknownFormat(format));
    }
    let requests = take_varint(&mut rest)?;
    let successes = take_varint(&mut rest)?;
    let failures = take_varint(&mut rest)?;
    let sum_us = take_varint(&mut rest)?;
    let n = take_varint(&mut rest)?;
    if n > (rest.len() / 2) as u64 {
        return Err(DecodeError::Truncated);
    }
    let target = latency_us.map(bucket_of);
    // Whether the new latency adds a bucket is known only after the walk; the pairs go into
    // their own buffer and the header is written in front of them at the end.
    let mut pairs = Vec::with_capacity(rest.len() + 8);
    let mut pending = target;
    let mut index = 0u64;
    let mut prev_written = 0u64;
    let mut count_sum = 0u64;
    let mut added = false;
    // The first bucket decode's `from_parts` would refuse, reported after the walk as it does.
    let mut bad_bucket = None;
    for k in 0..n {
        let delta = take_varint(&mut rest)?;
        if k > 0 && delta == 0 {
            return Err(DecodeError::Histogram(HistogramError::NotSorted));
        }
        index = index.checked_add(delta).ok_or(DecodeError::Overlong)?;
        let idx =
            u16::try_from(index).map_err(|_| DecodeError::Histogram(HistogramError::IndexOutOfRange(u16::MAX)))?;
        let count = take_varint(&mut rest)?;
        if bad_bucket.is_none() {
            if idx >= BUCKETS {
                bad_bucket = Some(HistogramError::IndexOutOfRange(idx));
            } else if count == 0 {
                bad_bucket = Some(HistogramError::ZeroCount);
            }
        }
        count_sum = count_sum.saturating_add(count);
        let mut count_out = count;
        if let Some(t) = pending {
            let t = u64::from(t);
            if t == index {
                count_out = count.saturating_add(1);
                pending = None;
            } else if t < index {
                put_varint(&mut pairs, t - prev_written);
                put_varint(&mut pairs, 1);
                prev_written = t;
                pending = None;
                added = true;
            }
        }
        put_varint(&mut pairs, index - prev_written);
        put_varint(&mut pairs, count_out);
        prev_written = index;
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    // The checks decode makes after the walk, in its order.
    if let Some(e) = bad_bucket {
        return Err(DecodeError::Histogram(e));
    }
    if successes.checked_add(failures) != Some(requests) {
        return Err(DecodeError::Inconsistent("requests != successes + failures"));
    }
    if count_sum > requests {
        return Err(DecodeError::Inconsistent("latency count > requests"));
    }
    if let Some(t) = pending {
        put_varint(&mut pairs, u64::from(t) - prev_written);
        put_varint(&mut pairs, 1);
        added = true;
    }
    let (successes, failures) = match outcome {
        Outcome::Success => (successes.saturating_add(1), failures),
        Outcome::Failure => (successes, failures.saturating_add(1)),
    };
    let sum_us = latency_us.map_or(sum_us, |us| sum_us.saturating_add(us));
    let mut out = Vec::with_capacity(pairs.len() + 24);
    out.push(FORMAT);
    put_varint(&mut out, requests.saturating_add(1));
    put_varint(&mut out, successes);
    put_varint(&mut out, failures);
    put_varint(&mut out, sum_us);
    put_varint(&mut out, n + u64::from(added));
    out.extend_from_slice(&pairs);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via_decode(bytes: &[u8], outcome: Outcome, latency_us: Option<u64>) -> Result<Vec<u8>, DecodeError> {
        let mut c = SubsetCounters::decode(bytes)?;
        match latency_us {
            Some(us) => c.record(outcome, us),
            None => c.record_unmeasured(outcome),
        }
        Ok(c.encode())
    }

    #[test]
    fn counting_into_bytes_matches_decode_record_encode() {
        let mut bytes = Vec::new();
        // New buckets before, between and after existing ones, existing buckets, untimed requests.
        let steps: [(Outcome, Option<u64>); 9] = [
            (Outcome::Success, Some(500)),
            (Outcome::Success, Some(90)),
            (Outcome::Failure, Some(5_000_000)),
            (Outcome::Success, Some(500)),
            (Outcome::Success, None),
            (Outcome::Success, Some(3)),
            (Outcome::Failure, Some(1 << 50)),
            (Outcome::Success, Some(700)),
            (Outcome::Failure, None),
        ];
        for (outcome, latency) in steps {
            let next = count_encoded(&bytes, outcome, latency).unwrap();
            assert_eq!(next, via_decode(&bytes, outcome, latency).unwrap(), "after {outcome:?} {latency:?}");
            bytes = next;
        }
        let c = SubsetCounters::decode(&bytes).unwrap();
        assert_eq!((c.requests, c.successes, c.failures, c.latency.count()), (9, 6, 3, 7));
    }

    #[test]
    fn records_decode_refuses_are_refused() {
        let mut c = SubsetCounters::default();
        c.record(Outcome::Success, 10);
        c.record(Outcome::Success, 900);
        let good = c.encode();
        let count = |b: &[u8]| count_encoded(b, Outcome::Success, Some(10));
        assert_eq!(count(&good[..good.len() - 1]), Err(DecodeError::Truncated));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(count(&long), Err(DecodeError::TrailingBytes));
        assert_eq!(count(&[9]), Err(DecodeError::UnknownFormat(9)));
        assert!(matches!(count(&[1, 1, 0, 0, 0, 0]), Err(DecodeError::Inconsistent(_))));
        // Two pairs with a zero delta between them: not sorted.
        assert!(matches!(
            count(&[1, 2, 2, 0, 0, 2, 5, 1, 0, 1]),
            Err(DecodeError::Histogram(HistogramError::NotSorted))
        ));
        // A zero count, and more latencies than requests.
        assert!(matches!(count(&[1, 1, 1, 0, 0, 1, 5, 0]), Err(DecodeError::Histogram(HistogramError::ZeroCount))));
        assert!(matches!(count(&[1, 1, 1, 0, 0, 1, 5, 2]), Err(DecodeError::Inconsistent(_))));
    }
}
