//! One `gate-agent controller` process, two CanaryGates, two **real** Envoys (one per gate, the
//! shipped deploy/local bootstrap on loopback, each with its own `--base-id`, stopped by PID), on a
//! **real** kube-apiserver (gate-agent/tests/support/kube.rs, shared with gate-agent's tests).
//!
//! There is no istiod here, so the harness plays its one part in the loop: it watches each gate's
//! generated route WasmPlugin on the API server and delivers its `pluginConfig`, as JSON text, to
//! that gate's Envoy through the watched ECDS file (what istiod's push and istio-agent's module
//! fetch amount to for the filter; the local setup and `gate-agent run --router file` write the
//! same file). The gates' proxies are Pod objects whose `status.podIP` is 127.0.0.1: each gate's
//! `snapshotPort` is its own Envoy's snapshot listener, so the controller reads each Envoy and
//! sends kill orders to it directly, as it would to a sidecar.
//!
//! Gate `alpha`'s canary starts failing and is pulled to 0% within 2 s at the data plane (the
//! requests through its Envoy, the Envoy's snapshot); its CanaryGate reads rolled back. Gate `beta`,
//! judged by the same controller at the same time, keeps stepping.
//!
//! Tools: Envoy (`.venv/bin/envoy`), the filter (`make wasm`), `cargo build -p gate-agent`, and the
//! control plane in `.tools/kube` (`make tools`): without it the test fails saying so, as every
//! test on the real API server does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "../../gate-agent/tests/support/gates.rs"]
mod gates;
#[path = "support/istiod.rs"]
mod istiod;
#[path = "../../gate-agent/tests/support/kube.rs"]
mod kube_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary_e2e::traffic::{Sample, Steady, time_to_zero};
use canary_e2e::{Backend, Envoy, LocalSetup, Shape, paths};
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use kube::Api;
use kube_support::{ControlPlane, TestNamespace};
use serde_json::{Value, json};

/// Requests per second through each Envoy.
const RPS: u32 = 200;

/// A gate's stable and canary backends and its Envoy.
struct Proxy {
    name: &'static str,
    stable: Backend,
    canary: Backend,
    envoy: Arc<Envoy>,
    /// When each `pluginConfig` reached the Envoy's watched file, and its weight.
    delivered: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Proxy {
    /// Backends and an Envoy for gate `name`, at 0% until the gate's WasmPlugin says otherwise.
    async fn start(name: &'static str) -> Proxy {
        let stable = Backend::start("v1").await.unwrap();
        let canary = Backend::start("v2").await.unwrap();
        let first = format!(r#"{{"version":1,"rollout":"{name}","stable":"v1","canary":"v2","canary_weight":0}}"#);
        let route = canary_core::config::parse_route(first.as_bytes()).unwrap();
        let setup = LocalSetup {
            stable: stable.addr,
            canary: canary.addr,
            concurrency: 2,
            route,
            raw_plugin_config: None,
            shape: Shape::default(),
        };
        let envoy = Arc::new(Envoy::start(&setup).await.unwrap());
        Proxy { name, stable, canary, envoy, delivered: Arc::default() }
    }

    /// The weight this Envoy applies now (basis points), and whether it holds a kill order.
    async fn applied(&self) -> Option<(u16, bool)> {
        let snap = self.envoy.snapshot_of(self.name).await.ok()?;
        Some((snap.route?.canary_weight.basis_points(), snap.kill.is_some()))
    }

    /// Waits until this Envoy applies at least `bp` basis points; returns when it did.
    async fn wait_applied(&self, at_least: u16, within: Duration, what: &str) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let now = self.applied().await;
            if now.is_some_and(|(w, _)| w >= at_least) {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "{}: {what} not within {within:?}; applies {now:?}", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// istiod's part: every version of WasmPlugin `plugin` goes to `envoy`'s watched file, its
/// `pluginConfig` verbatim as JSON text, in the order the API server's watch reports them.
async fn deliver(plugins: Api<WasmPlugin>, plugin: String, envoy: Arc<Envoy>, log: Arc<Mutex<Vec<(Instant, Value)>>>) {
    let mut last: Option<Value> = None;
    let push = |p: WasmPlugin| {
        let Some(config) = p.spec.plugin_config else { return };
        if last.as_ref() == Some(&config) {
            return;
        }
        if envoy.write_raw_plugin_config(&config.to_string()).is_ok() {
            log.lock().unwrap().push((Instant::now(), config.clone()));
            last = Some(config);
        }
    };
    istiod::follow_wasmplugin(&plugins, &plugin, push).await;
}

/// The `gate-agent controller` process, stopped by its PID on drop.
struct Controller(Child, PathBuf);

impl Controller {
    fn start(cp: &ControlPlane, ns: &TestNamespace) -> Controller {
        let bin = paths::gate_agent_bin().unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = cp.dir.join(format!("{}-controller.log", ns.name));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["controller", "--module-url", "oci://registry.invalid/canary-gate/filter:0.1.0"])
            .args(["--module-sha256", &"ab".repeat(32)])
            .args(["--watch-namespace", &ns.name, "--namespace", &ns.name, "--identity", "controller-e2e"])
            .args(["--poll", "250ms", "--tick", "250ms", "--listen", &listen.to_string()])
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

    fn log_lines(&self, needle: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.1).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
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

async fn status(ns: &TestNamespace, name: &str) -> Value {
    let g = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name).get(name).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned()).unwrap_or_default()
}

/// Polls gate `name`'s status until `check` holds; returns it and when it first held.
async fn wait_status(
    ns: &TestNamespace,
    name: &str,
    within: Duration,
    what: &str,
    controller: &Controller,
    check: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    let deadline = Instant::now() + within;
    loop {
        let s = status(ns, name).await;
        if check(&s) {
            return (s, Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} not within {within:?}; status {s:#}\n{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_gates_on_two_envoys_the_failing_canary_is_at_zero_within_two_seconds_and_the_other_keeps_stepping() {
    let started = Instant::now();
    let cp = ControlPlane::shared();
    gates::install_crd(cp);
    let ns = cp.namespace("cg-envoy").await;
    let (alpha, beta) = (Proxy::start("alpha").await, Proxy::start("beta").await);
    assert_ne!(alpha.envoy.base_id, beta.envoy.base_id);

    let plugins = Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name);
    let mut delivery = Vec::new();
    for p in [&alpha, &beta] {
        ns.pod(&format!("{}-caller-0", p.name), json!({ "app": format!("{}-caller", p.name) }), "127.0.0.1", true)
            .await;
        gates::apply(cp, &gates::virtual_service(&ns.name, p.name, true));
        // The fast spec of the gate tests (support/gates.rs): checks every second, steps 10, 30, 60%,
        // 20 canary requests a step, the promotion gate off (the subject is the kill path).
        gates::apply(cp, &gates::gate(&ns.name, p.name, &format!("{}-caller", p.name), p.envoy.snapshot.port(), "1s"));
        let plugin = format!("{}-canary-gate", p.name);
        delivery.push(tokio::spawn(deliver(plugins.clone(), plugin, Arc::clone(&p.envoy), Arc::clone(&p.delivered))));
    }
    let controller = Controller::start(cp, &ns);
    let controller_started = Instant::now();
    let traffic_a = Steady::start(alpha.envoy.http().clone(), alpha.envoy.url("/"), RPS);
    let traffic_b = Steady::start(beta.envoy.http().clone(), beta.envoy.url("/"), RPS);

    // Both canaries on their first step, as each Envoy applies it.
    let on_step = Duration::from_secs(60);
    alpha.wait_applied(1_000, on_step, "the first step").await;
    beta.wait_applied(1_000, on_step, "the first step").await;
    let first_step = controller_started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // alpha's canary breaks: 30% of its requests fail.
    let beta_canary_before = beta.canary.received();
    let broken = Instant::now();
    let (broken_clock, broken_in_traffic) = (k8s_openapi::jiff::Timestamp::now(), traffic_a.elapsed());
    alpha.canary.fail_per_mille(300);
    let (a, rolled_back_at) =
        wait_status(&ns, "alpha", Duration::from_secs(15), "a rollback", &controller, |s| s["phase"] == "rolled_back")
            .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // 400 more requests, all of which must be stable
    let samples_a = traffic_a.stop(Duration::from_millis(300)).await;
    let cut = time_to_zero(&samples_a, "v1", "v2", 100).unwrap_or_else(|| {
        panic!("alpha's canary was never cut off; status {a:#}\n{}", controller.log_tail());
    });
    let first_failure = samples_a.iter().find(|s| s.served_by == "v2" && s.status >= 500).map(|s| s.sent);
    assert!(
        cut <= Duration::from_secs(2),
        "alpha's canary traffic reached 0% {cut:?} after its first failure (broken at {broken_clock}; first failure sent \
         {:?} after; status rolled_back {:?} after); the controller's kill orders:\n{}",
        first_failure.map(|f| f.saturating_sub(broken_in_traffic)),
        rolled_back_at - broken,
        controller.log_lines("kill order").join("\n")
    );
    assert!(samples_a.iter().all(|s| s.status != 0), "every request through alpha's Envoy got a response");
    assert_eq!(condition(&a, "RolledBack")["status"], "True", "{a:#}");
    // The status's weight is the durable one (the WasmPlugin's), written after the kill orders:
    // the first `rolled_back` status may still show the step's weight, for up to a status write.
    wait_status(&ns, "alpha", Duration::from_secs(5), "weight 0 in the status", &controller, |s| {
        s["phase"] == "rolled_back" && s["weight"] == 0.0
    })
    .await;
    // The Envoy holds the kill order, and the durable path follows: the WasmPlugin at 0%,
    // delivered to the Envoy's watched file.
    let (weight, killed) = alpha.applied().await.unwrap();
    assert!(killed, "alpha's Envoy holds no kill order");
    assert_eq!(weight, 0);
    let durable_zero = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let zero = alpha.delivered.lock().unwrap().iter().rev().find_map(|(at, c)| {
                (c["canary_weight"] == 0 && c["rollout_state"]["phase"] == "rolled_back").then_some(*at)
            });
            if let Some(at) = zero {
                break at;
            }
            assert!(Instant::now() < deadline, "the WasmPlugin's 0% never reached alpha's Envoy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // beta, same controller, same ticks: unaffected, it moves on to its next step.
    let later = Duration::from_secs(20);
    let (b, stepped_at) =
        wait_status(&ns, "beta", later, "a later step", &controller, |s| s["weight"].as_f64().unwrap_or(0.0) >= 30.0)
            .await;
    beta.wait_applied(3_000, Duration::from_secs(5), "the later step in its Envoy").await;
    assert!(b["phase"] == "progressing" || b["phase"] == "promoting" || b["phase"] == "succeeded", "{b:#}");
    assert_eq!(condition(&b, "RolledBack")["status"], "False", "{b:#}");
    let (_, beta_killed) = beta.applied().await.unwrap();
    assert!(!beta_killed, "beta's Envoy got a kill order");
    assert!(beta.canary.received() > beta_canary_before, "beta's canary kept its traffic");
    let samples_b: Vec<Sample> = traffic_b.stop(Duration::from_millis(300)).await;
    assert!(samples_b.iter().all(|s| s.status == 200), "every request through beta's Envoy succeeded");
    assert!(beta.stable.received() > 0 && alpha.stable.received() > 0);
    for task in delivery {
        task.abort();
    }
    // Every pluginConfig the controller and the loops wrote, delivered verbatim, was taken by the
    // filter (a refused one is logged, and the filter keeps its last good configuration).
    let rejected: Vec<String> =
        [&alpha, &beta].iter().flat_map(|p| p.envoy.log_lines("rejected configuration")).collect();
    assert!(rejected.is_empty(), "the filter refused a delivered pluginConfig: {rejected:#?}");
    let deliveries = (alpha.delivered.lock().unwrap().len(), beta.delivered.lock().unwrap().len());
    eprintln!(
        "both canaries on their first step {first_step:?} after the controller started; alpha: canary at 0% {cut:?} after its first \
         failure, status rolled_back {:?} and the WasmPlugin's 0% in its Envoy's file {:?} after the break; beta on \
         its next step {:?} after alpha's break; {} + {} requests, {:?} in all",
        rolled_back_at - broken,
        durable_zero.saturating_duration_since(broken),
        stepped_at - broken,
        samples_a.len(),
        samples_b.len(),
        started.elapsed()
    );
    eprintln!("pluginConfigs delivered to alpha's and beta's Envoy: {deliveries:?}");
}
