//! Faults a real API server cannot be made to produce on cue, with the real `kube` client against
//! the in-process API server **test double** (tests/support/apiserver.rs): a 500, a slow answer, an
//! edit landing exactly between the router's read and its write, a leader whose renewals are
//! refused. Everything else runs against the real kube-apiserver (mesh.rs, mesh_agents.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/fixtures.rs"]
mod fixtures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use canary_core::RolloutPhase;
use fixtures::{lease_settings, record, w};
use gate_agent::mesh::lease::spawn_election;
use gate_agent::mesh::wasmplugin::WasmPluginRouter;
use gate_agent::router::{RouterError, WeightRouter};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};

const NS: &str = "shop";
const PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins";
const PLUGIN: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/canary-gate";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases";

fn wasmplugin(weight: u32, revision: u64) -> Value {
    fixtures::wasmplugin(Some(NS), weight, revision)
}

async fn setup() -> (FakeApiServer, WasmPluginRouter) {
    let api = FakeApiServer::start().await;
    api.put(PLUGINS, wasmplugin(10, 4));
    let router = WasmPluginRouter::new(Api::namespaced(api.client(NS), NS), "canary-gate", Duration::from_millis(500));
    (api, router)
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
