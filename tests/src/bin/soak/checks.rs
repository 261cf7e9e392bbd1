//! The soak's checks, decided once the load has stopped (each one named in the output and in the
//! exit message when it fails):
//! * `requests`: every request sent got an answer; no transport error, none unfinished when the
//!   load stopped (they get 15 s to drain).
//! * `statuses`: every answer came from a backend (`x-served-by` is `v1` or `v2`) with the status
//!   the backends send (200; both are kept healthy). A 503 from Envoy with no upstream, or any
//!   other status, fails.
//! * `memory-envoy`, `memory-agent`: resident memory (`/proc/<pid>/status`), sampled every
//!   `max(1, seconds / 150)` s. The first 20% of the run is warm-up (V8 compiles the module,
//!   connection pools and the agent's 10 s status windows fill). The median of the next 20% is the
//!   baseline, the median of the last 20% the final figure; the check fails if the final figure
//!   exceeds the baseline by more than 10% + 4 MiB. Medians ignore single allocator or GC spikes;
//!   the 4 MiB absorbs glibc arena and V8 heap growth steps, which come in MiB-sized chunks
//!   whatever the load; 10% scales with the process. Over the 60% of a 10-minute run between the
//!   two windows (about 108,000 requests and 360 reloads at 300 req/s) that still catches a leak
//!   of roughly 140 bytes per request or 40 KiB per reload in Envoy (RSS ~108 MiB), and 2 KiB
//!   per agent tick (RSS ~28 MiB, debug build). The least-squares slope after warm-up is reported
//!   too, and so is Envoy's own heap (`allocated` from its admin `/memory`), which is finer
//!   grained than RSS: it is how the soak found canary-filter defining its metrics again on every
//!   reload (see `canary_core::metrics::MetricIds`). Envoy's reload path itself still keeps about
//!   1 to 1.3 KiB of heap per ECDS update, with a no-op filter as well; at one update a second
//!   that is about 1 MiB between the two windows of a 10-minute run, well inside the bound.
//! * `counters-snapshot`: after the load has stopped and the counters settled, the per-subset
//!   `requests` in the filter's snapshot equal exactly what the load generator saw served by each
//!   backend, with no failures, one proxy instance and no counter going backwards during the run
//!   (the counters are monotonic since Envoy started, and Envoy starts with no traffic, so no
//!   summing over resets is needed; a reset is a failure in itself).
//! * `counters-backends`: each backend's own count of requests received equals the same figure.
//! * `counters-agent`: the agent's totals (`/status`, summed from its snapshot deltas since before
//!   the first request) equal the same figures.
//! * `counters-envoy-stats`: so do the filter's Envoy counters `canary_gate_requests_total` per
//!   subset (a separate path: host metrics, not shared data).
//! * `dropped-updates`: the filter's `canary_gate_dropped_updates_total` stayed 0.
//! * `weights`: at least 0.8 weight changes per second of load in Envoy, no rejected ECDS update,
//!   and the rollout still progressing at the end (a rollback would stop the weights).
//! * `processes`: Envoy and the agent stayed up.

use std::time::{Duration, Instant};

use canary_core::Snapshot;
use serde_json::{Value, json};

use super::load::{DRAIN, Driven, snapshot_of, subset_requests};
use super::{Cpu, Failed, Rig, mib};

/// Share of the run treated as warm-up, and the share of each comparison window.
pub(super) const WARM_UP_SHARE: f64 = 0.2;
/// Allowed RSS growth from the baseline to the final window: this share of the baseline...
pub(super) const RSS_GROWTH_SHARE: f64 = 0.10;
/// ...plus this much.
pub(super) const RSS_GROWTH_SLACK: u64 = 4 << 20;
/// Weight changes required per second of load.
pub(super) const MIN_CHANGES_PER_SECOND: f64 = 0.8;
/// Time allowed for the counters to settle after the last answer.
pub(super) const SETTLE: Duration = Duration::from_secs(10);

pub(super) fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// Whether a process's resident memory grew after warm-up (see the module doc for the bound).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Growth {
    pub(super) baseline: u64,
    pub(super) last: u64,
    pub(super) allowed: u64,
    pub(super) max: u64,
    /// Least-squares slope after warm-up, bytes per minute.
    pub(super) slope_per_min: f64,
}

impl Growth {
    pub(super) fn of(series: &[(f64, u64)], duration_s: f64) -> Option<Growth> {
        let warm = duration_s * WARM_UP_SHARE;
        let window = duration_s * WARM_UP_SHARE;
        let within = |from: f64, to: f64| -> Vec<u64> {
            series.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, v)| *v).collect()
        };
        let baseline = median(within(warm, warm + window))?;
        let last = median(within(duration_s - window, f64::INFINITY))?;
        let after: Vec<&(f64, u64)> = series.iter().filter(|(t, _)| *t >= warm).collect();
        let max = after.iter().map(|(_, v)| *v).max()?;
        let n = after.len() as f64;
        let (mt, mv) =
            (after.iter().map(|(t, _)| t).sum::<f64>() / n, after.iter().map(|(_, v)| *v as f64).sum::<f64>() / n);
        let (num, den) = after
            .iter()
            .fold((0.0, 0.0), |(num, den), (t, v)| (num + (t - mt) * (*v as f64 - mv), den + (t - mt) * (t - mt)));
        let slope_per_min = if den > 0.0 { 60.0 * num / den } else { 0.0 };
        let allowed = (baseline as f64 * RSS_GROWTH_SHARE) as u64 + RSS_GROWTH_SLACK;
        Some(Growth { baseline, last, allowed, max, slope_per_min })
    }

    pub(super) fn grew(&self) -> bool {
        self.last > self.baseline.saturating_add(self.allowed)
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "baseline_bytes": self.baseline,
            "final_bytes": self.last,
            "growth_bytes": self.last as i64 - self.baseline as i64,
            "allowed_growth_bytes": self.allowed,
            "max_after_warm_up_bytes": self.max,
            "slope_bytes_per_minute": self.slope_per_min.round(),
        })
    }
}

#[derive(Debug)]
pub(super) struct Check {
    pub(super) name: &'static str,
    pub(super) passed: bool,
    pub(super) detail: String,
}

pub(super) fn check(name: &'static str, passed: bool, detail: String) -> Check {
    Check { name, passed, detail }
}

/// A field of the agent's `/status` subsets: requests of `role`.
pub(super) fn agent_requests(status: &Value, role: &str) -> Option<u64> {
    status
        .get("subsets")?
        .as_array()?
        .iter()
        .find(|s| s.get("role").and_then(Value::as_str) == Some(role))?
        .get("requests_total")?
        .as_u64()
}

/// Reads the snapshot until its request totals stop moving (three equal reads 250 ms apart), or
/// `within` passes; returns the last one read.
pub(super) async fn settled(client: &reqwest::Client, url: &str, within: Duration) -> Result<Snapshot, String> {
    let deadline = Instant::now() + within;
    let mut last: Option<Snapshot> = None;
    let mut same = 0;
    loop {
        let snap = snapshot_of(client, url).await;
        if let Ok(s) = snap {
            if last.as_ref().is_some_and(|l| subset_requests(l) == subset_requests(&s)) {
                same += 1;
            } else {
                same = 0;
            }
            last = Some(s);
        }
        if same >= 2 || Instant::now() >= deadline {
            return last.ok_or_else(|| format!("no snapshot could be read within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What every party counted, read after the load stopped.
#[derive(Debug)]
pub(super) struct Counted {
    pub(super) snapshot: Snapshot,
    /// The agent's totals (stable, canary) and its phase.
    pub(super) agent: (u64, u64),
    pub(super) phase: String,
    pub(super) backends: (u64, u64),
    pub(super) envoy_stats: (Option<u64>, Option<u64>),
    pub(super) dropped: u64,
    pub(super) ecds_after: (u64, u64),
    pub(super) cpu: Cpu,
}

pub(super) async fn count(rig: &Rig, d: &mut Driven) -> Result<Counted, Failed> {
    // on_log runs after the answer left Envoy: wait until the counters stop moving.
    let snapshot = settled(&rig.poll, &rig.snapshot_url, SETTLE).await?;
    d.watch.observe(Ok(snapshot.clone()));
    let (v1, v2) = subset_requests(&snapshot);
    let caught_up = rig
        .agent
        .wait_for(Duration::from_secs(5), "agent totals caught up", |s| {
            agent_requests(s, "stable").unwrap_or(0) + agent_requests(s, "canary").unwrap_or(0) >= v1 + v2
        })
        .await;
    // Not caught up: the check reports the agent's figures as they are.
    let status = match caught_up {
        Ok(s) => s,
        Err(_) => rig.agent.status().await.map_err(|e| format!("agent /status: {e}"))?,
    };
    let requests_stat = |subset: &str| {
        format!("wasmcustom.{}", canary_core::metrics::per_subset(canary_core::metrics::REQUESTS_TOTAL, subset))
    };
    if d.gone.is_none()
        && let Err(e) = rig.rss()
    {
        d.gone = Some(e);
    }
    Ok(Counted {
        agent: (agent_requests(&status, "stable").unwrap_or(0), agent_requests(&status, "canary").unwrap_or(0)),
        phase: status.get("phase").and_then(Value::as_str).unwrap_or("?").to_owned(),
        backends: (rig.fx.stable.received(), rig.fx.canary.received()),
        envoy_stats: (rig.stat(&requests_stat("v1")).await, rig.stat(&requests_stat("v2")).await),
        dropped: rig.stat(&format!("wasmcustom.{}", canary_core::metrics::UPDATES_DROPPED_TOTAL)).await.unwrap_or(0),
        ecds_after: rig.ecds().await,
        cpu: rig.cpu().since(d.cpu_before),
        snapshot,
    })
}

pub(super) fn memory_check(name: &'static str, what: &str, growth: Option<&Growth>, samples: usize) -> Check {
    match growth {
        Some(g) => check(
            name,
            !g.grew(),
            format!(
                "{what} RSS median {} after warm-up, {} at the end (allowed up to {}); max {}, slope {:.0} KiB/min",
                mib(g.baseline),
                mib(g.last),
                mib(g.baseline + g.allowed),
                mib(g.max),
                g.slope_per_min / 1024.0
            ),
        ),
        None => check(name, false, format!("too few {what} memory samples ({samples}) to judge")),
    }
}

pub(super) fn checks(d: &Driven, c: &Counted, growth: (Option<&Growth>, Option<&Growth>), logs: &str) -> Vec<Check> {
    let a = &d.answers;
    let (sent, answered, unfinished) = (d.sent, a.answered(), d.unfinished);
    let (load_v1, load_v2) = (a.served("v1"), a.served("v2"));
    let load = format!("load v1 {load_v1} / v2 {load_v2}");
    let unaccounted = sent.saturating_sub(answered + a.transport_errors + unfinished);
    let other: u64 = a.other.values().sum();
    let (snap_v1, snap_v2) = subset_requests(&c.snapshot);
    let failures: u64 = c.snapshot.subsets.iter().map(|s| s.counters.failures).sum();
    let w = &d.watch;
    let ran_s = d.ran.as_secs_f64();
    let per_second = d.weight_changes as f64 / ran_s.max(1.0);
    let (applied, rejected) =
        (c.ecds_after.0.saturating_sub(d.ecds_before.0), c.ecds_after.1.saturating_sub(d.ecds_before.1));
    let (stats_v1, stats_v2) = c.envoy_stats;
    vec![
        check(
            "requests",
            answered == sent && a.transport_errors == 0 && unfinished == 0,
            format!(
                "sent {sent}, answered {answered}, transport errors {}, unfinished after {DRAIN:?} {unfinished}, \
                 unaccounted {unaccounted}",
                a.transport_errors
            ),
        ),
        check(
            "statuses",
            other == 0,
            if other == 0 {
                format!("all {answered} answers were 200 from v1 or v2")
            } else {
                format!("{other} answers not from a backend or not 200: {:?}", a.other)
            },
        ),
        memory_check("memory-envoy", "Envoy", growth.0, d.samples.len()),
        memory_check("memory-agent", "gate-agent", growth.1, d.samples.len()),
        check(
            "counters-snapshot",
            (snap_v1, snap_v2) == (load_v1, load_v2)
                && failures == 0
                && w.instances.len() == 1
                && w.counters_backwards == 0,
            format!(
                "snapshot v1 {snap_v1} / v2 {snap_v2} vs {load}; failures {failures}; proxy instances {}; \
                 counters going backwards {}",
                w.instances.len(),
                w.counters_backwards
            ),
        ),
        check(
            "counters-backends",
            c.backends == (load_v1, load_v2),
            format!("backends received v1 {} / v2 {} vs {load}", c.backends.0, c.backends.1),
        ),
        check(
            "counters-agent",
            c.agent == (load_v1, load_v2),
            format!("agent totals stable {} / canary {} vs {load}", c.agent.0, c.agent.1),
        ),
        check(
            "counters-envoy-stats",
            (stats_v1, stats_v2) == (Some(load_v1), Some(load_v2)),
            format!(
                "Envoy stats {} v1 {} / v2 {} vs {load}",
                canary_core::metrics::REQUESTS_TOTAL,
                shown(stats_v1),
                shown(stats_v2)
            ),
        ),
        check(
            "dropped-updates",
            c.dropped == 0,
            format!("{} = {}", canary_core::metrics::UPDATES_DROPPED_TOTAL, c.dropped),
        ),
        check(
            "weights",
            per_second >= MIN_CHANGES_PER_SECOND && rejected == 0 && c.phase == "progressing",
            format!(
                "{} weight changes seen in Envoy in {ran_s:.0} s ({per_second:.2}/s, need {MIN_CHANGES_PER_SECOND}); \
                 {applied} ECDS updates applied, {rejected} rejected; agent phase {}",
                d.weight_changes, c.phase
            ),
        ),
        check(
            "processes",
            d.gone.is_none(),
            d.gone.as_ref().map_or_else(|| "Envoy and gate-agent stayed up".to_owned(), |e| format!("{e}\n{logs}")),
        ),
    ]
}

/// A figure Envoy may not have (`missing` then).
pub(super) fn shown(v: Option<u64>) -> String {
    v.map_or_else(|| "missing".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_growth_compares_medians_after_warm_up_with_the_end() {
        const MIB: u64 = 1 << 20;
        // 100 s: warm-up to 20 s climbs, then flat at 100 MiB with one spike.
        let mut flat: Vec<(f64, u64)> = (0..100).map(|t| (f64::from(t), 100 * MIB)).collect();
        for (t, v) in flat.iter_mut().take(20) {
            *v = (50 + *t as u64) * MIB;
        }
        flat[90].1 = 200 * MIB;
        let g = Growth::of(&flat, 100.0).unwrap();
        assert_eq!((g.baseline, g.last, g.max), (100 * MIB, 100 * MIB, 200 * MIB));
        assert!(!g.grew(), "a warm-up climb and a single spike are not growth: {g:?}");
        // 300 KiB a second: 17.6 MiB between the window medians, over 10% + 4 MiB (14.6 MiB).
        let leaking: Vec<(f64, u64)> = (0..100).map(|t| (f64::from(t), 100 * MIB + t as u64 * 300 * 1024)).collect();
        let g = Growth::of(&leaking, 100.0).unwrap();
        assert!(g.grew(), "{g:?}");
        assert!((g.slope_per_min - 60.0 * 300.0 * 1024.0).abs() < 1.0, "{}", g.slope_per_min);
        assert_eq!(Growth::of(&[], 100.0), None);
    }
}
