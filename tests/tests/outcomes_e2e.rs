//! What counts as a failure and as latency, in real Envoy: gRPC statuses (trailers-only and in
//! trailers, from a real tonic backend), responses cut off after their headers, a hung canary
//! ending in a route timeout, and streams kept out of the latency histogram.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_core::split::Role;
use canary_e2e::grpc::{self, GrpcBackend};
use canary_e2e::{Envoy, Fixture, LocalSetup, Shape, route};
use tonic::Code;

/// Envoy in front of two gRPC backends (`v1`, `v2`) over HTTP/2.
async fn grpc_fixture(weight: f64) -> (GrpcBackend, GrpcBackend, Envoy) {
    let stable = GrpcBackend::start("v1").await.unwrap();
    let canary = GrpcBackend::start("v2").await.unwrap();
    let envoy = Envoy::start(&LocalSetup {
        stable: stable.addr,
        canary: canary.addr,
        concurrency: 2,
        route: route(weight, 1, "").unwrap(),
        raw_plugin_config: None,
        shape: Shape { upstream_http2: true, ..Shape::default() },
    })
    .await
    .unwrap();
    (stable, canary, envoy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_count_as_failures_whether_trailers_only_or_in_trailers() {
    let (_stable, canary, envoy) = grpc_fixture(100.0).await;
    let ch = grpc::channel(&format!("http://{}", envoy.public)).unwrap();
    for _ in 0..10 {
        let ok = grpc::grpc_unary(&ch, &[]).await.unwrap();
        assert_eq!((ok.code, ok.served_by.as_deref()), (Code::Ok, Some("v2")), "{}", envoy.log_tail(20));
    }
    let snap = envoy.snapshot().await.unwrap();
    let c = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((c.requests, c.failures), (10, 0), "gRPC successes are successes");

    canary.fail_with(Some(Code::Unavailable));
    // Trailers-only (the status in the one HEADERS frame), as the backend sends an early error.
    let wire = grpc::unary_on_the_wire(envoy.public, &[]).await.unwrap();
    assert_eq!((wire.status, wire.trailers_only, wire.grpc_status()), (200, true, Some(14)), "{wire:?}");
    for _ in 0..9 {
        assert_eq!(grpc::grpc_unary(&ch, &[]).await.unwrap().code, Code::Unavailable);
    }
    // In trailers, after a message.
    for _ in 0..5 {
        let s = grpc::grpc_stream(&ch, &[]).await.unwrap();
        assert_eq!((s.code, s.messages), (Code::Unavailable, 1));
    }
    // A client error (the gRPC form of a 4xx) is not the canary's failure.
    canary.fail_with(Some(Code::NotFound));
    for _ in 0..4 {
        assert_eq!(grpc::grpc_unary(&ch, &[]).await.unwrap().code, Code::NotFound);
    }
    let snap = envoy.snapshot().await.unwrap();
    let c = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((c.requests, c.failures), (29, 15), "10 ok, 10 unary + 5 stream errors, 4 NOT_FOUND: {c:?}");
    assert_eq!(c.latency.count(), 29, "gRPC responses are timed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_off_after_its_headers_counts_as_a_failure() {
    let f = Fixture::start(route(100.0, 1, "").unwrap(), 2).await.unwrap();
    f.canary.reset_mid_body(1000);
    let mut cut = 0;
    for _ in 0..20 {
        let r = f.envoy.http().get(f.envoy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the status was sent before the canary died");
        if r.bytes().await.is_err() {
            cut += 1;
        }
    }
    assert_eq!(cut, 20, "every body was cut off");
    let snap = f.envoy.snapshot().await.unwrap();
    let c = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((c.requests, c.failures), (20, 20), "{c:?}\n{}", f.envoy.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_canary_ends_in_a_counted_route_timeout() {
    // Only 429 counts by status here, so the 504 Envoy answers is counted by its UT flag.
    let cfg = route(100.0, 1, r#","failure":{"statuses":[429]}"#).unwrap();
    let shape = Shape { route_timeout: Some("1s".into()), ..Shape::default() };
    let f = Fixture::start_shaped(cfg, 1, shape).await.unwrap();
    f.canary.delay(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let t = f.send(4, &[]).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the route timeout ended the wait");
    assert_eq!(t.statuses.get(&504), Some(&4), "{t:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    let c = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((c.requests, c.failures), (4, 4), "{c:?}");
}

#[test]
fn the_shipped_routes_have_a_timeout() {
    let text = std::fs::read_to_string(canary_e2e::paths::deploy_local().join("envoy.yaml")).unwrap();
    let v: serde_json::Value = serde_yaml_ng::from_str(&text).unwrap();
    let routes = v
        .pointer(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes",
        )
        .and_then(serde_json::Value::as_array)
        .unwrap();
    assert_eq!(routes.len(), 2);
    for r in routes {
        let timeout = r.pointer("/route/timeout").and_then(serde_json::Value::as_str);
        assert!(timeout.is_some_and(|t| t != "0s"), "route {} has no timeout", r["name"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_counted_but_kept_out_of_latency_and_latency_ends_at_the_response_headers() {
    let f = Fixture::start(route(100.0, 1, "").unwrap(), 1).await.unwrap();
    f.canary.sse_duration(Duration::from_secs(1));
    f.canary.slow_body_duration(Duration::from_secs(1));
    for path in ["/sse", "/sse", "/slow-body", "/slow-body"] {
        let r = f.envoy.http().get(f.envoy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty(), "{path}");
    }
    let snap = f.envoy.snapshot().await.unwrap();
    let c = &snap.subset(Role::Canary).unwrap().counters;
    assert_eq!((c.requests, c.failures), (4, 0), "streams are counted: {c:?}");
    assert_eq!(c.latency.count(), 2, "but only the two slow bodies are timed: {c:?}");
    // The slow bodies took a second each to download; their latency is the time to the headers.
    let slow = c.latency.count_above(500_000);
    assert_eq!(slow, 0, "latency must end at the response headers, not the end of the body: {c:?}");
}
