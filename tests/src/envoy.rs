//! Real Envoy, started from the shipped `deploy/local/envoy.yaml` with loopback ports.
//!
//! The shipped file is written for containers (`/etc/canary-gate/...`, DNS names `stable` and
//! `canary`, fixed ports). [`LocalSetup`] rewrites exactly those things and nothing else: every
//! path under `/etc/canary-gate` moves to a temporary directory, listener and admin ports become
//! 0 (Envoy picks free ones; the harness reads them back), and the two clusters point at
//! loopback backends. Each Envoy gets its own `--base-id` and is stopped by its PID on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use canary_core::config::RouteConfig;
use canary_core::ecds;
use canary_core::snapshot::Snapshot;
use serde_json::Value;

use crate::paths;

const CONTAINER_ROOT: &str = "/etc/canary-gate";
/// Time allowed for an ECDS update seen on the main thread to reach every worker.
const WORKER_PROPAGATION: Duration = Duration::from_millis(250);

/// Options for one Envoy.
#[derive(Debug, Clone)]
pub struct LocalSetup {
    pub stable: SocketAddr,
    pub canary: SocketAddr,
    /// Worker threads (`--concurrency`).
    pub concurrency: u32,
    /// Written to the watched file before start.
    pub route: RouteConfig,
    /// Written instead of `route` when set: a plugin configuration as raw text, possibly invalid.
    pub raw_plugin_config: Option<String>,
    /// Changes to the shipped bootstrap for tests that need another shape.
    pub shape: Shape,
}

/// Deliberate changes to the shipped bootstrap; the default is the file as shipped.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Replaces the routes' timeout (the shipped one is 10 s), so a hang test need not wait it out.
    pub route_timeout: Option<String>,
    /// The public listener without the canary-gate filter: what a proxy runs when the filter is
    /// not loaded (not yet pulled, failed open).
    pub without_filter: bool,
    /// The shape of an Istio sidecar: no early header mutation strips the label, and the canary
    /// route matches `v2.<token>`, the label the filter writes with `label_token`.
    pub mesh_label_token: Option<String>,
    /// Both clusters speak HTTP/2 to their backends (gRPC needs it).
    pub upstream_http2: bool,
    /// A second gated service behind the same Envoy: listener `public-b`, filter `canary-gate-b`
    /// (its configuration in `ecds/canary-gate-b.json`, written before start), clusters
    /// `stable-b` and `canary-b` at these backends.
    pub second: Option<(SocketAddr, SocketAddr, RouteConfig)>,
    /// Envoy configured as an Istio waypoint would be for the filter ([`WaypointShape`]).
    pub waypoint: Option<WaypointShape>,
}

/// The shape of one ambient waypoint replica, as far as the filter and gate-agent see it: the
/// inbound listener (`public`, on the replica's own address) runs only the route filter, from the
/// watched file (istiod's ECDS push); no snapshot listener and nothing strips the label before
/// the filter (the filter overwrites it); a `stats` listener at `ip:stats_port` serves the
/// admin's `/stats/prometheus` and nothing else, as Istio's 15090 does; none of
/// deploy/local's `stats_config` (Istio's bootstrap has none of it: no subset tag, Envoy's
/// default buckets).
#[derive(Debug, Clone, Copy)]
pub struct WaypointShape {
    /// The replica's address (its pod IP): `127.0.0.2`, `127.0.0.3`, ...
    pub ip: std::net::IpAddr,
    pub stats_port: u16,
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    dir: tempfile::TempDir,
    pub admin: SocketAddr,
    pub public: SocketAddr,
    /// The second gated service's listener ([`Shape::second`]).
    pub public_b: Option<SocketAddr>,
    second: bool,
    pub snapshot: SocketAddr,
    pub base_id: u32,
    wasm: PathBuf,
    http: reqwest::Client,
    /// What [`Envoy::restart`] runs again.
    bin: PathBuf,
    concurrency: u32,
}

static NEXT_BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A base id no other Envoy of this machine's test runs uses: the process id spreads runs apart,
/// the counter spreads Envoys within a run.
fn unique_base_id() -> u32 {
    let n = NEXT_BASE_ID.fetch_add(1, Ordering::SeqCst);
    10_000 + (std::process::id() % 50_000) * 16 + (n % 16)
}

fn rewrite_paths(v: &mut Value, root: &str) {
    match v {
        Value::String(s) if s.starts_with(CONTAINER_ROOT) => {
            *s = format!("{root}{}", &s[CONTAINER_ROOT.len()..]);
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite_paths(i, root)),
        Value::Object(map) => map.values_mut().for_each(|i| rewrite_paths(i, root)),
        _ => {}
    }
}

/// The entry of list `list` (a JSON pointer) whose `name` is `name`.
fn named<'a>(v: &'a mut Value, list: &str, name: &str) -> Result<&'a mut Value, String> {
    v.pointer_mut(list)
        .and_then(Value::as_array_mut)
        .and_then(|items| items.iter_mut().find(|i| i.get("name").and_then(Value::as_str) == Some(name)))
        .ok_or_else(|| format!("deploy/local/envoy.yaml: no entry named {name:?} in {list}"))
}

/// Replaces the value at `pointer`, which must exist.
fn set_at(v: &mut Value, pointer: &str, new: Value) -> Result<(), String> {
    let slot = v.pointer_mut(pointer).ok_or_else(|| format!("deploy/local/envoy.yaml: nothing at {pointer}"))?;
    *slot = new;
    Ok(())
}

fn loopback(port: u16) -> Value {
    serde_json::json!({ "address": "127.0.0.1", "port_value": port })
}

fn point_cluster(v: &mut Value, name: &str, addr: SocketAddr) -> Result<(), String> {
    let c = named(v, "/static_resources/clusters", name)?;
    set_at(c, "/type", "STATIC".into())?;
    set_at(
        c,
        "/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address/socket_address",
        serde_json::json!({ "address": addr.ip().to_string(), "port_value": addr.port() }),
    )
}

/// The shipped bootstrap, rewritten for loopback and `root`.
pub fn local_bootstrap(setup: &LocalSetup, root: &Path) -> Result<Value, String> {
    let path = paths::deploy_local().join("envoy.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v: Value = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    rewrite_paths(&mut v, &root.to_string_lossy());
    set_at(&mut v, "/admin/address/socket_address", loopback(0))?;
    for name in ["public", "canary-gate-snapshot"] {
        set_at(named(&mut v, "/static_resources/listeners", name)?, "/address/socket_address", loopback(0))?;
    }
    point_cluster(&mut v, "stable", setup.stable)?;
    point_cluster(&mut v, "canary", setup.canary)?;
    reshape(&mut v, &setup.shape)?;
    Ok(v)
}

const HCM: &str = "/filter_chains/0/filters/0/typed_config";

fn reshape(v: &mut Value, shape: &Shape) -> Result<(), String> {
    if let Some((stable, canary, _)) = &shape.second {
        let (stable, canary) = (*stable, *canary);
        let listener = named(v, "/static_resources/listeners", "public")?.clone();
        let mut b = listener;
        set_at(&mut b, "/name", "public-b".into())?;
        let hcm = b.pointer_mut(HCM).ok_or("public listener: no HTTP connection manager")?;
        set_at(hcm, "/stat_prefix", "public_b".into())?;
        let filter = named(hcm, "/http_filters", "canary-gate")?;
        set_at(filter, "/name", "canary-gate-b".into())?;
        let source =
            filter.pointer_mut("/config_discovery/config_source/path_config_source/path").ok_or("no ECDS path")?;
        let path = source.as_str().unwrap_or_default().replace("canary-gate.json", "canary-gate-b.json");
        *source = path.into();
        for (route, cluster) in [("canary", "canary-b"), ("stable", "stable-b")] {
            let r = named(hcm, "/route_config/virtual_hosts/0/routes", route)?;
            set_at(r, "/route/cluster", cluster.into())?;
        }
        let template = v.pointer("/static_resources/clusters/0").cloned().ok_or("no cluster to copy")?;
        for (name, addr) in [("stable-b", stable), ("canary-b", canary)] {
            let mut c = template.clone();
            set_at(&mut c, "/name", name.into())?;
            set_at(&mut c, "/load_assignment/cluster_name", name.into())?;
            let clusters =
                v.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut).ok_or("no clusters")?;
            clusters.push(c);
            point_cluster(v, name, addr)?;
        }
        v.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).ok_or("no listeners")?.push(b);
    }
    if let Some(w) = &shape.waypoint {
        waypoint_shape(v, w)?;
    }
    let publics: &[&str] = if shape.second.is_some() { &["public", "public-b"] } else { &["public"] };
    for name in publics {
        let hcm = named(v, "/static_resources/listeners", name)?.pointer_mut(HCM).ok_or("no HCM")?;
        if let Some(timeout) = &shape.route_timeout {
            for route in ["canary", "stable"] {
                set_at(
                    named(hcm, "/route_config/virtual_hosts/0/routes", route)?,
                    "/route/timeout",
                    timeout.as_str().into(),
                )?;
            }
        }
        if shape.without_filter {
            let filters = hcm.pointer_mut("/http_filters").and_then(Value::as_array_mut).ok_or("no http_filters")?;
            filters.retain(|f| !f.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with("canary-gate")));
        }
        if let Some(token) = &shape.mesh_label_token {
            let obj = hcm.as_object_mut().ok_or("HCM is not an object")?;
            obj.remove("early_header_mutation_extensions").ok_or("no early header mutation to remove")?;
            let canary = named(hcm, "/route_config/virtual_hosts/0/routes", "canary")?;
            let exact =
                canary.pointer_mut("/match/headers/0/string_match/exact").ok_or("canary route: no exact match")?;
            *exact = format!("{}.{token}", exact.as_str().unwrap_or_default()).into();
        }
    }
    if shape.upstream_http2 {
        let clusters =
            v.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut).ok_or("no clusters")?;
        for c in clusters {
            let obj = c.as_object_mut().ok_or("cluster is not an object")?;
            obj.insert(
                "typed_extension_protocol_options".into(),
                serde_json::json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                }),
            );
        }
    }
    Ok(())
}

fn waypoint_shape(v: &mut Value, w: &WaypointShape) -> Result<(), String> {
    let obj = v.as_object_mut().ok_or("bootstrap is not an object")?;
    obj.remove("stats_config");
    let public = named(v, "/static_resources/listeners", "public")?;
    set_at(public, "/address/socket_address", serde_json::json!({ "address": w.ip.to_string(), "port_value": 0 }))?;
    let hcm = public.pointer_mut(HCM).and_then(Value::as_object_mut).ok_or("public listener: no HCM")?;
    hcm.remove("early_header_mutation_extensions").ok_or("no early header mutation to remove")?;
    let listeners = v.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).ok_or("no listeners")?;
    let snapshot = listeners
        .iter_mut()
        .find(|l| l.get("name").and_then(Value::as_str) == Some("canary-gate-snapshot"))
        .ok_or("no snapshot listener")?;
    // Istio's 15090: only GET /stats/prometheus, proxied to the admin (on loopback).
    *snapshot = serde_json::json!({
        "name": "stats",
        "address": { "socket_address": { "address": w.ip.to_string(), "port_value": w.stats_port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "stats",
                "route_config": { "virtual_hosts": [{ "name": "stats", "domains": ["*"], "routes": [
                    { "match": { "prefix": "/stats/prometheus" }, "route": { "cluster": "prometheus_stats" } }
                ] }] },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        }] }]
    });
    // The stats cluster needs the admin's port before Envoy starts: a free one, picked now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port for the admin: {e}"))?
        .port();
    set_at(v, "/admin/address/socket_address", loopback(port))?;
    let admin = loopback(port);
    let clusters = v.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut).ok_or("no clusters")?;
    clusters.push(serde_json::json!({
        "name": "prometheus_stats", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "prometheus_stats",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": admin } } }] }] }
    }));
    Ok(())
}

/// The last `lines` lines of a log file (empty if it cannot be read), for failure messages.
pub(crate) fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.iter().skip(all.len().saturating_sub(lines)).copied().collect::<Vec<_>>().join("\n")
}

/// Starts Envoy on the bootstrap `root/envoy.json`, appending its log to `root/envoy.log`.
fn spawn_envoy(bin: &Path, root: &Path, base_id: u32, concurrency: u32) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("envoy.log"))
        .map_err(|e| format!("{}: {e}", root.join("envoy.log").display()))?;
    Command::new(bin)
        .arg("-c")
        .arg(root.join("envoy.json"))
        .args(["--base-id", &base_id.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .arg("--admin-address-path")
        .arg(root.join("admin-address"))
        .args(["--log-level", "info", "--component-log-level", "upstream:warn,connection:warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// The address listener `name` is bound to, from the admin's `/listeners?format=json`; `None`
/// until it is bound to a port.
pub fn bound_listener(listeners: &Value, name: &str) -> Option<SocketAddr> {
    let l = listeners.get("listener_statuses")?.as_array()?.iter().find(|l| l.get("name") == Some(&name.into()))?;
    let sa = l.pointer("/local_address/socket_address")?;
    let port = u16::try_from(sa.get("port_value")?.as_u64()?).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(sa.get("address")?.as_str()?.parse().ok()?, port))
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

impl Envoy {
    /// Starts Envoy and waits until its listeners accept traffic.
    pub async fn start(setup: &LocalSetup) -> Result<Envoy, String> {
        let bin = paths::envoy_bin()?;
        let wasm_src = paths::filter_wasm()?;
        let dir = tempfile::Builder::new().prefix("canary-gate-e2e").tempdir().map_err(|e| e.to_string())?;
        let root = dir.path();
        let wasm = root.join("canary_filter.wasm");
        std::fs::copy(&wasm_src, &wasm).map_err(|e| format!("copy {}: {e}", wasm_src.display()))?;
        std::fs::create_dir_all(root.join("ecds")).map_err(|e| e.to_string())?;
        let bootstrap = local_bootstrap(setup, root)?;
        std::fs::write(root.join("envoy.json"), bootstrap.to_string()).map_err(|e| e.to_string())?;
        let admin_path = root.join("admin-address");
        let base_id = unique_base_id();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        let mut envoy = Envoy {
            child: spawn_envoy(&bin, root, base_id, setup.concurrency)?,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            public: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_b: None,
            second: setup.shape.second.is_some(),
            snapshot: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_id,
            wasm,
            dir,
            http,
            bin,
            concurrency: setup.concurrency,
        };
        match &setup.raw_plugin_config {
            Some(raw) => envoy.write_raw_plugin_config(raw),
            None => envoy.write_route(&setup.route),
        }
        .map_err(|e| format!("write the filter config: {e}"))?;
        if let Some((_, _, second)) = &setup.shape.second {
            envoy.write_route_b(second).map_err(|e| format!("write the second filter config: {e}"))?;
        }
        envoy.wait_ready(&admin_path).await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self, admin_path: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status} during start-up:\n{}", self.log_tail(40)));
            }
            if let Ok(text) = std::fs::read_to_string(admin_path)
                && let Ok(addr) = text.trim().parse()
            {
                self.admin = addr;
                if self.read_listeners().await.is_ok()
                    && self.admin_get("/ready").await.is_ok_and(|b| b.trim() == "LIVE")
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("Envoy was not ready within 30 s:\n{}", self.log_tail(40)))
    }

    async fn read_listeners(&mut self) -> Result<(), String> {
        let body = self.admin_get("/listeners?format=json").await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        self.public = bound_listener(&v, "public").ok_or("public listener not bound yet")?;
        if self.second {
            self.public_b = Some(bound_listener(&v, "public-b").ok_or("public-b listener not bound yet")?);
        }
        self.snapshot = bound_listener(&v, "canary-gate-snapshot")
            .or_else(|| bound_listener(&v, "stats"))
            .ok_or("snapshot listener not bound yet")?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory Envoy watches for the filter's configuration.
    pub fn ecds_dir(&self) -> PathBuf {
        self.dir.path().join("ecds")
    }

    /// Replaces the filter's configuration the way gate-agent does: new file, rename into place.
    pub fn write_route(&self, route: &RouteConfig) -> std::io::Result<()> {
        let file = ecds::discovery_file(&self.wasm.to_string_lossy(), route).map_err(std::io::Error::other)?;
        write_atomically(&self.ecds_dir(), "canary-gate.json", file.to_string().as_bytes())
    }

    /// The same with another build of the filter as the route filter's module (an upgrade or a
    /// downgrade through ECDS); the snapshot listener keeps the module Envoy started with.
    pub fn write_route_with_module(&self, wasm: &Path, route: &RouteConfig) -> std::io::Result<()> {
        let file = ecds::discovery_file(&wasm.to_string_lossy(), route).map_err(std::io::Error::other)?;
        write_atomically(&self.ecds_dir(), "canary-gate.json", file.to_string().as_bytes())
    }

    /// Writes the configuration of the second gated service's filter ([`Shape::second`]).
    pub fn write_route_b(&self, route: &RouteConfig) -> std::io::Result<()> {
        let mut file = ecds::discovery_file(&self.wasm.to_string_lossy(), route).map_err(std::io::Error::other)?;
        let name = file.pointer_mut("/resources/0/name").ok_or_else(|| std::io::Error::other("no resource name"))?;
        *name = "canary-gate-b".into();
        write_atomically(&self.ecds_dir(), "canary-gate-b.json", file.to_string().as_bytes())
    }

    /// Writes an arbitrary plugin configuration text (tests use it for bad configs).
    pub fn write_raw_plugin_config(&self, plugin_config: &str) -> std::io::Result<()> {
        let file = ecds::discovery_file_raw(&self.wasm.to_string_lossy(), plugin_config);
        write_atomically(&self.ecds_dir(), "canary-gate.json", file.to_string().as_bytes())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn admin_get(&self, path: &str) -> Result<String, String> {
        let r = self.http.get(format!("http://{}{path}", self.admin)).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let body = r.text().await.map_err(|e| e.to_string())?;
        if status.is_success() { Ok(body) } else { Err(format!("{path}: {status}: {body}")) }
    }

    /// A counter or gauge from `/stats`, by its full name; `None` if Envoy does not have it.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let body = self.admin_get(&format!("/stats?format=json&filter=^{}$", name.replace('.', "\\."))).await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v.get("stats")?.as_array()?.iter().find(|s| s.get("name") == Some(&name.into()))?.get("value")?.as_u64()
    }

    pub async fn prometheus(&self) -> Result<String, String> {
        self.admin_get("/stats/prometheus").await
    }

    /// The filter's snapshot, from the loopback snapshot listener.
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        self.snapshot_query("").await
    }

    /// The snapshot of one rollout of several (`?rollout=NAME`).
    pub async fn snapshot_of(&self, rollout: &str) -> Result<Snapshot, String> {
        self.snapshot_query(&format!("?rollout={rollout}")).await
    }

    async fn snapshot_query(&self, query: &str) -> Result<Snapshot, String> {
        let url = format!("http://{}{}{query}", self.snapshot, canary_core::config::DEFAULT_SNAPSHOT_PATH);
        let r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("snapshot: {status}: {}", String::from_utf8_lossy(&body)));
        }
        Snapshot::from_json(&body).map_err(|e| e.to_string())
    }

    /// Waits until the snapshot reports `revision` (the proxy applied that config).
    pub async fn wait_for_revision(&self, revision: u64, within: Duration) -> Result<Snapshot, String> {
        let deadline = Instant::now() + within;
        loop {
            let snap = self.snapshot().await;
            if let Ok(s) = &snap
                && s.route.as_ref().is_some_and(|r| r.revision == revision)
            {
                // The snapshot shows the revision once the main thread configured it; Envoy then
                // posts the new filter config to each worker, which takes a few more milliseconds.
                tokio::time::sleep(WORKER_PROPAGATION).await;
                return snap;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "revision {revision} not applied within {within:?} (last: {snap:?})\n{}",
                    self.log_tail(20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a counter reaches at least `at_least`.
    pub async fn wait_for_stat(&self, name: &str, at_least: u64, within: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.stat(name).await.unwrap_or(0);
            if v >= at_least {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("{name} = {v}, wanted >= {at_least} within {within:?}\n{}", self.log_tail(20)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of Envoy's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.dir.path().join("envoy.log"), lines)
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    /// Kills Envoy with SIGKILL, as a crash or an OOM kill would, and waits for it to be gone. Its
    /// directory (the watched configuration, the log) stays; [`Envoy::restart`] starts it again.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts a killed or stopped Envoy again, as a supervisor would: same bootstrap, same watched
    /// directory (it applies whatever configuration is durable there), same base id, and the same
    /// listener and admin ports, so a gate-agent's targets stay valid. Fails if a port could not
    /// be bound again.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let root = self.dir.path().to_path_buf();
        let config_path = root.join("envoy.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let mut bootstrap: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let (public, snapshot) = (self.public, self.snapshot);
        set_at(&mut bootstrap, "/admin/address/socket_address", loopback(self.admin.port()))?;
        for (name, addr) in [("public", public), ("canary-gate-snapshot", snapshot)] {
            let listener = named(&mut bootstrap, "/static_resources/listeners", name)?;
            set_at(listener, "/address/socket_address", loopback(addr.port()))?;
        }
        std::fs::write(&config_path, bootstrap.to_string()).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let admin_path = root.join("admin-address");
        let _ = std::fs::remove_file(&admin_path);
        self.child = spawn_envoy(&self.bin, &root, self.base_id, self.concurrency)?;
        self.wait_ready(&admin_path).await?;
        if (self.public, self.snapshot) != (public, snapshot) {
            return Err(format!(
                "restarted Envoy listens on {} and {}, not {public} and {snapshot}",
                self.public, self.snapshot
            ));
        }
        Ok(())
    }

    /// Stops Envoy by its PID and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}
