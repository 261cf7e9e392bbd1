//! Two real gate-agent processes in mesh mode (`--router wasmplugin --lease ...`) against the
//! Kubernetes API server test double (tests/support/apiserver.rs) and a fabricated proxy that
//! serves snapshots at the weight the WasmPlugin holds: exactly one agent leads and writes, the
//! other stands by (not ready, refuses actions); when the leader shuts down it releases the
//! Lease and the other takes over from the durable WasmPlugin, on the same step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/apiserver.rs"]
mod apiserver;

use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::FakeApiServer;
use canary_core::snapshot::SNAPSHOT_FORMAT;
use canary_core::{InstanceInfo, Outcome, Role, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot};
use serde_json::{Value, json};

const PLUGINS: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins";
const PLUGIN: &str = "/apis/extensions.istio.io/v1alpha1/namespaces/shop/wasmplugins/canary-gate";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases/canary-gate-agent";

const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 1s
threshold: 3
stepWeights: [10, 30, 60]
maxWeight: 60
minRequests: 20
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 2s
";

/// A proxy that serves 100 healthy requests between two snapshot reads, split at the weight the
/// WasmPlugin holds (as if istiod had pushed it instantly).
async fn fake_proxy(api: FakeApiServer) -> std::net::SocketAddr {
    let counters = Arc::new(Mutex::new((SubsetCounters::default(), SubsetCounters::default())));
    let app = axum::Router::new().fallback(move || {
        let (api, counters) = (api.clone(), Arc::clone(&counters));
        async move {
            let weight = api.get(PLUGIN).unwrap()["spec"]["pluginConfig"]["canary_weight"].as_f64().unwrap();
            let mut c = counters.lock().unwrap();
            let canary = (weight.round() as u64).min(100);
            for _ in 0..100 - canary {
                c.0.record(Outcome::Success, 2_000);
            }
            for _ in 0..canary {
                c.1.record(Outcome::Success, 2_000);
            }
            let name = |s: &str| SubsetName::try_from(s).unwrap();
            let snap = Snapshot {
                format: SNAPSHOT_FORMAT.into(),
                instance: InstanceInfo { id: "proxy-1".into(), started_at_unix_ms: 1 },
                taken_at_unix_ms: 2,
                route: None,
                subsets: vec![
                    SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: c.0.clone() },
                    SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: c.1.clone() },
                ],
                kill: None,
                misrouted: None,
                dark_launch: None,
                rollouts: Vec::new(),
            };
            serde_json::to_string(&snap).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct AgentProcess {
    child: Child,
    api: String,
    dir: tempfile::TempDir,
}

impl AgentProcess {
    async fn start(identity: &str, kubeconfig: &Path, proxy: std::net::SocketAddr) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rollout.yaml"), SPEC).unwrap();
        let address = dir.path().join("address");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gate-agent"))
            .args(["run", "--router", "wasmplugin", "--lease", "canary-gate-agent", "--identity", identity])
            .args(["--namespace", "shop", "--wasmplugin", "canary-gate", "--tick", "250ms", "--listen", "127.0.0.1:0"])
            .arg("--spec")
            .arg(dir.path().join("rollout.yaml"))
            .arg("--target")
            .arg(proxy.to_string())
            .arg("--listen-address-file")
            .arg(&address)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !address.exists() {
            assert!(Instant::now() < deadline, "agent {identity} did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let api = std::fs::read_to_string(&address).unwrap().trim().to_owned();
        AgentProcess { child, api, dir }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.api)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status").await.1).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no exit after SIGTERM\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn weight(api: &FakeApiServer) -> f64 {
    api.get(PLUGIN).unwrap()["spec"]["pluginConfig"]["canary_weight"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_agents_leads_and_the_other_takes_over_where_it_stopped() {
    let api = FakeApiServer::start().await;
    api.put(
        PLUGINS,
        json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": { "name": "canary-gate", "namespace": "shop" },
            "spec": { "url": "oci://r/f@sha256:00", "failStrategy": "FAIL_OPEN",
                      "pluginConfig": { "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                                        "canary_weight": 0, "revision": 1 } }
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u, namespace: shop}}\n\
             current-context: c\n",
            api.addr
        ),
    )
    .unwrap();
    let proxy = fake_proxy(api.clone()).await;
    let mut a = AgentProcess::start("agent-a", &kubeconfig, proxy).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get(LEASE).is_none() {
        assert!(Instant::now() < deadline, "agent-a never took the lease\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = AgentProcess::start("agent-b", &kubeconfig, proxy).await;

    // a leads and walks the steps; b stands by the whole time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(&api) < 30.0 {
        assert!(Instant::now() < deadline, "no progress: {}\n{}", weight(&api), a.log());
        let s = b.status().await;
        assert_eq!(s["phase"], "standby", "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api.get(LEASE).unwrap()["spec"]["holderIdentity"], "agent-a");
    let (ready, why) = b.get("/readyz").await;
    assert_eq!(ready, 503, "a standby is not ready: {why}");
    let r = reqwest::Client::new().post(format!("http://{}/pause", b.api)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409, "a standby refuses actions");
    assert!(r.text().await.unwrap().contains("not the leader"));
    assert_eq!(a.status().await["phase"], "progressing");

    // a shuts down gracefully: it releases the lease, and b resumes from the WasmPlugin.
    a.terminate();
    let at_handover = weight(&api);
    assert!((30.0..100.0).contains(&at_handover), "{at_handover}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = b.status().await;
        if s["phase"] != "standby" {
            assert_eq!(s["canary_weight_percent"].as_f64(), Some(at_handover), "resumed at the durable weight: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "b never took over\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.get(LEASE).unwrap()["spec"]["holderIdentity"], "agent-b");
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.status().await["phase"] != "succeeded" {
        assert!(Instant::now() < deadline, "b did not finish the rollout\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(weight(&api), 100.0);
    assert_eq!(api.get(PLUGIN).unwrap()["spec"]["url"], "oci://r/f@sha256:00", "other fields untouched");
    let events = api.list("/api/v1/namespaces/shop/events");
    assert!(events.iter().any(|e| e["reason"] == "Promoted"), "{events:?}");
}
