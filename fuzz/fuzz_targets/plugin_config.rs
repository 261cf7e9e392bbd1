//! The filter's plugin configuration (`canary_core::config::parse`): whatever bytes Envoy hands to
//! `on_configure`. A configuration that parses re-serialises and parses back to the same value,
//! `parse_route` agrees with `parse`, and a rejection names a field.
#![no_main]

use canary_core::config::{self, PluginConfig};
use canary_core::weight::FULL;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = config::parse(data);
    let route = config::parse_route(data);
    match parsed {
        Ok(PluginConfig::Route(r)) => {
            assert_eq!(route.as_ref().ok(), Some(r.as_ref()), "parse_route disagrees with parse");
            assert!(r.canary_weight.basis_points() <= FULL, "weight above 100%: {:?}", r.canary_weight);
            assert_ne!(r.stable, r.canary, "stable and canary are the same subset");
            let json = match r.to_json() {
                Ok(json) => json,
                Err(e) => panic!("an accepted route config does not serialise: {e}"),
            };
            match config::parse_route(json.as_bytes()) {
                Ok(again) => assert_eq!(&again, r.as_ref(), "route config changed on a round trip through {json}"),
                Err(e) => panic!("the route config's own JSON is rejected: {e}\n{json}"),
            }
        }
        Ok(PluginConfig::SnapshotEndpoint(s)) => {
            assert!(route.is_err(), "parse_route accepted a snapshot-role config");
            let mut value = match serde_json::to_value(&s) {
                Ok(v) => v,
                Err(e) => panic!("an accepted snapshot config does not serialise: {e}"),
            };
            if let Some(object) = value.as_object_mut() {
                object.insert("role".into(), "snapshot".into());
            }
            let json = value.to_string();
            match config::parse(json.as_bytes()) {
                Ok(again) => assert_eq!(again, PluginConfig::SnapshotEndpoint(s), "snapshot config changed: {json}"),
                Err(e) => panic!("the snapshot config's own JSON is rejected: {e}\n{json}"),
            }
        }
        Err(e) => {
            assert!(!e.field.is_empty() && !e.problem.is_empty(), "an error without a field or problem: {e:?}");
            assert!(route.is_err(), "parse_route accepted what parse rejected");
        }
    }
});
