//! Who can pick the canary, and who stays on one: the label with and without the filter (the
//! local strip, and the Istio-sidecar shape where only the label's secret protects it), the
//! affinity cookie, and two gated services behind one proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use canary_core::split::Role;
use canary_e2e::{Backend, Envoy, Fixture, LocalSetup, Shape, route};

const TOKEN: &str = "t0ken-only-the-filter-knows-42";

fn label(value: &str) -> Vec<(&'static str, String)> {
    vec![("x-canary-subset", value.to_owned())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_filter_the_local_strip_keeps_a_client_label_from_the_canary() {
    let shape = Shape { without_filter: true, ..Shape::default() };
    let f = Fixture::start_shaped(route(100.0, 1, "").unwrap(), 1, shape).await.unwrap();
    let t = f.send(30, &label("v2")).await;
    assert_eq!(t.served("v1"), 30, "the early header mutation removed the client's label: {t:?}");
    assert_eq!(f.canary.received(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_sidecar_shape_without_the_filter_only_the_secret_reaches_the_canary() {
    // No strip (Istio sidecars have none) and no filter (not pulled yet, or failed open).
    let shape = Shape { without_filter: true, mesh_label_token: Some(TOKEN.into()), ..Shape::default() };
    let cfg = route(100.0, 1, &format!(r#","label_token":"{TOKEN}""#)).unwrap();
    let f = Fixture::start_shaped(cfg, 1, shape).await.unwrap();
    for guess in ["v2", "v2.", "v2.true", "V2"] {
        let t = f.send(10, &label(guess)).await;
        assert_eq!(t.served("v1"), 10, "a client label {guess:?} must not pick the canary: {t:?}");
    }
    assert_eq!(f.canary.received(), 0);
    // Control: the route table does match the secret label, so the guard above is the token.
    let t = f.send(5, &label(&format!("v2.{TOKEN}"))).await;
    assert_eq!(t.served("v2"), 5, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_sidecar_shape_the_filter_labels_with_the_secret() {
    let shape = Shape { mesh_label_token: Some(TOKEN.into()), ..Shape::default() };
    let cfg = route(50.0, 1, &format!(r#","label_token":"{TOKEN}""#)).unwrap();
    let f = Fixture::start_shaped(cfg, 2, shape).await.unwrap();
    let t = f.send(1000, &label("v2")).await;
    let share = t.served("v2") as f64 / 1000.0;
    assert!((share - 0.5).abs() < 0.06, "the weight decides, not the client's label: {t:?}");
    let labels = f.canary.labels_seen();
    assert!(labels.iter().all(|l| *l == format!("v2.{TOKEN}")), "{:?}", labels.first());
    let snap = f.envoy.snapshot().await.unwrap();
    assert_eq!(snap.subset(Role::Canary).unwrap().counters.requests, t.served("v2"));
}

/// Envoy matches a request's route when its headers arrive, before the filter runs. In the sidecar
/// shape nothing strips a client's label first, so a client that sends the exact label of one
/// subset has that subset's route matched already. The filter's label must still decide: writing a
/// request header from wasm clears Envoy's route cache, which is why the filter makes no
/// `clear_route_cache` call of its own (issue 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_matched_before_the_filter_runs_follows_the_label_the_filter_writes() {
    let shape = Shape { mesh_label_token: Some(TOKEN.into()), ..Shape::default() };
    let extra = format!(r#","label_token":"{TOKEN}""#);
    let f = Fixture::start_shaped(route(0.0, 1, &extra).unwrap(), 1, shape).await.unwrap();
    let t = f.send(30, &label(&format!("v2.{TOKEN}"))).await;
    assert_eq!(t.served("v1"), 30, "at 0% the canary's own label, matched before the filter, is overridden: {t:?}");
    assert_eq!(f.canary.received(), 0);
    f.envoy.write_route(&route(100.0, 2, &extra).unwrap()).unwrap();
    f.envoy.wait_for_revision(2, std::time::Duration::from_secs(10)).await.unwrap();
    let t = f.send(30, &label("v1")).await;
    assert_eq!(t.served("v2"), 30, "at 100% a request first matched to stable reaches the canary: {t:?}");
    let snap = f.envoy.snapshot().await.unwrap();
    assert_eq!(snap.subset(Role::Canary).unwrap().counters.requests, 30);
    assert_eq!(snap.subset(Role::Stable).unwrap().counters.requests, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_affinity_cookie_keeps_an_anonymous_session_on_one_version() {
    let cfg = route(50.0, 1, r#","affinity_cookie":{"name":"cg-demo","max_age_s":600}"#).unwrap();
    let f = Fixture::start(cfg, 2).await.unwrap();
    let mut sessions = [0u32; 2];
    for _ in 0..30 {
        let first = f.envoy.http().get(f.envoy.url("/")).send().await.unwrap();
        let served = canary_e2e::traffic::served_by(&first);
        let set =
            first.headers().get("set-cookie").expect("a new session gets the cookie").to_str().unwrap().to_owned();
        assert!(set.starts_with("cg-demo=") && set.contains("Max-Age=600; Path=/; HttpOnly; SameSite=Lax"), "{set}");
        let cookie = set.split(';').next().unwrap().to_owned();
        let t = f.send(10, &[("cookie", cookie.clone())]).await;
        assert_eq!(t.served(&served), 10, "session {cookie} began on {served}: {t:?}");
        let again = f.envoy.http().get(f.envoy.url("/")).header("cookie", cookie).send().await.unwrap();
        assert!(again.headers().get("set-cookie").is_none(), "a session with the cookie keeps it");
        sessions[usize::from(served == "v2")] += 1;
    }
    assert!(sessions[0] > 0 && sessions[1] > 0, "sessions on both versions: {sessions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rollouts_in_one_envoy_count_and_are_killed_independently() {
    let (a1, a2) = (Backend::start("v1").await.unwrap(), Backend::start("v2").await.unwrap());
    let (b1, b2) = (Backend::start("b-v1").await.unwrap(), Backend::start("b-v2").await.unwrap());
    let other = canary_core::config::parse_route(
        br#"{"version":1,"rollout":"search","stable":"v1","canary":"v2","canary_weight":0,"revision":5,
            "served_by":{"clusters":{"stable":"stable-b","canary":"canary-b"}}}"#,
    )
    .unwrap();
    let envoy = Envoy::start(&LocalSetup {
        stable: a1.addr,
        canary: a2.addr,
        concurrency: 2,
        route: route(100.0, 1, "").unwrap(),
        raw_plugin_config: None,
        shape: Shape { second: Some((b1.addr, b2.addr, other.clone())), ..Shape::default() },
    })
    .await
    .unwrap();
    let url_b = format!("http://{}/", envoy.public_b.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while envoy.snapshot_of("search").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "rollout search never applied: {}", envoy.log_tail(20));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let t = canary_e2e::traffic::send(envoy.http(), &envoy.url("/"), &[], 200, 8).await;
    assert_eq!(t.served("v2"), 200, "{t:?}");
    let t = canary_e2e::traffic::send(envoy.http(), &url_b, &[], 100, 8).await;
    assert_eq!(t.served("b-v1"), 100, "{t:?}");

    let demo = envoy.snapshot_of("demo").await.unwrap();
    let search = envoy.snapshot_of("search").await.unwrap();
    assert_eq!(demo.rollouts.iter().map(|r| r.as_str()).collect::<Vec<_>>(), ["demo", "search"]);
    let counts = |s: &canary_core::Snapshot| {
        (s.subset(Role::Stable).unwrap().counters.requests, s.subset(Role::Canary).unwrap().counters.requests)
    };
    assert_eq!(counts(&demo), (0, 200));
    assert_eq!(counts(&search), (100, 0));
    assert_eq!(search.route.as_ref().unwrap().revision, 5);
    // Without a name, a proxy with two rollouts says which there are.
    let err = envoy.snapshot().await.unwrap_err();
    assert!(err.contains("demo, search"), "{err}");

    // A kill of one rollout leaves the other alone.
    let kill =
        format!("http://{}{}?rollout=demo&id=v2&revision=1", envoy.snapshot, canary_core::kill::DEFAULT_KILL_PATH);
    assert_eq!(envoy.http().post(kill).send().await.unwrap().status(), 200);
    let mut weighted = other.clone();
    weighted.canary_weight = canary_core::Weight::FULL;
    weighted.revision = 6;
    envoy.write_route_b(&weighted).unwrap();
    while envoy.snapshot_of("search").await.unwrap().route.unwrap().revision != 6 {
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(10));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    let t = canary_e2e::traffic::send(envoy.http(), &envoy.url("/"), &[], 100, 8).await;
    assert_eq!(t.served("v1"), 100, "demo is killed: {t:?}");
    let t = canary_e2e::traffic::send(envoy.http(), &url_b, &[], 100, 8).await;
    assert_eq!(t.served("b-v2"), 100, "search is not: {t:?}");
    assert!(envoy.snapshot_of("search").await.unwrap().kill.is_none());
}
