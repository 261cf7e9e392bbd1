//! `make bench`, part 5: a typo in the live configuration. The motivating incident replayed on a
//! running rollout: real Envoy with canary-filter (2 workers), the real gate-agent (tick 250 ms)
//! with the shipped spec holding the canary on a 10% step, open-loop traffic at 200 requests a
//! second. Then someone writes `canary_weight: 99` by hand into the watched file (a new revision,
//! an atomic rename), as `kubectl edit` would in a mesh:
//! - **with the guard block** the agent wrote (the filter's typo guard refuses it); and
//! - **without it** (someone bypassed the filter's check), where only the agent's foreign-write
//!   detection stands between the typo and the users.
//!
//! Traffic after the write is cut into 250-ms bins. A bin is *above the agent's weight* when its
//! canary requests exceed the 10% share by more than sampling explains (the binomial 99.9%
//! one-sided bound, n·p + 3.09·√(n·p·(1−p))). Per trial: the time from the write to the end of
//! the last such bin within 4 s (0 when there is none), and the canary requests beyond the 10%
//! share in those bins.
//!
//! Usage: `typo [OUT_DIR] [--trials N]` (default 20 per mode).

use std::process::ExitCode;
use std::time::Duration;

use canary_bench::{out_dir, percentile, write_part};
use canary_e2e::traffic::{Sample, Steady};
use canary_e2e::{Agent, Fixture, route};
use serde_json::{Value, json};

const RPS: u32 = 200;
/// The agent's weight on its step, percent.
const WEIGHT: u32 = 10;
/// The hand-typed weight (the incident's swapped 1/99).
const TYPO: f64 = 99.0;
const BIN: Duration = Duration::from_millis(250);
/// How long after the write the traffic is watched.
const WATCH: Duration = Duration::from_secs(4);
/// z for a one-sided 99.9% bound.
const Z: f64 = 3.09;
const CANARY: &str = "v2";

#[derive(Debug, Clone, serde::Serialize)]
struct Trial {
    guard: bool,
    /// From the write to the end of the last bin above the agent's weight, ms (0: none).
    back_ms: f64,
    /// Canary requests beyond the agent's share in the bins above it.
    excess_requests: u64,
    /// Canary requests and all requests sent in the watched span.
    canary_requests: usize,
    requests: usize,
    /// Envoy's `update_rejected` went up (the filter refused the write).
    rejected: bool,
    /// The agent reported a foreign write.
    foreign_seen: bool,
    transport_errors: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    canary_bench::exit("typo", run().await)
}

/// The shipped spec with one step at [`WEIGHT`] and a long interval, so the trial never moves on.
fn spec() -> Result<String, String> {
    let spec = canary_bench::shipped_spec()?;
    let spec = canary_bench::set_top_level(&spec, "stepWeights", &format!("[{WEIGHT}]"))?;
    let spec = canary_bench::set_top_level(&spec, "maxWeight", &WEIGHT.to_string())?;
    canary_bench::set_top_level(&spec, "interval", "60s")
}

async fn run() -> Result<(), String> {
    let trials = canary_bench::flag_u64("--trials")?.unwrap_or(20);
    let out = out_dir();
    let fx = Fixture::start(route(0.0, 1, "").map_err(|e| e.to_string())?, 2).await?;
    let spec = spec()?;
    let mut results = Vec::new();
    for guard in [true, false] {
        for t in 0..trials {
            let trial = trial(&fx, &spec, guard).await?;
            eprintln!(
                "typo, guard {}: trial {:>2}/{trials}: back in {:.0} ms, {} requests above the agent's weight",
                if guard { "on " } else { "off" },
                t + 1,
                trial.back_ms,
                trial.excess_requests
            );
            results.push(trial);
        }
    }
    write_part(&out, "typo", &figures(&results, trials), &markdown(&results, trials)).map_err(|e| e.to_string())?;
    eprintln!("typo: wrote {}", out.display());
    Ok(())
}

async fn trial(fx: &Fixture, spec: &str, guard: bool) -> Result<Trial, String> {
    canary_bench::fresh_rollout(fx).await?;
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), RPS);
    let mut agent = Agent::start(&fx.envoy, spec, "250ms").await?;
    let on_step = |s: &Value| s["canary_weight_percent"].as_f64() == Some(f64::from(WEIGHT));
    let on = agent.wait_for(Duration::from_secs(20), "canary on its step", on_step).await;
    if let Err(e) = on {
        agent.terminate(Duration::from_secs(5))?;
        return Err(format!("{e}\n{}", agent.log_tail(20)));
    }
    // Every worker on the agent's write before the typo lands.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied = fx.envoy.snapshot().await?.route.ok_or("the proxy reports no route")?;
    let rejected_stat = "extension_config_discovery.http_filter.canary-gate.update_rejected";
    let rejected_before = fx.envoy.stat(rejected_stat).await.unwrap_or(0);
    let mut typo = applied.clone();
    typo.canary_weight = canary_core::Weight::from_percent(TYPO).map_err(|e| e.to_string())?;
    typo.revision += 1;
    if !guard {
        typo.guard = None;
    }
    let typed_at = traffic.elapsed();
    fx.envoy.write_route(&typo).map_err(|e| e.to_string())?;
    tokio::time::sleep(WATCH + Duration::from_millis(500)).await;
    let samples = traffic.stop(Duration::from_millis(500)).await;
    let status = agent.status().await;
    agent.terminate(Duration::from_secs(5))?;
    let foreign_seen = status.is_ok_and(|s| s.get("foreign_writes_total").and_then(Value::as_u64) >= Some(1));
    let rejected = fx.envoy.stat(rejected_stat).await.unwrap_or(0) > rejected_before;
    Ok(measure(&samples, typed_at, guard, rejected, foreign_seen))
}

fn measure(samples: &[Sample], typed_at: Duration, guard: bool, rejected: bool, foreign_seen: bool) -> Trial {
    let watched: Vec<&Sample> = samples.iter().filter(|s| s.sent >= typed_at && s.sent < typed_at + WATCH).collect();
    let p = f64::from(WEIGHT) / 100.0;
    let bins = (WATCH.as_millis() / BIN.as_millis()) as usize;
    let (mut back_ms, mut excess) = (0.0, 0u64);
    for b in 0..bins {
        let start = typed_at + BIN * b as u32;
        let bin: Vec<&&Sample> = watched.iter().filter(|s| s.sent >= start && s.sent < start + BIN).collect();
        let n = bin.len() as f64;
        let canary = bin.iter().filter(|s| s.served_by == CANARY).count() as f64;
        let bound = n * p + Z * (n * p * (1.0 - p)).sqrt();
        if n > 0.0 && canary > bound {
            back_ms = (BIN * (b as u32 + 1)).as_secs_f64() * 1e3;
            excess += (canary - (n * p).round()).max(0.0) as u64;
        }
    }
    Trial {
        guard,
        back_ms,
        excess_requests: excess,
        canary_requests: watched.iter().filter(|s| s.served_by == CANARY).count(),
        requests: watched.len(),
        rejected,
        foreign_seen,
        transport_errors: watched.iter().filter(|s| s.status == 0).count(),
    }
}

fn sorted(trials: &[&Trial], f: impl Fn(&Trial) -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = trials.iter().map(|t| f(t)).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn mode(results: &[Trial], guard: bool) -> Vec<&Trial> {
    results.iter().filter(|t| t.guard == guard).collect()
}

fn figures(results: &[Trial], trials: u64) -> Value {
    let modes: Vec<Value> = [true, false]
        .into_iter()
        .map(|guard| {
            let cell = mode(results, guard);
            let back = sorted(&cell, |t| t.back_ms);
            let excess = sorted(&cell, |t| t.excess_requests as f64);
            json!({
                "guard": guard,
                "trials": cell.len(),
                "back_ms_p50": percentile(&back, 0.5),
                "back_ms_p99": percentile(&back, 0.99),
                "back_ms_max": back.last(),
                "excess_requests_total": excess.iter().sum::<f64>(),
                "excess_requests_max": excess.last(),
                "rejected_by_envoy": cell.iter().filter(|t| t.rejected).count(),
                "foreign_write_seen_by_agent": cell.iter().filter(|t| t.foreign_seen).count(),
                "transport_errors": cell.iter().map(|t| t.transport_errors).sum::<usize>(),
                "by_trial": cell,
            })
        })
        .collect();
    json!({
        "method": {
            "spec": format!("deploy/local/rollout.yaml with stepWeights [{WEIGHT}], maxWeight {WEIGHT}, interval 60s"),
            "requests_per_second": RPS,
            "typo_weight_percent": TYPO,
            "agent_tick_ms": 250,
            "envoy_workers": 2,
            "bin_ms": BIN.as_millis(),
            "watched_ms": WATCH.as_millis(),
            "above_weight": "canary requests in a bin above n*p + 3.09*sqrt(n*p*(1-p))",
            "trials_per_mode": trials,
        },
        "modes": modes,
        "goal": { "excess_requests_with_guard": 0, "back_ms_p99_without_guard_at_most": 1000 },
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.0}"))
}

fn markdown(results: &[Trial], trials: u64) -> String {
    let mut md = String::from("## 5. A typo in the live configuration\n\n");
    md.push_str(&format!(
        "Real Envoy (2 workers) with canary-filter, the real gate-agent (tick 250 ms) holding the canary at \
         {WEIGHT}% with the shipped spec, open-loop traffic at {RPS} req/s. In each of {trials} trials per mode \
         `canary_weight: {TYPO}` is written by hand into the watched file (a new revision, an atomic rename), \
         first keeping the guard block the agent wrote, then without it. Traffic is cut into 250-ms bins from \
         the write; a bin is *above the agent's weight* when its canary requests exceed the {WEIGHT}% share by \
         more than sampling explains (binomial 99.9% one-sided bound). *Back* is the time from the write to the \
         end of the last such bin in the next 4 s (0 when none; so its resolution is 250 ms); *above* counts the canary requests beyond the \
         {WEIGHT}% share in those bins.\n\n"
    ));
    md.push_str("| guard block | trials | back p50 ms | back p99 ms | max ms | requests above, total | above, worst trial | rejected by Envoy | foreign write seen | no response |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut verdicts = Vec::new();
    for guard in [true, false] {
        let cell = mode(results, guard);
        let back = sorted(&cell, |t| t.back_ms);
        let excess = sorted(&cell, |t| t.excess_requests as f64);
        let total: f64 = excess.iter().sum();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {total:.0} | {} | {} | {} | {} |\n",
            if guard { "kept" } else { "removed" },
            cell.len(),
            ms(percentile(&back, 0.5)),
            ms(percentile(&back, 0.99)),
            ms(back.last().copied()),
            ms(excess.last().copied()),
            cell.iter().filter(|t| t.rejected).count(),
            cell.iter().filter(|t| t.foreign_seen).count(),
            cell.iter().map(|t| t.transport_errors).sum::<usize>(),
        ));
        if guard {
            verdicts.push(if total == 0.0 {
                "**Goal met:** with the guard block, no request reached the canary above the agent's weight.".to_owned()
            } else {
                format!("**Goal missed:** with the guard block, {total:.0} requests reached the canary above the agent's weight (goal 0).")
            });
        } else {
            let p99 = percentile(&back, 0.99);
            verdicts.push(match p99 {
                Some(p) if p <= 1000.0 => {
                    format!("**Goal met:** without it, p99 time back at the agent's weight is {p:.0} ms (goal ≤ 1 s).")
                }
                Some(p) => format!(
                    "**Goal missed:** without it, p99 time back at the agent's weight is {p:.0} ms (goal ≤ 1 s)."
                ),
                None => "**Goal missed:** no trial without the guard block completed.".to_owned(),
            });
        }
    }
    md.push('\n');
    md.push_str(&verdicts.join("\n"));
    md.push('\n');
    md
}
