//! Routing, hashing and counter logic, run natively and compiled to 32-bit wasm
//! (`make test-wasm` runs this file under wasm-bindgen-test in Node), so the filter's
//! arithmetic in Envoy agrees with what native tests and gate-agent compute.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use canary_core::config::{self, PluginConfig, parse_route};
use canary_core::counters::SubsetCounters;
use canary_core::hash::{Bucket, sticky_bucket, sticky_hash};
use canary_core::histogram::{BUCKETS, LatencyHistogram, bucket_of};
use canary_core::rng::SplitMix64;
use canary_core::split::{Reason, Role, choose_subset};
use canary_core::{Outcome, Weight};

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn route(weight: f64, extra: &str) -> config::RouteConfig {
    let json = format!(
        r#"{{"version":1,"rollout":"payment-svc","stable":"v1","canary":"v2","canary_weight":{weight}{extra}}}"#
    );
    parse_route(json.as_bytes()).unwrap()
}

#[test]
fn sticky_hash_is_pinned_across_builds_and_targets() {
    // Changing these values moves users between subsets mid-rollout: never do it silently.
    let golden: [(&str, &str, u64, u16); 5] = [
        ("payment-svc", "alice", 0xad75_1aa9_1161_cf71, 6775),
        ("payment-svc", "bob", 0x4a19_84a1_6479_5c2a, 2894),
        ("checkout", "alice", 0x99b3_eb55_ea79_1ff9, 6004),
        ("", "", 0x7bd3_144f_29c0_cc9e, 4836),
        ("r", "\u{1F600}-user-0123456789", 0x3286_0d6d_62ad_73da, 1973),
    ];
    for (salt, key, hash, bucket) in golden {
        assert_eq!(sticky_hash(salt, key.as_bytes()), hash, "{salt}/{key}");
        assert_eq!(sticky_bucket(salt, key.as_bytes()).get(), bucket, "{salt}/{key}");
    }
}

#[test]
fn a_keys_cluster_is_pinned_and_its_counts_survive_the_stored_record_on_every_target() {
    // The cluster is the hash's low 4 bits: alice (…cf71) is in cluster 1, bob (…5c2a) in 10.
    let cfg = route(50.0, r#","sticky":{"header":"x-user"},"sticky_salt":"payment-svc""#);
    let pick = |user: &'static str| {
        choose_subset(&cfg, &move |n: &str| (n == "x-user").then(|| user.as_bytes().to_vec()), 0).cluster
    };
    assert_eq!(pick("alice").map(|c| c.index()), Some(1));
    assert_eq!(pick("bob").map(|c| c.index()), Some(10));
    let mut c = SubsetCounters::default();
    for (i, user) in ["alice", "bob", "alice"].into_iter().enumerate() {
        let o = if i == 2 { Outcome::Failure } else { Outcome::Success };
        c.record(o, 1_000);
        c.record_sticky(pick(user).unwrap(), o);
    }
    let back = SubsetCounters::decode(&c.encode()).unwrap();
    assert_eq!(back, c);
    assert_eq!((back.sticky.requests[1], back.sticky.failures[1], back.sticky.requests[10]), (2, 1, 1));
}

#[test]
fn ten_percent_over_100k_sticky_keys_lands_within_half_a_percent() {
    let cfg = route(10.0, r#","sticky":{"header":"x-user-id"}"#);
    let mut canary = 0u32;
    for i in 0..100_000u32 {
        let key = format!("user-{i}");
        let choice = choose_subset(&cfg, &|h: &str| (h == "x-user-id").then(|| key.clone().into_bytes()), 0);
        assert_eq!(choice.reason, Reason::Sticky);
        if choice.role == Role::Canary {
            canary += 1;
        }
    }
    let share = f64::from(canary) / 100_000.0;
    assert!((share - 0.10).abs() <= 0.005, "canary share {share}");
}

#[test]
fn ten_percent_over_100k_random_draws_lands_within_half_a_percent() {
    let cfg = route(10.0, "");
    let mut rng = SplitMix64::new(42);
    let canary =
        (0..100_000).filter(|_| choose_subset(&cfg, &|_: &str| None, rng.next_u64()).role == Role::Canary).count();
    let share = canary as f64 / 100_000.0;
    assert!((share - 0.10).abs() <= 0.005, "canary share {share}");
}

#[test]
fn a_canary_user_stays_on_the_canary_as_the_weight_grows() {
    for i in 0..2_000u32 {
        let key = format!("session-{i}");
        let mut was_canary = false;
        for bp in (0..=10_000u16).step_by(250) {
            let cfg = config::RouteConfig {
                canary_weight: Weight::from_basis_points(bp).unwrap(),
                ..route(0.0, r#","sticky":{"cookie":"sid"}"#)
            };
            let cookie = format!("theme=dark; sid={key}");
            let is_canary = choose_subset(&cfg, &|h: &str| (h == "cookie").then(|| cookie.clone().into_bytes()), 0)
                .role
                == Role::Canary;
            assert!(is_canary || !was_canary, "{key} left the canary at {bp} bp");
            was_canary = is_canary;
        }
        assert!(was_canary, "{key} not on the canary at 100%");
    }
}

#[test]
fn random_buckets_cover_the_whole_range_without_overflow() {
    assert_eq!(Bucket::from_random(0).get(), 0);
    assert_eq!(Bucket::from_random(u64::MAX).get(), 9_999);
    assert_eq!(Bucket::from_random(1 << 63).get(), 5_000);
    assert!(!Bucket::from_random(u64::MAX).is_canary_at(Weight::from_basis_points(9_999).unwrap()));
    assert!(Bucket::from_random(u64::MAX).is_canary_at(Weight::FULL));
    assert!(!Bucket::from_random(0).is_canary_at(Weight::ZERO));
}

#[test]
fn histogram_quantiles_are_within_two_percent() {
    let mut h = LatencyHistogram::new();
    let mut values: Vec<u64> = Vec::new();
    let mut rng = SplitMix64::new(7);
    for _ in 0..20_000 {
        // Log-uniform from 100 µs to ~1.7 s, to exercise many octaves.
        let v = 100u64 << (rng.next_u64() % 14) | (rng.next_u64() % 1000);
        values.push(v);
        h.record(v);
    }
    values.sort_unstable();
    for q in [0.5, 0.9, 0.99, 0.999] {
        let rank = ((q * values.len() as f64).ceil() as usize).max(1);
        let truth = values[rank - 1] as f64;
        let got = h.quantile(q).unwrap() as f64;
        assert!((got - truth).abs() / truth <= 0.02, "q{q}: got {got}, true {truth}");
    }
}

#[test]
fn counters_saturate_and_large_values_round_trip() {
    let mut c = SubsetCounters::default();
    c.record(Outcome::Success, u64::MAX);
    c.record(Outcome::Failure, 1 << 35);
    assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    assert_eq!(c.latency.sum_us, u64::MAX, "sum saturates instead of wrapping");
    let decoded = SubsetCounters::decode(&c.encode()).unwrap();
    assert_eq!(decoded, c);
    let mut big = c.clone();
    big.requests = u64::MAX - 1;
    big.successes = u64::MAX - 2;
    big.failures = 1;
    let mut same = big.clone();
    same.record(Outcome::Success, 5);
    assert_eq!(same.requests, u64::MAX);
}

#[test]
fn counting_in_the_stored_bytes_agrees_with_the_decoded_record_on_every_target() {
    use canary_core::counter_record::{self, CompletedRequest, Found};
    let mut bytes = Vec::new();
    let mut c = SubsetCounters::default();
    for i in 0..500u64 {
        let r = CompletedRequest {
            outcome: if i % 9 == 0 { Outcome::Failure } else { Outcome::Success },
            latency_us: (i % 11 != 0).then(|| (i * 7_919) % 3_000_000 + if i % 50 == 0 { u64::MAX / 2 } else { 0 }),
            cluster: (i % 4 == 0).then(|| canary_core::sticky::Cluster::of_hash(i)),
        };
        let found = counter_record::count(&mut bytes, &r).unwrap();
        assert_eq!(found == Found::Empty, i == 0);
        c.count(&r);
    }
    assert_eq!(SubsetCounters::decode(&bytes).unwrap(), c);
    assert_eq!(bytes, c.encode());
    // A record the previous format wrote (with the saturated sum above) converts on any target.
    let mut old = c.encode_v1();
    let r = CompletedRequest { outcome: Outcome::Success, latency_us: Some(1), cluster: None };
    assert_eq!(counter_record::count(&mut old, &r), Ok(Found::Converted));
    c.count(&r);
    assert_eq!(SubsetCounters::decode(&old).unwrap(), c);
}

#[test]
fn bad_configs_name_the_field() {
    let cases: [(&str, &str, &str); 6] = [
        (
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":150}"#,
            "canary_weight",
            "outside 0..=100",
        ),
        (
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"lable_header":"x"}"#,
            "lable_header",
            "unknown field",
        ),
        (
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"sticky":{"query":"u"}}"#,
            "sticky",
            "unknown variant",
        ),
        (r#"{"version":1,"rollout":"r","stable":"v1","canary":"v1","canary_weight":10}"#, "canary", "same subset"),
        (
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":10,"dark_launch":{"header":"x-canary-subset","value":"1"}}"#,
            "dark_launch.header",
            "must differ",
        ),
        (
            r#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":-0.5}"#,
            "canary_weight",
            "outside 0..=100",
        ),
    ];
    for (json, field, problem) in cases {
        let e = config::parse(json.as_bytes()).unwrap_err();
        assert_eq!(e.field, field, "{json}: {e}");
        assert!(e.problem.contains(problem), "{json}: {e}");
    }
    assert!(matches!(config::parse(br#"{"version":1,"role":"snapshot"}"#), Ok(PluginConfig::SnapshotEndpoint(_))));
}
