//! Judging: one [`Verdict`] per tick from the fleet's [`Window`] and what came before it.
//!
//! Two kinds of checks run side by side:
//! * **Sequential tests** ([`crate::stats`]), fed every window since the judge was created and
//!   valid however often they are read: errors canary-vs-stable, errors against the
//!   success-rate SLO, latency against the duration SLO (a request is *slow* above the bound, and
//!   the SLO allows 1% of them, since the bound is a p99), and latency canary-vs-stable (slow means
//!   above the stable's p99 plus a tolerance, fixed from the first [`LATENCY_REFERENCE_SAMPLES`]
//!   stable requests).
//!   α is split evenly among the active tests. A rejection is a *decisive* failure.
//! * **Window checks** in Flagger's style, over each metric's trailing `interval`: success rate
//!   (%) at or above `min`, p99 (ms) at or below `max`. A miss is never decisive (see *Why no
//!   window check is decisive* below), and it counts as a failed check (the rollout counts those
//!   toward `threshold`) only when it is *significant* at a level spent over the rollout (see
//!   *Failed checks spend their own share of α* below); otherwise it is *not enough data*: the
//!   step holds, neither promoting nor counting a failed check.
//!
//! # Failed checks spend their own share of α
//!
//! Counting every miss, as Flagger does, cannot be bounded: under a canary that meets every
//! bound, each check misses with some small chance, a rollout that the promotion gate holds for
//! an hour takes hundreds of checks, and with overlapping windows (a 30-s window read every
//! 10 s) one unlucky cluster of failures fails three checks in a row, which is the whole
//! `threshold`. `make bench` found exactly that: most A/A false rollbacks with the gate on (0.4%
//! at 1 req/s, 1.2% at 10 req/s) were three failed success-rate checks on one cluster of 2 to 4
//! failures, and the longer the gate held, the more of them.
//!
//! So the window checks get a share of the spec's α like a sequential test (α is split among the
//! sequential tests *and* the window checks), and spend it over the rollout: the check in slot
//! `j = 1 + ⌊(t − t₀) / interval⌋` (`t₀` the judge's first window; the rollout checks at most once
//! per slot, since consecutive checks are at least `interval` apart) gets `α_j = α_w / (K · j(j +
//! 1))` per metric (`K` metrics), and a miss counts as a failed check only when a rate exactly at
//! the metric's bound (`p0` = 1 − min%, or 1% slow above max for a p99) gives that many events or
//! more in that window with probability at most `α_j` ([`significant_miss`]; given the window's
//! request count the events of a canary at or under the bound are dominated by `Bin(n, p0)`,
//! whatever the rates did inside the window). Since `Σ_j 1/(j(j+1)) = 1`, the chance that a canary
//! meeting the bounds *ever* has a failed check counted is at most `α_w`, however long the rollout
//! is held and however the windows overlap. What it costs: a miss late in a long rollout must be
//! clearer to count (a check an hour in at 10-s intervals needs about 10⁻⁷), and a marginal miss
//! (2% against a 1% budget in 500 requests) holds the step instead of failing a check; a canary
//! that really burns the budget is rolled back by the SLO test, whose evidence is valid under any
//! number of looks.
//!
//! # Why no window check is decisive
//!
//! An earlier rule made a window decisive when its failure rate was at least 10× the SLO's budget
//! `p0` with at least 10 failures. It is a fixed-sample rule read at every tick, and its error
//! cannot be bounded independently of how often it is read. One look at a window of `n` requests
//! with a true rate `p0` fires with probability `P(Bin(n, p0) ≥ k)`, `k = max(10, 10·n·p0)`; by
//! Chernoff that is at most `exp(−n·KL(k/n ‖ p0)) ≤ exp(−k(ln 10 − 0.9)) ≤ e^−14 ≈ 8·10⁻⁷`. That
//! is small per look, but the only bound over a rollout is the union over looks: a look every
//! 250 ms for an hour is 14,400 looks and a bound of 1.2%, more than the whole α = 1% and growing
//! without limit with the rollout's length (overlapping windows are dependent, so the union bound
//! is loose, but nothing better is available without a sequential argument). It also carries no
//! share of α, so the Bonferroni split above would no longer be the false-alarm level.
//!
//! The question it answered, "is the canary burning the budget many times too fast", is the
//! [`SloTest`]'s alternative for burn rates 6, 14.4 and 50, which is valid under any number of
//! looks and already inside the α split. So the rule was dropped rather than repaired: a window
//! far above the budget is an ordinary failed check, and the SLO test decides the rollback.
//! `make bench` (decision quality) reports what that costs in time to rollback.
//!
//! No canary requests in a check's window, or no proxy reporting at all, is *not enough data*:
//! never a pass.
//!
//! With the spec's promotion gate on, the judge also feeds the non-inferiority tests
//! ([`crate::noninferiority`]): errors within the margin of the stable, and latency (a request
//! is slow above `max((1 + p99Increase)` × the stable's p99, that p99 + 10 ms), fixed from the
//! first stable requests; the canary's slow share is compared with the stable's over the same
//! ticks, so a drift common to both versions does not hold a healthy canary). They gate advancing, not the verdict: [`Judge::promotion_shown`]. The gate's
//! false-promotion level is the spec's α, split evenly between its two tests; it is a separate
//! guarantee from the rollback tests' false-alarm level.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use canary_core::LatencyHistogram;
use serde::{Deserialize, Serialize};

use crate::collect::{ByRole, Window};
use crate::noninferiority::{ErrorNonInferiority, GateEvidence, LatencyNonInferiority, MeanSequence, RateSequence};
use crate::spec::{DURATION_QUANTILE, Metric, MetricKind, Spec};
use crate::stats::{ComparisonState, ComparisonTest, Count, Evidence, SloState, SloTest, bonferroni};
use crate::time::millis;
use canary_core::sticky::{Cluster, STICKY_CLUSTERS};

/// Stable requests whose p99 becomes the reference for the latency comparison.
pub const LATENCY_REFERENCE_SAMPLES: u64 = 500;
/// Stable requests whose p99 fixes the promotion gate's latency bound.
pub const GATE_LATENCY_REFERENCE_SAMPLES: u64 = 2_000;
/// For the latency comparison a request is slow above the stable's p99 plus a tolerance of
/// this many µs or a fifth of that p99, whichever is more: a canary a few ms slower in the
/// tail is not worth a rollback, one that adds 200 ms is. The promotion gate's latency margin
/// has the same floor: slow above `max((1 + p99Increase) × p99, p99 + this)`.
pub const LATENCY_TOLERANCE_US: u64 = 10_000;
/// Names of the sequential tests, as shown in `/status` and `/metrics`.
pub const TEST_ERRORS_VS_STABLE: &str = "errors: canary vs stable";
pub const TEST_ERRORS_VS_SLO: &str = "errors: canary vs SLO";
pub const TEST_LATENCY_VS_SLO: &str = "latency: canary vs SLO";
pub const TEST_LATENCY_VS_STABLE: &str = "latency: canary vs stable";
/// Names of the promotion gate's tests.
pub const GATE_ERRORS: &str = "errors: canary within margin of stable";
pub const GATE_LATENCY: &str = "latency: canary p99 within margin of stable";

/// The overall result of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum VerdictKind {
    /// Every check had data and passed.
    Pass,
    /// A check failed; `decisive` when waiting for more checks is not warranted.
    Fail { decisive: bool },
    /// Too little traffic to judge. Never promotes.
    NotEnoughData,
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictKind::Pass => "pass",
            VerdictKind::Fail { decisive: false } => "fail",
            VerdictKind::Fail { decisive: true } => "fail (decisive)",
            VerdictKind::NotEnoughData => "not enough data",
        })
    }
}

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finding {
    Pass,
    Fail,
    Decisive,
    NoData,
}

/// One check's result, in numbers and in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The metric or test (`request-success-rate`, `errors: canary vs stable`).
    pub check: String,
    pub finding: Finding,
    /// The measured value (percent, ms, or ln evidence), when there was one.
    pub observed: Option<f64>,
    /// The bound it was held to, in the same unit.
    pub threshold: Option<f64>,
    /// Canary requests behind the figure.
    pub samples: u64,
    /// The sentence for people.
    pub text: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The judgement of one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    /// End of the judged window (ms, the caller's clock).
    pub at_ms: u64,
    /// Every check's finding; failures first.
    pub reasons: Vec<Reason>,
    /// Every sequential test's current evidence.
    pub evidence: Vec<Evidence>,
}

impl Verdict {
    pub fn is_decisive(&self) -> bool {
        self.kind == VerdictKind::Fail { decisive: true }
    }

    /// `fail: request-success-rate 97.00% < 99% ...; ...` — the reasons that made the verdict.
    pub fn summary(&self) -> String {
        let wanted = |r: &&Reason| match self.kind {
            VerdictKind::Pass => true,
            VerdictKind::Fail { .. } => matches!(r.finding, Finding::Fail | Finding::Decisive),
            VerdictKind::NotEnoughData => r.finding == Finding::NoData,
        };
        let texts: Vec<&str> = self.reasons.iter().filter(wanted).map(|r| r.text.as_str()).collect();
        format!("{}: {}", self.kind, texts.join("; "))
    }
}

/// Cumulative counts per role since the judge started, for reason texts.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    requests: u64,
    failures: u64,
}

/// The judge of one rollout: sequential tests and a short history of windows.
#[derive(Debug)]
pub struct Judge {
    metrics: Vec<Metric>,
    /// Look-back of the traffic check used when the spec has no metrics.
    interval_ms: u64,
    /// (window end, counts), oldest first; kept as long as the longest metric interval.
    history: VecDeque<(u64, ByRole)>,
    keep_ms: u64,
    errors_vs_stable: ComparisonTest,
    errors_vs_slo: Option<SloTest>,
    /// The SLO test on slow requests, with the bound in µs.
    latency_vs_slo: Option<(SloTest, u64)>,
    latency_vs_stable: ComparisonTest,
    /// Requests above this many µs are slow for the comparison; fixed once known.
    latency_reference_us: Option<u64>,
    reference_sample: LatencyHistogram,
    canary: Totals,
    stable: Totals,
    /// The window checks' share of α, spent over the rollout's check slots.
    check_alpha: f64,
    /// End of the first window judged: slot 1 of the spending starts here (after a resume, slot
    /// `slot_base + 1`).
    first_window_ms: Option<u64>,
    /// Slots a resumed judge's predecessors may have spent ([`Judge::resume`]); 0 for a new one.
    slot_base: u64,
    /// The slot of the last window judged; 0 before the first.
    last_slot: u64,
    /// The promotion gate's tests, when the spec requires evidence.
    gate_errors: Option<ErrorNonInferiority>,
    /// With the slow bound `(1 + p99Increase)` × the stable's p99 in µs, once fixed.
    gate_latency: Option<(LatencyNonInferiority, Option<u64>)>,
    p99_increase: f64,
    gate_reference_sample: LatencyHistogram,
}

/// `1m`, `30s`, `1m30s`, `500ms`.
pub fn human_duration(d: Duration) -> String {
    let ms = millis(d);
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

// Percentages and ratios for people and tests; counts up to 2^53 convert exactly.
#[allow(clippy::cast_precision_loss)]
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

// The bound is validated positive and at most an hour, so it fits in u64 µs.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn ms_to_us(ms: f64) -> u64 {
    (ms * 1000.0).round() as u64
}

/// `us × factor`, for a factor in (1, 2] (validated): fits in u64 for any histogram value.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
fn scale_us(us: u64, factor: f64) -> u64 {
    (us as f64 * factor).round() as u64
}

#[allow(clippy::cast_precision_loss)]
fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Judge {
    pub fn new(spec: &Spec) -> Judge {
        let metrics = spec.metrics().to_vec();
        let error_p0 = metrics.iter().find_map(|m| match m.kind {
            MetricKind::SuccessRate { min_percent } => Some(1.0 - min_percent / 100.0),
            MetricKind::Duration { .. } => None,
        });
        let latency_bound_us = metrics.iter().find_map(|m| match m.kind {
            MetricKind::Duration { max_ms } => Some(ms_to_us(max_ms)),
            MetricKind::SuccessRate { .. } => None,
        });
        let latency_p0 = 1.0 - DURATION_QUANTILE;
        // Which SLO tests can exist decides how many ways α is split.
        let has_error_slo = error_p0.is_some_and(|p0| SloTest::new("", p0, 0.5).is_some());
        let has_latency_slo = latency_bound_us.is_some() && SloTest::new("", latency_p0, 0.5).is_some();
        // The window checks, when there are any, take one share like a test (see the module doc).
        let has_checks = !metrics.is_empty();
        let active = 2 + usize::from(has_error_slo) + usize::from(has_latency_slo) + usize::from(has_checks);
        let alpha = bonferroni(spec.alpha(), active);
        let interval_ms = millis(spec.interval());
        let keep_ms = metrics.iter().map(|m| millis(m.interval)).fold(interval_ms, u64::max);
        Judge {
            metrics,
            interval_ms,
            history: VecDeque::new(),
            keep_ms,
            errors_vs_stable: ComparisonTest::new(TEST_ERRORS_VS_STABLE, alpha),
            errors_vs_slo: error_p0.and_then(|p0| SloTest::new(TEST_ERRORS_VS_SLO, p0, alpha)),
            latency_vs_slo: latency_bound_us
                .and_then(|b| SloTest::new(TEST_LATENCY_VS_SLO, latency_p0, alpha).map(|t| (t, b))),
            latency_vs_stable: ComparisonTest::new(TEST_LATENCY_VS_STABLE, alpha),
            latency_reference_us: None,
            reference_sample: LatencyHistogram::new(),
            canary: Totals::default(),
            stable: Totals::default(),
            check_alpha: alpha,
            first_window_ms: None,
            slot_base: 0,
            last_slot: 0,
            gate_errors: None,
            gate_latency: None,
            p99_increase: spec.promotion().p99_increase,
            gate_reference_sample: LatencyHistogram::new(),
        }
        .with_gate(spec)
    }

    fn with_gate(mut self, spec: &Spec) -> Judge {
        let p = spec.promotion();
        if p.require_evidence {
            let alpha = bonferroni(spec.alpha(), 2);
            self.gate_errors = Some(ErrorNonInferiority::new(GATE_ERRORS, p.error_margin, alpha));
            self.gate_latency = Some((LatencyNonInferiority::new(GATE_LATENCY, alpha), None));
        }
        self
    }

    /// Whether the promotion gate's tests show the canary within its margins (true without a gate).
    pub fn promotion_shown(&self) -> bool {
        self.gate_errors.as_ref().is_none_or(ErrorNonInferiority::shown)
            && self.gate_latency.as_ref().is_none_or(|(t, r)| r.is_some() && t.shown())
    }

    /// The promotion gate's tests, for people; empty without a gate.
    pub fn promotion_evidence(&self) -> Vec<GateEvidence> {
        let mut out: Vec<GateEvidence> = self.gate_errors.iter().map(ErrorNonInferiority::evidence).collect();
        out.extend(self.gate_latency.iter().map(|(t, r)| t.evidence(r.is_some())));
        out
    }

    /// The latency gate's slow bound (µs), once fixed.
    pub fn gate_latency_bound_us(&self) -> Option<u64> {
        self.gate_latency.as_ref().and_then(|(_, r)| *r)
    }

    /// Every sequential test's current evidence.
    pub fn evidence(&self) -> Vec<Evidence> {
        let mut out = vec![self.errors_vs_stable.evidence()];
        out.extend(self.errors_vs_slo.as_ref().map(SloTest::evidence));
        out.extend(self.latency_vs_slo.as_ref().map(|(t, _)| t.evidence()));
        out.push(self.latency_vs_stable.evidence());
        out
    }

    /// The latency comparison's reference (µs), once fixed.
    pub fn latency_reference_us(&self) -> Option<u64> {
        self.latency_reference_us
    }

    /// Takes in one window and judges the canary.
    pub fn assess(&mut self, window: &Window) -> Verdict {
        let now = window.to_ms;
        self.feed_tests(window);
        self.history.push_back((now, window.counts.clone()));
        while self.history.front().is_some_and(|(t, _)| now.saturating_sub(*t) >= self.keep_ms) {
            self.history.pop_front();
        }

        let mut reasons = self.sequential_reasons();
        if window.proxies_reporting == 0 {
            reasons.push(Reason {
                check: "proxies".into(),
                finding: Finding::NoData,
                observed: None,
                threshold: None,
                samples: 0,
                text: format!("no proxy reported in this tick ({} failing)", window.failing.len()),
            });
        }
        if self.metrics.is_empty() {
            let counts = self.trailing(self.interval_ms);
            let n = counts.canary.requests;
            let (finding, text) = if n == 0 {
                (Finding::NoData, format!("no canary requests in the last {}", human_duration(self.interval())))
            } else {
                (Finding::Pass, format!("{n} canary requests in the last {}", human_duration(self.interval())))
            };
            reasons.push(Reason {
                check: "canary-traffic".into(),
                finding,
                observed: None,
                threshold: None,
                samples: n,
                text,
            });
        }
        let look_alpha = self.look_alpha(now);
        for m in self.metrics.clone() {
            let counts = self.trailing(millis(m.interval));
            reasons.push(window_check(&m, &counts.canary, look_alpha));
        }
        // Failures first, so the first reason is the one that matters.
        reasons.sort_by_key(|r| match r.finding {
            Finding::Decisive => 0,
            Finding::Fail => 1,
            Finding::NoData => 2,
            Finding::Pass => 3,
        });
        let has = |f: Finding| reasons.iter().any(|r| r.finding == f);
        let kind = if has(Finding::Decisive) {
            VerdictKind::Fail { decisive: true }
        } else if has(Finding::Fail) {
            VerdictKind::Fail { decisive: false }
        } else if has(Finding::NoData) {
            VerdictKind::NotEnoughData
        } else {
            VerdictKind::Pass
        };
        Verdict { kind, at_ms: now, reasons, evidence: self.evidence() }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// `α_j` per metric for a check at `now`: the window checks' share, spent over slots of one
    /// `interval` (see the module doc).
    fn look_alpha(&mut self, now: u64) -> f64 {
        let first = *self.first_window_ms.get_or_insert(now);
        let slot = self.slot_base.saturating_add(now.saturating_sub(first) / self.interval_ms.max(1)).saturating_add(1);
        self.last_slot = slot;
        // Slots up to 2^53 convert exactly; an `interval` of 1 ms would need 285,000 years.
        #[allow(clippy::cast_precision_loss)]
        let j = slot as f64;
        bonferroni(self.check_alpha, self.metrics.len()) / (j * (j + 1.0))
    }

    fn feed_tests(&mut self, window: &Window) {
        let (c, s) = (window.canary(), window.stable());
        self.canary.requests = self.canary.requests.saturating_add(c.requests);
        self.canary.failures = self.canary.failures.saturating_add(c.failures);
        self.stable.requests = self.stable.requests.saturating_add(s.requests);
        self.stable.failures = self.stable.failures.saturating_add(s.failures);

        let (ce, se) = (Count::new(c.requests, c.failures), Count::new(s.requests, s.failures));
        // The comparisons take each proxy as a stratum with its own canary share (see
        // `ComparisonTest`); a hand-built window without per-proxy counts is one stratum.
        let strata: &[ByRole] =
            if window.by_proxy.is_empty() { std::slice::from_ref(&window.counts) } else { &window.by_proxy };
        // Requests without a sticky key as before; keyed ones per cluster of the key's hash, each
        // cluster capped (`stats`, "Sticky routing"). Without keys every request is unkeyed.
        self.errors_vs_stable.observe_strata(strata.iter().map(|p| (unkeyed(&p.canary), unkeyed(&p.stable))));
        for p in strata {
            for ((cluster, c), (_, s)) in by_cluster(&p.canary).zip(by_cluster(&p.stable)) {
                self.errors_vs_stable.observe_cluster(cluster, c, s);
            }
        }
        if let Some(t) = &mut self.gate_errors {
            t.observe(ce, se);
        }
        match &mut self.gate_latency {
            Some((t, Some(bound))) => t.observe(
                Count::new(c.latency.count(), c.latency.count_above(*bound)),
                Count::new(s.latency.count(), s.latency.count_above(*bound)),
            ),
            // As for the comparison, from stable requests only, fixed before it is used; a larger
            // sample, since a p99 from 500 requests rests on five of them and a low estimate
            // would hold healthy canaries for long.
            Some((_, bound @ None)) => {
                self.gate_reference_sample.merge(&s.latency);
                if self.gate_reference_sample.count() >= GATE_LATENCY_REFERENCE_SAMPLES {
                    let p99 = self.gate_reference_sample.quantile(DURATION_QUANTILE).unwrap_or(0);
                    // As for the comparison: within LATENCY_TOLERANCE_US of the stable's p99 is
                    // not slow, so a service answering in 2 ms is not held by 3 ms of scheduling
                    // noise that both versions share.
                    *bound = Some(scale_us(p99, 1.0 + self.p99_increase).max(p99.saturating_add(LATENCY_TOLERANCE_US)));
                    self.gate_reference_sample = LatencyHistogram::new();
                }
            }
            None => {}
        }
        if let Some(t) = &mut self.errors_vs_slo {
            t.observe(unkeyed(c));
            for (cluster, count) in by_cluster(c) {
                t.observe_cluster(cluster, count);
            }
        }
        if let Some((t, bound)) = &mut self.latency_vs_slo {
            t.observe(Count::new(c.latency.count(), c.latency.count_above(*bound)));
        }
        match self.latency_reference_us {
            Some(reference) => self.latency_vs_stable.observe_strata(strata.iter().map(|p| {
                (
                    Count::new(p.canary.latency.count(), p.canary.latency.count_above(reference)),
                    Count::new(p.stable.latency.count(), p.stable.latency.count_above(reference)),
                )
            })),
            // The reference comes from stable requests only and is fixed before the test uses
            // it, so under "same latency" slow requests stay equally likely on both sides.
            None => {
                self.reference_sample.merge(&s.latency);
                if self.reference_sample.count() >= LATENCY_REFERENCE_SAMPLES {
                    let p99 = self.reference_sample.quantile(DURATION_QUANTILE).unwrap_or(0);
                    self.latency_reference_us = Some(p99.saturating_add((p99 / 5).max(LATENCY_TOLERANCE_US)));

                    self.reference_sample = LatencyHistogram::new();
                }
            }
        }
    }

    /// A reason for each sequential test that rejected.
    fn sequential_reasons(&self) -> Vec<Reason> {
        let mut out = Vec::new();
        let (c, s) = (self.canary, self.stable);
        let decisive = |e: &Evidence, detail: String| Reason {
            check: e.test.clone(),
            finding: Finding::Decisive,
            observed: Some(e.log_evidence),
            threshold: Some(e.log_threshold),
            samples: e.canary_trials,
            text: format!(
                "{}: evidence ln {:.2} reached the threshold ln {:.2} ({detail})",
                e.test, e.log_evidence, e.log_threshold
            ),
        };
        // How many sticky clusters carry capped evidence: the rejection rests on that many
        // clusters of keys, not on one key.
        let capped = |n: usize| {
            if n == 0 { String::new() } else { format!("; {n} of {STICKY_CLUSTERS} sticky-key clusters at their cap") }
        };
        let e = self.errors_vs_stable.evidence();
        if e.rejected() {
            out.push(decisive(
                &e,
                format!(
                    "canary {} failed of {} requests, stable {} of {}{}",
                    c.failures,
                    c.requests,
                    s.failures,
                    s.requests,
                    capped(self.errors_vs_stable.clusters_at_cap())
                ),
            ));
        }
        if let Some(t) = &self.errors_vs_slo {
            let e = t.evidence();
            if e.rejected() {
                out.push(decisive(
                    &e,
                    format!(
                        "canary {} failed of {} requests, {:.3}% against an error budget of {:.3}%{}",
                        c.failures,
                        c.requests,
                        100.0 * ratio(c.failures, c.requests),
                        100.0 * t.p0(),
                        capped(t.clusters_at_cap())
                    ),
                ));
            }
        }
        if let Some((t, bound)) = &self.latency_vs_slo {
            let e = t.evidence();
            if e.rejected() {
                out.push(decisive(
                    &e,
                    format!("too many canary requests slower than {} ms, 1% allowed", us_to_ms(*bound)),
                ));
            }
        }
        let e = self.latency_vs_stable.evidence();
        if e.rejected() {
            let reference = self.latency_reference_us.map_or(0.0, us_to_ms);
            out.push(decisive(
                &e,
                format!("canary requests slower than {reference} ms (the stable's p99 and a tolerance) more often"),
            ));
        }
        out
    }

    /// Counts over the windows that ended within the last `span_ms`.
    fn trailing(&self, span_ms: u64) -> ByRole {
        let now = self.history.back().map_or(0, |(t, _)| *t);
        let mut out = ByRole::default();
        for (_, counts) in self.history.iter().filter(|(t, _)| now.saturating_sub(*t) < span_ms) {
            out.merge(counts);
        }
        out
    }
}

/// Everything a [`Judge`] accumulates over a rollout, for a checkpoint ([`crate::checkpoint`]):
/// each sequential test's state, the promotion gate's sufficient statistics, the latency
/// references (fixed, or the stable sample still being gathered for them), the totals for reason
/// texts, and the last check slot spent. The trailing windows of the window checks are not in it:
/// a resumed judge starts them empty, as it does every proxy's counter baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeState {
    pub errors_vs_stable: ComparisonState,
    pub errors_vs_slo: Option<SloState>,
    pub latency_vs_slo: Option<SloState>,
    pub latency_vs_stable: ComparisonState,
    pub latency_reference_us: Option<u64>,
    pub reference_sample: LatencyHistogram,
    /// (requests, failures) since the judge started.
    pub canary_totals: (u64, u64),
    pub stable_totals: (u64, u64),
    /// (canary, stable).
    pub gate_errors: Option<(RateSequence, RateSequence)>,
    /// (canary, stable, the slow bound in µs once fixed).
    pub gate_latency: Option<(MeanSequence, MeanSequence, Option<u64>)>,
    pub gate_reference_sample: LatencyHistogram,
    /// The check slot of the last window judged (0 before the first).
    pub last_slot: u64,
}

impl Judge {
    /// What this judge has accumulated.
    pub fn state(&self) -> JudgeState {
        JudgeState {
            errors_vs_stable: self.errors_vs_stable.state(),
            errors_vs_slo: self.errors_vs_slo.as_ref().map(SloTest::state),
            latency_vs_slo: self.latency_vs_slo.as_ref().map(|(t, _)| t.state()),
            latency_vs_stable: self.latency_vs_stable.state(),
            latency_reference_us: self.latency_reference_us,
            reference_sample: self.reference_sample.clone(),
            canary_totals: (self.canary.requests, self.canary.failures),
            stable_totals: (self.stable.requests, self.stable.failures),
            gate_errors: self.gate_errors.as_ref().map(ErrorNonInferiority::sides),
            gate_latency: self.gate_latency.as_ref().map(|(t, r)| {
                let (c, s) = t.sides();
                (c, s, *r)
            }),
            gate_reference_sample: self.gate_reference_sample.clone(),
            last_slot: self.last_slot,
        }
    }

    /// Continues from `state`, taken `gap_ms` ago by a judge of the same spec (the caller checks
    /// that: [`crate::checkpoint`]). The window checks' spending skips every slot the predecessor
    /// may have used after the state was taken: the first slot from here is `last_slot + ⌊gap /
    /// interval⌋ + 2`, above any slot a check could have had by now. On a refusal (a state with
    /// other tests than this spec's, or one no judge could reach) this judge is left as it was.
    pub fn resume(&mut self, state: &JudgeState, gap_ms: u64) -> Result<(), String> {
        let mut next = self.fresh_copy();
        next.errors_vs_stable.resume(&state.errors_vs_stable)?;
        next.latency_vs_stable.resume(&state.latency_vs_stable)?;
        match (&mut next.errors_vs_slo, &state.errors_vs_slo) {
            (Some(t), Some(s)) => t.resume(s)?,
            (None, None) => {}
            _ => return Err("the error SLO test is in one of the spec and the checkpoint only".into()),
        }
        match (&mut next.latency_vs_slo, &state.latency_vs_slo) {
            (Some((t, _)), Some(s)) => t.resume(s)?,
            (None, None) => {}
            _ => return Err("the latency SLO test is in one of the spec and the checkpoint only".into()),
        }
        match (&mut next.gate_errors, &state.gate_errors) {
            (Some(t), Some((c, s))) => t.resume(*c, *s)?,
            (None, None) => {}
            _ => return Err("the promotion gate is on in one of the spec and the checkpoint only".into()),
        }
        match (&mut next.gate_latency, &state.gate_latency) {
            (Some((t, bound)), Some((c, s, b))) => {
                t.resume(*c, *s)?;
                *bound = *b;
            }
            (None, None) => {}
            _ => return Err("the promotion gate is on in one of the spec and the checkpoint only".into()),
        }
        for (what, (requests, failures)) in [("canary", state.canary_totals), ("stable", state.stable_totals)] {
            if failures > requests {
                return Err(format!("{what} totals: {failures} failures among {requests} requests"));
            }
        }
        next.latency_reference_us = state.latency_reference_us;
        next.reference_sample = state.reference_sample.clone();
        next.gate_reference_sample = state.gate_reference_sample.clone();
        next.canary = Totals { requests: state.canary_totals.0, failures: state.canary_totals.1 };
        next.stable = Totals { requests: state.stable_totals.0, failures: state.stable_totals.1 };
        next.slot_base = state.last_slot.saturating_add(gap_ms / self.interval_ms.max(1)).saturating_add(1);
        next.last_slot = state.last_slot;
        *self = next;
        Ok(())
    }

    /// A judge of the same spec with nothing judged yet.
    fn fresh_copy(&self) -> Judge {
        Judge {
            metrics: self.metrics.clone(),
            interval_ms: self.interval_ms,
            history: VecDeque::new(),
            keep_ms: self.keep_ms,
            errors_vs_stable: self.errors_vs_stable.fresh(),
            errors_vs_slo: self.errors_vs_slo.as_ref().map(SloTest::fresh),
            latency_vs_slo: self.latency_vs_slo.as_ref().map(|(t, b)| (t.fresh(), *b)),
            latency_vs_stable: self.latency_vs_stable.fresh(),
            latency_reference_us: None,
            reference_sample: LatencyHistogram::new(),
            canary: Totals::default(),
            stable: Totals::default(),
            check_alpha: self.check_alpha,
            first_window_ms: None,
            slot_base: 0,
            last_slot: 0,
            gate_errors: self.gate_errors.as_ref().map(ErrorNonInferiority::fresh),
            gate_latency: self.gate_latency.as_ref().map(|(t, _)| (t.fresh(), None)),
            p99_increase: self.p99_increase,
            gate_reference_sample: LatencyHistogram::new(),
        }
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p), exactly: one minus the sum of the first k terms, each from
/// the last (k steps).
#[allow(clippy::cast_precision_loss)]
fn binomial_at_least(n: u64, k: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n || p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (ln_p, ln_q) = (p.ln(), (-p).ln_1p());
    let mut ln_term = n as f64 * ln_q;
    let mut below = ln_term.exp();
    for i in 0..k - 1 {
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln() + ln_p - ln_q;
        below += ln_term.exp();
    }
    (1.0 - below).max(0.0)
}

/// Whether a window check's miss is too thin to count. `events` of the window's `n` canary
/// requests broke the bound (failures, or requests slower than `max`), which allows a share `p0`.
/// The miss counts only when a rate exactly at the bound gives `events` or more with probability
/// at most `alpha` (this look's share, see the module doc); otherwise this returns that
/// probability and the check is not enough data.
pub fn significant_miss(n: u64, events: u64, p0: f64, alpha: f64) -> Option<f64> {
    let chance = binomial_at_least(n, events, p0);
    (chance > alpha).then_some(chance)
}

/// The words for a miss that [`significant_miss`] found too thin.
fn too_few(chance: f64, alpha: f64) -> String {
    let at = |p: f64| {
        let pct = 100.0 * p;
        if pct >= 1.0 { format!("{pct:.0}%") } else { format!("{pct:.2e}%") }
    };
    format!(
        "; too few requests to tell (a rate at the bound gives this {} of the time, a failed check needs at most {}): holding the step",
        at(chance),
        at(alpha)
    )
}

/// The canary's requests and failures for the success-rate check, leaving out the sticky
/// cluster with the most failures when keyed requests failed: `(requests, failures, left out as
/// (cluster, failures, requests))`. One key whose requests always fail sits in one cluster, and
/// would otherwise fail the check by itself (at 1 canary req/s, a bad key at 1 req/s reads as
/// 50% success); a canary that is bad for everyone fails about as often in the other 15/16 of
/// the keys. The check is never decisive (module docs); the sequential tests cap each cluster.
fn without_worst_cluster(canary: &canary_core::SubsetCounters) -> (u64, u64, Option<(usize, u64, u64)>) {
    let worst = canary
        .sticky
        .clusters()
        .enumerate()
        .filter(|(_, (_, k))| *k > 0)
        .max_by_key(|(j, (_, k))| (*k, usize::MAX - j));
    match worst {
        Some((j, (m, k))) if canary.requests > m => {
            (canary.requests - m, canary.failures.saturating_sub(k), Some((j, k, m)))
        }
        _ => (canary.requests, canary.failures, None),
    }
}

/// A subset's requests that had no sticky key (placed by a random draw), as a count of failures.
fn unkeyed(c: &canary_core::SubsetCounters) -> Count {
    Count::new(
        c.requests.saturating_sub(c.sticky.total_requests()),
        c.failures.saturating_sub(c.sticky.total_failures()),
    )
}

/// Each sticky cluster's keyed requests as a count of failures, with its cluster.
fn by_cluster(c: &canary_core::SubsetCounters) -> impl Iterator<Item = (Cluster, Count)> + '_ {
    c.sticky.clusters().enumerate().filter_map(|(j, (n, k))| Cluster::new(j).map(|cl| (cl, Count::new(n, k))))
}

/// A Flagger-style check of one metric over its window of canary counts.
fn window_check(m: &Metric, canary: &canary_core::SubsetCounters, alpha: f64) -> Reason {
    let n = canary.requests;
    let over = human_duration(m.interval);
    let check = m.name().to_owned();
    if n == 0 {
        return Reason {
            check: check.clone(),
            finding: Finding::NoData,
            observed: None,
            threshold: None,
            samples: 0,
            text: format!("{check}: no canary requests in the last {over}"),
        };
    }
    match m.kind {
        MetricKind::SuccessRate { min_percent } => {
            // With sticky keys, one key's failures are left out with its cluster (see
            // `without_worst_cluster`); without them this is the plain window rate.
            let (n_judged, failures, left_out) = without_worst_cluster(canary);
            let rate = 100.0 * ratio(n_judged.saturating_sub(failures), n_judged);
            let budget = 1.0 - min_percent / 100.0;
            let thin = (rate < min_percent).then(|| significant_miss(n_judged, failures, budget, alpha)).flatten();
            let (finding, cmp) = if thin.is_some() {
                (Finding::NoData, "<")
            } else if rate < min_percent {
                (Finding::Fail, "<")
            } else {
                (Finding::Pass, "≥")
            };
            let mut text = format!(
                "{check} {rate:.2}% {cmp} {min_percent}% over {over} ({failures} failed of {n_judged} canary requests"
            );
            if let Some((j, k, m)) = left_out {
                text.push_str(&format!(
                    ", leaving out sticky cluster {j} of {STICKY_CLUSTERS} with {k} failed of {m}, so one key cannot fail the check"
                ));
            }
            text.push(')');
            if let Some(chance) = thin {
                text.push_str(&too_few(chance, alpha));
            }
            Reason { check, finding, observed: Some(rate), threshold: Some(min_percent), samples: n, text }
        }
        MetricKind::Duration { max_ms } => {
            let p99 = canary.latency.quantile(DURATION_QUANTILE).map_or(0.0, us_to_ms);
            let slow = canary.latency.count_above(ms_to_us(max_ms));
            let thin = (p99 > max_ms).then(|| significant_miss(n, slow, 1.0 - DURATION_QUANTILE, alpha)).flatten();
            let (finding, cmp) = match (p99 > max_ms, thin) {
                (true, Some(_)) => (Finding::NoData, ">"),
                (true, None) => (Finding::Fail, ">"),
                (false, _) => (Finding::Pass, "≤"),
            };
            let mut text = format!("{check} p99 {p99:.1} ms {cmp} {max_ms} ms over {over} ({n} canary requests)");
            if let Some(chance) = thin {
                text.push_str(&too_few(chance, alpha));
            }
            Reason { check: check.clone(), finding, observed: Some(p99), threshold: Some(max_ms), samples: n, text }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use canary_core::{Outcome, SubsetCounters};

    pub(crate) const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 10s
threshold: 3
stepWeights: [10, 25, 50]
maxWeight: 50
minRequests: 100
alpha: 0.01
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 10s
  - name: request-duration
    thresholdRange: { max: 500 }
    interval: 10s
";

    /// Counters for `n` requests, `failed` of them failures, all taking `ms`.
    pub(crate) fn counters(n: u64, failed: u64, ms: u64) -> SubsetCounters {
        let mut c = SubsetCounters::default();
        for i in 0..n {
            c.record(if i < failed { Outcome::Failure } else { Outcome::Success }, ms * 1000);
        }
        c
    }

    /// A one-second window ending at `to_ms` from one reporting proxy.
    pub(crate) fn window(to_ms: u64, stable: (u64, u64, u64), canary: (u64, u64, u64)) -> Window {
        Window {
            from_ms: to_ms.saturating_sub(1000),
            to_ms,
            counts: ByRole {
                stable: counters(stable.0, stable.1, stable.2),
                canary: counters(canary.0, canary.1, canary.2),
            },
            proxies_reporting: 1,
            ..Window::default()
        }
    }

    fn judge() -> Judge {
        Judge::new(&Spec::from_yaml_or_json(SPEC).unwrap())
    }

    #[test]
    fn a_healthy_canary_passes_with_numbers_in_the_reasons() {
        let mut j = judge();
        let v = j.assess(&window(1000, (900, 1, 20), (100, 0, 25)));
        assert_eq!(v.kind, VerdictKind::Pass, "{}", v.summary());
        let rate = v.reasons.iter().find(|r| r.check == "request-success-rate").unwrap();
        assert_eq!((rate.observed, rate.threshold, rate.samples), (Some(100.0), Some(99.0), 100));
        assert!(rate.text.contains("100.00% ≥ 99% over 10s (0 failed of 100 canary requests)"), "{}", rate.text);
        let p99 = v.reasons.iter().find(|r| r.check == "request-duration").unwrap();
        assert!(p99.observed.unwrap() > 24.0 && p99.observed.unwrap() < 26.0, "{p99:?}");
        assert_eq!(v.evidence.len(), 4);
        assert!(
            v.evidence.iter().all(|e| (e.log_threshold - 500f64.ln()).abs() < 1e-9),
            "α split five ways: four tests and the window checks"
        );
    }

    #[test]
    fn no_canary_traffic_is_not_enough_data() {
        let mut j = judge();
        let v = j.assess(&window(1000, (1000, 0, 20), (0, 0, 0)));
        assert_eq!(v.kind, VerdictKind::NotEnoughData);
        assert!(v.summary().contains("no canary requests in the last 10s"), "{}", v.summary());
    }

    #[test]
    fn no_proxy_reporting_is_not_enough_data_even_with_recent_history() {
        let mut j = judge();
        j.assess(&window(1000, (900, 0, 20), (100, 0, 20)));
        let v = j.assess(&Window { from_ms: 1000, to_ms: 2000, ..Window::default() });
        assert_eq!(v.kind, VerdictKind::NotEnoughData, "{}", v.summary());
        assert!(v.summary().contains("no proxy reported"));
    }

    #[test]
    fn a_slow_canary_fails_the_p99_check() {
        let mut j = judge();
        let v = j.assess(&window(1000, (90, 0, 20), (10, 0, 700)));
        assert!(matches!(v.kind, VerdictKind::Fail { .. }), "{}", v.summary());
        assert!(v.summary().contains("request-duration p99"), "{}", v.summary());
    }

    #[test]
    fn a_slightly_low_success_rate_holds_the_step_instead_of_failing_a_check() {
        let mut j = judge();
        // 2 failures in 100: 98% < 99%, but a rate at the bound gives that 26% of the time: not
        // significant at this check's share of α, so it neither passes nor counts.
        let v = j.assess(&window(1000, (900, 9, 20), (100, 2, 20)));
        assert_eq!(v.kind, VerdictKind::NotEnoughData, "{}", v.summary());
        let rate = v.reasons.iter().find(|r| r.check == "request-success-rate").unwrap();
        assert_eq!(rate.finding, Finding::NoData);
        assert!(rate.text.starts_with("request-success-rate 98.00% < 99%"), "{}", rate.text);
        assert!(rate.text.contains("a failed check needs at most 5.00e-2%"), "α/5/2 metrics/(1·2): {}", rate.text);
    }

    /// The judge after `windows` healthy 10-s windows (30 of them: 300 s, check slot 31).
    fn after_healthy(windows: u64) -> Judge {
        let mut j = judge();
        for t in 1..=windows {
            let v = j.assess(&window(t * 10_000, (9_000, 0, 20), (1_000, 0, 20)));
            assert_eq!(v.kind, VerdictKind::Pass, "{}", v.summary());
        }
        j
    }

    #[test]
    fn failed_checks_counted_over_a_long_rollout_stay_within_their_share_of_alpha() {
        // The window checks alone (only the success-rate check's finding is read, not the verdict):
        // a canary failing exactly at the bound (1%), 20 requests a second, checked every 10 s
        // for two hours over a 30-s window, as a gate-held rollout is. Counting every miss,
        // every rollout would collect three failed checks within minutes; with the spent
        // share, a failed check is counted in at most α_w = 0.2% of rollouts.
        let spec =
            SPEC.replace("interval: 10s\n  - name: request-duration", "interval: 30s\n  - name: request-duration");
        let mut sim = crate::sim::Sim::new(0x5e1);
        let (runs, mut counted, mut flagger_misses) = (100, 0, 0);
        for _ in 0..runs {
            let mut j = Judge::new(&Spec::from_yaml_or_json(&spec).unwrap());
            let mut any = false;
            // One 10-s window per check: 200 canary requests each, 600 in the 30-s window.
            for t in 1..=720u64 {
                let w = window(t * 10_000, (200, sim.binomial(200, 0.01), 20), (200, sim.binomial(200, 0.01), 20));
                let v = j.assess(&w);
                let rate = v.reasons.iter().find(|r| r.check == "request-success-rate").unwrap();
                flagger_misses += usize::from(rate.text.contains(" < 99%"));
                any |= rate.finding == Finding::Fail;
            }
            counted += usize::from(any);
        }
        assert!(flagger_misses > runs * 100, "misses counted as Flagger does: {flagger_misses}");
        // P(Bin(100, 0.002) ≥ 3) ≈ 0.001.
        assert!(counted <= 2, "{counted} of {runs} rollouts at the bound had a failed check counted");
    }

    #[test]
    fn a_failure_rate_far_above_the_budget_is_decided_by_the_slo_test_not_the_window() {
        let mut j = judge();
        let v = j.assess(&window(1000, (900, 0, 20), (100, 40, 20)));
        assert!(v.is_decisive(), "{}", v.summary());
        assert!(v.reasons.iter().any(|r| r.check == "request-success-rate" && r.finding == Finding::Fail));
        assert!(v.reasons.iter().any(|r| r.check == TEST_ERRORS_VS_SLO && r.finding == Finding::Decisive));
    }

    #[test]
    fn ten_times_the_budget_in_one_window_is_an_ordinary_failed_check() {
        // A canary healthy for five minutes, then a window with 10 failures in 100 against a 1%
        // budget: the old window rule's exact trigger. The stable fails as often in that window,
        // so the comparison sees nothing, and the SLO test's evidence is far below zero after
        // 30,000 clean requests. So this is a failed check that counts toward the threshold,
        // not a rollback: the price of dropping the rule is that such a burst takes the
        // threshold's checks (or more evidence) to roll back.
        let mut j = after_healthy(30);
        let v = j.assess(&window(310_000, (900, 90, 20), (100, 10, 20)));
        assert_eq!(v.kind, VerdictKind::Fail { decisive: false }, "{}", v.summary());
        assert!(v.reasons.iter().all(|r| r.finding != Finding::Decisive), "{}", v.summary());
        assert!(v.reasons[0].text.starts_with("request-success-rate 90.00% < 99%"), "{}", v.reasons[0].text);
    }

    #[test]
    fn window_checks_forget_old_windows() {
        // After five healthy minutes, a burst the stable shares: a significant miss (10 of 100),
        // a failed check, not decisive; it stays in the 10-s window while small windows follow.
        let mut j = after_healthy(30);
        let v = j.assess(&window(310_000, (900, 90, 20), (100, 10, 20)));
        assert_eq!(v.kind, VerdictKind::Fail { decisive: false }, "{}", v.summary());
        let mut v = j.assess(&window(311_000, (90, 0, 20), (10, 0, 20)));
        assert_eq!(v.kind, VerdictKind::Fail { decisive: false }, "the failing window is still inside 10s");
        for t in 312..=320 {
            v = j.assess(&window(t * 1000, (90, 0, 20), (10, 0, 20)));
        }
        assert_eq!(v.kind, VerdictKind::Pass, "{}", v.summary());
    }

    #[test]
    fn under_a_a_traffic_read_every_tick_decisive_verdicts_stay_below_alpha() {
        // Many looks: identical versions failing exactly at the SLO's budget (1%, the worst case
        // the SLO test covers), judged every second for ten minutes, 120 rollouts. Every decisive
        // verdict now comes from a sequential test, so the share of rollouts that ever see one is
        // bounded by α (0.01 here), however many looks there are; the count is checked against a
        // generous binomial bound for 120 trials at α.
        let mut sim = crate::sim::Sim::new(0xa11);
        let (runs, mut alarms) = (120, 0);
        for _ in 0..runs {
            let mut j = judge();
            for t in 1..=600u64 {
                let n_c = sim.binomial(40, 0.25);
                let n_s = 40 - n_c;
                let w = window(t * 1000, (n_s, sim.binomial(n_s, 0.01), 20), (n_c, sim.binomial(n_c, 0.01), 20));
                if j.assess(&w).is_decisive() {
                    alarms += 1;
                    break;
                }
            }
        }
        // P(Bin(120, 0.01) ≥ 5) < 0.01: more than 4 alarms would mean the level is not held.
        assert!(alarms <= 4, "{alarms} of {runs} A/A rollouts saw a decisive verdict");
    }

    #[test]
    fn one_failure_in_a_window_too_small_for_the_bound_holds_instead_of_failing_a_check() {
        // 30 requests against 99%: the bound allows 0.3 failures, so one failure reads 96.67%.
        let mut j = judge();
        let v = j.assess(&window(1000, (270, 0, 20), (30, 1, 20)));
        assert_eq!(v.kind, VerdictKind::NotEnoughData, "{}", v.summary());
        let rate = v.reasons.iter().find(|r| r.check == "request-success-rate").unwrap();
        assert_eq!(rate.finding, Finding::NoData);
        assert!(
            rate.text.contains("96.67% < 99%")
                && rate.text.contains("too few requests to tell (a rate at the bound gives this 26%"),
            "{}",
            rate.text
        );
    }

    #[test]
    fn a_miss_must_be_clearer_later_in_the_rollout() {
        // Three failures in 30 happen 0.3% of the time at a 1% failure rate: at the first check
        // that is above its share (0.05%), so it holds; six in 30 (6·10⁻⁷) counts even at slot 31
        // (α_31 = 10⁻⁶), once five healthy minutes have made the SLO test's evidence too low to
        // decide it at once.
        let v = judge().assess(&window(1000, (270, 0, 20), (30, 3, 20)));
        assert_eq!(v.kind, VerdictKind::NotEnoughData, "{}", v.summary());
        let mut j = after_healthy(30);
        let v = j.assess(&window(310_000, (270, 18, 20), (30, 6, 20)));
        assert_eq!(v.kind, VerdictKind::Fail { decisive: false }, "{}", v.summary());
        assert!(v.reasons[0].text.starts_with("request-success-rate 80.00% < 99%"), "{}", v.reasons[0].text);
    }

    #[test]
    fn one_slow_request_in_a_small_window_holds_instead_of_failing_the_p99_check() {
        let mut canary = counters(29, 0, 20);
        canary.record(Outcome::Success, 700_000);
        let mut j = judge();
        let w =
            Window { counts: ByRole { stable: counters(270, 0, 20), canary }, ..window(1000, (0, 0, 0), (0, 0, 0)) };
        let v = j.assess(&w);
        let p99 = v.reasons.iter().find(|r| r.check == "request-duration").unwrap();
        assert_eq!(p99.finding, Finding::NoData, "{}", p99.text);
        assert!(
            p99.text.contains("p99 7") && p99.text.contains("> 500 ms") && p99.text.contains("too few"),
            "{}",
            p99.text
        );
        // In a window of 100 the bound allows one slow request; two are a miss in Flagger's terms,
        // but a rate at the bound gives two 26% of the time: not a failed check either.
        let mut canary = counters(98, 0, 20);
        canary.record(Outcome::Success, 700_000);
        canary.record(Outcome::Success, 700_000);
        let w =
            Window { counts: ByRole { stable: counters(900, 0, 20), canary }, ..window(2000, (0, 0, 0), (0, 0, 0)) };
        let p99 = judge().assess(&w).reasons.into_iter().find(|r| r.check == "request-duration").unwrap();
        assert_eq!(p99.finding, Finding::NoData, "{}", p99.text);
    }

    #[test]
    fn binomial_tails_are_exact() {
        assert!((binomial_at_least(30, 1, 0.01) - (1.0 - 0.99f64.powi(30))).abs() < 1e-12);
        let at_most_two = 0.99f64.powi(30) + 30.0 * 0.01 * 0.99f64.powi(29) + 435.0 * 1e-4 * 0.99f64.powi(28);
        assert!((binomial_at_least(30, 3, 0.01) - (1.0 - at_most_two)).abs() < 1e-12);
        assert_eq!(binomial_at_least(30, 0, 0.01), 1.0);
        assert_eq!(binomial_at_least(30, 31, 0.01), 0.0);
        assert!(significant_miss(100, 2, 0.01, 0.01).is_some_and(|c| (c - 0.2642).abs() < 1e-3));
        assert_eq!(significant_miss(100, 10, 0.01, 1e-6), None, "10 in 100 at 1%: about 7.6e-8");
        assert_eq!(significant_miss(30, 1, 0.0, 0.01), None, "a 100% bound allows nothing");
    }

    #[test]
    fn the_latency_gates_bound_is_the_margin_or_the_comparisons_tolerance_whichever_is_more() {
        // A 2 ms service: 1.2 × p99 would call 2.4 ms slow, which scheduling noise that both
        // versions share reaches (the demo's healthy canary was held by it); the bound is p99 +
        // 10 ms. A 200 ms service: 1.2 × p99 = 240 ms, the margin the spec asks for.
        for (stable_ms, bound_ms) in [(2.0, 12.0), (200.0, 240.0)] {
            let mut j = judge();
            for t in 1..=3 {
                j.assess(&window(t * 1000, (1000, 0, stable_ms as u64), (10, 0, stable_ms as u64)));
            }
            let bound = j.gate_latency_bound_us().map(|us| us as f64 / 1000.0);
            assert!(bound.is_some_and(|b| (b - bound_ms).abs() <= bound_ms * 0.01), "{stable_ms} ms: {bound:?}");
        }
    }

    #[test]
    fn a_latency_regression_against_stable_is_caught_by_the_comparison() {
        // No latency SLO is breached (+200 ms on 20 ms stays under 500 ms), but the canary is
        // slower than the stable's p99 on nearly every request.
        let mut j = judge();
        for t in 1..=5 {
            j.assess(&window(t * 1000, (180, 0, 20), (20, 0, 20)));
        }
        assert_eq!(j.latency_reference_us().map(|us| us / 1000), Some(30), "p99 20 ms + 10 ms tolerance");
        let mut decisive_at = None;
        for t in 6..=30 {
            let v = j.assess(&window(t * 1000, (180, 0, 20), (20, 0, 220)));
            if v.is_decisive() {
                decisive_at = Some(t);
                assert!(v.reasons[0].check == TEST_LATENCY_VS_STABLE, "{}", v.summary());
                break;
            }
        }
        assert!(decisive_at.is_some_and(|t| t <= 8), "{decisive_at:?}");
    }

    #[test]
    fn without_metrics_traffic_alone_decides_data() {
        let spec =
            Spec::from_yaml_or_json("name: r\nstable: v1\ncanary: v2\ninterval: 5s\nstepWeights: [50]\n").unwrap();
        let mut j = Judge::new(&spec);
        assert_eq!(j.assess(&window(1000, (10, 0, 1), (0, 0, 1))).kind, VerdictKind::NotEnoughData);
        assert_eq!(j.assess(&window(2000, (10, 0, 1), (10, 0, 1))).kind, VerdictKind::Pass);
        assert_eq!(j.evidence().len(), 2);
    }

    /// Keyed counters: `per_cluster` requests in every sticky cluster, `failed(j)` of cluster j
    /// failing, all taking 20 ms.
    fn keyed(per_cluster: u64, failed: impl Fn(usize) -> u64) -> SubsetCounters {
        let mut c = SubsetCounters::default();
        for j in 0..STICKY_CLUSTERS {
            for i in 0..per_cluster {
                let o = if i < failed(j) { Outcome::Failure } else { Outcome::Success };
                c.record(o, 20_000);
                c.record_sticky(Cluster::new(j).unwrap(), o);
            }
        }
        c
    }

    fn keyed_window(to_ms: u64, stable: SubsetCounters, canary: SubsetCounters) -> Window {
        Window { counts: ByRole { stable, canary }, ..window(to_ms, (0, 0, 0), (0, 0, 0)) }
    }

    #[test]
    fn one_sticky_key_that_always_fails_neither_rolls_back_nor_fails_the_success_rate_check() {
        // 1,000 req/s with a sticky key, 10% on the canary, the stable failing once a second in
        // a rotating cluster; one key in cluster 3 on the canary sends 10 req/s that all fail.
        let mut j = judge();
        for t in 1..=600u64 {
            let stable = keyed(56, |c| u64::from(c as u64 == t % 16));
            let canary = keyed(6, |c| if c == 3 { 6 } else { 0 });
            let v = j.assess(&keyed_window(t * 1000, stable, canary));
            assert_eq!(v.kind, VerdictKind::Pass, "at {t} s: {}", v.summary());
        }
        let rate = j.assess(&keyed_window(601_000, keyed(56, |_| 0), keyed(6, |c| if c == 3 { 6 } else { 0 })));
        let rate = rate.reasons.iter().find(|r| r.check == "request-success-rate").unwrap();
        assert!(rate.text.contains("leaving out sticky cluster 3 of 16 with 60 failed of 60"), "{}", rate.text);
        // The same traffic without the clusters (a filter that predates them) is rolled back at once.
        let mut pooled = judge();
        let strip = |c: SubsetCounters| SubsetCounters { sticky: Default::default(), ..c };
        let v = pooled.assess(&keyed_window(
            1000,
            strip(keyed(56, |_| 0)),
            strip(keyed(6, |c| if c == 3 { 6 } else { 0 })),
        ));
        assert!(v.is_decisive(), "{}", v.summary());
    }

    #[test]
    fn a_keyed_canary_bad_for_everyone_is_rolled_back_on_many_clusters() {
        let mut j = judge();
        let mut decisive_at = None;
        for t in 1..=60u64 {
            // Every cluster's canary keys fail 1 of 6 in every other second: 8% against 0.1%.
            let canary = keyed(6, |c| u64::from((c as u64 + t).is_multiple_of(2)));
            let v = j.assess(&keyed_window(t * 1000, keyed(56, |c| u64::from(c as u64 == t % 16)), canary));
            if v.is_decisive() {
                decisive_at = Some(t);
                assert!(v.summary().contains("sticky-key clusters at their cap"), "{}", v.summary());
                break;
            }
        }
        assert!(decisive_at.is_some_and(|t| t <= 10), "{decisive_at:?}");
    }

    #[test]
    fn durations_read_like_the_spec() {
        assert_eq!(human_duration(Duration::from_secs(60)), "1m");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn verdicts_serialise_for_status() {
        let mut j = judge();
        let v = j.assess(&window(1000, (900, 0, 20), (100, 40, 20)));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["kind"]["verdict"], "fail");
        assert_eq!(json["kind"]["decisive"], true);
        assert_eq!(json["reasons"][0]["finding"], "decisive");
    }
}
