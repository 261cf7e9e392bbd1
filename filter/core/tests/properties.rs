//! Property tests of the logic (native only: proptest does not run under wasm-bindgen-test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code
#![cfg(not(target_arch = "wasm32"))]

use canary_core::config::{self, parse_route};
use canary_core::counter_record::{self, CompletedRequest, Found};
use canary_core::counters::SubsetCounters;
use canary_core::hash::sticky_bucket;
use canary_core::histogram::{LatencyHistogram, bucket_bounds, bucket_of};
use canary_core::snapshot::{InstanceInfo, SNAPSHOT_FORMAT, Snapshot, SubsetSnapshot};
use canary_core::split::{Role, choose_subset};
use canary_core::sticky::Cluster;
use canary_core::{Outcome, Weight};
use proptest::prelude::*;

/// One completed request: latencies spread over the histogram's whole range (and beyond it),
/// some untimed, some with a sticky key.
fn request() -> impl Strategy<Value = CompletedRequest> {
    let latency = prop_oneof![
        3 => (0u32..36).prop_flat_map(|e| 0u64..(2u64 << e)),
        1 => any::<u64>(),
    ];
    (any::<bool>(), proptest::option::weighted(0.8, latency), proptest::option::of(any::<u64>())).prop_map(
        |(ok, latency_us, key)| CompletedRequest {
            outcome: if ok { Outcome::Success } else { Outcome::Failure },
            latency_us,
            cluster: key.map(Cluster::of_hash),
        },
    )
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = config::parse(&bytes);
        let _ = SubsetCounters::decode(&bytes);
        let _ = counter_record::count(&mut bytes.clone(), &CompletedRequest { outcome: Outcome::Success, latency_us: Some(1), cluster: None });
    }

    /// Whatever a stored record was damaged into, counting into it either refuses it or leaves
    /// exactly what counting into its decoded record would, and never refuses what `decode`
    /// accepts.
    #[test]
    fn counting_into_a_damaged_record_refuses_it_or_agrees_with_decode(
        requests in proptest::collection::vec(request(), 0..40),
        v1 in any::<bool>(),
        flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        r in request(),
    ) {
        let mut c = SubsetCounters::default();
        for x in &requests {
            c.count(x);
        }
        let mut bytes = if v1 { c.encode_v1() } else { c.encode() };
        if let Some((at, x)) = flip {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        let decoded = SubsetCounters::decode(&bytes);
        let mut counted = bytes.clone();
        match (counter_record::count(&mut counted, &r), decoded) {
            (Ok(_), Ok(mut c)) => {
                c.count(&r);
                prop_assert_eq!(SubsetCounters::decode(&counted).unwrap(), c);
            }
            (Err(_), Err(_)) => {}
            // count checks less than decode between full checks: it may count a record decode
            // refuses, never the other way round.
            (Ok(_), Err(_)) => {}
            (Err(e), Ok(c)) => prop_assert!(false, "count refused {c:?}: {e}"),
        }
    }

    /// The grace after a module swap (records kept in format 1) counts the same: any split of
    /// the requests between keeping format 1 and counting in place ends in the same record.
    #[test]
    fn keeping_format_1_then_counting_in_place_loses_nothing(
        requests in proptest::collection::vec(request(), 0..200),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(requests.len() + 1);
        let mut old = SubsetCounters::default();
        let mut bytes = Vec::new();
        for (k, r) in requests.iter().enumerate() {
            let found = if k < split {
                counter_record::count_keeping_format_1(&mut bytes, r).unwrap()
            } else {
                counter_record::count(&mut bytes, r).unwrap()
            };
            prop_assert_eq!(found == Found::KeptFormat1, k < split);
            old.count(r);
        }
        prop_assert_eq!(SubsetCounters::decode(&bytes).unwrap(), old);
    }

    /// The record counted in its stored bytes, request by request, is what the decoded record
    /// counted the old way (decode, record, encode) holds, byte for byte in format 2; and a
    /// format-1 record found part way (an upgrade) is carried on with nothing lost.
    #[test]
    fn counting_in_place_equals_the_old_path_for_any_requests(
        requests in proptest::collection::vec(request(), 0..300),
        upgrade_at in any::<prop::sample::Index>(),
    ) {
        let upgrade_at = upgrade_at.index(requests.len() + 1);
        let mut old = SubsetCounters::default();
        let mut bytes = Vec::new();
        for (k, r) in requests.iter().enumerate() {
            if k < upgrade_at {
                // An earlier filter: decode, record, encode in format 1.
                let mut c = SubsetCounters::decode(&bytes).unwrap();
                c.count(r);
                bytes = c.encode_v1();
            } else {
                let found = counter_record::count(&mut bytes, r).unwrap();
                prop_assert_eq!(found == Found::Converted, k == upgrade_at && k > 0);
            }
            old.count(r);
        }
        let now = SubsetCounters::decode(&bytes).unwrap();
        prop_assert_eq!(&now, &old);
        if upgrade_at < requests.len() {
            prop_assert_eq!(&bytes, &old.encode());
        }
        prop_assert_eq!(SubsetCounters::decode(&old.encode_v1()).unwrap(), old.clone());
        prop_assert_eq!(SubsetCounters::decode(&old.encode()).unwrap(), old.clone());
        prop_assert!(bytes.len() <= counter_record::MAX_RECORD_BYTES);
        // The snapshot the agent reads is the same JSON either way.
        prop_assert_eq!(serde_json::to_string(&now).unwrap(), serde_json::to_string(&old).unwrap());
    }

    #[test]
    fn parse_never_panics_on_json_shaped_input(s in r#"\{("[a-z_]{1,14}":(-?[0-9.e]{1,8}|"[ -~]{0,12}"|null|true|\{\}|\[\]),?){0,8}\}"#) {
        let _ = config::parse(s.as_bytes());
    }

    #[test]
    fn weights_with_two_decimals_round_trip(bp in 0u16..=10_000) {
        let w = Weight::from_basis_points(bp).unwrap();
        prop_assert_eq!(Weight::from_percent(w.percent()).unwrap(), w);
        prop_assert_eq!(w.basis_points() + w.complement().basis_points(), 10_000);
    }

    #[test]
    fn stickiness_is_monotone_in_the_weight(key in "[ -~]{1,40}", salt in "[a-z]{1,12}", a in 0u16..=10_000, b in 0u16..=10_000) {
        let (lo, hi) = (a.min(b), a.max(b));
        let bucket = sticky_bucket(&salt, key.as_bytes());
        let at = |bp| bucket.is_canary_at(Weight::from_basis_points(bp).unwrap());
        prop_assert!(!at(lo) || at(hi));
    }

    #[test]
    fn zero_weight_never_and_full_weight_always_picks_canary_without_dark_launch(random in any::<u64>(), user in proptest::option::of("[a-z0-9]{1,20}")) {
        let base = parse_route(br#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":0,"sticky":{"header":"x-user"}}"#).unwrap();
        let header = |h: &str| if h == "x-user" { user.clone().map(String::into_bytes) } else { None };
        prop_assert_eq!(choose_subset(&base, &header, random).role, Role::Stable);
        let full = config::RouteConfig { canary_weight: Weight::FULL, ..base };
        prop_assert_eq!(choose_subset(&full, &header, random).role, Role::Canary);
    }

    #[test]
    fn every_value_lands_in_its_bucket(v in any::<u64>()) {
        let (lo, hi) = bucket_bounds(bucket_of(v)).unwrap();
        let clamped = v.min(canary_core::histogram::MAX_VALUE_US);
        prop_assert!(lo <= clamped && clamped <= hi);
        if lo >= 128 {
            prop_assert!((hi - lo + 1) * 64 <= lo);
        }
    }

    #[test]
    fn counters_round_trip_and_merge_then_since_is_identity(
        a in proptest::collection::vec((any::<bool>(), 0u64..10_000_000), 0..60),
        b in proptest::collection::vec((any::<bool>(), 0u64..10_000_000), 0..60),
    ) {
        let fill = |v: &[(bool, u64)]| {
            let mut c = SubsetCounters::default();
            for &(ok, us) in v {
                c.record(if ok { Outcome::Success } else { Outcome::Failure }, us);
            }
            c
        };
        let (ca, cb) = (fill(&a), fill(&b));
        prop_assert_eq!(SubsetCounters::decode(&ca.encode()).unwrap(), ca.clone());
        let mut sum = ca.clone();
        sum.merge(&cb);
        prop_assert_eq!(sum.since(&ca).unwrap(), cb);
        let mut h = LatencyHistogram::new();
        h.merge(&ca.latency);
        prop_assert_eq!(h.count(), ca.requests);
    }

    #[test]
    fn keyed_counters_round_trip_in_bytes_and_json_and_subtract(
        a in proptest::collection::vec((any::<bool>(), 0u64..10_000_000, proptest::option::of(any::<u64>())), 0..60),
        b in proptest::collection::vec((any::<bool>(), 0u64..10_000_000, proptest::option::of(any::<u64>())), 0..60),
    ) {
        let fill = |v: &[(bool, u64, Option<u64>)], mut c: SubsetCounters| {
            for &(ok, us, key_hash) in v {
                let o = if ok { Outcome::Success } else { Outcome::Failure };
                c.record(o, us);
                if let Some(h) = key_hash {
                    c.record_sticky(Cluster::of_hash(h), o);
                }
            }
            c
        };
        let ca = fill(&a, SubsetCounters::default());
        let both = fill(&b, ca.clone());
        for c in [&ca, &both] {
            prop_assert_eq!(&SubsetCounters::decode(&c.encode()).unwrap(), c);
            let json = serde_json::to_string(c).unwrap();
            prop_assert_eq!(&serde_json::from_str::<SubsetCounters>(&json).unwrap(), c);
            prop_assert!(c.sticky.total_requests() <= c.requests && c.sticky.total_failures() <= c.failures);
        }
        let d = both.since(&ca).unwrap();
        prop_assert_eq!(d.sticky.total_requests(), b.iter().filter(|x| x.2.is_some()).count() as u64);
    }

    /// Merging adds counts bucket by bucket, whichever way it is done (in place for a small
    /// histogram into a large one, a new vector otherwise).
    #[test]
    fn merge_adds_every_bucket(
        a in proptest::collection::vec((0u64..10_000_000, 1u64..1_000), 0..300),
        b in proptest::collection::vec((0u64..10_000_000, 1u64..1_000), 0..40),
    ) {
        let fill = |v: &[(u64, u64)]| {
            let mut h = LatencyHistogram::new();
            for &(us, n) in v {
                h.record_n(us, n);
            }
            h
        };
        let (ha, hb) = (fill(&a), fill(&b));
        let mut expect = std::collections::BTreeMap::new();
        for &(i, c) in ha.buckets.iter().chain(&hb.buckets) {
            *expect.entry(i).or_insert(0u64) += c;
        }
        for (mut into, from) in [(ha.clone(), &hb), (hb.clone(), &ha)] {
            into.merge(from);
            prop_assert_eq!(into.buckets.iter().copied().collect::<std::collections::BTreeMap<_, _>>(), expect.clone());
            prop_assert!(into.buckets.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert_eq!(into.sum_us, ha.sum_us + hb.sum_us);
        }
    }

    /// The compact snapshot and the JSON one decode to the same snapshot, whatever the counters.
    #[test]
    fn compact_and_json_snapshots_decode_alike(
        sides in proptest::collection::vec(
            proptest::collection::vec((any::<bool>(), any::<u64>(), proptest::option::of(any::<u64>()), any::<bool>()), 0..80),
            3,
        ),
        dark in any::<bool>(),
        taken in any::<u64>(),
    ) {
        let fill = |v: &[(bool, u64, Option<u64>, bool)]| {
            let mut c = SubsetCounters::default();
            for &(ok, us, key_hash, timed) in v {
                let o = if ok { Outcome::Success } else { Outcome::Failure };
                if timed { c.record(o, us) } else { c.record_unmeasured(o) }
                if let Some(h) = key_hash {
                    c.record_sticky(Cluster::of_hash(h), o);
                }
            }
            c
        };
        let name = |s: &str| canary_core::SubsetName::try_from(s).unwrap();
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT.to_owned(),
            instance: InstanceInfo { id: "c084c1cf294415ef".into(), started_at_unix_ms: 1 },
            taken_at_unix_ms: taken,
            route: None,
            subsets: vec![
                SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: fill(&sides[0]) },
                SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: fill(&sides[1]) },
            ],
            kill: None,
            misrouted: None,
            dark_launch: dark.then(|| fill(&sides[2])),
            rollouts: Vec::new(),
        };
        let json = Snapshot::from_json(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
        let compact = Snapshot::from_compact_json(&snapshot.to_compact_json().unwrap()).unwrap();
        prop_assert_eq!(&json, &snapshot);
        prop_assert_eq!(&compact, &snapshot);
    }
}

proptest! {
    /// Whatever the weights, an accepted configuration without a promotion keeps the guard's
    /// bounds, and lowering the weight is always accepted.
    #[test]
    fn the_guard_accepts_exactly_what_keeps_its_bounds(
        prev in 0u16..=10_000, next in 0u16..=10_000, max_w in 1u16..=10_000, raise in 1u16..=10_000,
    ) {
        prop_assume!(raise <= max_w);
        let guard = canary_core::guard::Guard {
            max_weight: Weight::from_basis_points(max_w).unwrap(),
            max_raise: Weight::from_basis_points(raise).unwrap(),
        };
        let base = parse_route(br#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":0}"#).unwrap();
        let at = |bp| config::RouteConfig {
            canary_weight: Weight::from_basis_points(bp).unwrap(),
            guard: Some(guard),
            ..base.clone()
        };
        let accepted = canary_core::guard::check(&at(next), Some(&at(prev))).is_ok();
        let within = next <= max_w && next.saturating_sub(prev) <= raise;
        prop_assert_eq!(accepted, within);
        if next <= prev && next <= max_w {
            prop_assert!(accepted);
        }
    }
}
