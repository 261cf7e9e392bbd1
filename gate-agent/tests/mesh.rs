//! gate-agent's Kubernetes parts with the real `kube` client against an in-process API server
//! test double (tests/support/apiserver.rs): the WasmPlugin router, Lease leader election, pod
//! discovery and Events. Real time, short leases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/apiserver.rs"]
mod apiserver;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use canary_core::{RolloutPhase, RolloutRecord, Weight};
use gate_agent::mesh::discovery::PodTargets;
use gate_agent::mesh::events::KubeEvents;
use gate_agent::mesh::lease::{LeaderGated, LeaseSettings, spawn_election};
use gate_agent::mesh::wasmplugin::{WasmPlugin, WasmPluginRouter};
use gate_agent::notify::{Notice, Notifier};
use gate_agent::router::{RouterError, WeightRouter};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};

const NS: &str = "shop";
const PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins";
const PLUGIN: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/canary-gate";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases";

fn wasmplugin(weight: u32, revision: u64) -> Value {
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": { "name": "canary-gate", "namespace": NS, "labels": { "team": "web" } },
        "spec": {
            "url": "oci://registry.example/canary-gate/filter@sha256:0123",
            "failStrategy": "FAIL_OPEN",
            "phase": "AUTHN",
            "match": [{ "mode": "CLIENT" }],
            "pluginConfig": {
                "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                "canary_weight": weight, "sticky": { "header": "x-user-id" }, "revision": revision
            }
        }
    })
}

fn record(phase: RolloutPhase) -> RolloutRecord {
    RolloutRecord::new(phase, 0, "test", 1)
}

fn w(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

async fn setup() -> (FakeApiServer, WasmPluginRouter) {
    let api = FakeApiServer::start().await;
    api.put(PLUGINS, wasmplugin(10, 4));
    let router = WasmPluginRouter::new(Api::namespaced(api.client(NS), NS), "canary-gate", Duration::from_millis(500));
    (api, router)
}

#[tokio::test]
async fn the_router_writes_only_its_fields_and_keeps_everything_else() {
    let (api, router) = setup().await;
    let before = api.get(PLUGIN).unwrap();
    assert_eq!(router.current().await.unwrap().canary_weight, w(10.0));
    let written = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap();
    assert_eq!((written.canary_weight, written.revision), (w(25.0), 5));
    let after = api.get(PLUGIN).unwrap();
    let cfg = &after["spec"]["pluginConfig"];
    assert_eq!(cfg["canary_weight"], 25);
    assert_eq!(cfg["rollout_state"]["phase"], "progressing");
    // Every other field is as it was.
    for field in ["url", "failStrategy", "phase", "match"] {
        assert_eq!(after["spec"][field], before["spec"][field], "{field}");
    }
    assert_eq!(cfg["sticky"], before["spec"]["pluginConfig"]["sticky"]);
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    let patches: Vec<_> = api.log().into_iter().filter(|(m, _, _)| m == "PATCH").collect();
    assert_eq!(patches.len(), 1, "{patches:?}");
}

#[tokio::test]
async fn a_concurrent_edit_is_read_again_and_preserved_never_overwritten() {
    let (api, router) = setup().await;
    // Between the agent's read and its write, someone turns off sticky sessions, changes the
    // priority, and raises the weight by hand to 50.
    api.interlope(
        PLUGIN,
        Box::new(|obj| {
            obj["spec"]["priority"] = json!(10);
            obj["spec"]["pluginConfig"]["sticky"] = Value::Null;
            obj["spec"]["pluginConfig"]["canary_weight"] = json!(50);
            obj["spec"]["pluginConfig"]["revision"] = json!(9);
        }),
    );
    let written = router.apply(w(0.0), record(RolloutPhase::RolledBack)).await.unwrap();
    let statuses: Vec<u16> = api.log().into_iter().filter(|(m, _, _)| m == "PATCH").map(|(_, _, s)| s).collect();
    assert_eq!(statuses, vec![409, 200], "the stale write was refused, then recomputed from the new version");
    let after = api.get(PLUGIN).unwrap();
    assert_eq!(after["spec"]["priority"], 10, "the other writer's field survives");
    assert!(after["spec"]["pluginConfig"]["sticky"].is_null());
    assert_eq!(after["spec"]["pluginConfig"]["canary_weight"], 0);
    assert_eq!(written.revision, 10, "the revision follows the version it was computed from");
}

#[tokio::test]
async fn api_errors_and_timeouts_change_nothing_and_say_why() {
    let (api, router) = setup().await;
    api.fail_next(1);
    let e = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap_err();
    assert!(matches!(e, RouterError::Remote { .. }), "{e}");
    assert!(e.to_string().contains("injected failure"), "{e}");
    api.set_delay(Duration::from_secs(2));
    let started = Instant::now();
    let e = router.apply(w(25.0), record(RolloutPhase::Progressing)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500), "each call is bounded");
    assert!(e.to_string().contains("within"), "{e}");
    api.set_delay(Duration::ZERO);
    assert_eq!(api.get(PLUGIN).unwrap()["spec"]["pluginConfig"]["canary_weight"], 10);
    // A missing WasmPlugin and a pluginConfig the filter would reject are errors naming it.
    api.remove(PLUGIN);
    let e = router.current().await.unwrap_err();
    assert!(e.to_string().contains("WasmPlugin canary-gate"), "{e}");
    let mut bad = wasmplugin(10, 4);
    bad["spec"]["pluginConfig"]["canary_weight"] = json!(150);
    api.put(PLUGINS, bad);
    let e = router.current().await.unwrap_err();
    assert!(e.to_string().contains("canary_weight"), "{e}");
}

fn lease_settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_millis(2_000),
        renew_deadline: Duration::from_millis(1_200),
        retry_period: Duration::from_millis(200),
        call_timeout: Duration::from_millis(400),
        ..LeaseSettings::new("canary-gate-agent", identity)
    }
}

#[tokio::test]
async fn two_agents_exactly_one_writes() {
    let (api, router) = setup().await;
    lease_settings("a").check().unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut agents = Vec::new();
    for id in ["agent-a", "agent-b"] {
        let s = Arc::clone(&stop);
        let (leadership, task) =
            spawn_election(Api::<Lease>::namespaced(api.client(NS), NS), lease_settings(id), async move {
                s.notified().await
            });
        agents.push((id, LeaderGated::new(router.clone(), leadership.clone()), leadership, task));
    }
    // Both try to write every 50 ms for 3 s.
    let writes = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let both = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut pct = 1.0;
    while Instant::now() < deadline {
        let leaders: Vec<bool> = agents.iter().map(|(_, _, l, _)| l.is_leader()).collect();
        if leaders.iter().all(|x| *x) {
            both.store(true, Ordering::SeqCst);
        }
        for (i, (_, gated, _, _)) in agents.iter().enumerate() {
            match gated.apply(w(pct), record(RolloutPhase::Progressing)).await {
                Ok(_) => {
                    writes[i].fetch_add(1, Ordering::SeqCst);
                }
                Err(RouterError::NotLeader) => {}
                Err(e) => panic!("{e}"),
            }
        }
        pct = if pct >= 50.0 { 1.0 } else { pct + 1.0 };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (a, b) = (writes[0].load(Ordering::SeqCst), writes[1].load(Ordering::SeqCst));
    assert!(!both.load(Ordering::SeqCst), "two leaders at once");
    assert!((a > 0) != (b > 0), "exactly one agent wrote: a {a}, b {b}");
    let lease = api.get(&format!("{LEASES}/canary-gate-agent")).unwrap();
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    assert_eq!(holder, if a > 0 { "agent-a" } else { "agent-b" });
    stop.notify_waiters();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_its_lease_expires_and_another_takes_over() {
    let api = FakeApiServer::start().await;
    let leases = || Api::<Lease>::namespaced(api.client(NS), NS);
    let stop = Arc::new(tokio::sync::Notify::new());
    let s = Arc::clone(&stop);
    let (a, _ta) = spawn_election(leases(), lease_settings("agent-a"), async move { s.notified().await });
    let mut a_wait = a.clone();
    tokio::time::timeout(Duration::from_secs(3), a_wait.acquired()).await.unwrap();
    let s = Arc::clone(&stop);
    let (b, _tb) = spawn_election(leases(), lease_settings("agent-b"), async move { s.notified().await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.is_leader() && !b.is_leader(), "b waits while a renews");

    // The API server stops accepting a's renewals.
    api.refuse_holder(Some("agent-a"));
    let cut = Instant::now();
    let mut a_lost = a.clone();
    tokio::time::timeout(Duration::from_secs(3), a_lost.lost()).await.unwrap();
    let stopped_after = cut.elapsed();
    assert!(stopped_after < Duration::from_millis(2_000), "a stopped writing {stopped_after:?} after its last renewal");
    assert!(!b.is_leader(), "b must not lead before a's lease expired");
    let mut b_wait = b.clone();
    tokio::time::timeout(Duration::from_secs(5), b_wait.acquired()).await.unwrap();
    let took_over = cut.elapsed();
    assert!(took_over >= Duration::from_millis(1_800), "b took over {took_over:?} after the cut, before expiry");
    assert!(!a.is_leader());
    let lease = api.get(&format!("{LEASES}/canary-gate-agent")).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "agent-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    stop.notify_waiters();
}

#[tokio::test]
async fn a_leader_that_shuts_down_releases_the_lease_at_once() {
    let api = FakeApiServer::start().await;
    let leases = || Api::<Lease>::namespaced(api.client(NS), NS);
    let stop_a = Arc::new(tokio::sync::Notify::new());
    let s = Arc::clone(&stop_a);
    let (a, ta) = spawn_election(leases(), lease_settings("agent-a"), async move { s.notified().await });
    let mut a_wait = a.clone();
    tokio::time::timeout(Duration::from_secs(3), a_wait.acquired()).await.unwrap();
    let (b, _tb) = spawn_election(leases(), lease_settings("agent-b"), std::future::pending());
    stop_a.notify_waiters();
    ta.await.unwrap();
    assert!(!a.is_leader());
    let released = Instant::now();
    let mut b_wait = b.clone();
    tokio::time::timeout(Duration::from_secs(3), b_wait.acquired()).await.unwrap();
    assert!(released.elapsed() < Duration::from_millis(1_000), "no need to wait for expiry after a release");
}

#[tokio::test]
async fn discovery_reads_the_ready_pods_behind_the_selector() {
    let api = FakeApiServer::start().await;
    let pods = "/api/v1/namespaces/shop/pods";
    let pod = |name: &str, app: &str, ip: &str, ready: &str| {
        json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": NS, "labels": { "app": app } },
                "status": { "phase": "Running", "podIP": ip, "conditions": [{ "type": "Ready", "status": ready }] } })
    };
    api.put(pods, pod("web-1", "web", "10.0.0.1", "True"));
    api.put(pods, pod("web-2", "web", "10.0.0.2", "True"));
    api.put(pods, pod("web-3", "web", "10.0.0.3", "False"));
    api.put(pods, pod("db-1", "db", "10.0.0.9", "True"));
    let targets = PodTargets::new(Api::namespaced(api.client(NS), NS), "app=web", 15290, Duration::from_secs(1));
    assert_eq!(targets.list().await.unwrap(), vec!["10.0.0.1:15290", "10.0.0.2:15290"]);
    // Pods come and go: the refreshed list follows.
    let rx = targets.clone().spawn(vec![], Duration::from_millis(100));
    api.remove(&format!("{pods}/web-1"));
    api.put(pods, pod("web-4", "web", "10.0.0.4", "True"));
    let mut rx = rx;
    let seen = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            rx.changed().await.unwrap();
            let now = rx.borrow().clone();
            if now == vec!["10.0.0.2:15290", "10.0.0.4:15290"] {
                return now;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "last list: {:?}", rx.borrow());
}

#[tokio::test]
async fn phase_changes_become_kubernetes_events_on_the_wasmplugin() {
    let (api, _router) = setup().await;
    let plugin: WasmPlugin = serde_json::from_value(api.get(PLUGIN).unwrap()).unwrap();
    let regarding = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("extensions.istio.io/v1alpha1".into()),
        kind: Some("WasmPlugin".into()),
        name: plugin.metadata.name.clone(),
        namespace: Some(NS.into()),
        uid: plugin.metadata.uid.clone(),
        ..Default::default()
    };
    let events = KubeEvents::new(Api::namespaced(api.client(NS), NS), regarding, "agent-a", Duration::from_secs(1));
    let notice = Notice {
        rollout: "demo".into(),
        from: "progressing".into(),
        to: "rolled_back".into(),
        weight_percent: 0.0,
        reason: "rollback: decisive breach: errors".into(),
    };
    events.post(&notice).await.unwrap();
    let stored = api.list("/api/v1/namespaces/shop/events");
    assert_eq!(stored.len(), 1);
    let e = &stored[0];
    assert_eq!((e["type"].as_str(), e["reason"].as_str()), (Some("Warning"), Some("RolledBack")));
    assert_eq!(e["involvedObject"]["name"], "canary-gate");
    assert!(e["message"].as_str().unwrap().contains("decisive breach"));
}
