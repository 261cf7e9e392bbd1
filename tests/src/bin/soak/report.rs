//! The soak's output, in `--out` (default `target/soak/`): `soak.json` (every figure and check),
//! `memory.csv` (the samples over time: RSS and CPU of Envoy, the agent and this driver, requests
//! sent and answered, the revision and weight Envoy applies), `summary.txt` (what is printed),
//! `rollout.yaml` (the spec the agent ran).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use super::checks::{
    Check, Counted, Growth, MIN_CHANGES_PER_SECOND, RSS_GROWTH_SHARE, RSS_GROWTH_SLACK, WARM_UP_SHARE,
};
use super::load::{Driven, Sample};
use super::{AGENT_TICK, ENVOY_WORKERS, Options, mib, paths, percent_text, steps_for};

pub(super) const CSV_HEADER: &str = "t_s,envoy_rss_bytes,agent_rss_bytes,envoy_heap_allocated_bytes,envoy_cpu_s,agent_cpu_s,driver_cpu_s,sent,answered,revision,canary_weight_percent";

/// One row of `memory.csv`, in the order of [`CSV_HEADER`].
pub(super) fn csv_row(s: &Sample) -> String {
    format!(
        "{:.1},{},{},{},{:.2},{:.2},{:.2},{},{},{},{}",
        s.t_s,
        s.envoy_rss,
        s.agent_rss,
        s.envoy_heap_allocated.map_or_else(String::new, |b| b.to_string()),
        s.envoy_cpu_s,
        s.agent_cpu_s,
        s.driver_cpu_s,
        s.sent,
        s.answered,
        s.revision,
        s.weight_bp.map_or_else(String::new, |bp| percent_text(u32::from(bp)))
    )
}

/// Nearest-rank percentile of sorted values, in ms.
pub(super) fn percentile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us.get(rank - 1).map(|us| f64::from(*us) / 1000.0)
}

/// Everything the run produced, for the report.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) figures: Value,
    pub(super) samples: Vec<Sample>,
    pub(super) checks: Vec<Check>,
}

pub(super) fn rounded(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

pub(super) fn figures(o: &Options, d: &Driven, c: &Counted, growth: (Option<&Growth>, Option<&Growth>)) -> Value {
    let a = &d.answers;
    let ran_s = d.ran.as_secs_f64();
    let mut latencies = a.latencies_us.clone();
    latencies.sort_unstable();
    let w = &d.watch;
    json!({
        "settings": {
            "seconds": o.seconds,
            "rps": o.rps,
            "envoy_workers": ENVOY_WORKERS,
            "agent_tick": AGENT_TICK,
            "agent_bin": paths::gate_agent_bin().map(|p| p.display().to_string()).unwrap_or_default(),
            "rollout_steps": steps_for(o.seconds),
            "rss_sample_every_s": d.sample_every.as_secs(),
            "warm_up_share": WARM_UP_SHARE,
            "rss_growth_allowed": format!("{}% of the baseline + {}", RSS_GROWTH_SHARE * 100.0, mib(RSS_GROWTH_SLACK)),
            "min_weight_changes_per_second": MIN_CHANGES_PER_SECOND,
        },
        "load_seconds": rounded(ran_s, 1),
        "requests": {
            "sent": d.sent,
            "answered": a.answered(),
            "achieved_rps": rounded(d.sent as f64 / ran_s.max(1.0), 1),
            "served": a.served,
            "other_answers": a.other,
            "transport_errors": a.transport_errors,
            "unfinished": d.unfinished,
            "examples": a.examples,
            "latency_ms": {
                "p50": percentile_ms(&latencies, 0.50),
                "p90": percentile_ms(&latencies, 0.90),
                "p99": percentile_ms(&latencies, 0.99),
                "max": percentile_ms(&latencies, 1.0),
            },
        },
        "weights": {
            "weight_changes": d.weight_changes,
            "revision_changes": d.revision_changes,
            "weight_changes_per_second": rounded(d.weight_changes as f64 / ran_s.max(1.0), 2),
            "first_revision": w.first_revision,
            "last_revision": w.revision,
            "last_weight_percent": w.weight_bp.map(|bp| f64::from(bp) / 100.0),
            "ecds_updates_applied": c.ecds_after.0.saturating_sub(d.ecds_before.0),
            "ecds_updates_rejected": c.ecds_after.1.saturating_sub(d.ecds_before.1),
            "agent_phase": c.phase,
            "snapshot_reads": w.reads,
            "snapshot_read_errors": w.read_errors,
            "snapshot_first_error": w.first_error,
        },
        "counters": {
            "load": { "v1": a.served("v1"), "v2": a.served("v2") },
            "snapshot": c.snapshot.subsets.iter().map(|s| (s.subset.to_string(), json!({
                "requests": s.counters.requests,
                "successes": s.counters.successes,
                "failures": s.counters.failures,
            }))).collect::<serde_json::Map<_, _>>(),
            "backends_received": { "v1": c.backends.0, "v2": c.backends.1 },
            "agent_totals": { "v1": c.agent.0, "v2": c.agent.1 },
            "envoy_stats": { "v1": c.envoy_stats.0, "v2": c.envoy_stats.1 },
            "dropped_updates": c.dropped,
            "proxy_instances": w.instances,
        },
        "memory": {
            "samples": d.samples.len(),
            "envoy": growth.0.map(Growth::json),
            "agent": growth.1.map(Growth::json),
        },
        "cpu_seconds": {
            "envoy": rounded(c.cpu.envoy, 2),
            "agent": rounded(c.cpu.agent, 2),
            "driver": rounded(c.cpu.driver, 2),
        },
    })
}

pub(super) fn summary(o: &Options, r: &Report) -> String {
    let f = &r.figures;
    let mut s = String::new();
    let get = |path: &str| f.pointer(path).cloned().unwrap_or(Value::Null);
    let _ = writeln!(s, "soak: {} s of load at {} req/s", get("/load_seconds"), o.rps);
    let _ = writeln!(
        s,
        "requests: sent {}, answered {} (v1 {}, v2 {}), latency p50 {} ms, p99 {} ms",
        get("/requests/sent"),
        get("/requests/answered"),
        get("/requests/served/v1"),
        get("/requests/served/v2"),
        get("/requests/latency_ms/p50"),
        get("/requests/latency_ms/p99"),
    );
    let _ = writeln!(
        s,
        "weights: {} changes ({}/s), last {}% at revision {}",
        get("/weights/weight_changes"),
        get("/weights/weight_changes_per_second"),
        get("/weights/last_weight_percent"),
        get("/weights/last_revision"),
    );
    let _ = writeln!(
        s,
        "cpu: Envoy {} s, agent {} s, driver {} s",
        get("/cpu_seconds/envoy"),
        get("/cpu_seconds/agent"),
        get("/cpu_seconds/driver")
    );
    for c in &r.checks {
        let _ = writeln!(s, "{} {:<20} {}", if c.passed { "ok  " } else { "FAIL" }, c.name, c.detail);
    }
    let failed: Vec<&str> = r.checks.iter().filter(|c| !c.passed).map(|c| c.name).collect();
    if failed.is_empty() {
        let _ = writeln!(s, "soak passed");
    } else {
        let _ = writeln!(s, "soak FAILED: {}", failed.join(", "));
    }
    s
}

pub(super) fn write_outputs(dir: &Path, r: &Report, text: &str) -> Result<(), String> {
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut figures = r.figures.clone();
    if let Some(obj) = figures.as_object_mut() {
        let checks: Vec<Value> =
            r.checks.iter().map(|c| json!({ "name": c.name, "passed": c.passed, "detail": c.detail })).collect();
        obj.insert("checks".into(), Value::Array(checks));
        obj.insert("passed".into(), Value::Bool(r.checks.iter().all(|c| c.passed)));
    }
    let pretty = serde_json::to_string_pretty(&figures).map_err(|e| format!("soak.json: {e}"))?;
    write("soak.json", &(pretty + "\n"))?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for s in &r.samples {
        csv.push_str(&csv_row(s));
        csv.push('\n');
    }
    write("memory.csv", &csv)?;
    write("summary.txt", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), Some(50.0));
        assert_eq!(percentile_ms(&v, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&v, 1.0), Some(100.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }
}
