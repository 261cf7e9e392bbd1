//! `make soak`: real Envoy with canary-filter, the two backends and the real gate-agent under
//! steady open-loop load on loopback for `--seconds` (default 600), while the canary weight
//! changes about every second. Writes its figures and exits non-zero naming every failed check.
//!
//! **How the weight changes every second.** The agent owns the weights of a rollout, and a
//! finished rollout (succeeded or rolled back) only starts again with a new agent, which would
//! reset the very memory we watch. So the soak runs *one* rollout, written for the purpose: a
//! rollout spec with `interval: 1s`, a healthy canary and more small steps (5% up to 50%,
//! `seconds + 10% + 30` of them) than the run can climb, with `minRequests: 5`. The agent (tick
//! 100 ms) passes a check and moves one step every 1.0 to 1.1 s, writing each weight through its
//! own `FileRouter` into the watched file, which Envoy reloads by ECDS: a new filter
//! configuration every second for the whole run, decided and written by the real agent. The soak
//! counts the weight changes it sees in Envoy's snapshot (polled every 200 ms) and requires at
//! least 0.8 per second of load.
//!
//! The run in three parts, each a module: [`load`] sends the requests and watches the weights
//! and memory while they run; [`checks`] reads what every party counted afterwards and decides
//! each check; [`report`] writes the figures. This file holds the flags, the rollout spec, the
//! rig (Envoy, backends, agent) and the order of the run.
//!
//! Exit codes: 0 every check passed, 1 a check failed, 2 the setup could not run, 64 bad usage.
//! The filter must be built (`make wasm`) and the agent too (`cargo build -p gate-agent`, or
//! `GATE_AGENT_BIN` for another build, e.g. a release one); Envoy from `make tools-envoy` or
//! `ENVOY_BIN`.

mod checks;
mod load;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use canary_core::Snapshot;
use canary_e2e::{Agent, Fixture, paths, procfs, route};
use serde_json::Value;

use checks::Growth;
use report::Report;

const USAGE: &str = "usage: soak [--seconds N] [--rps N] [--out DIR]   (N seconds: 30..=3600, default 600; \
                     rps: 10..=2000, default 300)";
const DEFAULT_SECONDS: u64 = 600;
const DEFAULT_RPS: u32 = 300;
const SECONDS_RANGE: std::ops::RangeInclusive<u64> = 30..=3600;
const RPS_RANGE: std::ops::RangeInclusive<u64> = 10..=2000;

/// Envoy worker threads: two, as the machine the soak is written for has two cores.
const ENVOY_WORKERS: u32 = 2;
/// The agent's tick; with a 1 s interval a step lasts 1.0 to 1.1 s.
const AGENT_TICK: &str = "100ms";

/// The first and the highest canary step, in basis points.
const FIRST_STEP_BP: u32 = 500;
const LAST_STEP_BP: u32 = 5000;

type Failed = String;

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    rps: u32,
    out: PathBuf,
}

fn number(text: &str, flag: &str, range: &std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let n: u64 = text.parse().map_err(|_| format!("{flag} {text:?} is not a whole number\n{USAGE}"))?;
    if range.contains(&n) {
        Ok(n)
    } else {
        Err(format!("{flag} {n} is outside {}..={}\n{USAGE}", range.start(), range.end()))
    }
}

fn options(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o =
        Options { seconds: DEFAULT_SECONDS, rps: DEFAULT_RPS, out: paths::workspace_root().join("target/soak") };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return Err(format!("{flag}: unknown flag or missing value\n{USAGE}"));
        };
        match flag.as_str() {
            "--seconds" => o.seconds = number(&value, "--seconds", &SECONDS_RANGE)?,
            "--rps" => {
                o.rps = u32::try_from(number(&value, "--rps", &RPS_RANGE)?).map_err(|e| format!("--rps: {e}"))?;
            }
            "--out" => o.out = PathBuf::from(value),
            _ => return Err(format!("{flag}: unknown flag\n{USAGE}")),
        }
    }
    Ok(o)
}

/// A weight in basis points as the spec writes it (`5.07`).
fn percent_text(bp: u32) -> String {
    format!("{}.{:02}", bp / 100, bp % 100)
}

/// How many steps a run of `seconds` needs so that it never reaches the last one: a step lasts
/// at least the 1 s interval, so `seconds` steps at most, plus a margin.
fn steps_for(seconds: u64) -> usize {
    usize::try_from(seconds + seconds / 10 + 30).unwrap_or(usize::MAX)
}

/// The rollout the agent runs (see the module doc): `steps` weights from 5% towards 50%.
fn rollout_spec(steps: usize) -> String {
    let span = LAST_STEP_BP - FIRST_STEP_BP;
    let gaps = u32::try_from(steps.saturating_sub(1).max(1)).unwrap_or(u32::MAX);
    let increment = (span / gaps).max(1);
    let weights: Vec<String> = (0..steps)
        .map_while(|i| {
            let bp = u32::try_from(i).ok()?.checked_mul(increment)?.checked_add(FIRST_STEP_BP)?;
            (bp <= LAST_STEP_BP).then(|| percent_text(bp))
        })
        .collect();
    let max = weights.last().cloned().unwrap_or_else(|| percent_text(LAST_STEP_BP));
    format!(
        "# Written by the soak run (tests/src/bin/soak/main.rs): one step a second, a healthy canary.
name: demo
stable: v1
canary: v2
interval: 1s
threshold: 5
alpha: 0.001
stepWeights: [{}]
maxWeight: {max}
minRequests: 5
metrics:
  - name: request-success-rate
    thresholdRange: {{ min: 99 }}
    interval: 5s
  - name: request-duration
    thresholdRange: {{ max: 1000 }}
    interval: 5s
# A soak walks its weights on a schedule; the promotion gate's evidence is not what it tests.
promotion: {{ requireEvidence: false }}
",
        weights.join(", ")
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// CPU seconds used so far by Envoy, the agent and this driver.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    envoy: f64,
    agent: f64,
    driver: f64,
}

impl Cpu {
    fn since(self, start: Cpu) -> Cpu {
        Cpu { envoy: self.envoy - start.envoy, agent: self.agent - start.agent, driver: self.driver - start.driver }
    }
}

/// Envoy with the filter in front of the two backends, the agent driving it, and how the driver
/// reads them. Envoy and the agent stop (by PID) when this is dropped.
#[derive(Debug)]
struct Rig {
    fx: Fixture,
    agent: Agent,
    poll: reqwest::Client,
    snapshot_url: String,
}

impl Rig {
    async fn start(spec: &str) -> Result<Rig, Failed> {
        let fx = Fixture::start(route(0.0, 1, "").map_err(|e| e.to_string())?, ENVOY_WORKERS).await?;
        let agent = Agent::start(&fx.envoy, spec, AGENT_TICK).await?;
        // The agent reads the proxy (all counters still zero) before the first request, so its
        // totals cover the whole load.
        agent
            .wait_for(Duration::from_secs(20), "agent reading the proxy", |s| {
                s.get("proxies_reporting").and_then(Value::as_u64).is_some_and(|n| n >= 1)
            })
            .await?;
        let poll = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
        let snapshot_url = format!("http://{}{}", fx.envoy.snapshot, canary_core::config::DEFAULT_SNAPSHOT_PATH);
        Ok(Rig { fx, agent, poll, snapshot_url })
    }

    async fn snapshot(&self) -> Result<Snapshot, String> {
        load::snapshot_of(&self.poll, &self.snapshot_url).await
    }

    fn cpu(&self) -> Cpu {
        let of = |pid| procfs::cpu_seconds(pid).unwrap_or(0.0);
        Cpu { envoy: of(self.fx.envoy.pid()), agent: of(self.agent.pid()), driver: of(std::process::id()) }
    }

    /// Resident memory of Envoy and the agent, or which one is gone.
    fn rss(&self) -> Result<(u64, u64), String> {
        let of = |pid, what| procfs::rss_bytes(pid).map_err(|e| format!("{what} (pid {pid}) is gone: {e}"));
        Ok((of(self.fx.envoy.pid(), "Envoy")?, of(self.agent.pid(), "gate-agent")?))
    }

    /// ECDS updates Envoy applied and rejected so far.
    async fn ecds(&self) -> (u64, u64) {
        let stat = |name: &str| format!("extension_config_discovery.http_filter.canary-gate.{name}");
        (self.stat(&stat("update_success")).await.unwrap_or(0), self.stat(&stat("update_rejected")).await.unwrap_or(0))
    }

    /// `allocated` from Envoy's admin `/memory` (a number written as a string).
    async fn heap_allocated(&self) -> Option<u64> {
        let body = self.fx.envoy.admin_get("/memory").await.ok()?;
        let v: Value = serde_json::from_str(&body).ok()?;
        match v.get("allocated")? {
            Value::String(s) => s.parse().ok(),
            n => n.as_u64(),
        }
    }

    async fn stat(&self, name: &str) -> Option<u64> {
        self.fx.envoy.stat(name).await
    }
}

async fn run(o: &Options, spec: &str) -> Result<Report, Failed> {
    let rig = Rig::start(spec).await?;
    let mut d = load::drive(&rig, o).await;
    let c = checks::count(&rig, &mut d).await?;
    let series = |f: fn(&load::Sample) -> u64| d.samples.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>();
    let ran_s = d.ran.as_secs_f64();
    let envoy = Growth::of(&series(|s| s.envoy_rss), ran_s);
    let agent = Growth::of(&series(|s| s.agent_rss), ran_s);
    let heap: Vec<(f64, u64)> = d.samples.iter().filter_map(|s| s.envoy_heap_allocated.map(|b| (s.t_s, b))).collect();
    let heap = Growth::of(&heap, ran_s);
    let growth = (envoy.as_ref(), agent.as_ref());
    let logs = format!("Envoy log:\n{}\nagent log:\n{}", rig.fx.envoy.log_tail(20), rig.agent.log_tail(20));
    let checks = checks::checks(&d, &c, growth, &logs);
    let mut figures = report::figures(o, &d, &c, growth);
    if let Some(memory) = figures.get_mut("memory").and_then(Value::as_object_mut) {
        // Not checked: it shows whether RSS growth is Envoy's heap or V8's and the module's memory.
        memory.insert("envoy_heap_allocated".into(), heap.as_ref().map_or(Value::Null, Growth::json));
    }
    Ok(Report { figures, samples: d.samples, checks })
}

fn main() -> ExitCode {
    let o = match options(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(64);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        eprintln!("soak: --out {}: {e}", o.out.display());
        return ExitCode::from(2);
    }
    let spec = rollout_spec(steps_for(o.seconds));
    let spec_path = o.out.join("rollout.yaml");
    if let Err(e) = std::fs::write(&spec_path, &spec) {
        eprintln!("soak: {}: {e}", spec_path.display());
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // Every wait inside is bounded; this bounds the whole run as well.
    let bound = Duration::from_secs(o.seconds + 180);
    let report = match runtime.block_on(async { tokio::time::timeout(bound, run(&o, &spec)).await }) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("soak: could not run: {e}");
            return ExitCode::from(2);
        }
        Err(_) => {
            eprintln!("soak: did not finish within {bound:?}");
            return ExitCode::from(2);
        }
    };
    let text = report::summary(&o, &report);
    print!("{text}");
    if let Err(e) = report::write_outputs(&o.out, &report, &text) {
        eprintln!("soak: {e}");
        return ExitCode::from(2);
    }
    println!("figures in {}", o.out.join("soak.json").display());
    if report.checks.iter().all(|c| c.passed) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flags_set_seconds_and_rate_and_bad_ones_say_what_is_wrong() {
        let o = options(args(&["--seconds", "60", "--rps", "200"])).unwrap();
        assert_eq!((o.seconds, o.rps), (60, 200));
        assert_eq!(options(args(&[])).unwrap().seconds, DEFAULT_SECONDS);
        assert!(options(args(&["--seconds", "5"])).unwrap_err().contains("outside 30..=3600"));
        assert!(options(args(&["--seconds", "ten"])).unwrap_err().contains("not a whole number"));
        assert!(options(args(&["--minutes", "10"])).unwrap_err().contains("--minutes"));
        assert!(options(args(&["--seconds"])).unwrap_err().contains("missing value"));
    }

    #[test]
    fn the_rollout_spec_is_one_the_agent_accepts_with_more_steps_than_the_run_can_climb() {
        for seconds in [30, 60, 600, 3600] {
            let text = rollout_spec(steps_for(seconds));
            let spec = gate_agent::spec::Spec::from_yaml_or_json(&text).unwrap();
            assert_eq!(spec.interval(), Duration::from_secs(1));
            let steps = spec.steps();
            assert!(steps.len() as u64 > seconds, "{seconds} s: {} steps", steps.len());
            assert_eq!(steps.first().unwrap().basis_points(), 500);
            assert!(steps.last().unwrap().basis_points() <= 5000);
            assert_eq!(spec.max_weight(), *steps.last().unwrap());
        }
    }
}
