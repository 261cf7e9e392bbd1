//! **Real** Envoy configured as an Istio ambient waypoint would be for the filter, two replicas,
//! one `gate-agent controller` process on a **real** kube-apiserver with a waypoint CanaryGate
//! (gate-agent/tests/support/kube.rs, shared with gate-agent's tests).
//!
//! Each replica is its own Envoy (its own `--base-id`, stopped by its PID) on its own loopback
//! address, 127.0.0.2 and 127.0.0.3, standing for the waypoint pods' IPs: the inbound listener
//! runs only the route filter, from a watched ECDS file; there is no snapshot listener; a `stats`
//! listener on the same port of each address serves only `/stats/prometheus`, as Istio's 15090
//! does (tests/src/envoy.rs, [`WaypointShape`]). On the API server: the Service labelled
//! `istio.io/use-waypoint`, a Gateway of class `istio-waypoint`, and two Pods labelled
//! `gateway.networking.k8s.io/gateway-name` whose `podIP`s are the two addresses.
//!
//! There is no istiod here, so the harness plays its one part: it watches the gate's generated
//! route WasmPlugin and writes its `pluginConfig`, as JSON text, into **each** replica's watched
//! file (what istiod's ECDS push to every waypoint replica amounts to for the filter).
//!
//! The canary fails; the controller reads each replica's Envoy stats, rolls back with the durable
//! write, and each replica's gauges show the rollback's revision; traffic through each replica
//! then goes to stable only. A client of the waypoint listener sending the sidecar's snapshot and
//! kill paths, or the canary's label, changes nothing.
//!
//! Tools: Envoy (`.venv/bin/envoy`), the filter (`make wasm`), `cargo build -p gate-agent`, and the
//! control plane in `.tools/kube` (`make tools`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "../../gate-agent/tests/support/gates.rs"]
mod gates;
#[path = "support/istiod.rs"]
mod istiod;
#[path = "../../gate-agent/tests/support/kube.rs"]
mod kube_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use canary_e2e::traffic::Steady;
use canary_e2e::{Backend, Envoy, LocalSetup, Shape, WaypointShape, paths};
use gate_agent::envoy_stats::parse;
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use kube::Api;
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

/// Requests per second through each replica.
const RPS: u32 = 100;
const GATE: &str = "pay";

/// A port free on both replica addresses, for their stats listeners (Istio's 15090 is one port
/// on every pod).
fn shared_free_port(ips: &[IpAddr]) -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on {ips:?}");
}

/// One waypoint replica: its Envoy, at its own address.
struct Replica {
    ip: IpAddr,
    envoy: Arc<Envoy>,
    stats: SocketAddr,
}

impl Replica {
    async fn start(ip: IpAddr, stats_port: u16, stable: SocketAddr, canary: SocketAddr) -> Replica {
        let first =
            format!(r#"{{"version":1,"rollout":"{GATE}","stable":"v1","canary":"v2","rollout_in_metric_names":true}}"#);
        let setup = LocalSetup {
            stable,
            canary,
            concurrency: 2,
            route: canary_core::config::parse_route(first.as_bytes()).unwrap(),
            raw_plugin_config: None,
            shape: Shape { waypoint: Some(WaypointShape { ip, stats_port }), ..Shape::default() },
        };
        let envoy = Arc::new(Envoy::start(&setup).await.unwrap());
        assert_eq!(envoy.public.ip(), ip, "the inbound listener is on the replica's own address");
        Replica { ip, stats: SocketAddr::new(ip, stats_port), envoy }
    }

    /// This replica's gauge `base` for the rollout, read as the controller reads it (the stats
    /// listener, Prometheus text).
    async fn gauge(&self, base: &str) -> Option<u64> {
        let url = format!("http://{}/stats/prometheus", self.stats);
        let text = self.envoy.http().get(url).send().await.ok()?.bytes().await.ok()?;
        let name = canary_core::gauges::prometheus_name(&canary_core::gauges::per_rollout(base, GATE));
        parse(&text).unwrap().plain(&name).map(|s| s.value as u64)
    }

    async fn weight_bp(&self) -> Option<u64> {
        self.gauge(canary_core::gauges::APPLIED_WEIGHT_BP).await
    }

    async fn wait_for(&self, within: Duration, what: &str, check: impl AsyncFn(&Replica) -> bool) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if check(self).await {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "replica {}: {what} not within {within:?}; weight {:?}, revision {:?}, killed {:?}",
                self.ip,
                self.weight_bp().await,
                self.gauge(canary_core::gauges::APPLIED_REVISION).await,
                self.gauge(canary_core::gauges::KILLED).await,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// istiod's part: every version of WasmPlugin `plugin` goes to every replica's watched file, its
/// `pluginConfig` verbatim as JSON text, in the order the API server's watch reports them.
async fn deliver(plugins: Api<WasmPlugin>, plugin: String, replicas: Vec<(Arc<Envoy>, Arc<AtomicBool>)>) {
    let mut last: Option<Value> = None;
    let push = |p: WasmPlugin| {
        let Some(config) = p.spec.plugin_config else { return };
        if last.as_ref() == Some(&config) {
            return;
        }
        for (envoy, held) in &replicas {
            if !held.load(Ordering::SeqCst) {
                let _ = envoy.write_raw_plugin_config(&config.to_string());
            }
        }
        last = Some(config);
    };
    istiod::follow_wasmplugin(&plugins, &plugin, push).await;
}

/// The `gate-agent controller` process, stopped by its PID on drop.
struct Controller(Child, PathBuf);

impl Controller {
    fn start(cp: &ControlPlane, ns: &TestNamespace, stats_port: u16) -> Controller {
        let bin = paths::gate_agent_bin().unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = cp.dir.join(format!("{}-controller.log", ns.name));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["controller", "--module-url", "oci://registry.invalid/canary-gate/filter:0.1.0"])
            .args(["--module-sha256", &"ab".repeat(32), "--plugin-kind", "wasmplugin"])
            .args(["--watch-namespace", &ns.name, "--namespace", &ns.name, "--identity", "waypoint-e2e"])
            .args(["--poll", "250ms", "--tick", "250ms", "--listen", &listen.to_string()])
            .args(["--waypoint-stats-port", &stats_port.to_string()])
            .env("KUBECONFIG", &cp.admin_kubeconfig)
            .env("GATE_AGENT_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Controller(child, log)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.1).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn status(ns: &TestNamespace) -> Value {
    let g = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name).get(GATE).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned()).unwrap_or_default()
}

async fn wait_status(
    ns: &TestNamespace,
    within: Duration,
    what: &str,
    controller: &Controller,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(ns).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} not within {within:?}; status {s:#}\n{}", controller.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything one scenario runs: the backends, two waypoint replicas, the ambient objects and the
/// waypoint gate on the API server, istiod's delivery, the controller and traffic through each
/// replica, with the first step in force on both.
struct World {
    ns: TestNamespace,
    stable: Backend,
    canary: Backend,
    replicas: Vec<Replica>,
    plugins: Api<WasmPlugin>,
    /// Per replica: while set, istiod's pushes do not reach it.
    held: Vec<Arc<AtomicBool>>,
    delivery: tokio::task::JoinHandle<()>,
    controller: Controller,
    traffic: Vec<Steady>,
}

impl World {
    async fn start(prefix: &str) -> World {
        let cp = ControlPlane::shared();
        gates::install_crd(cp);
        let ns = cp.namespace(prefix).await;
        let stable = Backend::start("v1").await.unwrap();
        let canary = Backend::start("v2").await.unwrap();
        let ips = [IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))];
        let stats_port = shared_free_port(&ips);
        let mut replicas = Vec::new();
        for ip in ips {
            replicas.push(Replica::start(ip, stats_port, stable.addr, canary.addr).await);
        }
        assert_ne!(replicas[0].envoy.base_id, replicas[1].envoy.base_id);

        // The ambient objects: the Service names its waypoint, the waypoint's pods are the replicas.
        gates::apply(
            cp,
            &json!({ "apiVersion": "v1", "kind": "Service",
                     "metadata": { "name": GATE, "namespace": ns.name, "labels": { "istio.io/use-waypoint": "waypoint" } },
                     "spec": { "selector": { "app": GATE }, "ports": [{ "name": "http", "port": 8080 }] } }),
        );
        gates::apply(
            cp,
            &json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                     "metadata": { "name": "waypoint", "namespace": ns.name, "labels": { "istio.io/waypoint-for": "service" } },
                     "spec": { "gatewayClassName": "istio-waypoint",
                               "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }] } }),
        );
        for (i, r) in replicas.iter().enumerate() {
            let labels = json!({ "gateway.networking.k8s.io/gateway-name": "waypoint" });
            ns.pod(&format!("waypoint-{i}"), labels, &r.ip.to_string(), true).await;
        }
        gates::apply(cp, &gates::virtual_service(&ns.name, GATE, true));
        let mut gate = gates::gate(&ns.name, GATE, "unused-in-waypoint-mode", 15290, "1s");
        gate["spec"]["attachment"] = json!({ "mode": "waypoint" });
        gates::apply(cp, &gate);
        let plugins = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
        let held: Vec<Arc<AtomicBool>> = replicas.iter().map(|_| Arc::default()).collect();
        let targets = replicas.iter().zip(&held).map(|(r, h)| (Arc::clone(&r.envoy), Arc::clone(h))).collect();
        let delivery = tokio::spawn(deliver(plugins.clone(), format!("{GATE}-canary-gate"), targets));

        let controller = Controller::start(cp, &ns, stats_port);
        let traffic: Vec<Steady> =
            replicas.iter().map(|r| Steady::start(r.envoy.http().clone(), r.envoy.url("/"), RPS)).collect();

        // The first step reaches both replicas, from the counters the controller reads in their stats.
        for r in &replicas {
            r.wait_for(Duration::from_secs(60), "the first step", async |r| {
                r.weight_bp().await.is_some_and(|w| w >= 1_000)
            })
            .await;
        }
        let w = World { ns, stable, canary, replicas, plugins, held, delivery, controller, traffic };
        let s = w.wait_status(Duration::from_secs(10), "both replicas reporting", |s| s["proxiesReporting"] == 2).await;
        assert_eq!(condition(&s, "Ready")["status"], "True", "{s:#}");
        w
    }

    async fn wait_status(&self, within: Duration, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_status(&self.ns, within, what, &self.controller, check).await
    }

    /// The WasmPlugin's pluginConfig now.
    async fn durable(&self) -> Value {
        self.plugins.get(&format!("{GATE}-canary-gate")).await.unwrap().spec.plugin_config.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_behind_a_waypoint_is_rolled_back_on_each_replica_and_clients_cannot_reach_the_control_path() {
    let started = Instant::now();
    let World { ns, stable: _stable, canary, replicas, plugins, held: _, delivery, controller, traffic } =
        World::start("cg-waypoint").await;

    // A client of the waypoint listener tries the sidecar's control paths: they are ordinary
    // requests to the Service (the route filter answers no control path), and nothing changes.
    let r0 = &replicas[0];
    let order = canary_core::KillOrder {
        rollout: GATE.try_into().unwrap(),
        id: "v2".try_into().unwrap(),
        revision: u64::MAX / 2,
    };
    let kill_url = r0.envoy.url(&format!("{}?{}", canary_core::kill::DEFAULT_KILL_PATH, order.to_query()));
    let before = r0.weight_bp().await;
    for _ in 0..5 {
        let resp = r0.envoy.http().post(&kill_url).send().await.unwrap();
        let served_by = resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned();
        assert!(served_by == "v1" || served_by == "v2", "the kill path was answered by {served_by}, not the Service");
        let snap = r0.envoy.url(&format!("{}?rollout={GATE}", canary_core::config::DEFAULT_SNAPSHOT_PATH));
        let body = r0.envoy.http().get(&snap).send().await.unwrap().text().await.unwrap();
        assert!(!body.contains("canary-gate.snapshot"), "a client read a snapshot through the waypoint: {body}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The rollout may step on meanwhile, never back.
    let after = r0.weight_bp().await;
    assert!(after >= before && after > Some(0), "a client's kill order moved the weight {before:?} -> {after:?}");
    assert_eq!(r0.gauge(canary_core::gauges::KILLED).await, Some(0));
    let canary_before = canary.received();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(canary.received() > canary_before, "the canary kept its share after the client's kill order");

    // The canary breaks: 30% of its requests fail.
    let broken = Instant::now();
    canary.fail_per_mille(300);
    let rolled_back =
        wait_status(&ns, Duration::from_secs(20), "a rollback", &controller, |s| s["phase"] == "rolled_back").await;
    let detected = broken.elapsed();
    assert_eq!(condition(&rolled_back, "RolledBack")["status"], "True", "{rolled_back:#}");
    // The durable kill: weight 0, rolled back, a higher revision, in the WasmPlugin.
    let durable = plugins.get(&format!("{GATE}-canary-gate")).await.unwrap().spec.plugin_config.unwrap();
    assert_eq!(
        (durable["canary_weight"].as_u64(), durable["rollout_state"]["phase"].as_str()),
        (Some(0), Some("rolled_back"))
    );
    let kill_revision = durable["revision"].as_u64().unwrap();
    // It reaches each replica: its gauges show the kill's revision and the kill.
    let mut confirmed = Vec::new();
    for r in &replicas {
        let at = r
            .wait_for(Duration::from_secs(10), "the kill's revision", async |r| {
                r.gauge(canary_core::gauges::APPLIED_REVISION).await.is_some_and(|v| v >= kill_revision)
                    && r.gauge(canary_core::gauges::KILLED).await == Some(1)
                    && r.weight_bp().await == Some(0)
            })
            .await;
        confirmed.push(at);
    }
    let all_confirmed = *confirmed.iter().max().unwrap();
    // The controller confirms it from the same gauges: no replica named as unconfirmed.
    let s = wait_status(&ns, Duration::from_secs(5), "the rollback in the status", &controller, |s| {
        s["weight"] == 0.0 && s["phase"] == "rolled_back"
    })
    .await;
    assert_ne!(condition(&s, "Ready")["reason"], "KillNotConfirmed", "{s:#}");

    // Traffic through each replica: stable only once the kill is in force there, for 2 s more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_in_traffic = |t: &Steady| t.elapsed().saturating_sub(all_confirmed.elapsed());
    let cutoffs: Vec<Duration> = traffic.iter().map(after_in_traffic).collect();
    for (i, (t, cutoff)) in traffic.into_iter().zip(cutoffs).enumerate() {
        let samples = t.stop(Duration::from_millis(300)).await;
        let after: Vec<_> = samples.iter().filter(|s| s.sent > cutoff + Duration::from_millis(50)).collect();
        assert!(after.len() > 100, "replica {i}: too few requests after the kill: {}", after.len());
        let to_canary = after.iter().filter(|s| s.served_by == "v2").count();
        assert_eq!(
            to_canary,
            0,
            "replica {i}: {to_canary} of {} requests went to the canary after the kill",
            after.len()
        );
        assert!(after.iter().all(|s| s.status != 0), "replica {i}: every request got a response");
    }
    // A client naming the canary in the label header still gets the stable.
    for r in &replicas {
        let resp = r.envoy.http().get(r.envoy.url("/")).header("x-canary-subset", "v2").send().await.unwrap();
        assert_eq!(resp.headers().get("x-served-by").and_then(|v| v.to_str().ok()), Some("v1"), "replica {}", r.ip);
    }
    delivery.abort();
    let rejected: Vec<String> = replicas.iter().flat_map(|r| r.envoy.log_lines("rejected configuration")).collect();
    assert!(rejected.is_empty(), "the filter refused a delivered pluginConfig: {rejected:#?}");
    eprintln!(
        "waypoint: rolled back {detected:?} after the break; the kill's revision {kill_revision} confirmed on replica \
         127.0.0.2 after {:?} and 127.0.0.3 after {:?} (from the break); {:?} in all",
        confirmed[0] - broken,
        confirmed[1] - broken,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_the_rollback_does_not_reach_is_named_in_the_status_until_it_applies_it() {
    let w = World::start("cg-waypoint-late").await;
    // istiod's push stops reaching the second replica (a partitioned or stuck pod).
    let (late, on_time) = (&w.replicas[1], &w.replicas[0]);
    w.held[1].store(true, Ordering::SeqCst);
    let broken = Instant::now();
    w.canary.fail_per_mille(300);
    w.wait_status(Duration::from_secs(20), "a rollback", |s| s["phase"] == "rolled_back").await;
    let kill_revision = w.durable().await["revision"].as_u64().unwrap();
    on_time
        .wait_for(Duration::from_secs(10), "the kill on the replica it reaches", async |r| {
            r.gauge(canary_core::gauges::KILLED).await == Some(1)
        })
        .await;
    // Past the deadline (10 s), the status names the replica that has not confirmed the kill.
    let late_target = late.stats.to_string();
    let s = w
        .wait_status(Duration::from_secs(25), "KillNotConfirmed naming the late replica", |s| {
            let ready = condition(s, "Ready");
            ready["reason"] == "KillNotConfirmed" && ready["message"].as_str().is_some_and(|m| m.contains(&late_target))
        })
        .await;
    let named_after = broken.elapsed();
    let message = condition(&s, "Ready")["message"].as_str().unwrap().to_owned();
    assert_eq!(condition(&s, "Ready")["status"], "False");
    assert!(!message.contains(&on_time.stats.to_string()), "the confirmed replica is not named: {message}");
    assert!(message.contains(&format!("revision {kill_revision}")) && message.contains("Fix:"), "{message}");
    assert!(late.weight_bp().await.is_some_and(|bp| bp > 0), "the late replica still applies the step");
    // The push reaches it at last: it applies the kill, and the status stops naming it.
    w.held[1].store(false, Ordering::SeqCst);
    late.envoy.write_raw_plugin_config(&w.durable().await.to_string()).unwrap();
    late.wait_for(Duration::from_secs(10), "the kill, once delivered", async |r| {
        r.gauge(canary_core::gauges::APPLIED_REVISION).await.is_some_and(|v| v >= kill_revision)
            && r.gauge(canary_core::gauges::KILLED).await == Some(1)
    })
    .await;
    let s = w
        .wait_status(Duration::from_secs(10), "the late replica confirmed", |s| {
            condition(s, "Ready")["reason"] != "KillNotConfirmed"
        })
        .await;
    assert_eq!(s["phase"], "rolled_back", "{s:#}");
    w.delivery.abort();
    for t in w.traffic {
        t.stop(Duration::from_millis(100)).await;
    }
    eprintln!(
        "waypoint: the replica the rollback did not reach was named in the status {named_after:?} after the break"
    );
}
