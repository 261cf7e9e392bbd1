//! A small, fast random source for the weighted split.
//!
//! SplitMix64 (Steele, Lea, Flood 2014): one add and a finaliser per draw, full period 2^64. The
//! split needs uniform buckets, not secrecy: a client cannot choose its subset by predicting this
//! sequence any better than by retrying. The host seeds it from the clock and the context id.

/// SplitMix64 state.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub const fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
