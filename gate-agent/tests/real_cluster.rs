//! Opt-in tests against a real Kubernetes cluster with Istio's CRDs installed. Ignored by default
//! (cargo prints the reason); run them with `--ignored` and `CANARY_GATE_REAL_CLUSTER=1`. They use the kubeconfig from the environment (`KUBECONFIG` or
//! `~/.kube/config`) and the namespace in `CANARY_GATE_NAMESPACE` (default `default`), create a
//! WasmPlugin and a Lease named `canary-gate-test-<pid>` there, and delete them afterwards:
//!
//! ```sh
//! CANARY_GATE_REAL_CLUSTER=1 CANARY_GATE_NAMESPACE=canary-test \
//!   cargo test -p gate-agent --test real_cluster -- --ignored
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

use std::time::Duration;

use canary_core::{RolloutPhase, RolloutRecord, Weight};
use gate_agent::mesh::lease::{LeaseSettings, spawn_election};
use gate_agent::mesh::wasmplugin::{WasmPlugin, WasmPluginRouter};
use gate_agent::router::WeightRouter;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

fn enabled() -> Option<String> {
    if std::env::var("CANARY_GATE_REAL_CLUSTER").as_deref() == Ok("1") {
        return Some(std::env::var("CANARY_GATE_NAMESPACE").unwrap_or_else(|_| "default".into()));
    }
    eprintln!(
        "skipped: set CANARY_GATE_REAL_CLUSTER=1 (and CANARY_GATE_NAMESPACE, KUBECONFIG) to run against a real \
         cluster with Istio's CRDs"
    );
    None
}

#[tokio::test]
#[ignore = "needs a real cluster: CANARY_GATE_REAL_CLUSTER=1 KUBECONFIG=... cargo test -p gate-agent --test real_cluster -- --ignored"]
async fn the_wasmplugin_router_and_the_lease_work_on_a_real_api_server() {
    let Some(ns) = enabled() else { return };
    let client = kube::Client::try_default().await.expect("a kubeconfig from the environment");
    let name = format!("canary-gate-test-{}", std::process::id());
    let plugins: Api<WasmPlugin> = Api::namespaced(client.clone(), &ns);
    let plugin: WasmPlugin = serde_json::from_value(serde_json::json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": { "name": name },
        "spec": { "url": "oci://example.invalid/canary-gate/filter:test", "failStrategy": "FAIL_OPEN",
                  "selector": { "matchLabels": { "app": "canary-gate-test-none" } },
                  "pluginConfig": { "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                                    "canary_weight": 0, "revision": 1 } }
    }))
    .unwrap();
    plugins.create(&PostParams::default(), &plugin).await.unwrap();
    let router = WasmPluginRouter::new(plugins.clone(), &name, Duration::from_secs(5));
    let record = RolloutRecord::new(RolloutPhase::Progressing, 0, "real-cluster test", 0);
    let written = router.apply(Weight::from_percent(10.0).unwrap(), record).await;
    let read = router.current().await;
    let (leadership, task) =
        spawn_election(Api::<Lease>::namespaced(client.clone(), &ns), LeaseSettings::new(&name, "test"), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
    let mut acquired = leadership.clone();
    let led = tokio::time::timeout(Duration::from_secs(10), acquired.acquired()).await;
    let _ = task.await;
    let _ = plugins.delete(&name, &DeleteParams::default()).await;
    let _ = Api::<Lease>::namespaced(client, &ns).delete(&name, &DeleteParams::default()).await;
    assert_eq!(written.unwrap().revision, 2);
    assert_eq!(read.unwrap().canary_weight, Weight::from_percent(10.0).unwrap());
    assert!(led.is_ok(), "did not acquire the lease");
}
