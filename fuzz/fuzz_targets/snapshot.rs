//! The agent's snapshot decoders (`Snapshot::from_json` and `Snapshot::from_compact_json`, the
//! two forms `HttpSource` reads from a proxy's answer) and the fleet that takes the decoded
//! snapshots in (`Fleet::observe`). The input is one or more snapshots separated by NUL bytes,
//! read in turn from one proxy, each tried in both forms. A decoded snapshot re-encodes, in
//! either form, to bytes that decode to the same value, byte-stable on a second round (so the
//! two forms carry the same snapshot), and its counters survive the filter's binary record format.
#![no_main]

use std::time::Duration;

use canary_core::SubsetName;
use canary_core::counters::SubsetCounters;
use canary_core::snapshot::Snapshot;
use canary_rollout::collect::Fleet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fleet: Option<Fleet> = None;
    for (tick, part) in (0u64..).zip(data.split(|b| *b == 0).take(8)) {
        let snapshot = match Snapshot::from_json(part).or_else(|_| Snapshot::from_compact_json(part)) {
            Ok(s) => s,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        let compact = match snapshot.to_compact_json() {
            Ok(bytes) => bytes,
            Err(e) => panic!("a decoded snapshot does not encode compactly: {e}"),
        };
        let again = match Snapshot::from_compact_json(&compact) {
            Ok(s) => s,
            Err(e) => panic!("a compact snapshot is rejected: {e}\n{}", String::from_utf8_lossy(&compact)),
        };
        assert_eq!(again, snapshot, "snapshot changed on a compact round trip");
        assert_eq!(again.to_compact_json().ok().as_ref(), Some(&compact), "compact encoding is not stable");
        let json = match serde_json::to_vec(&snapshot) {
            Ok(json) => json,
            Err(e) => panic!("a decoded snapshot does not encode: {e}"),
        };
        let again = match Snapshot::from_json(&json) {
            Ok(s) => s,
            Err(e) => panic!("a re-encoded snapshot is rejected: {e}\n{}", String::from_utf8_lossy(&json)),
        };
        assert_eq!(again, snapshot, "snapshot changed on a round trip");
        assert_eq!(serde_json::to_vec(&again).ok().as_ref(), Some(&json), "encoding is not stable");
        for s in &snapshot.subsets {
            assert_eq!(SubsetCounters::decode(&s.counters.encode()).as_ref(), Ok(&s.counters), "{}", s.subset);
        }

        let fleet = fleet.get_or_insert_with(|| {
            let rollout = snapshot.route.as_ref().map(|r| r.rollout.clone());
            let rollout = rollout.or_else(|| SubsetName::try_from("demo").ok());
            match rollout {
                Some(r) => Fleet::new(r, Duration::from_secs(10)),
                None => panic!("\"demo\" is not a subset name"),
            }
        });
        let now_ms = tick * 1_000;
        fleet.observe("127.0.0.1:9902", &snapshot, now_ms);
        let window = fleet.take_window(now_ms);
        assert!(window.proxies_reporting <= 1);
    }
});
