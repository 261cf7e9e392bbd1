//! Latency over a sliding window, for `/status` and `/metrics`, in `hdrhistogram`.
//!
//! The filter ships latency as its own fixed log-linear buckets (`canary_core::histogram`): that
//! format is what a compare-and-swap in proxy shared data can afford, and it merges by adding
//! counts. The agent's reporting window is different: each tick adds one window of deltas and the
//! oldest tick falls out. An HDR histogram does both in place (`add`, `subtract`) with a bounded
//! relative error, so the window's quantiles cost the same whatever its length.

use canary_core::LatencyHistogram;
use canary_core::histogram::bucket_value;
use hdrhistogram::Histogram;

/// Highest trackable latency: one hour, in µs.
const HIGHEST_US: u64 = 3_600_000_000;
/// Two significant digits: 1% relative error, the same order as the filter's buckets (0.8%).
const SIGNIFICANT_DIGITS: u8 = 2;

/// Why a window could not be built or updated.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("latency histogram: {0}")]
    Creation(#[from] hdrhistogram::CreationError),
    #[error("latency histogram: {0}")]
    Record(#[from] hdrhistogram::RecordError),
    #[error("latency histogram: {0}")]
    Add(#[from] hdrhistogram::AdditionError),
    #[error("latency histogram: {0}")]
    Subtract(#[from] hdrhistogram::SubtractionError),
}

/// An HDR histogram holding the same requests as `h`, each at its bucket's midpoint.
pub fn to_hdr(h: &LatencyHistogram) -> Result<Histogram<u64>, WindowError> {
    let mut hdr = Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)?;
    for (index, count) in &h.buckets {
        if let Some(us) = bucket_value(*index) {
            hdr.saturating_record_n(us.clamp(1, HIGHEST_US), *count);
        }
    }
    Ok(hdr)
}

/// A sliding window of latency: add each tick's histogram, subtract it again when it expires.
#[derive(Debug)]
pub struct SlidingLatency {
    window: Histogram<u64>,
    ticks: std::collections::VecDeque<(u64, Histogram<u64>)>,
    span_ms: u64,
}

impl SlidingLatency {
    pub fn new(span_ms: u64) -> Result<Self, WindowError> {
        Ok(SlidingLatency {
            window: Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS)?,
            ticks: std::collections::VecDeque::new(),
            span_ms,
        })
    }

    /// Adds the tick ending at `now_ms` and drops ticks older than the span.
    pub fn push(&mut self, now_ms: u64, tick: &LatencyHistogram) -> Result<(), WindowError> {
        let hdr = to_hdr(tick)?;
        self.window.add(&hdr)?;
        self.ticks.push_back((now_ms, hdr));
        let oldest = now_ms.saturating_sub(self.span_ms);
        while let Some((t, _)) = self.ticks.front()
            && *t < oldest
        {
            if let Some((_, old)) = self.ticks.pop_front() {
                self.window.subtract(&old)?;
            }
        }
        Ok(())
    }

    /// Requests in the window.
    pub fn count(&self) -> u64 {
        self.window.len()
    }

    /// The `q` quantile in ms; `None` for an empty window.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        (!self.window.is_empty()).then(|| self.window.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values_us: &[(u64, u64)]) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for (us, n) in values_us {
            h.record_n(*us, *n);
        }
        h
    }

    #[test]
    fn quantiles_agree_with_the_filters_histogram_within_two_percent() {
        let h = hist(&[(2_000, 900), (50_000, 90), (400_000, 10)]);
        let hdr = to_hdr(&h).unwrap();
        assert_eq!(hdr.len(), 1_000);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let ours = h.quantile(q).unwrap() as f64;
            let theirs = hdr.value_at_quantile(q) as f64;
            assert!((ours - theirs).abs() / ours < 0.02, "q{q}: filter {ours} µs, hdr {theirs} µs");
        }
    }

    #[test]
    fn old_ticks_leave_the_window() {
        let mut w = SlidingLatency::new(1_000).unwrap();
        w.push(0, &hist(&[(300_000, 100)])).unwrap(); // a slow second
        w.push(700, &hist(&[(1_000, 100)])).unwrap();
        assert_eq!(w.count(), 200);
        assert!(w.quantile_ms(0.99).unwrap() > 290.0);
        w.push(1_600, &hist(&[(1_000, 100)])).unwrap(); // the slow tick is now 1.6 s old
        assert_eq!(w.count(), 200);
        let p99 = w.quantile_ms(0.99).unwrap();
        assert!((p99 - 1.0).abs() < 0.02, "only fast requests remain: p99 {p99} ms");
        let empty = SlidingLatency::new(1_000).unwrap();
        assert_eq!(empty.quantile_ms(0.5), None);
    }
}
