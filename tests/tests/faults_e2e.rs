//! Faults with real processes: broken snapshot endpoints next to a healthy proxy, a canary that is
//! down entirely, weights changing under in-flight requests, and what a client on the public
//! listener cannot do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::net::SocketAddr;
use std::time::Duration;

use canary_e2e::traffic::Steady;
use canary_e2e::{Agent, Backend, Envoy, FAST_SPEC, Fixture, LocalSetup, route};
use serde_json::Value;

/// A listener that accepts connections and never answers.
async fn hanging() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A listener that closes every connection as soon as it is accepted.
async fn resetting() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    addr
}

/// An HTTP server that answers 200 with something that is not a snapshot.
async fn garbage() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "{\"format\": \"not-a-snapshot\", \"subsets\": 7" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn weight(s: &Value) -> f64 {
    s["canary_weight_percent"].as_f64().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_snapshot_endpoints_are_no_data_and_the_healthy_proxy_is_still_judged() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 1).await.unwrap();
    let (hang, reset, junk) = (hanging().await, resetting().await, garbage().await);
    let targets = [hang.to_string(), reset.to_string(), junk.to_string()];
    let mut extra = vec!["--fetch-timeout", "300ms"];
    for t in &targets {
        extra.extend(["--target", t.as_str()]);
    }
    let agent = Agent::start_with(&fx.envoy, FAST_SPEC, "250ms", &extra).await.unwrap();
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 200);
    // The hanging proxy costs each tick at most the fetch timeout; the rollout still walks up.
    let s = agent.wait_for(Duration::from_secs(30), "promotion", |s| s["phase"] == "succeeded").await.unwrap();
    let _ = traffic.stop(Duration::from_millis(100)).await;
    assert_eq!(weight(&s), 100.0);
    let failing: Vec<&str> = s["proxies_failing"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for t in &targets {
        assert!(failing.iter().any(|f| f.contains(t.as_str())), "{t} is reported: {failing:?}");
    }
    assert!(failing.iter().any(|f| f.contains("timed out")), "{failing:?}");
    assert_eq!(s["proxies_reporting"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_is_down_entirely_is_rolled_back() {
    let stable = Backend::start("v1").await.unwrap();
    // Nothing listens at the canary's address: Envoy answers 503 for every canary request.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let envoy = Envoy::start(&LocalSetup {
        stable: stable.addr,
        canary: dead,
        concurrency: 1,
        route: route(0.0, 1, "").unwrap(),
        raw_plugin_config: None,
        shape: Default::default(),
    })
    .await
    .unwrap();
    let agent = Agent::start(&envoy, FAST_SPEC, "250ms").await.unwrap();
    let traffic = Steady::start(envoy.http().clone(), envoy.url("/"), 200);
    let s = agent.wait_for(Duration::from_secs(15), "rolled back", |s| s["phase"] == "rolled_back").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = traffic.stop(Duration::from_millis(200)).await;
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("rollback"), "{reason}");
    let canary = s["subsets"].as_array().unwrap().iter().find(|x| x["role"] == "canary").unwrap().clone();
    assert!(canary["failures_total"].as_u64().unwrap() > 0, "503s from a dead canary are failures: {canary}");
    assert!(samples.iter().any(|x| x.status == 503), "users did see the dead canary briefly");
    let last: Vec<_> = samples.iter().rev().take(100).collect();
    assert!(last.iter().all(|x| x.served_by == "v1" && x.status == 200), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_change_under_in_flight_requests_without_failing_any() {
    let fx = Fixture::start(route(0.0, 1, "").unwrap(), 2).await.unwrap();
    fx.stable.delay(Duration::from_millis(40));
    fx.canary.delay(Duration::from_millis(40));
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), 200);
    for (i, w) in [10.0, 50.0, 90.0, 30.0, 0.0, 100.0, 20.0, 70.0, 5.0, 60.0].iter().enumerate() {
        let revision = 2 + i as u64;
        fx.envoy.write_route(&route(*w, revision, "").unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let samples = traffic.stop(Duration::from_millis(500)).await;
    assert!(samples.len() > 250, "{}", samples.len());
    let bad: Vec<_> = samples.iter().filter(|x| x.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed across reloads: {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(samples.iter().any(|x| x.served_by == "v2") && samples.iter().any(|x| x.served_by == "v1"));
    let update_success = fx.envoy.stat("extension_config_discovery.http_filter.canary-gate.update_success").await;
    assert!(update_success.unwrap_or(0) >= 2, "{update_success:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_client_cannot_read_counters_kill_or_pick_the_canary() {
    let fx = Fixture::start(route(50.0, 3, "").unwrap(), 1).await.unwrap();
    let http = fx.envoy.http();
    // The snapshot and kill paths on the public listener are just proxied to a backend.
    let r = http.get(fx.envoy.url(canary_core::config::DEFAULT_SNAPSHOT_PATH)).send().await.unwrap();
    let by = r.headers().get("x-served-by").map(|v| v.to_str().unwrap().to_owned());
    assert!(by.is_some(), "answered by a backend, not the filter");
    assert!(!r.text().await.unwrap().contains("canary-gate.snapshot"));
    let kill = format!("{}?rollout=demo&revision=3", canary_core::kill::DEFAULT_KILL_PATH);
    let r = http.post(fx.envoy.url(&kill)).send().await.unwrap();
    assert!(r.headers().get("x-served-by").is_some());
    let snap = fx.envoy.snapshot().await.unwrap();
    assert!(snap.kill.is_none(), "a public POST recorded no kill: {snap:?}");
    // The label header from a client does not decide: at 50% both subsets still serve.
    let t = fx.send(400, &[("x-canary-subset", "v2".to_owned())]).await;
    assert!(t.served("v1") > 120 && t.served("v2") > 120, "{t:?}");
}

#[test]
fn the_agent_refuses_to_listen_beyond_loopback_without_a_token() {
    let bin = canary_e2e::paths::gate_agent_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rollout.yaml"), FAST_SPEC).unwrap();
    let out = std::process::Command::new(&bin)
        .args(["run", "--target", "127.0.0.1:9", "--config-file", "/nonexistent/canary-gate.json"])
        .args(["--listen", "0.0.0.0:0", "--spec"])
        .arg(dir.path().join("rollout.yaml"))
        .env_remove("GATE_AGENT_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("--token"), "{err}");
}
