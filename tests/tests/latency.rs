//! Latency measurement in real Envoy. In a test binary of its own, so that no other test's
//! traffic competes for the CPU while it measures (cargo runs test binaries one at a time).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_core::split::Role;
use canary_e2e::{Fixture, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50ms_upstream_shows_p50_within_10_percent() {
    let f = Fixture::start(route(100.0, 1, "").unwrap(), 1).await.unwrap();
    f.canary.delay(Duration::from_millis(50));
    // Warm up connections and the VM, then judge only what came after.
    let _ = f.send(20, &[]).await;
    let warm = f.envoy.snapshot().await.unwrap().subset(Role::Canary).unwrap().counters.clone();
    let _ = f.send(80, &[]).await;
    let now = f.envoy.snapshot().await.unwrap().subset(Role::Canary).unwrap().counters.clone();
    let window = now.since(&warm).unwrap();
    assert_eq!(window.requests, 80);
    let p50 = window.latency.quantile(0.5).unwrap() as f64;
    assert!((p50 - 50_000.0).abs() <= 5_000.0, "p50 {p50} µs over {:?}", window.latency);
}
