//! Real gate-agent processes in mesh mode (`--router wasmplugin --lease ...`) against a **real**
//! kube-apiserver with Istio's CRDs (tests/support/kube.rs), each agent as the ServiceAccount
//! bound to the shipped Role, reading fabricated proxies that serve snapshots at the weight the
//! WasmPlugin holds (as if istiod pushed it instantly):
//!
//! * exactly one of two agents leads and writes, the other stands by (not ready, refuses
//!   actions); when the leader shuts down it releases the Lease and the other takes over from the
//!   durable WasmPlugin, on the same step, with the statistics' checkpoint from the Lease; their Events are listed by `kubectl describe`, their
//!   writes show as `gate-agent` with the agent's User-Agent;
//! * proxies behind `--pod-selector` that exist before the agent starts are read from the first
//!   tick, and with none the agent is not ready;
//! * a replica that becomes leader while the WasmPlugin cannot be read keeps running and retries;
//! * with the API server slowed to a crawl (a delaying TCP proxy in front of it), a breach still
//!   reaches the proxies as a kill order within a second: the durable write waits in its own task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/kube.rs"]
mod kube_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_core::config::parse_route;
use canary_core::snapshot::SNAPSHOT_FORMAT;
use canary_core::{InstanceInfo, Outcome, Role, RouteConfig, Snapshot, SubsetCounters, SubsetName, SubsetSnapshot};
use gate_agent::mesh::wasmplugin::WasmPlugin;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

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
# About leadership and the API server, not evidence: steps advance on passing checks alone.
promotion: { requireEvidence: false }
";

async fn create_plugin(ns: &TestNamespace) {
    let plugin: WasmPlugin = serde_json::from_value(json!({
        "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
        "metadata": { "name": "canary-gate" },
        "spec": { "url": "oci://r/f@sha256:00", "failStrategy": "FAIL_OPEN",
                  "pluginConfig": { "version": 1, "rollout": "demo", "stable": "v1", "canary": "v2",
                                    "canary_weight": 0, "revision": 1 } }
    }))
    .unwrap();
    let pp = PostParams { field_manager: Some("canary-gate-tests".into()), ..PostParams::default() };
    Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name).create(&pp, &plugin).await.unwrap();
}

async fn plugin(ns: &TestNamespace) -> Value {
    serde_json::to_value(Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name).get("canary-gate").await.unwrap())
        .unwrap()
}

async fn weight(ns: &TestNamespace) -> f64 {
    plugin(ns).await["spec"]["pluginConfig"]["canary_weight"].as_f64().unwrap_or(0.0)
}

async fn patch_plugin_config(ns: &TestNamespace, config: Value) {
    let patch = json!({ "spec": { "pluginConfig": config } });
    Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name)
        .patch(
            "canary-gate",
            &PatchParams { field_manager: Some("canary-gate-tests".into()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// A proxy on `addr` that serves 100 healthy requests between two snapshot reads, split at the
/// weight the WasmPlugin holds, and reports the WasmPlugin's configuration as the one it applies.
async fn fake_proxy(ns: &TestNamespace, addr: SocketAddr) -> SocketAddr {
    let counters = Arc::new(Mutex::new((SubsetCounters::default(), SubsetCounters::default())));
    let plugins = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
    let id = format!("proxy-{addr}");
    let app = axum::Router::new().fallback(move || {
        let (plugins, counters, id) = (plugins.clone(), Arc::clone(&counters), id.clone());
        async move {
            let config = plugins.get("canary-gate").await.ok().and_then(|p| p.spec.plugin_config);
            let weight = config
                .as_ref()
                .and_then(|c| c["canary_weight"].as_f64())
                .filter(|w| (0.0..=100.0).contains(w))
                .unwrap_or(0.0);
            let route = config.and_then(|c| parse_route(&serde_json::to_vec(&c).unwrap()).ok());
            let mut c = counters.lock().unwrap();
            let canary = weight.round() as u64;
            for _ in 0..100 - canary {
                c.0.record(Outcome::Success, 2_000);
            }
            for _ in 0..canary {
                c.1.record(Outcome::Success, 2_000);
            }
            snapshot_json(id, route, &c.0, &c.1)
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
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
    async fn start(identity: &str, ns: &TestNamespace, kubeconfig: &Path, args: &[String]) -> AgentProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rollout.yaml"), SPEC).unwrap();
        let address = dir.path().join("address");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gate-agent"))
            .args(["run", "--router", "wasmplugin", "--identity", identity, "--namespace", &ns.name])
            .args(["--wasmplugin", "canary-gate", "--tick", "250ms", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--spec")
            .arg(dir.path().join("rollout.yaml"))
            .arg("--listen-address-file")
            .arg(&address)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("GATE_AGENT_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut agent = AgentProcess { child, api: String::new(), dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !address.exists() {
            assert!(Instant::now() < deadline, "agent {identity} did not start\n{}", agent.log());
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("agent {identity} exited ({status})\n{}", agent.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent.api = std::fs::read_to_string(&address).unwrap().trim().to_owned();
        agent
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

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
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

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

async fn lease_holder(ns: &TestNamespace) -> Option<String> {
    let lease = Api::<Lease>::namespaced(ns.admin.clone(), &ns.name).get_opt("canary-gate-agent").await.unwrap()?;
    lease.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_agents_leads_and_the_other_takes_over_where_it_stopped() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("agents").await;
    create_plugin(&ns).await;
    let proxy = fake_proxy(&ns, "127.0.0.1:0".parse().unwrap()).await;
    let args = strings(&["--lease", "canary-gate-agent", "--target", &proxy.to_string()]);
    let mut a = AgentProcess::start("agent-a", &ns, &ns.agent_kubeconfig, &args).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease_holder(&ns).await.is_none() {
        assert!(Instant::now() < deadline, "agent-a never took the lease\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = AgentProcess::start("agent-b", &ns, &ns.agent_kubeconfig, &args).await;

    // a leads and walks the steps; b stands by the whole time.
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(&ns).await < 30.0 {
        assert!(Instant::now() < deadline, "no progress: {}\n{}", weight(&ns).await, a.log());
        let s = b.status().await;
        assert_eq!(s["phase"], "standby", "{s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("agent-a"));
    let (ready, why) = b.get("/readyz").await;
    assert_eq!(ready, 503, "a standby is not ready: {why}");
    let r = reqwest::Client::new().post(format!("http://{}/pause", b.api)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409, "a standby refuses actions");
    assert!(r.text().await.unwrap().contains("not the leader"));
    assert_eq!(a.status().await["phase"], "progressing");

    // a shuts down gracefully: it releases the lease, and b resumes from the WasmPlugin.
    a.terminate();
    let at_handover = weight(&ns).await;
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
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("agent-b"));
    // The statistics travelled on the Lease: b resumed them, or refused them and said why (a's
    // last checkpoint on the Lease may name the revision before its last write).
    let log = b.log();
    assert!(
        log.contains("resumed the statistics from the evidence checkpoint")
            || log.contains("the evidence checkpoint was taken for"),
        "b found no checkpoint on the Lease\n{log}"
    );
    eprintln!("{}", log.lines().filter(|l| l.contains("evidence checkpoint")).collect::<Vec<_>>().join("\n"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.status().await["phase"] != "succeeded" {
        assert!(Instant::now() < deadline, "b did not finish the rollout\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = plugin(&ns).await;
    assert_eq!(end["spec"]["pluginConfig"]["canary_weight"], 100);
    assert_eq!(end["spec"]["url"], "oci://r/f@sha256:00", "other fields untouched");

    // The Events regard the WasmPlugin by uid: `kubectl describe` lists them.
    let uid = end["metadata"]["uid"].as_str().unwrap();
    let events = Api::<Event>::namespaced(ns.admin.clone(), &ns.name)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .unwrap();
    assert!(events.items.iter().any(|e| e.reason.as_deref() == Some("Promoted")), "{:?}", events.items);
    let out = ns.kubectl(cp).args(["describe", "wasmplugin", "canary-gate"]).output().unwrap();
    let described = String::from_utf8_lossy(&out.stdout);
    assert!(described.contains("Promoted") && !described.contains("Events:  <none>"), "{described}");

    // Every write is the agent's own: field manager gate-agent, User-Agent gate-agent/<version>.
    let managers: Vec<&str> =
        end["metadata"]["managedFields"].as_array().unwrap().iter().map(|m| m["manager"].as_str().unwrap()).collect();
    assert!(managers.contains(&"gate-agent") && !managers.contains(&"unknown"), "{managers:?}");
    let user = ns.agent_user();
    let agent_calls: Vec<Value> = cp.audit().into_iter().filter(|e| e["user"]["username"] == user.as_str()).collect();
    assert!(!agent_calls.is_empty(), "the audit log has the agent's calls");
    for call in &agent_calls {
        let ua = call["userAgent"].as_str().unwrap_or_default();
        assert!(ua.starts_with("gate-agent/"), "User-Agent {ua:?} on {} {}", call["verb"], call["requestURI"]);
        assert_ne!(call["responseStatus"]["code"], 403, "the shipped Role lacks a right: {call}");
    }
    for agent in [&a, &b] {
        assert!(!agent.log().contains("Server cert bypassed"), "{}", agent.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_that_exist_before_the_agent_starts_are_read_from_the_first_tick() {
    let ns = ControlPlane::shared().namespace("present").await;
    create_plugin(&ns).await;
    // Two ready pods, each with its proxy, before the agent starts; the list is not refreshed
    // during the test, so only the first one can have found them.
    let first = fake_proxy(&ns, "127.0.0.1:0".parse().unwrap()).await;
    let port = first.port();
    fake_proxy(&ns, SocketAddr::from(([127, 0, 0, 2], port))).await;
    ns.pod("frontend-1", json!({ "app": "frontend" }), "127.0.0.1", true).await;
    ns.pod("frontend-2", json!({ "app": "frontend" }), "127.0.0.2", true).await;
    let args =
        strings(&["--pod-selector", "app=frontend", "--pod-port", &port.to_string(), "--discovery-interval", "1h"]);
    let agent = AgentProcess::start("agent-a", &ns, &ns.agent_kubeconfig, &args).await;
    let started = Instant::now();
    let s = loop {
        let s = agent.status().await;
        if s["proxies_reporting"] == 2 {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the pods were never read: {s}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(s["not_ready"].is_null(), "{s}");
    assert_eq!(agent.get("/readyz").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(&ns).await < 10.0 {
        assert!(Instant::now() < deadline, "the rollout never started\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_patched_weight_is_reverted_with_a_warning_event_and_nothing_else_is_touched() {
    let ns = ControlPlane::shared().namespace("foreign").await;
    create_plugin(&ns).await;
    let proxy = fake_proxy(&ns, "127.0.0.1:0".parse().unwrap()).await;
    ns.pod("frontend-1", json!({ "app": "frontend" }), "127.0.0.1", true).await;
    let args = strings(&["--pod-selector", "app=frontend", "--pod-port", &proxy.port().to_string()]);
    let agent = AgentProcess::start("agent-a", &ns, &ns.agent_kubeconfig, &args).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(&ns).await < 10.0 {
        assert!(Instant::now() < deadline, "the rollout never started\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What `kubectl patch --type merge` of the weight alone sends, plus fields the agent does not
    // own, changed by someone else at the same time.
    let before = plugin(&ns).await;
    let patch = json!({
        "metadata": { "labels": { "team": "payments" } },
        "spec": { "priority": 7, "pluginConfig": { "canary_weight": 99, "label_header": "x-route-to" } }
    });
    Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name)
        .patch("canary-gate", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let patched_at = Instant::now();
    let s = loop {
        let s = agent.status().await;
        if s["foreign_writes_total"].as_u64() >= Some(1) && weight(&ns).await < 99.0 {
            break s;
        }
        assert!(patched_at.elapsed() < Duration::from_secs(3), "not reverted: {s}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = s["last_foreign_write"].as_str().unwrap_or_default();
    assert!(last.contains("canary_weight 99%"), "{s}");
    let after = plugin(&ns).await;
    let config = &after["spec"]["pluginConfig"];
    assert!(config["canary_weight"].as_f64().unwrap() <= 60.0, "{after}");
    assert!(
        config["revision"].as_u64() > before["spec"]["pluginConfig"]["revision"].as_u64(),
        "the revert is a newer revision: {after}"
    );
    assert_eq!(config["rollout_state"]["weight"], config["canary_weight"], "{after}");
    // Everything the agent does not own is as the other writer left it.
    assert_eq!(after["metadata"]["labels"]["team"], "payments");
    assert_eq!(after["spec"]["priority"], 7);
    assert_eq!(config["label_header"], "x-route-to");
    assert_eq!(after["spec"]["url"], before["spec"]["url"]);

    // A Warning Event on the WasmPlugin, where `kubectl describe wasmplugin` lists it.
    let uid = after["metadata"]["uid"].as_str().unwrap().to_owned();
    let selector = format!("involvedObject.uid={uid}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = Api::<Event>::namespaced(ns.admin.clone(), &ns.name)
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap();
        let foreign: Vec<&Event> =
            events.items.iter().filter(|e| e.reason.as_deref() == Some("ForeignWrite")).collect();
        if let Some(e) = foreign.first() {
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            assert!(e.message.as_deref().unwrap_or_default().contains("99%"), "{e:?}");
            assert_eq!(foreign.len(), 1, "one Event per foreign write: {foreign:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no ForeignWrite Event: {:?}\n{}", events.items, agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_proxy_to_read_the_agent_is_not_ready() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("noproxy").await;
    create_plugin(&ns).await;
    // A kubeconfig that skips TLS verification: said once at start, not on every connection.
    let insecure = cp.dir.join(format!("{}-insecure.kubeconfig", ns.name));
    let text = std::fs::read_to_string(&ns.agent_kubeconfig).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("certificate-authority:") { "    insecure-skip-tls-verify: true" } else { l }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&insecure, text).unwrap();
    let args = strings(&["--pod-selector", "app=nothing", "--discovery-interval", "1h"]);
    let agent = AgentProcess::start("agent-a", &ns, &insecure, &args).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (code, body) = agent.get("/readyz").await;
        assert_eq!(code, 503, "no proxy has answered: {body}");
        assert!(body.contains("no proxy"), "{body}");
    }
    let s = agent.status().await;
    assert_eq!(s["proxies_reporting"], 0, "{s}");
    let log = agent.log();
    assert!(!log.contains("Server cert bypassed"), "{log}");
    assert_eq!(log.matches("insecure-skip-tls-verify").count(), 1, "said once:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_that_cannot_read_the_wasmplugin_keeps_retrying_and_resumes_once_it_can() {
    let ns = ControlPlane::shared().namespace("takeover").await;
    create_plugin(&ns).await;
    let proxy = fake_proxy(&ns, "127.0.0.1:0".parse().unwrap()).await;
    let args = strings(&["--lease", "canary-gate-agent", "--target", &proxy.to_string()]);
    let mut a = AgentProcess::start("agent-a", &ns, &ns.agent_kubeconfig, &args).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(&ns).await < 10.0 {
        assert!(Instant::now() < deadline, "no progress\n{}", a.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = AgentProcess::start("agent-b", &ns, &ns.agent_kubeconfig, &args).await;
    // Someone breaks the pluginConfig by hand; then the leader goes away.
    patch_plugin_config(&ns, json!({ "canary_weight": 150 })).await;
    a.terminate();
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = b.status().await;
        if s["phase"] == "starting" && s["router_errors_total"].as_u64() >= Some(2) {
            break s;
        }
        assert!(b.running(), "b exited\n{}", b.log());
        assert!(Instant::now() < deadline, "b never tried to take over: {s}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let why = s["not_ready"].as_str().unwrap();
    assert!(why.contains("WasmPlugin canary-gate spec.pluginConfig") && why.contains("canary_weight"), "{why}");
    assert!(!why.contains("watched file"), "{why}");
    assert_eq!(b.get("/readyz").await.0, 503);
    assert!(b.running(), "still running\n{}", b.log());
    // Fixed by hand: b resumes from the WasmPlugin.
    patch_plugin_config(&ns, json!({ "canary_weight": 10 })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.status().await["phase"] != "progressing" {
        assert!(Instant::now() < deadline, "b never resumed\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lease_holder(&ns).await.as_deref(), Some("agent-b"));
}

/// A TCP proxy in front of the API server that holds every chunk of the server's answers for
/// `delay` milliseconds once set: an API server brownout (TLS passes through untouched).
async fn slow_api(upstream: SocketAddr) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let delay = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::clone(&delay);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let held = Arc::clone(&held);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let ms = held.load(Ordering::SeqCst);
                    if ms > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, delay)
}

/// A proxy whose canary fails every request once `failing` is set, recording when kill orders arrive.
async fn breaching_proxy(
    ns: &TestNamespace,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Vec<Instant>>>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failing = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(Mutex::new(Vec::new()));
    let counters = Arc::new(Mutex::new((SubsetCounters::default(), SubsetCounters::default())));
    let plugins = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
    let (f, k) = (Arc::clone(&failing), Arc::clone(&kills));
    let app = axum::Router::new().fallback(move |method: axum::http::Method| {
        let (plugins, counters, failing, kills) =
            (plugins.clone(), Arc::clone(&counters), Arc::clone(&f), Arc::clone(&k));
        async move {
            if method == axum::http::Method::POST {
                kills.lock().unwrap().push(Instant::now());
                return String::from("{}");
            }
            let weight = plugins
                .get("canary-gate")
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
            snapshot_json("proxy-1".into(), None, &c.0, &c.1)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, failing, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_reaches_the_proxies_within_a_second_while_the_api_server_is_slow() {
    use std::sync::atomic::Ordering;
    let cp = ControlPlane::shared();
    let ns = cp.namespace("brownout").await;
    create_plugin(&ns).await;
    // On a step already: the agent resumes at 10%.
    let record = json!({ "phase": "progressing", "failed_checks": 0, "reason": "test", "at_unix_ms": 1 });
    patch_plugin_config(&ns, json!({ "canary_weight": 10, "revision": 2, "rollout_state": record })).await;
    let upstream: SocketAddr = cp.url.trim_start_matches("https://").parse().unwrap();
    let (api, delay) = slow_api(upstream).await;
    let kubeconfig = cp.dir.join(format!("{}-slow.kubeconfig", ns.name));
    let text = std::fs::read_to_string(&ns.agent_kubeconfig).unwrap().replace(&cp.url, &format!("https://{api}"));
    std::fs::write(&kubeconfig, text).unwrap();
    let (proxy, failing, kills) = breaching_proxy(&ns).await;
    let args = strings(&["--target", &proxy.to_string(), "--kube-timeout", "5s"]);
    let agent = AgentProcess::start("agent-a", &ns, &kubeconfig, &args).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = agent.status().await;
        if s["phase"] == "progressing" && s["proxies_reporting"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The API server slows to a crawl: every answer takes 10 s, so each write the agent tries (the
    // next step, after 1 s) runs into its 5 s timeout.
    delay.store(10_000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let breach = Instant::now();
    failing.store(true, Ordering::SeqCst);
    let deadline = breach + Duration::from_secs(10);
    let first_kill = loop {
        if let Some(t) = kills.lock().unwrap().first().copied() {
            break t;
        }
        assert!(Instant::now() < deadline, "no kill order\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let took = first_kill.saturating_duration_since(breach);
    assert!(took < Duration::from_secs(1), "the kill order took {took:?} with the API server slow\n{}", agent.log());
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s = agent.status().await;
        if s["phase"] == "rolled_back" {
            break;
        }
        assert!(Instant::now() < deadline, "{s}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The durable 0% lands once the API server answers again.
    delay.store(0, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while weight(&ns).await != 0.0 {
        assert!(Instant::now() < deadline, "the durable weight never went to 0\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A snapshot of rollout `demo` from proxy instance `id`, as the snapshot endpoint serves it.
fn snapshot_json(id: String, route: Option<RouteConfig>, stable: &SubsetCounters, canary: &SubsetCounters) -> String {
    let name = |s: &str| SubsetName::try_from(s).unwrap();
    let snap = Snapshot {
        format: SNAPSHOT_FORMAT.into(),
        instance: InstanceInfo { id, started_at_unix_ms: 1 },
        taken_at_unix_ms: 2,
        route,
        subsets: vec![
            SubsetSnapshot { subset: name("v1"), role: Role::Stable, counters: stable.clone() },
            SubsetSnapshot { subset: name("v2"), role: Role::Canary, counters: canary.clone() },
        ],
        kill: None,
        misrouted: None,
        dark_launch: None,
        rollouts: Vec::new(),
    };
    serde_json::to_string(&snap).unwrap()
}
