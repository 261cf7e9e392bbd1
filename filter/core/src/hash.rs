//! Sticky-user hashing: a user key to a bucket in `[0, 10_000)`.
//!
//! The hash must give the same bucket on every proxy, every worker thread and every restart, on
//! 64-bit hosts and in 32-bit wasm alike, so it is spelled out here (FNV-1a over salt and key,
//! then the murmur3 64-bit finaliser to spread FNV's weak low bits) rather than taken from
//! `std`, whose `Hasher`s are randomly keyed or unspecified across releases. The salt (the rollout
//! name by default) reshuffles users between rollouts, so the same users are not always the
//! first to get every canary.

use crate::weight::{FULL, Weight};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A user's position in `[0, 10_000)`; the user is on the canary when its bucket is below the
/// canary weight in basis points, so raising the weight never moves a canary user back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    /// A bucket from a number; `None` at or above 10 000.
    pub const fn new(v: u16) -> Option<Bucket> {
        if v < FULL { Some(Bucket(v)) } else { None }
    }

    /// A bucket from 64 uniformly random bits (multiply-shift: no modulo bias worth naming).
    pub fn from_random(bits: u64) -> Bucket {
        let hi = bits >> 32;
        // hi < 2^32, so hi * 10_000 < 2^46 and the shifted result is < 10_000.
        #[allow(clippy::cast_possible_truncation)]
        Bucket(((hi * u64::from(FULL)) >> 32) as u16)
    }

    pub const fn get(self) -> u16 {
        self.0
    }

    /// True when a request in this bucket goes to the canary at `weight`.
    pub const fn is_canary_at(self, weight: Weight) -> bool {
        self.0 < weight.basis_points()
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The 64-bit sticky hash of `key` under `salt`. The salt's length is mixed in so that
/// ("ab", "c") and ("a", "bc") differ.
pub fn sticky_hash(salt: &str, key: &[u8]) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, &(salt.len() as u64).to_le_bytes());
    h = fnv1a(h, salt.as_bytes());
    h = fnv1a(h, key);
    fmix64(h)
}

/// The bucket of a sticky key under a rollout's salt.
pub fn sticky_bucket(salt: &str, key: &[u8]) -> Bucket {
    Bucket::from_random(sticky_hash(salt, key))
}
