//! Envoys for the cost benchmark: the shipped local bootstrap (deploy/local/envoy.yaml, rewritten
//! for loopback by the e2e harness) in three variants that differ only in the public listener's
//! HTTP filters, and a minimal upstream that both clusters point at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canary_core::config::RouteConfig;
use canary_e2e::envoy::{LocalSetup, bound_listener, local_bootstrap};
use serde_json::Value;

/// What runs in front of the router on the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No wasm filter at all (and no snapshot listener).
    Plain,
    /// A proxy-wasm filter that does nothing, in the same V8 runtime (no snapshot listener).
    Noop,
    /// canary-filter as shipped: ECDS-loaded routing filter plus the snapshot listener.
    Canary,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain Envoy",
            Variant::Noop => "no-op wasm filter",
            Variant::Canary => "canary-filter",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Noop => "noop",
            Variant::Canary => "canary",
        }
    }
}

/// How a benchmark Envoy is started, beyond its variant: the defaults are what the wrk part runs.
#[derive(Debug, Clone)]
pub struct Launch {
    /// A program and its arguments that Envoy runs under (valgrind), or none.
    pub wrapper: Vec<String>,
    /// canary-filter's `.wasm`, if not the release build `make wasm` writes.
    pub filter_wasm: Option<PathBuf>,
    /// How long Envoy may take to serve its first request (much longer under valgrind).
    pub ready_within: Duration,
}

impl Default for Launch {
    fn default() -> Self {
        Launch { wrapper: Vec::new(), filter_wasm: None, ready_within: Duration::from_secs(30) }
    }
}

/// A running benchmark Envoy, killed by its PID on drop.
#[derive(Debug)]
pub struct BenchEnvoy {
    child: Child,
    _dir: tempfile::TempDir,
    pub variant: Variant,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Drop for BenchEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set(v: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    *v.pointer_mut(pointer).ok_or_else(|| format!("bootstrap has no {pointer}"))? = value;
    Ok(())
}

fn listeners(v: &mut Value) -> Result<&mut Vec<Value>, String> {
    v.pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .ok_or("bootstrap has no listeners".into())
}

/// The shipped bootstrap turned into `variant`.
fn bootstrap(variant: Variant, setup: &LocalSetup, root: &Path, noop_wasm: &Path) -> Result<Value, String> {
    let mut v = local_bootstrap(setup, root)?;
    if variant == Variant::Canary {
        return Ok(v);
    }
    listeners(&mut v)?.retain(|l| l.get("name").and_then(Value::as_str) == Some("public"));
    let filters = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters";
    let http_filters = v.pointer_mut(filters).and_then(Value::as_array_mut).ok_or("no public http_filters")?;
    let position = http_filters
        .iter()
        .position(|f| f.get("name").and_then(Value::as_str) == Some("canary-gate"))
        .ok_or("the public listener has no canary-gate filter")?;
    if variant == Variant::Plain {
        http_filters.remove(position);
    } else {
        let noop = serde_json::json!({
            "name": "noop",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "noop",
                    "root_id": "noop",
                    "failure_policy": "FAIL_OPEN",
                    "vm_config": {
                        "vm_id": "noop",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": { "local": { "filename": noop_wasm.to_string_lossy() } }
                    }
                }
            }
        });
        set(&mut v, &format!("{filters}/{position}"), noop)?;
    }
    Ok(v)
}

impl BenchEnvoy {
    /// Starts `variant` with `concurrency` workers, both clusters on `upstream`, and waits until
    /// the public listener answers.
    pub async fn start(
        variant: Variant,
        upstream: SocketAddr,
        concurrency: u32,
        route: &RouteConfig,
        base_id: u32,
    ) -> Result<BenchEnvoy, String> {
        Self::launch(variant, upstream, concurrency, route, base_id, &Launch::default()).await
    }

    /// [`BenchEnvoy::start`] with the options in `launch`.
    pub async fn launch(
        variant: Variant,
        upstream: SocketAddr,
        concurrency: u32,
        route: &RouteConfig,
        base_id: u32,
        launch: &Launch,
    ) -> Result<BenchEnvoy, String> {
        let bin = canary_e2e::paths::envoy_bin()?;
        let dir = tempfile::Builder::new().prefix("canary-gate-bench").tempdir().map_err(|e| e.to_string())?;
        let root = dir.path();
        let wasm = root.join("canary_filter.wasm");
        let noop = root.join("noop_filter.wasm");
        let filter = match &launch.filter_wasm {
            Some(p) => p.clone(),
            None => canary_e2e::paths::filter_wasm()?,
        };
        copy(&filter, &wasm)?;
        copy(&noop_wasm()?, &noop)?;
        std::fs::create_dir_all(root.join("ecds")).map_err(|e| e.to_string())?;
        let ecds = canary_core::ecds::discovery_file(&wasm.to_string_lossy(), route).map_err(|e| e.to_string())?;
        std::fs::write(root.join("ecds/canary-gate.json"), ecds.to_string()).map_err(|e| e.to_string())?;
        let setup = LocalSetup {
            stable: upstream,
            canary: upstream,
            concurrency,
            route: route.clone(),
            raw_plugin_config: None,
            shape: Default::default(),
        };
        let config = root.join("envoy.json");
        std::fs::write(&config, bootstrap(variant, &setup, root, &noop)?.to_string()).map_err(|e| e.to_string())?;
        let admin_path = root.join("admin-address");
        let log = root.join("envoy.log");
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .arg("-c")
            .arg(&config)
            .args(["--base-id", &base_id.to_string(), "--concurrency", &concurrency.to_string()])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut envoy = BenchEnvoy { child, _dir: dir, variant, public: unbound, admin: unbound, log };
        (envoy.admin, envoy.public) = envoy.wait_public(&admin_path, launch.ready_within).await?;
        Ok(envoy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Counter `name` from Envoy's stats (`wasmcustom.` prefix for the filter's own), summed over
    /// its tagged series; `None` when Envoy has no such counter.
    pub async fn counter_sum(&self, name: &str) -> Result<Option<u64>, String> {
        let url = format!("http://{}/stats?format=json&filter={name}", self.admin);
        let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
        let stats = v.get("stats").and_then(Value::as_array).ok_or_else(|| format!("{url}: no stats"))?;
        let values: Vec<u64> = stats
            .iter()
            .filter(|s| s.get("name").and_then(Value::as_str).is_some_and(|n| n.contains(name)))
            .filter_map(|s| s.get("value").and_then(Value::as_u64))
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum()))
    }

    /// Requests canary-filter counted, from its snapshot listener (every subset's counters and
    /// dark launch's): the agent's own source, which does not depend on the filter's optional
    /// Envoy stats (`envoy_stats`).
    pub async fn snapshot_requests(&self) -> Result<u64, String> {
        let url = format!("http://{}/listeners?format=json", self.admin);
        let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        let listeners: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
        let at = bound_listener(&listeners, "canary-gate-snapshot")
            .ok_or_else(|| format!("{} has no snapshot listener", self.variant.name()))?;
        let url = format!("http://{at}{}", canary_core::config::DEFAULT_SNAPSHOT_PATH);
        let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
        let snapshot: canary_core::snapshot::Snapshot =
            serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
        let subsets = snapshot.subsets.iter().map(|s| s.counters.requests);
        Ok(subsets.chain(snapshot.dark_launch.map(|d| d.requests)).sum())
    }

    async fn wait_public(
        &mut self,
        admin_path: &Path,
        ready_within: Duration,
    ) -> Result<(SocketAddr, SocketAddr), String> {
        // Per call: generous, since an Envoy under valgrind answers its first requests slowly.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + ready_within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{} exited with {status}: {}", self.variant.name(), self.log_text()));
            }
            if let Some(admin) = std::fs::read_to_string(admin_path).ok().and_then(|t| t.trim().parse().ok())
                && let Some(public) = public_listener(&http, admin).await
                && http.get(format!("http://{public}/")).send().await.is_ok_and(|r| r.status().is_success())
            {
                return Ok((admin, public));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{} did not serve within {ready_within:?}: {}", self.variant.name(), self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn public_listener(http: &reqwest::Client, admin: SocketAddr) -> Option<SocketAddr> {
    let body = http.get(format!("http://{admin}/listeners?format=json")).send().await.ok()?.text().await.ok()?;
    bound_listener(&serde_json::from_str(&body).ok()?, "public")
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))
}

/// The no-op filter, built by `make bench` (`cargo build --release -p noop-filter --target wasm32-wasip1`).
pub fn noop_wasm() -> Result<PathBuf, String> {
    let p = canary_e2e::paths::workspace_root().join("target/wasm32-wasip1/release/noop_filter.wasm");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("{} is missing: run `make bench` (it builds the no-op filter)", p.display()))
    }
}

/// A minimal upstream for the cost benchmark: answers every request `200 ok` on one thread of its
/// own, so the three Envoys see the same upstream cost.
pub fn start_upstream() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = axum::Router::new().fallback(|| async { ([("x-served-by", "upstream")], "ok") });
                if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                    let _ = axum::serve(listener, app).await;
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}
