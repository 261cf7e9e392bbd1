//! Deterministic traffic for the statistics' simulation tests (test builds only).

use canary_core::rng::SplitMix64;

/// A seeded source of uniform and binomial draws.
pub(crate) struct Sim(SplitMix64);

impl Sim {
    pub(crate) fn new(seed: u64) -> Sim {
        Sim(SplitMix64::new(seed))
    }

    /// Uniform in (0, 1].
    pub(crate) fn uniform(&mut self) -> f64 {
        ((self.0.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// An exact Binomial(n, p) draw, skipping geometric gaps between events: cost is the number
    /// of events, not of trials, which keeps rare-failure simulations fast.
    pub(crate) fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        let log_q = (-p).ln_1p();
        let (mut pos, mut k) = (0u64, 0u64);
        loop {
            let gap = (self.uniform().ln() / log_q).floor();
            if gap >= (n - pos) as f64 {
                return k;
            }
            pos += gap as u64 + 1;
            k += 1;
            if pos >= n {
                return k;
            }
        }
    }
}
