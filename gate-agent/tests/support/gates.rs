//! Helpers for the CanaryGate tests: the CRD installed, the user's objects, and fabricated
//! proxies (pods whose loopback IPs serve snapshots at their gate's WasmPlugin weight).
#![allow(dead_code)] // each test binary uses a different part of it

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use canary_core::snapshot::{COMPACT_CONTENT_TYPE, SNAPSHOT_FORMAT, accepts_compact};
use canary_core::{InstanceInfo, Outcome, Role, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot};
use gate_agent::control::Settings;
use gate_agent::gate::controller::ControllerSettings;
use gate_agent::gate::generate::Install;
use gate_agent::mesh::extension::PluginKind;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use kube::Api;
use serde_json::{Value, json};

use super::kube_support::{ControlPlane, TestNamespace, workspace_root};

/// The settings of a controller run in the test process over `namespaces`: a 250 ms poll and
/// tick, a module that is never pulled, and `plugin_kind` (`None`: whichever the cluster serves,
/// WasmPlugin on the tests' server, which serves both).
pub fn controller_settings(namespaces: Vec<String>, plugin_kind: Option<PluginKind>) -> ControllerSettings {
    ControllerSettings {
        namespaces,
        install: Install {
            module_url: "oci://registry.invalid/canary-gate/filter:0.1.0".into(),
            module_sha256: "ab".repeat(32),
            namespace: "canary-gate-system".into(),
            service_account: "canary-gate-controller".into(),
            pod_labels: [("app.kubernetes.io/name".to_owned(), "canary-gate-controller".to_owned())].into(),
        },
        identity: "controller-test".into(),
        poll: Duration::from_millis(250),
        resync: Duration::from_secs(30),
        kube_timeout: Duration::from_secs(2),
        tick: Duration::from_millis(250),
        fetch_timeout: Duration::from_millis(500),
        discovery_interval: Duration::from_secs(1),
        snapshot_path: canary_core::config::DEFAULT_SNAPSHOT_PATH.into(),
        kill_path: canary_core::kill::DEFAULT_KILL_PATH.into(),
        rollout: Settings::default(),
        plugin_kind,
        waypoint_stats_port: gate_agent::mesh::envoy_stats::DEFAULT_STATS_PORT,
    }
}

pub fn install_crd(cp: &ControlPlane) {
    let ok = |c: &mut Command| c.status().unwrap().success();
    let crd = workspace_root().join("deploy/crd/canarygate.yaml");
    assert!(ok(cp.kubectl().args(["apply", "--server-side", "--field-manager=canary-gate-tests", "-f"]).arg(&crd)));
    assert!(ok(cp.kubectl().args([
        "wait",
        "--for=condition=Established",
        "crd/canarygates.canary-gate.dev",
        "--timeout=60s"
    ])));
}

pub fn apply(cp: &ControlPlane, object: &Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("o.json");
    std::fs::write(&file, object.to_string()).unwrap();
    let out = cp.kubectl().args(["apply", "--server-side", "--field-manager=user", "-f"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The user's VirtualService for `service`: with the canary's label route, or (`labelled` false)
/// only the stable route.
pub fn virtual_service(ns: &str, service: &str, labelled: bool) -> Value {
    let stable = json!({ "name": "stable", "route": [{ "destination": { "host": service, "subset": "v1" } }] });
    let canary = json!({ "name": "canary",
        "match": [{ "headers": { "x-canary-subset": { "exact": "v2" } } }],
        "route": [{ "destination": { "host": service, "subset": "v2" } }] });
    let http = if labelled { json!([canary, stable]) } else { json!([stable]) };
    json!({ "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": { "name": service, "namespace": ns },
            "spec": { "hosts": [service], "http": http } })
}

/// A CanaryGate with the promotion gate off: these tests' subject is stepping, judging and
/// reconciling, not evidence (the test that is sets `requireEvidence` back on).
pub fn gate(ns: &str, name: &str, app: &str, port: u16, interval: &str) -> Value {
    json!({
        "apiVersion": "canary-gate.dev/v1alpha1", "kind": "CanaryGate",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "service": { "name": name, "port": 8080 },
            "workload": { "selector": { "app": app }, "snapshotPort": port },
            "stable": "v1", "canary": "v2", "route": { "name": name },
            "analysis": { "interval": interval, "threshold": 3, "stepWeights": [10, 30, 60], "maxWeight": 60,
                          "minRequests": 20, "promotion": { "requireEvidence": false },
                          "metrics": [{ "name": "request-success-rate", "thresholdRange": { "min": 99 }, "interval": "2s" }] }
        }
    })
}

/// A proxy on `addr` serving 100 requests between two reads, split at the weight of WasmPlugin
/// `plugin`; its canary fails every request while `failing` is set.
async fn fake_proxy(ns: &TestNamespace, plugin: String, addr: SocketAddr, failing: Arc<AtomicBool>) -> SocketAddr {
    let counters = Arc::new(Mutex::new((SubsetCounters::default(), SubsetCounters::default())));
    let plugins = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
    let id = format!("proxy-{addr}");
    let app = axum::Router::new().fallback(move |method: axum::http::Method, headers: HeaderMap| {
        let (plugins, counters, id, plugin, failing) =
            (plugins.clone(), Arc::clone(&counters), id.clone(), plugin.clone(), Arc::clone(&failing));
        async move {
            if method == axum::http::Method::POST {
                return kill_taken(); // a kill order: taken
            }
            let weight = plugins
                .get(&plugin)
                .await
                .ok()
                .and_then(|p| p.spec.plugin_config)
                .and_then(|c| c["canary_weight"].as_f64())
                .unwrap_or(0.0);
            let mut c = counters.lock().unwrap();
            let canary = weight.round() as u64;
            for _ in 0..100 - canary {
                c.0.record(Outcome::Success, 2_000);
            }
            let outcome = if failing.load(Ordering::SeqCst) { Outcome::Failure } else { Outcome::Success };
            for _ in 0..canary {
                c.1.record(outcome, 2_000);
            }
            snapshot_reply(&headers, id, &c.0, &c.1)
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A simulated proxy's answer: what the filter answers a client (the compact snapshot if its
/// `Accept` asks for it, JSON otherwise).
pub type Reply = ([(header::HeaderName, &'static str); 1], Vec<u8>);

pub fn snapshot_reply(headers: &HeaderMap, id: String, stable: &SubsetCounters, canary: &SubsetCounters) -> Reply {
    let snap = snapshot(id, stable, canary);
    if headers.get(header::ACCEPT).is_some_and(|a| accepts_compact(a.as_bytes())) {
        return ([(header::CONTENT_TYPE, COMPACT_CONTENT_TYPE)], snap.to_compact_json().unwrap());
    }
    ([(header::CONTENT_TYPE, "application/json")], serde_json::to_vec(&snap).unwrap())
}

/// The answer to a kill order: taken.
pub fn kill_taken() -> Reply {
    ([(header::CONTENT_TYPE, "application/json")], b"{}".to_vec())
}

fn snapshot(id: String, stable: &SubsetCounters, canary: &SubsetCounters) -> Snapshot {
    let name = |s: &str| SubsetName::try_from(s).unwrap();
    Snapshot {
        format: SNAPSHOT_FORMAT.into(),
        instance: InstanceInfo { id, started_at_unix_ms: 1 },
        taken_at_unix_ms: 2,
        route: None,
        subsets: vec![
            SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: stable.clone() },
            SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: canary.clone() },
        ],
        kill: None,
        misrouted: None,
        dark_launch: None,
        rollouts: Vec::new(),
    }
}

/// Gate `name`'s proxies: one pod per loopback address, all on one port.
pub async fn proxies(ns: &TestNamespace, name: &str, ips: &[[u8; 4]], failing: &Arc<AtomicBool>) -> u16 {
    let plugin = format!("{name}-canary-gate");
    let first = fake_proxy(ns, plugin.clone(), SocketAddr::from((ips[0], 0)), Arc::clone(failing)).await;
    for ip in &ips[1..] {
        fake_proxy(ns, plugin.clone(), SocketAddr::from((*ip, first.port())), Arc::clone(failing)).await;
    }
    for (i, ip) in ips.iter().enumerate() {
        let addr = std::net::Ipv4Addr::from(*ip).to_string();
        ns.pod(&format!("{name}-caller-{i}"), json!({ "app": format!("{name}-caller") }), &addr, true).await;
    }
    first.port()
}
