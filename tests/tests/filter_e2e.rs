//! canary-filter in real Envoy 1.40 (V8), started from deploy/local/envoy.yaml on loopback.
//! Needs `make wasm` and `make tools` (or ENVOY_BIN); each test runs its own Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_core::split::Role;
use canary_core::sticky_bucket;
use canary_e2e::{Fixture, route};

const RELOAD: Duration = Duration::from_secs(10);
const DARK_VALUE: &str = "dark-launch-secret-0123";
const DARK: &str = r#","dark_launch":{"header":"x-canary","value":"dark-launch-secret-0123"}"#;

fn none() -> Vec<(&'static str, String)> {
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_follows_the_weight() {
    let f = Fixture::start(route(20.0, 1, "").unwrap(), 2).await.unwrap();
    let t = f.send(4000, &none()).await;
    assert_eq!(t.errors, 0, "{t:?}");
    let share = t.served("v2") as f64 / 4000.0;
    // Binomial sd at 20% over 4,000 is 0.63%; 3% is almost five of them.
    assert!((share - 0.20).abs() < 0.03, "canary share {share}: {t:?}");
    assert_eq!(t.served("v1") + t.served("v2"), 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dark_launch_header_forces_the_canary_at_zero_weight_and_is_counted_apart() {
    let f = Fixture::start(route(0.0, 1, DARK).unwrap(), 1).await.unwrap();
    let t = f.send(100, &[("x-canary", DARK_VALUE.to_owned())]).await;
    assert_eq!(t.served("v2"), 100, "{t:?}");
    let t = f.send(100, &[("x-canary", "true".to_owned())]).await;
    assert_eq!(t.served("v1"), 100, "only the exact value opts in: {t:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    assert_eq!(snap.subset(Role::Canary).unwrap().counters.requests, 0, "dark launch is not judged");
    assert_eq!(snap.dark_launch.as_ref().map(|c| c.requests), Some(100), "but counted apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dark_launch_is_off_by_default_and_stops_with_a_rollback() {
    let f = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let t = f.send(50, &[("x-canary", "true".to_owned())]).await;
    assert_eq!(t.served("v1"), 50, "no dark launch unless configured: {t:?}");
    let rolled_back = format!(r#"{DARK},"rollout_state":{{"phase":"rolled_back"}}"#);
    f.envoy.write_route(&route(0.0, 2, &rolled_back).unwrap()).unwrap();
    f.envoy.wait_for_revision(2, RELOAD).await.unwrap();
    let t = f.send(50, &[("x-canary", DARK_VALUE.to_owned())]).await;
    assert_eq!(t.served("v1"), 50, "a rolled-back canary takes no dark-launch traffic: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_that_is_not_utf8_is_treated_as_absent_and_the_vm_stays_up() {
    let extra = format!(r#"{DARK},"sticky":{{"cookie":"sid"}}"#);
    let f = Fixture::start(route(0.0, 1, &extra).unwrap(), 1).await.unwrap();
    let bad = reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap();
    for name in ["x-canary", "cookie", "x-user-id"] {
        for _ in 0..5 {
            let resp = f.envoy.http().get(f.envoy.url("/")).header(name, bad.clone()).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{name}: {}", f.envoy.log_tail(20));
            assert_eq!(canary_e2e::traffic::served_by(&resp), "v1", "{name}");
        }
    }
    // The VM still routes, dark-launches and serves snapshots on that worker.
    let t = f.send(20, &[("x-canary", DARK_VALUE.to_owned())]).await;
    assert_eq!(t.served("v2"), 20, "{t:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    assert_eq!(snap.subset(Role::Stable).unwrap().counters.requests, 15);
    assert!(f.envoy.log_lines("panicked").is_empty(), "{}", f.envoy.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_user_keeps_its_subset_and_wasm_hashes_like_native_code() {
    let cfg = route(50.0, 1, r#","sticky":{"header":"x-user-id"}"#).unwrap();
    let salt = cfg.salt().into_owned();
    assert_eq!(salt, "demo/v2", "salted by release");
    let f = Fixture::start(cfg, 2).await.unwrap();
    let mut seen = [0u32; 2];
    for i in 0..40 {
        let user = format!("user-{i}");
        let t = f.send(10, &[("x-user-id", user.clone())]).await;
        // The bucket the native build computes must be the one the filter used in Envoy.
        let expect = if sticky_bucket(&salt, user.as_bytes()).get() < 5000 { "v2" } else { "v1" };
        assert_eq!(t.served(expect), 10, "{user} expected {expect}: {t:?}");
        seen[usize::from(expect == "v2")] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both subsets should have users: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sent_label_does_not_reach_the_canary() {
    let f = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let t = f.send(50, &[("x-canary-subset", "v2".to_owned())]).await;
    assert_eq!(t.served("v1"), 50, "{t:?}");
    assert_eq!(f.canary.received(), 0);
    let labels = f.stable.labels_seen();
    assert_eq!(labels.len(), 50);
    assert!(labels.iter().all(|l| l == "v1"), "the filter's label replaces the client's: {labels:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_two_worker_threads() {
    let f = Fixture::start(route(30.0, 1, "").unwrap(), 2).await.unwrap();
    f.canary.fail_per_mille(100);
    let t = f.send(3000, &none()).await;
    assert_eq!(t.errors, 0);
    let snap = f.envoy.snapshot().await.unwrap();
    let stable = &snap.subset(Role::Stable).unwrap().counters;
    let canary = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!(stable.requests, f.stable.received(), "stable requests");
    assert_eq!(canary.requests, f.canary.received(), "canary requests");
    assert_eq!(stable.requests + canary.requests, 3000);
    // 5xx from the canary are failures; the backend fails exactly 100 per 1,000 it serves.
    assert_eq!(canary.failures, t.statuses.get(&500).copied().unwrap_or(0));
    assert_eq!(canary.failures, f.canary.received() / 10);
    assert_eq!(stable.failures, 0);
    assert_eq!(canary.latency.count(), canary.requests);
    // The same numbers as Envoy stats.
    assert_eq!(f.envoy.stat("wasmcustom.canary_gate_requests_total.subset.v2").await, Some(canary.requests));
    assert_eq!(f.envoy.stat("wasmcustom.canary_gate_failures_total.subset.v2").await, Some(canary.failures));
    assert_eq!(f.envoy.stat("wasmcustom.canary_gate_dropped_updates_total").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_envoy_stats_the_snapshot_still_counts_every_request_and_envoy_stats_stay_at_zero() {
    let f = Fixture::start(route(50.0, 1, r#","envoy_stats":false"#).unwrap(), 2).await.unwrap();
    f.canary.fail_per_mille(100);
    let t = f.send(600, &none()).await;
    assert_eq!(t.errors, 0);
    let snap = f.envoy.snapshot().await.unwrap();
    let stable = &snap.subset(Role::Stable).unwrap().counters;
    let canary = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((stable.requests, canary.requests), (f.stable.received(), f.canary.received()));
    assert_eq!(canary.failures, f.canary.received() / 10);
    assert_eq!(canary.latency.count(), canary.requests);
    // No per-subset stat was defined, so none counts; the rare-event counters are still there.
    for subset in ["v1", "v2"] {
        let stat = format!("wasmcustom.canary_gate_requests_total.subset.{subset}");
        assert_eq!(f.envoy.stat(&stat).await.unwrap_or(0), 0, "{stat}");
    }
    assert_eq!(f.envoy.stat("wasmcustom.canary_gate_dropped_updates_total").await, Some(0));

    // Turned back on by a reload, they count from then on.
    f.envoy.write_route(&route(50.0, 2, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(2, RELOAD).await.unwrap();
    let (stable_before, canary_before) = (f.stable.received(), f.canary.received());
    f.send(200, &none()).await;
    let on = |subset: &str| format!("wasmcustom.canary_gate_requests_total.subset.{subset}");
    assert_eq!(f.envoy.stat(&on("v1")).await, Some(f.stable.received() - stable_before));
    assert_eq!(f.envoy.stat(&on("v2")).await, Some(f.canary.received() - canary_before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_through_the_watched_directory_applies_without_restart_or_lost_counts() {
    let f = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    let pid = f.envoy.pid();
    let before = f.send(200, &none()).await;
    assert_eq!(before.served("v1"), 200);
    let first = f.envoy.snapshot().await.unwrap();

    f.envoy.write_route(&route(100.0, 2, "").unwrap()).unwrap();
    let snap = f.envoy.wait_for_revision(2, RELOAD).await.unwrap();
    assert_eq!(snap.instance, first.instance, "same proxy instance: no restart");
    assert_eq!(f.envoy.pid(), pid);
    assert_eq!(snap.subset(Role::Stable).unwrap().counters.requests, 200, "counters survive the reload");

    let after = f.send(200, &none()).await;
    assert_eq!(after.served("v2"), 200, "{after:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    assert_eq!(snap.subset(Role::Stable).unwrap().counters.requests, 200);
    assert_eq!(snap.subset(Role::Canary).unwrap().counters.requests, 200);
    assert!(f.envoy.stat("extension_config_discovery.http_filter.canary-gate.update_success").await.unwrap_or(0) >= 2);
}

/// A module upgrade through ECDS carries the counters an earlier build wrote (format 1 of the
/// stored record) on, exactly: the route filter runs `CANARY_GATE_PREVIOUS_WASM` (a build from
/// before format 2), then this build. The snapshot listener runs this build throughout, the order
/// docs/filter.md asks for. Run by hand (`--ignored`): it needs that earlier build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CANARY_GATE_PREVIOUS_WASM: canary_filter.wasm built before the format-2 counter record"]
async fn a_module_upgrade_carries_an_earlier_builds_counters_on() {
    let previous = std::env::var_os("CANARY_GATE_PREVIOUS_WASM").expect("CANARY_GATE_PREVIOUS_WASM is not set");
    let previous = std::path::PathBuf::from(previous);
    let f = Fixture::start(route(30.0, 1, "").unwrap(), 2).await.unwrap();
    f.envoy.write_route_with_module(&previous, &route(30.0, 2, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(2, RELOAD).await.unwrap();
    f.canary.fail_per_mille(100);
    let t = f.send(1000, &none()).await;
    assert_eq!(t.errors, 0);
    let snap = f.envoy.snapshot().await.unwrap();
    let counted = |s: &canary_core::Snapshot, role| s.subset(role).unwrap().counters.clone();
    assert_eq!(counted(&snap, Role::Stable).requests, f.stable.received(), "read from format 1");
    assert_eq!(counted(&snap, Role::Canary).requests, f.canary.received());

    f.envoy.write_route(&route(30.0, 3, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(3, RELOAD).await.unwrap();
    let t = f.send(1000, &none()).await;
    assert_eq!(t.errors, 0);
    let snap = f.envoy.snapshot().await.unwrap();
    let (stable, canary) = (counted(&snap, Role::Stable), counted(&snap, Role::Canary));
    assert_eq!(stable.requests + canary.requests, 2000, "nothing lost at the upgrade");
    assert_eq!((stable.requests, canary.requests), (f.stable.received(), f.canary.received()));
    assert_eq!(canary.failures, f.canary.received() / 10);
    assert_eq!((stable.latency.count(), canary.latency.count()), (stable.requests, canary.requests));
    assert_eq!(f.envoy.log_lines("converted from an earlier filter's format").len(), 2, "{}", f.envoy.log_tail(20));
    assert!(f.envoy.log_lines("were unreadable").is_empty(), "{}", f.envoy.log_tail(20));
}

/// A request the earlier build is still serving at a module swap does not reset the counters:
/// after a swap, the new build keeps format-1 records in format 1 for `store::FORMAT_1_GRACE`, so
/// the earlier build can still read them. The grace holds only for a module swapped in after the
/// process's first `FORMAT_1_GRACE`, so this test waits that out first. The new build is this
/// build's module with a custom section added, so Envoy loads it as new code in a new VM, as in a
/// real upgrade. Run by hand (`--ignored`): it needs an earlier build and takes over a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs CANARY_GATE_PREVIOUS_WASM: canary_filter.wasm built before the format-2 counter record; 70 s"]
async fn a_request_in_flight_on_the_earlier_build_at_a_module_swap_does_not_reset_the_counters() {
    let previous = std::env::var_os("CANARY_GATE_PREVIOUS_WASM").expect("CANARY_GATE_PREVIOUS_WASM is not set");
    let f = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    f.envoy.write_route_with_module(std::path::Path::new(&previous), &route(0.0, 2, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(2, RELOAD).await.unwrap();
    f.send(50, &none()).await;
    tokio::time::sleep(canary_core::store::FORMAT_1_GRACE).await;

    // The new build as new code: a custom section (id 0, 5 bytes: name "swap") changes the hash.
    let dir = tempfile::tempdir().unwrap();
    let next = dir.path().join("next.wasm");
    let mut module = std::fs::read(canary_e2e::paths::filter_wasm().unwrap()).unwrap();
    module.extend_from_slice(&[0, 5, 4, b's', b'w', b'a', b'p']);
    std::fs::write(&next, module).unwrap();

    f.stable.delay(Duration::from_secs(4));
    let (http, url) = (f.envoy.http().clone(), f.envoy.url("/"));
    let slow = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.envoy.write_route_with_module(&next, &route(0.0, 3, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(3, RELOAD).await.unwrap();
    f.stable.delay(Duration::ZERO);
    f.send(20, &none()).await;
    assert_eq!(slow.await.unwrap().unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = f.envoy.snapshot().await.unwrap();
    let stable = &snap.subset(Role::Stable).unwrap().counters;
    assert_eq!(stable.requests, 71, "{}", f.envoy.log_tail(20));
    assert_eq!(stable.requests, f.stable.received());
    assert!(f.envoy.log_lines("were unreadable").is_empty(), "{}", f.envoy.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_config_is_rejected_and_the_last_good_weights_keep_serving() {
    let f = Fixture::start(route(100.0, 1, "").unwrap(), 2).await.unwrap();
    let rejected = "extension_config_discovery.http_filter.canary-gate.update_rejected";
    let base = f.envoy.stat(rejected).await.unwrap_or(0);

    for (n, bad) in [
        r#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":150,"revision":2}"#,
        r#"{"version":1,"rollout":"demo","stable":"v1","canary":"v2","canary_weight":0,"revison":3}"#,
        "not json at all",
    ]
    .into_iter()
    .enumerate()
    {
        f.envoy.write_raw_plugin_config(bad).unwrap();
        f.envoy.wait_for_stat(rejected, base + n as u64 + 1, RELOAD).await.unwrap();
        let t = f.send(50, &none()).await;
        assert_eq!(t.served("v2"), 50, "still on the last good weights after {bad}: {t:?}");
        let snap = f.envoy.snapshot().await.unwrap();
        assert_eq!(snap.route.unwrap().revision, 1);
    }
    let lines = f.envoy.log_lines("canary-gate: rejected configuration");
    assert!(lines.iter().any(|l| l.contains("`canary_weight`") && l.contains("outside 0..=100")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("`revison`") && l.contains("unknown field")), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_is_not_served_on_the_public_listener() {
    let f = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let r = f.envoy.http().get(f.envoy.url(canary_core::config::DEFAULT_SNAPSHOT_PATH)).send().await.unwrap();
    assert_eq!(r.headers().get("x-served-by").unwrap(), "v1", "the public listener proxies it like any path");
    assert!(f.envoy.snapshot.ip().is_loopback());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_comes_compact_to_a_client_that_asks_and_says_the_same() {
    use canary_core::snapshot::{COMPACT_CONTENT_TYPE, Snapshot};
    let f = Fixture::start(route(30.0, 1, DARK).unwrap(), 2).await.unwrap();
    f.canary.fail_per_mille(100);
    let t = f.send(400, &[("x-canary", DARK_VALUE.to_owned())]).await;
    assert_eq!(t.errors, 0);
    f.send(600, &none()).await;
    let url = format!("http://{}{}", f.envoy.snapshot, canary_core::config::DEFAULT_SNAPSHOT_PATH);
    // Nothing counts between the two reads, so they describe the same counters.
    let get = |accept: Option<&'static str>| {
        let mut r = f.envoy.http().get(&url);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        async move {
            let r = r.send().await.unwrap();
            assert!(r.status().is_success());
            let ct = r.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
            (ct, r.bytes().await.unwrap())
        }
    };
    let (json_type, json) = get(None).await;
    assert_eq!(json_type, "application/json");
    let (compact_type, compact) =
        get(Some("application/vnd.canary-gate.snapshot.compact+json, application/json;q=0.5")).await;
    assert_eq!(compact_type, COMPACT_CONTENT_TYPE);
    assert!(compact.len() < json.len(), "{} against {} bytes", compact.len(), json.len());
    let (a, mut b) = (Snapshot::from_json(&json).unwrap(), Snapshot::from_compact_json(&compact).unwrap());
    assert!(a.dark_launch.as_ref().is_some_and(|d| d.requests == 400), "{:?}", a.dark_launch);
    assert!(a.subsets.iter().map(|s| s.counters.requests).sum::<u64>() == 600);
    b.taken_at_unix_ms = a.taken_at_unix_ms;
    assert_eq!(a, b);
    // Wildcards and plain JSON get JSON.
    assert_eq!(get(Some("*/*")).await.0, "application/json");
}

/// Posts a kill order with `query` to the Envoy's kill endpoint: (status, body).
async fn kill(f: &Fixture, query: &str) -> (u16, String) {
    let url = format!("http://{}{}?{query}", f.envoy.snapshot, canary_core::kill::DEFAULT_KILL_PATH);
    let r = f.envoy.http().post(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_order_holds_every_canary_request_on_stable_until_a_newer_config_arrives() {
    let f = Fixture::start(route(50.0, 3, DARK).unwrap(), 2).await.unwrap();
    let (code, body) = kill(&f, "rollout=demo&id=v2").await;
    assert_eq!((code, body.contains("revision")), (400, true), "a bad order says what is wrong: {body}");
    let (code, body) = kill(&f, "rollout=demo&id=v2&revision=3").await;
    assert_eq!(code, 200, "{body}");
    // Every worker honours it at once: nothing weighted reaches the canary.
    let t = f.send(1000, &none()).await;
    assert_eq!(t.served("v1"), 1000, "{t:?}");
    // Nor does dark launch, unless `during_kill` allows it.
    let t = f.send(20, &[("x-canary", DARK_VALUE.to_owned())]).await;
    assert_eq!(t.served("v1"), 20, "{t:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    let k = snap.kill.as_ref().unwrap();
    assert_eq!((k.rollout_id.as_str(), k.up_to_revision), ("v2", 3));
    // The counters saw the held requests as stable.
    assert_eq!(snap.subsets[0].counters.requests, 1020);
    // A newer configuration (a deliberate decision) is not held by the old kill.
    f.envoy.write_route(&route(50.0, 4, "").unwrap()).unwrap();
    f.envoy.wait_for_revision(4, RELOAD).await.unwrap();
    let t = f.send(1000, &none()).await;
    assert!(t.served("v2") > 350, "{t:?}");
    // A GET on the kill path is refused.
    let url = format!("http://{}{}", f.envoy.snapshot, canary_core::kill::DEFAULT_KILL_PATH);
    assert_eq!(f.envoy.http().get(url).send().await.unwrap().status().as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_does_not_hold_a_new_rollout_even_with_a_lower_revision() {
    let f = Fixture::start(route(50.0, 9, "").unwrap(), 2).await.unwrap();
    let (code, body) = kill(&f, "rollout=demo&id=v2&revision=9").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(f.send(200, &none()).await.served("v1"), 200);
    // The next release arrives as the shipped manifest has it: revision 1, canary v3.
    let next = r#"{"version":1,"rollout":"demo","stable":"v1","canary":"v3","canary_weight":100,"revision":1}"#;
    f.envoy.write_route(&canary_core::config::parse_route(next.as_bytes()).unwrap()).unwrap();
    let snap = f.envoy.wait_for_revision(1, RELOAD).await.unwrap();
    assert_eq!(snap.kill, None, "the stale kill record is dropped: {snap:?}");
    let t = f.send(100, &none()).await;
    // The label is v3, which the local route table does not send to the canary cluster; what
    // matters is that the filter chose the canary: it labelled every request v3.
    assert_eq!(t.total(), 100);
    assert!(f.stable.labels_seen().iter().rev().take(100).all(|l| l == "v3"), "held by an old kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_kill_revision_is_refused_and_blocks_nothing() {
    let f = Fixture::start(route(100.0, 2, "").unwrap(), 1).await.unwrap();
    let (code, body) = kill(&f, &format!("rollout=demo&id=v2&revision={}", u64::MAX)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("above revision 2"), "{body}");
    let (code, body) = kill(&f, "rollout=other&id=v2&revision=1").await;
    assert_eq!((code, body.contains("no rollout other")), (409, true), "{body}");
    let (code, body) = kill(&f, "rollout=demo&id=v9&revision=1").await;
    assert_eq!((code, body.contains("rollout id v2, not v9")), (409, true), "{body}");
    assert_eq!(f.envoy.snapshot().await.unwrap().kill, None);
    assert_eq!(f.send(50, &none()).await.served("v2"), 50);
}
