//! The Helm chart on a **real** kube-apiserver (tests/support/kube.rs): `helm install` (helm from
//! `make tools-helm`) puts the CRD, the controller's RBAC, Deployment, PDB and Service in place;
//! then a real `gate-agent controller` process, authenticated as the chart's ServiceAccount with
//! only the chart's RBAC, runs a CanaryGate in the watched namespace: generated objects, status
//! moving, no request refused. (Nothing runs the chart's Deployment: the test control plane has no
//! scheduler or kubelet, so the process stands in for its pod.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use gate_agent::gate::crd::CanaryGate;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use kube_support::{ControlPlane, TestNamespace, workspace_root};
use serde_json::{Value, json};

const ACCOUNT: &str = "canary-gate-controller";

fn helm() -> std::path::PathBuf {
    let bin = workspace_root().join(".tools/helm/bin/helm");
    assert!(
        bin.exists(),
        "{} is missing: run `make tools-helm` (helm from its Go module, pinned in tools/helm)",
        bin.display()
    );
    bin
}

struct Process(Child, PathBuf, std::net::SocketAddr);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// `helm install` into a fresh namespace watching another; returns (system, team, kubeconfig of
/// the chart's ServiceAccount).
async fn install(cp: &ControlPlane) -> (TestNamespace, TestNamespace, PathBuf) {
    let (system, team) = (cp.namespace("cg-system").await, cp.namespace("cg-team").await);
    // One install at a time: both would create the CRD (helm installs crds/ only when absent).
    static HELM: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = HELM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new(helm())
        .args(["install", "canary-gate"])
        .arg(workspace_root().join("deploy/helm/canary-gate"))
        .args(["--namespace", &system.name, "--kubeconfig"])
        .arg(&cp.admin_kubeconfig)
        .args(["--set", &format!("module.sha256={}", "ab".repeat(32))])
        .args(["--set", "rbac.clusterWide=false", "--set", &format!("watchNamespaces={{{}}}", team.name)])
        .output()
        .unwrap();
    drop(guard);
    assert!(
        out.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cp.kubectl()
            .args(["wait", "--for=condition=Established", "crd/canarygates.canary-gate.dev", "--timeout=60s"])
            .status()
            .unwrap()
            .success()
    );
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
        ..TokenRequest::default()
    };
    let token = Api::<ServiceAccount>::namespaced(system.admin.clone(), &system.name)
        .create_token_request(ACCOUNT, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let kubeconfig = cp.dir.join(format!("{}-controller.kubeconfig", system.name));
    let text = std::fs::read_to_string(&system.agent_kubeconfig).unwrap().replace(&system.agent_token, &token);
    std::fs::write(&kubeconfig, text).unwrap();
    (system, team, kubeconfig)
}

/// A `gate-agent controller` process as `identity`, with its API on a free loopback port.
fn controller(
    cp: &ControlPlane,
    system: &TestNamespace,
    team: &TestNamespace,
    kubeconfig: &Path,
    identity: &str,
) -> Process {
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let log = cp.dir.join(format!("{}-{identity}.log", system.name));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gate-agent"))
        .args(["controller", "--module-url", "oci://registry.invalid/f:1", "--module-sha256", &"ab".repeat(32)])
        .args(["--watch-namespace", &team.name, "--namespace", &system.name, "--identity", identity])
        .args(["--poll", "250ms", "--listen", &listen.to_string()])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("GATE_AGENT_LOG")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Process(child, log, listen)
}

async fn gate_status(team: &TestNamespace, name: &str) -> Value {
    let g = Api::<CanaryGate>::namespaced(team.admin.clone(), &team.name).get(name).await.unwrap();
    serde_json::to_value(g.status).unwrap_or(Value::Null)
}

async fn ready(p: &Process) -> Option<u16> {
    reqwest::get(format!("http://{}/readyz", p.2)).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_then_a_controller_with_only_the_charts_rights_runs_a_gate() {
    let cp = ControlPlane::shared();
    let (system, team, kubeconfig) = install(cp).await;
    for (ns, what) in [
        (&system.name, "deployment/canary-gate-controller"),
        (&system.name, "poddisruptionbudget/canary-gate-controller"),
        (&system.name, "service/canary-gate-controller"),
        (&system.name, "serviceaccount/canary-gate-controller"),
        (&team.name, "role/canary-gate-canary-gate-controller"),
        (&team.name, "rolebinding/canary-gate-canary-gate-controller"),
    ] {
        let out = cp.kubectl().args(["get", "-n", ns, what]).output().unwrap();
        assert!(out.status.success(), "{what} in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let failing = Arc::new(AtomicBool::new(false));
    let port = gates::proxies(&team, "shop", &[[127, 0, 0, 9]], &failing).await;
    gates::apply(cp, &gates::virtual_service(&team.name, "shop", true));
    gates::apply(cp, &gates::gate(&team.name, "shop", "shop-caller", port, "1s"));
    // A gate routed by an HTTPRoute without the label rule: the chart lets the controller read it.
    let route = json!({ "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "kiosk", "namespace": team.name },
        "spec": { "parentRefs": [{ "group": "", "kind": "Service", "name": "kiosk" }],
                  "rules": [{ "backendRefs": [{ "name": "kiosk-v1", "port": 8080 }] }] } });
    gates::apply(cp, &route);
    let mut kiosk = gates::gate(&team.name, "kiosk", "kiosk-caller", port, "1s");
    kiosk["spec"]["stable"] = json!("kiosk-v1");
    kiosk["spec"]["canary"] = json!("kiosk-v2");
    kiosk["spec"]["route"] = json!({ "kind": "HTTPRoute", "name": "kiosk" });
    gates::apply(cp, &kiosk);
    let controller = controller(cp, &system, &team, &kubeconfig, "controller-0");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = gate_status(&team, "shop").await;
        if status["weight"].as_f64().unwrap_or(0.0) > 0.0 && status["phase"] == "progressing" {
            break;
        }
        assert!(Instant::now() < deadline, "status: {status:#}\n{}", controller.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ready(&controller).await, Some(200), "the only replica leads");
    let listed: Value = reqwest::get(format!("http://{}/status", controller.2)).await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["canarygate"], "shop");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = gate_status(&team, "kiosk").await;
        let ready = status["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
        if ready.is_some_and(|c| c["reason"] == "RouteLabelMatchMissing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTPRoute was read and judged: {status:#}
{}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = controller.log();
    assert!(!log.contains("forbidden") && !log.contains("HTTP 403"), "the chart's RBAC refused a call:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_controllers_one_leads_and_the_other_takes_over_the_gate_where_it_was() {
    let cp = ControlPlane::shared();
    let (system, team, kubeconfig) = install(cp).await;
    let failing = Arc::new(AtomicBool::new(false));
    let port = gates::proxies(&team, "shop", &[[127, 0, 0, 10]], &failing).await;
    gates::apply(cp, &gates::virtual_service(&team.name, "shop", true));
    // Slow steps (4 s), so the rollout is still on its way when the leader goes.
    gates::apply(cp, &gates::gate(&team.name, "shop", "shop-caller", port, "4s"));
    let a = controller(cp, &system, &team, &kubeconfig, "controller-a");
    let b = controller(cp, &system, &team, &kubeconfig, "controller-b");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = gate_status(&team, "shop").await;
        if s["weight"].as_f64().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{s:#}\n{}\n{}", a.log(), b.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ra, rb) = (ready(&a).await, ready(&b).await);
    assert!(matches!((ra, rb), (Some(200), Some(503)) | (Some(503), Some(200))), "exactly one leads: {ra:?} {rb:?}");
    let (mut leader, standby) = if ra == Some(200) { (a, b) } else { (b, a) };
    let weight_before = gate_status(&team, "shop").await["weight"].as_f64().unwrap();
    // SIGTERM: the leader releases the Lease on its way out.
    let _ = Command::new("kill").args(["-TERM", &leader.0.id().to_string()]).status();
    let _ = leader.0.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready(&standby).await != Some(200) {
        assert!(Instant::now() < deadline, "the standby did not take over\n{}", standby.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The new leader resumes from the WasmPlugin: no step back to 0, and the rollout goes on (the
    // gate's promotion gate is off: the next step needs no evidence, only its 4-s interval).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = gate_status(&team, "shop").await;
        let w = s["weight"].as_f64().unwrap_or(0.0);
        assert!(w >= weight_before, "the weight went back from {weight_before} to {w}: {s:#}");
        if w > weight_before || s["phase"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the rollout did not go on after the takeover: {s:#}\n{}", standby.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(leader);
}
