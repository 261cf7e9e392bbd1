//! Latency measurement in real Envoy. In a test binary of its own, so that no other test's
//! traffic competes for the CPU while it measures (cargo runs test binaries one at a time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_core::split::Role;
use canary_e2e::{Fixture, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50ms_upstream_shows_p50_between_the_upstream_delay_and_what_the_client_saw() {
    let f = Fixture::start(route(100.0, 1, "").unwrap(), 1).await.unwrap();
    f.canary.delay(Duration::from_millis(50));
    // Warm up connections and the VM, then judge only what came after.
    let _ = f.send(20, &[]).await;
    let warm = f.envoy.snapshot().await.unwrap().subset(Role::Canary).unwrap().counters.clone();
    // One at a time, timed by the client: the filter's figure can be no less than the upstream's
    // delay and no more than the client's whole round trip (on a loaded machine both grow).
    let mut client_us = Vec::new();
    for _ in 0..80 {
        let t = std::time::Instant::now();
        let r = f.envoy.http().get(f.envoy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
        client_us.push(t.elapsed().as_micros() as f64);
    }
    client_us.sort_by(f64::total_cmp);
    let client_p50 = client_us[client_us.len() / 2];
    let now = f.envoy.snapshot().await.unwrap().subset(Role::Canary).unwrap().counters.clone();
    let window = now.since(&warm).unwrap();
    assert_eq!(window.requests, 80);
    let p50 = window.latency.quantile(0.5).unwrap() as f64;
    // The histogram's buckets are within 0.8%.
    assert!(p50 >= 50_000.0 * 0.99, "p50 {p50} µs is below the upstream's 50 ms: {:?}", window.latency);
    assert!(p50 <= client_p50 * 1.01, "p50 {p50} µs is above the client's {client_p50} µs: {:?}", window.latency);
}
