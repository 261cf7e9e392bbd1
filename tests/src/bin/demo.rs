//! `make demo`: real Envoy with canary-filter in front of two local backends, gate-agent driving
//! the rollout with its default promotion gate, and steady open-loop traffic, all on loopback.
//!
//! Act 1: a healthy canary. The promotion gate holds the first step
//! with *insufficient evidence* until the data shows the canary within the margins (the progress
//! line says how many more canary requests that needs, and how long at the current rate); then
//! the agent walks it up the last step and promotes it.
//! Act 2: a new canary that starts failing on its first step; the
//! agent pulls it to 0% and the demo prints how long canary traffic lasted after the canary's
//! first failure.
//! Progress updates in place on a terminal (one line per update otherwise). Stops by itself.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use canary_e2e::traffic::{Steady, time_to_zero};
use canary_e2e::{Agent, Fixture, route};
use serde_json::Value;

/// 50 canary requests a second on the first step (25%), so the gate's evidence (about 1,500
/// canary requests for errors, and for latency 2,000 stable requests to fix the reference and
/// some 600 canary requests after it) takes about half a minute rather than minutes. More load
/// would be quicker, but 400 requests a second on a loaded 2-core machine pushed the debug
/// build's p99 to 766 ms, and the latency SLO rolled the healthy canary back.
const RPS: u32 = 200;

const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 2s
threshold: 3
stepWeights: [25, 50]
maxWeight: 50
minRequests: 100
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 4s
  - name: request-duration
    thresholdRange: { max: 500 }
    interval: 4s
";

type Error = Box<dyn std::error::Error>;

/// A field of a JSON object, `null` when absent.
fn at<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn figure(v: &Value, unit: &str) -> String {
    v.as_f64().map_or_else(|| "-".to_owned(), |x| format!("{x:.1}{unit}"))
}

/// One progress line from the agent's `/status`.
fn line(s: &Value, elapsed: Duration) -> String {
    let subsets = at(s, "subsets").as_array().cloned().unwrap_or_default();
    let per: Vec<String> = subsets
        .iter()
        .map(|x| {
            format!(
                "{} {:>6} req {:>7} ok p99 {:>7}",
                at(x, "subset").as_str().unwrap_or("?"),
                at(x, "requests_total").as_u64().unwrap_or(0),
                figure(at(x, "success_rate_percent"), "%"),
                figure(at(x, "p99_ms"), "ms"),
            )
        })
        .collect();
    format!(
        "{:>5.1}s  {:<12} canary {:>5}%  | {}{}",
        elapsed.as_secs_f64(),
        at(s, "phase").as_str().unwrap_or("?"),
        at(s, "canary_weight_percent").as_f64().unwrap_or(0.0),
        per.join(" | "),
        held(s).map_or_else(String::new, |h| format!(" | {h}"))
    )
}

/// While the promotion gate holds the step: "insufficient evidence: ~N more canary req (~Ts)".
fn held(s: &Value) -> Option<String> {
    let i = at(s, "insufficient_evidence");
    if !i.is_object() {
        return None;
    }
    let more = match (at(i, "more_canary_requests").as_u64(), at(i, "eta_s").as_f64()) {
        (Some(n), Some(t)) => format!("~{n} more canary req (~{t:.0}s)"),
        (Some(n), None) => format!("~{n} more canary req"),
        // The text says which: not known yet (the latency reference), or not expected.
        (None, _) if at(i, "text").as_str().is_some_and(|t| t.contains("not expected")) => {
            "not expected at these rates".into()
        }
        (None, _) => "how much more: not known yet".into(),
    };
    Some(format!("insufficient evidence: {more}"))
}

struct Progress {
    tty: bool,
    last: String,
}

impl Progress {
    fn show(&mut self, text: String) {
        if self.tty {
            print!("\r\x1b[2K{text}");
            let _ = std::io::stdout().flush();
        } else if text != self.last {
            println!("{text}");
        }
        self.last = text;
    }

    fn say(&mut self, text: &str) {
        if self.tty && !self.last.is_empty() {
            println!();
        }
        println!("{text}");
        self.last.clear();
    }
}

/// Polls the agent until `done` or `limit`, showing progress and announcing weight changes.
async fn watch(
    agent: &Agent,
    progress: &mut Progress,
    started: Instant,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Error> {
    let mut weight = None;
    let mut held_since = None;
    loop {
        let s = agent.status().await?;
        let w = at(&s, "canary_weight_percent").as_f64();
        if weight.is_some() && w != weight {
            progress.say(&format!("  -> canary {}%: {}", w.unwrap_or(0.0), at(&s, "reason").as_str().unwrap_or("")));
        }
        weight = w;
        // Once per held step, the gate's sentence in full.
        let since = at(at(&s, "insufficient_evidence"), "since_ms").as_u64();
        if since.is_some() && since != held_since {
            let text = at(at(&s, "insufficient_evidence"), "text").as_str().unwrap_or("");
            progress.say(&format!("  .. the promotion gate holds: {text}"));
        }
        held_since = since.or(held_since);
        progress.show(line(&s, started.elapsed()));
        if done(&s) {
            progress.say("");
            return Ok(s);
        }
        if started.elapsed() > limit {
            return Err(format!("the rollout did not finish within {limit:?}: {s}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<(), Error> {
    let mut progress = Progress { tty: std::io::stdout().is_terminal(), last: String::new() };
    println!("canary-gate demo: real Envoy + canary-filter, gate-agent, backends v1 (stable) and v2 (canary)");
    println!(
        "rollout steps 25% -> 50% -> promote, checked every 2 s; a step advances only when the checks pass\n\
         and the promotion gate's evidence shows the canary within its margins (failures at most\n\
         max(2 x stable, stable + 0.5 pp), p99 at most +20% or +10 ms, whichever is more)\n"
    );

    // Act 1: a healthy canary is promoted.
    let f = Fixture::start(route(0.0, 1, "")?, 2).await?;
    let agent = Agent::start(&f.envoy, SPEC, "250ms").await?;
    println!(
        "act 1: a healthy canary, {RPS} requests/s (Envoy pid {}, public http://{}, agent http://{}/status)",
        f.envoy.pid(),
        f.envoy.public,
        agent.api
    );
    let traffic = Steady::start(f.envoy.http().clone(), f.envoy.url("/"), RPS);
    let started = Instant::now();
    let s = watch(&agent, &mut progress, started, Duration::from_secs(120), |s| {
        at(s, "phase").as_str().is_some_and(|p| p == "succeeded" || p == "rolled_back")
    })
    .await?;
    let samples = traffic.stop(Duration::from_millis(300)).await;
    let on_canary = samples.iter().filter(|x| x.served_by == "v2").count();
    println!(
        "act 1 done in {:.1}s: {} ({} of {} requests served by the canary)\n",
        started.elapsed().as_secs_f64(),
        at(&s, "phase").as_str().unwrap_or("?"),
        on_canary,
        samples.len()
    );
    drop(agent);
    drop(f);

    // Act 2: a buggy canary is rolled back.
    let f = Fixture::start(route(0.0, 1, "")?, 2).await?;
    let agent = Agent::start(&f.envoy, SPEC, "250ms").await?;
    println!("act 2: a new canary that starts failing 10% of its requests on its first step (25%)");
    let traffic = Steady::start(f.envoy.http().clone(), f.envoy.url("/"), RPS);
    let started = Instant::now();
    watch(&agent, &mut progress, started, Duration::from_secs(30), |s| {
        at(s, "canary_weight_percent").as_f64().is_some_and(|w| w >= 25.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.canary.fail_per_mille(100);
    progress.say("  !! the canary starts failing");
    let s = watch(&agent, &mut progress, started, Duration::from_secs(60), |s| {
        at(s, "phase").as_str().is_some_and(|p| p == "rolled_back" || p == "succeeded")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = traffic.stop(Duration::from_millis(300)).await;
    println!("act 2 done: {}", at(&s, "reason").as_str().unwrap_or("?"));
    let failures = samples.iter().filter(|x| x.served_by == "v2" && x.status >= 500).count();
    match time_to_zero(&samples, "v1", "v2", 100) {
        Some(cut) => println!(
            "\ntime from the canary's first failure to canary traffic at 0%: {} ms \
             ({failures} failed requests reached users; every later request went to v1)",
            cut.as_millis()
        ),
        None => return Err("the canary was not cut off".into()),
    }
    let durable = std::fs::read_to_string(f.envoy.ecds_dir().join("canary-gate.json"))?;
    let durable: Value = serde_json::from_str(&durable)?;
    if let Some(cfg) = canary_core::ecds::plugin_config_of(&durable) {
        println!("durable filter config afterwards: {cfg}");
    }
    Ok(())
}
