//! `make bench`, part 2: breach to zero. How long a canary that starts failing keeps getting
//! traffic, end to end: real Envoy with canary-filter (2 workers), the real gate-agent with the
//! shipped local rollout spec (deploy/local/rollout.yaml; only the step weight is set for the
//! trial), and open-loop traffic at a fixed rate.
//!
//! Each trial: a fresh rollout puts the canary on its step; it is healthy for a second; then 10% of
//! its responses become 500s (the motivating incident's canary). The figure is the time from the
//! canary's first failing response (by send time) to the first of 100 consecutive requests served
//! by stable after which no request reached the canary, and the failed responses clients saw.
//!
//! Usage: `breach [OUT_DIR] [--trials N]` (default 20 per rate).

use std::process::ExitCode;
use std::time::Duration;

use canary_bench::{out_dir, percentile, write_part};
use canary_e2e::traffic::{Sample, Steady, time_to_zero};
use canary_e2e::{Agent, Fixture, route};
use serde_json::{Value, json};

/// Canary requests per second, and the step weight that gets them from a total rate the load
/// generator keeps on 2 cores (at most 2,000 requests per second).
const RATES: [(u32, u32); 3] = [(10, 10), (100, 10), (1_000, 50)];
/// Share of the broken canary's responses that fail, per mille (the incident's 10%).
const FAIL_PER_MILLE: u32 = 100;
/// Consecutive stable requests that mark the canary as cut off.
const RUN: usize = 100;
const STABLE: &str = "v1";
const CANARY: &str = "v2";

#[derive(Debug, Clone, serde::Serialize)]
struct Trial {
    /// From the first failing canary response to the cut-off, ms; `None` if never cut off.
    breach_ms: Option<f64>,
    /// Canary responses with status ≥ 500 that clients received.
    failed_responses: u64,
    /// Canary responses (any status) from the first failure to the cut-off.
    canary_responses_after_first_failure: u64,
    requests: usize,
    /// Requests that got no response at all.
    transport_errors: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    canary_bench::exit("breach", run().await)
}

/// The shipped spec with one step at `weight` (and a long interval, so the trial never promotes).
fn spec(weight: u32) -> Result<String, String> {
    let spec = canary_bench::shipped_spec()?;
    let spec = canary_bench::set_top_level(&spec, "stepWeights", &format!("[{weight}]"))?;
    let spec = canary_bench::set_top_level(&spec, "maxWeight", &weight.to_string())?;
    canary_bench::set_top_level(&spec, "interval", "60s")
}

async fn run() -> Result<(), String> {
    let trials = canary_bench::flag_u64("--trials")?.unwrap_or(20);
    let out = out_dir();
    let fx = Fixture::start(route(0.0, 1, "").map_err(|e| e.to_string())?, 2).await?;
    let mut results = Vec::new();
    for (canary_rps, weight) in RATES {
        let spec = spec(weight)?;
        let total_rps = canary_rps * 100 / weight;
        let mut cell = Vec::new();
        for t in 0..trials {
            let trial = trial(&fx, &spec, weight, total_rps).await?;
            eprintln!(
                "{canary_rps:>5} canary req/s, trial {:>2}/{trials}: {} ms, {} failed responses",
                t + 1,
                trial.breach_ms.map_or("never cut off".to_owned(), |ms| format!("{ms:.0}")),
                trial.failed_responses
            );
            cell.push(trial);
        }
        results.push((canary_rps, weight, total_rps, cell));
    }
    let figures = figures(&results, trials);
    write_part(&out, "breach", &figures, &markdown(&results, trials)).map_err(|e| e.to_string())?;
    eprintln!("breach: wrote {}", out.display());
    Ok(())
}

async fn trial(fx: &Fixture, spec: &str, weight: u32, total_rps: u32) -> Result<Trial, String> {
    fx.canary.fail_per_mille(0);
    canary_bench::fresh_rollout(fx).await?;
    let traffic = Steady::start(fx.envoy.http().clone(), fx.envoy.url("/"), total_rps);
    let mut agent = Agent::start(&fx.envoy, spec, "250ms").await?;
    let on_step = |s: &Value| s["canary_weight_percent"].as_f64().is_some_and(|w| w >= f64::from(weight));
    agent.wait_for(Duration::from_secs(20), "canary on its step", on_step).await?;
    // Let the new weight reach every worker and the canary serve healthily for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    fx.canary.fail_per_mille(FAIL_PER_MILLE);
    let rolled_back = |s: &Value| s["phase"].as_str() == Some("rolled_back");
    let outcome = agent.wait_for(Duration::from_secs(60), "rolled back", rolled_back).await;
    // Enough time after the rollback for RUN more requests (and some margin) to complete.
    let tail = Duration::from_secs_f64(RUN as f64 * 1.5 / f64::from(total_rps)).max(Duration::from_millis(500));
    tokio::time::sleep(tail).await;
    let samples = traffic.stop(Duration::from_millis(500)).await;
    agent.terminate(Duration::from_secs(5))?;
    outcome.map_err(|e| format!("{e}\n{}", agent.log_tail(20)))?;
    Ok(measure(&samples))
}

fn measure(samples: &[Sample]) -> Trial {
    let breach = time_to_zero(samples, STABLE, CANARY, RUN);
    let first_failure = samples.iter().position(|s| s.served_by == CANARY && s.status >= 500);
    let last_canary = samples.iter().rposition(|s| s.served_by == CANARY);
    let during = match (first_failure, last_canary) {
        (Some(a), Some(b)) if a <= b => samples.get(a..=b).unwrap_or_default(),
        _ => &[],
    };
    let canary: Vec<&Sample> = during.iter().filter(|s| s.served_by == CANARY).collect();
    Trial {
        breach_ms: breach.map(|d| d.as_secs_f64() * 1e3),
        failed_responses: canary.iter().filter(|s| s.status >= 500).count() as u64,
        canary_responses_after_first_failure: canary.len() as u64,
        requests: samples.len(),
        transport_errors: samples.iter().filter(|s| s.status == 0).count(),
    }
}

type Cell = (u32, u32, u32, Vec<Trial>);

fn sorted_breaches(trials: &[Trial]) -> Vec<f64> {
    let mut v: Vec<f64> = trials.iter().filter_map(|t| t.breach_ms).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn sorted_failed(trials: &[Trial]) -> Vec<f64> {
    let mut v: Vec<f64> = trials.iter().map(|t| t.failed_responses as f64).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn figures(results: &[Cell], trials: u64) -> Value {
    let rates: Vec<Value> = results
        .iter()
        .map(|(canary_rps, weight, total_rps, cell)| {
            let b = sorted_breaches(cell);
            let f = sorted_failed(cell);
            json!({
                "canary_requests_per_second": canary_rps,
                "canary_weight_percent": weight,
                "total_requests_per_second": total_rps,
                "trials": cell.len(),
                "never_cut_off": cell.iter().filter(|t| t.breach_ms.is_none()).count(),
                "breach_ms_median": percentile(&b, 0.5),
                "breach_ms_p99": percentile(&b, 0.99),
                "breach_ms_max": b.last(),
                "failed_responses_median": percentile(&f, 0.5),
                "failed_responses_p99": percentile(&f, 0.99),
                "transport_errors": cell.iter().map(|t| t.transport_errors).sum::<usize>(),
                "by_trial": cell,
            })
        })
        .collect();
    json!({
        "method": {
            "spec": "deploy/local/rollout.yaml with stepWeights [weight], maxWeight weight, interval 60s",
            "agent_tick_ms": 250,
            "envoy_workers": 2,
            "canary_failure_per_mille": FAIL_PER_MILLE,
            "cut_off": format!("first of {RUN} consecutive stable requests after the last canary one"),
            "trials_per_rate": trials,
        },
        "rates": rates,
        "goal": { "breach_ms_median_at_100_canary_rps_at_most": 1000 },
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.0}"))
}

fn markdown(results: &[Cell], trials: u64) -> String {
    let mut md = String::from("## 2. Breach to zero\n\n");
    md.push_str(&format!(
        "Real Envoy (2 workers) with canary-filter, the real gate-agent (tick 250 ms) running the shipped \
         spec (deploy/local/rollout.yaml) with one step at the weight shown, open-loop traffic. In each of \
         {trials} trials per rate the canary is healthy on its step for a second, then {}% of its responses \
         become 500s. *Breach* runs from the first failing canary response to the first of {RUN} consecutive \
         stable requests after which no request reached the canary; *failed* counts the 500s clients got \
         from the canary.\n\n",
        FAIL_PER_MILLE / 10
    ));
    md.push_str("| canary req/s | weight | total req/s | breach median ms | breach p99 ms | max ms | failed median | failed p99 | never cut off | no response |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut at_100 = None;
    for (canary_rps, weight, total_rps, cell) in results {
        let b = sorted_breaches(cell);
        let f = sorted_failed(cell);
        if *canary_rps == 100 {
            at_100 = percentile(&b, 0.5);
        }
        md.push_str(&format!(
            "| {canary_rps} | {weight}% | {total_rps} | {} | {} | {} | {} | {} | {} | {} |\n",
            ms(percentile(&b, 0.5)),
            ms(percentile(&b, 0.99)),
            ms(b.last().copied()),
            ms(percentile(&f, 0.5)),
            ms(percentile(&f, 0.99)),
            cell.iter().filter(|t| t.breach_ms.is_none()).count(),
            cell.iter().map(|t| t.transport_errors).sum::<usize>(),
        ));
    }
    md.push('\n');
    md.push_str(&match at_100 {
        Some(m) if m <= 1000.0 => {
            format!("**Goal met:** median breach at 100 canary req/s is {m:.0} ms (goal ≤ 1 s).\n")
        }
        Some(m) => format!("**Goal missed:** median breach at 100 canary req/s is {m:.0} ms (goal ≤ 1 s).\n"),
        None => "**Goal missed:** at 100 canary req/s the canary was never cut off.\n".to_owned(),
    });
    md
}
