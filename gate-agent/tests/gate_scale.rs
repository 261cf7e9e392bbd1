//! Benchmark (`make bench`, or `cargo test --release -p gate-agent --test gate_scale -- --ignored
//! --nocapture`): one `gate-agent controller` process judging many CanaryGates, each with its own
//! simulated proxies, on a **real** kube-apiserver (tests/support/kube.rs), at the default tick.
//! Reports, over repeated steady windows (median, min and max), the controller's CPU share, its
//! CPU per tick, the tick period achieved (snapshot reads per proxy) and its API calls per second
//! (from the API server's audit log); its highest resident memory; and, over breaches in several
//! gates one at a time, the time from each breach to that gate's first kill order. A goal is
//! reported met only when every repeat is within it. Writes `target/bench/controller_scale.{json,md}`.
//!
//! The simulated proxies answer as the current filter does: the compact snapshot to a controller
//! that asks for it, JSON otherwise. `CG_SCALE_AGENT_BIN` runs another `gate-agent` binary as the
//! controller (an older build, to compare on the same driver and load); default: this build's.
//!
//! `CG_SCALE_GATES` (default 100) and `CG_SCALE_PROXIES` (default 10) size it;
//! `CG_SCALE_WINDOWS` (5) × `CG_SCALE_WINDOW_S` (10) is the measuring, `CG_SCALE_BREACHES` (5) the
//! breaches. The simulated proxies run in this test process, not in the controller's, so the
//! controller's figures are its own; they share the machine's cores with it and with the API server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test code

#[path = "support/gates.rs"]
mod gates;
#[path = "support/kube.rs"]
mod kube_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use canary_core::{Outcome, SubsetCounters};
use gate_agent::gate::crd::CanaryGate;
use gate_agent::mesh::wasmplugin::WasmPlugin;
use kube::Api;
use kube::api::ListParams;
use kube_support::ControlPlane;
use serde_json::{Value, json};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One gate's simulated proxies: reads counted, kill orders timed.
#[derive(Default)]
struct GateProxies {
    failing: AtomicBool,
    reads: AtomicU64,
    first_kill: Mutex<Option<Instant>>,
}

/// (utime + stime) ticks and VmRSS kB of `pid`.
fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap();
    (ticks, rss.parse().unwrap())
}

/// Server-side apply through the client (a `kubectl apply` per object costs minutes of CPU here).
async fn apply(client: &kube::Client, object: &Value) {
    let (group, version) = object["apiVersion"].as_str().unwrap().rsplit_once('/').unwrap();
    let kind = object["kind"].as_str().unwrap();
    let plural = match kind {
        "VirtualService" => "virtualservices",
        "CanaryGate" => "canarygates",
        other => panic!("no plural for {other}"),
    };
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
    let ns = object["metadata"]["namespace"].as_str().unwrap();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let params = kube::api::PatchParams::apply("user").force();
    api.patch(object["metadata"]["name"].as_str().unwrap(), &params, &kube::api::Patch::Apply(object)).await.unwrap();
}

/// Median, lowest and highest of repeated measurements.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = if v.is_empty() { f64::NAN } else { (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0 };
        Spread { median, min: v.first().copied().unwrap_or(f64::NAN), max: v.last().copied().unwrap_or(f64::NAN) }
    }

    fn json(&self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    fn show(&self, decimals: usize) -> String {
        format!("{:.d$} [{:.d$}–{:.d$}]", self.median, self.min, self.max, d = decimals)
    }
}

/// The controller's API requests per second by verb and resource, from the API server's audit
/// log (one line per completed request) written after byte `from`.
fn controller_api_calls(audit: &std::path::Path, from: u64, seconds: f64) -> std::collections::BTreeMap<String, f64> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let mut file = std::fs::File::open(audit).unwrap();
    file.seek(std::io::SeekFrom::Start(from)).unwrap();
    file.read_to_string(&mut text).unwrap();
    let mut calls = std::collections::BTreeMap::new();
    for event in text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if !event["userAgent"].as_str().unwrap_or_default().starts_with("gate-agent/")
            || event["stage"] != "ResponseComplete"
        {
            continue;
        }
        let resource = match event["objectRef"]["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", event["objectRef"]["resource"].as_str().unwrap_or("?")),
            None => event["objectRef"]["resource"].as_str().unwrap_or("?").to_owned(),
        };
        *calls.entry(format!("{} {resource}", event["verb"].as_str().unwrap_or("?"))).or_insert(0.0) += 1.0 / seconds;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench"]
async fn one_controller_judges_many_gates_at_the_default_tick() {
    let (n_gates, n_proxies) = (env_usize("CG_SCALE_GATES", 100), env_usize("CG_SCALE_PROXIES", 10));
    assert!(n_gates <= 250 && n_proxies <= 250, "loopback addresses 127.1.<gate>.<proxy>");
    let cp = ControlPlane::shared();
    gates::install_crd(cp);
    let ns = cp.namespace("scale").await;

    // The weights the proxies apply, from one listing every 500 ms (as istiod would push them).
    let weights: Arc<RwLock<HashMap<String, f64>>> = Arc::default();
    {
        let (weights, plugins) = (Arc::clone(&weights), Api::<WasmPlugin>::namespaced(ns.admin.clone(), &ns.name));
        tokio::spawn(async move {
            loop {
                if let Ok(list) = plugins.list(&ListParams::default()).await {
                    let mut w = weights.write().unwrap();
                    for p in list.items {
                        let weight =
                            p.spec.plugin_config.as_ref().and_then(|c| c["canary_weight"].as_f64()).unwrap_or(0.0);
                        w.insert(p.metadata.name.unwrap_or_default(), weight);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    let mut all: Vec<Arc<GateProxies>> = Vec::new();
    let started = Instant::now();
    for g in 0..n_gates {
        let name = format!("gate-{g}");
        let state = Arc::new(GateProxies::default());
        all.push(Arc::clone(&state));
        let mut port = 0;
        for p in 0..n_proxies {
            let ip = [127, 1, u8::try_from(g).unwrap(), u8::try_from(p + 1).unwrap()];
            let counters = Arc::new(Mutex::new((SubsetCounters::default(), SubsetCounters::default())));
            let (state, weights, plugin) = (Arc::clone(&state), Arc::clone(&weights), format!("{name}-canary-gate"));
            let id = format!("{name}-proxy-{p}");
            let app =
                axum::Router::new().fallback(move |method: axum::http::Method, headers: axum::http::HeaderMap| {
                    let (state, weights, plugin, counters, id) =
                        (Arc::clone(&state), Arc::clone(&weights), plugin.clone(), Arc::clone(&counters), id.clone());
                    async move {
                        if method == axum::http::Method::POST {
                            state.first_kill.lock().unwrap().get_or_insert_with(Instant::now);
                            return gates::kill_taken();
                        }
                        state.reads.fetch_add(1, Ordering::Relaxed);
                        let weight = weights.read().unwrap().get(&plugin).copied().unwrap_or(0.0);
                        let canary = weight.round() as u64;
                        let mut c = counters.lock().unwrap();
                        for _ in 0..100 - canary {
                            c.0.record(Outcome::Success, 2_000);
                        }
                        let outcome =
                            if state.failing.load(Ordering::Relaxed) { Outcome::Failure } else { Outcome::Success };
                        for _ in 0..canary {
                            c.1.record(outcome, 2_000);
                        }
                        gates::snapshot_reply(&headers, id, &c.0, &c.1)
                    }
                });
            let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, port))).await.unwrap();
            port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let addr = std::net::Ipv4Addr::from(ip).to_string();
            ns.pod(&format!("{name}-caller-{p}"), json!({ "app": format!("{name}-caller") }), &addr, true).await;
        }
        apply(&ns.admin, &gates::virtual_service(&ns.name, &name, true)).await;
        // Long steps: every gate is still progressing during the window.
        let mut gate = gates::gate(&ns.name, &name, &format!("{name}-caller"), port, "10m");
        gate["spec"]["analysis"]["stepWeights"] = json!([1, 5, 10, 25, 50]);
        gate["spec"]["analysis"]["maxWeight"] = json!(50);
        apply(&ns.admin, &gate).await;
    }
    eprintln!("{n_gates} gates with {n_proxies} proxies each set up in {:?}", started.elapsed());

    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let log = cp.dir.join("scale-controller.log");
    let binary = std::env::var_os("CG_SCALE_AGENT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_gate-agent").into());
    eprintln!("controller: {}", std::path::Path::new(&binary).display());
    let mut controller = Command::new(&binary)
        .args(["controller", "--module-url", "oci://registry.invalid/f:1", "--module-sha256", &"ab".repeat(32)])
        .args(["--watch-namespace", &ns.name, "--namespace", &ns.name, "--identity", "scale-0"])
        .args(["--listen", &listen.to_string()])
        .env("KUBECONFIG", &cp.admin_kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("GATE_AGENT_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = controller.id();

    // Every gate running and every proxy read.
    let gates_api = Api::<CanaryGate>::namespaced(ns.admin.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = gates_api.list(&ListParams::default()).await.unwrap();
        let running = list
            .items
            .iter()
            .filter(|g| {
                let s = serde_json::to_value(&g.status).unwrap_or(Value::Null);
                s["phase"] == "progressing" && s["proxiesReporting"].as_u64() == u64::try_from(n_proxies).ok()
            })
            .count();
        if running == n_gates {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {running} of {n_gates} gates running\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready_after = started.elapsed();

    // Steady windows, repeated so that the figures come with their spread.
    let (n_windows, window) = (
        env_usize("CG_SCALE_WINDOWS", 5).max(1),
        Duration::from_secs(u64::try_from(env_usize("CG_SCALE_WINDOW_S", 10)).unwrap().max(1)),
    );
    let audit = cp.dir.join("audit.log");
    let audit_from = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(0);
    let measuring = Instant::now();
    let (mut cpu_shares, mut ticks_ms, mut cpu_per_tick) = (Vec::new(), Vec::new(), Vec::new());
    let mut rss_kb = 0;
    for _ in 0..n_windows {
        let reads_before: u64 = all.iter().map(|g| g.reads.load(Ordering::Relaxed)).sum();
        let (cpu0, _) = cpu_and_rss(pid);
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let (cpu1, rss) = cpu_and_rss(pid);
        let elapsed = t0.elapsed().as_secs_f64();
        let reads: u64 = all.iter().map(|g| g.reads.load(Ordering::Relaxed)).sum::<u64>() - reads_before;
        let clk = 100.0; // USER_HZ on Linux
        let share = (cpu1 - cpu0) as f64 / clk / elapsed;
        let tick_s = elapsed * (n_gates * n_proxies) as f64 / reads.max(1) as f64;
        cpu_shares.push(share);
        ticks_ms.push(tick_s * 1000.0);
        cpu_per_tick.push(share * tick_s * 1000.0);
        rss_kb = rss_kb.max(rss);
    }
    let api_calls = controller_api_calls(&audit, audit_from, measuring.elapsed().as_secs_f64());

    // Breaches, one gate at a time: time to that gate's first kill order.
    let n_breaches = env_usize("CG_SCALE_BREACHES", 5).clamp(1, n_gates);
    let mut breach_to_kill = Vec::new();
    for state in &all[..n_breaches] {
        let breach = Instant::now();
        state.failing.store(true, Ordering::SeqCst);
        let deadline = breach + Duration::from_secs(10);
        let kill = loop {
            if let Some(t) = *state.first_kill.lock().unwrap() {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "no kill order in 10 s\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        breach_to_kill.push(kill.saturating_duration_since(breach).as_secs_f64() * 1000.0);
        // The next breach starts at another phase of the tick.
        tokio::time::sleep(Duration::from_millis(370)).await;
    }
    let others_killed = all[n_breaches..].iter().filter(|g| g.first_kill.lock().unwrap().is_some()).count();
    let _ = controller.kill();
    let _ = controller.wait();
    assert_eq!(others_killed, 0, "a breach in one gate killed another");

    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let tick_ms = 250.0;
    let (cpu, period, share, kill) =
        (Spread::of(&cpu_per_tick), Spread::of(&ticks_ms), Spread::of(&cpu_shares), Spread::of(&breach_to_kill));
    // A goal is met only when the worst of its repeats is within it.
    let cpu_met = cpu.max <= 50.0;
    let kill_met = kill.max <= tick_ms;
    let calls_md: String = api_calls.iter().map(|(k, v)| format!("{k} {v:.1}/s")).collect::<Vec<_>>().join(", ");
    let result = json!({
        "gates": n_gates, "proxies_per_gate": n_proxies, "build": build,
        "controller": std::path::Path::new(&binary).display().to_string(),
        "load_average_at_end": std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).unwrap_or_default(),
        "setup_and_first_status_s": ready_after.as_secs_f64(),
        "windows": n_windows, "window_s": window.as_secs_f64(),
        "cpu_share": share.json(), "rss_mib": rss_kb as f64 / 1024.0,
        "tick_period_ms": period.json(), "cpu_per_tick_ms": cpu.json(),
        "breach_to_kill_ms": kill.json(),
        "controller_api_calls_per_s": api_calls,
        "goal": { "cpu_per_tick_ms": 50, "breach_to_kill_ms": tick_ms },
        "goal_met": { "cpu_per_tick": cpu_met, "breach_to_kill": kill_met },
    });
    let met = |m: bool| if m { "met (every repeat within it)" } else { "**not met**" };
    let md = format!(
        "## Controller scale ({build} build)\n\n{n_gates} CanaryGates × {n_proxies} simulated proxies, one controller, \
         default tick 250 ms, real kube-apiserver, all on the same machine. {n_windows} windows of {:.0} s \
         (median [min–max]); {n_breaches} breaches, one gate each. Load average at the end: {}.\n\n\
         | figure | value | goal |\n|---|---|---|\n\
         | CPU share (one core = 1.0) | {} | |\n\
         | CPU per tick, all gates | {} ms | ≤ 50 ms: {} |\n\
         | resident memory (highest) | {:.1} MiB | |\n\
         | tick period achieved | {} ms | 250 ms |\n\
         | breach → first kill order | {} ms | ≤ 1 tick (250 ms): {} |\n\
         | the controller's API calls | {calls_md} | |\n",
        window.as_secs_f64(),
        result["load_average_at_end"].as_str().unwrap_or_default(),
        share.show(3),
        cpu.show(1),
        met(cpu_met),
        rss_kb as f64 / 1024.0,
        period.show(0),
        kill.show(0),
        met(kill_met),
    );
    eprintln!("{md}");
    let out = kube_support::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("controller_scale.json"), serde_json::to_string_pretty(&result).unwrap()).unwrap();
    std::fs::write(out.join("controller_scale.md"), md).unwrap();
}
