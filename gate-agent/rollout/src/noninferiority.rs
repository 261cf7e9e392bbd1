//! Anytime-valid evidence *for* the canary: tests of non-inferiority that gate promotion.
//!
//! [`crate::stats`] looks for evidence that the canary is worse, and rolls back when it finds
//! it. Its silence proves nothing: at low traffic a canary failing ten times as often runs out of
//! steps before that evidence can build up. The promotion gate asks the opposite question: does
//! the data show that the canary is *not meaningfully worse* than the stable? It holds the
//! rollout until it does.
//!
//! # Errors: the hypothesis
//!
//! With per-request failure rates `p_c` (canary) and `p_s` (stable) and a margin of a ratio `r ≥ 1`
//! and an absolute `a ≥ 0` (a rate; the spec writes it in percentage points), the null hypothesis
//! is "the canary is worse than the margin":
//!
//! ```text
//!     H0:  p_c > m(p_s),    m(p) = max(r·p, p + a)
//! ```
//!
//! Rejecting H0 shows non-inferiority. `m` is increasing, which the argument below uses.
//!
//! # A confidence sequence for each rate
//!
//! Each request is a Bernoulli trial. After `n` requests with `k` failures, for a candidate rate
//! `q` let
//!
//! ```text
//!     E_n(q) = [ (1/J) Σ_j p_j^k (1 − p_j)^(n−k) ] / [ q^k (1 − q)^(n−k) ]
//! ```
//!
//! where the `p_j` are a fixed grid of [`RATE_GRID_POINTS`] rates, 8 per decade from 10⁻⁶ (a prior
//! that gives every order of magnitude the same weight, which keeps power for rare failures).
//! `E_n(q)` is a mixture of likelihood ratios against the point `q`; if the true rate is `q`, each
//! ratio is a non-negative martingale with mean 1, and so is the mixture, whatever the number of
//! requests per tick (it may depend on the past, e.g. on a weight the rollout chose). By Ville's
//! inequality `P(∃n: E_n(p) ≥ 1/β) ≤ β`, so
//!
//! ```text
//!     C_n = { q : E_n(q) < 1/β }
//! ```
//!
//! contains the true rate at every `n` at once with probability at least `1 − β` (Robbins'
//! mixture confidence sequence; Howard et al. 2021). `ln E_n(q)` is a constant minus the concave
//! log-likelihood, so it is convex in `q` with its minimum at `p̂ = k/n`: `C_n` is an interval,
//! `ln E_n` rises to the right of `p̂` and falls to its left.
//!
//! # The test
//!
//! Give each side `β = α/2` (the test's share of α, split once more). Let `L` be the lower end of
//! the stable's interval (0 when it has no failures) and `M = m(L)`. Reject H0 when
//!
//! ```text
//!     M ≥ p̂_c   and   ln E_c(M) ≥ ln(2/α)
//! ```
//!
//! i.e. when the margin lies above the whole of the canary's interval.
//!
//! *Validity.* Outside an event of probability at most α both intervals hold their rates at every
//! tick. Then `L ≤ p_s`, so `M = m(L) ≤ m(p_s)`, and under H0 `p_c > m(p_s) ≥ M ≥ p̂_c`. Since
//! `ln E_c` rises to the right of `p̂_c`, `ln E_c(p_c) ≥ ln E_c(M) ≥ ln(2/α)`: the canary's interval
//! would have lost its true rate, which the event excludes. So under H0 the test rejects, at any
//! tick, with probability at most α, however often it is read and whatever the weights were.
//!
//! *Assumption.* Requests fail independently at a rate that does not change during the rollout
//! (the same assumption as the SLO test). The comparison test of [`crate::stats`] conditions on
//! failures and so survives a drift common to both versions; this one does not, but it is the
//! only form with power at a 0.1% baseline: conditioning on failures leaves a few failures an
//! hour to learn from, where counting requests learns from every request. A drift makes the
//! stable look better or worse than it is on average; the gate then compares against that average.
//!
//! # Latency: the canary against the stable's concurrent slow share
//!
//! A canary whose p99 is at most `(1 + i)` times the stable's has at most 1% of its requests above
//! `R = (1 + i) · p99_stable`; `R` is at least `p99_stable` plus
//! [`crate::judge::LATENCY_TOLERANCE_US`], the comparison test's tolerance, so that a few ms of
//! noise both versions share does not hold a fast service's healthy canary. `R` is fixed from the
//! first [`crate::judge::GATE_LATENCY_REFERENCE_SAMPLES`] stable requests before any request is
//! counted against it; from then on a request of either version above `R` is *slow*.
//!
//! Comparing the canary's slow share with a fixed 1% fails as soon as load slows *both* versions
//! after `R` was fixed: the stable is then slow more than 1% of the time too, and a healthy canary
//! is held for ever. So the canary is compared with the **stable's slow share over the same
//! ticks**, above the same `R`, with the margin
//!
//! ```text
//!     m_lat(p) = max(1%, ρ · p),     ρ = SLOW_SHARE_RATIO = 2
//! ```
//!
//! With no drift the stable is slow less than 0.5% of the time above `R` (`R` is above its p99),
//! so the margin is the fixed 1% of before; under a drift that makes 7% of the stable's requests
//! slow, a canary may be slow up to 14% of the time, and a canary whose tail grows by half on top
//! of the drift (about 20%) still is not.
//!
//! *Rates that drift.* Under drift, requests are no longer slow at a constant rate, so the
//! Bernoulli confidence sequence above (a mixture of likelihood ratios against a *fixed* rate) is
//! not the right tool. Let `X_i ∈ {0, 1}` say whether request `i` of one version is slow and
//! `μ_i = P(X_i = 1 | past)` its rate given everything before it (the tick, the load, the weight:
//! anything). The quantity of interest is the running average `μ̄_n = (1/n) Σ_{i≤n} μ_i`. For
//! any real `λ`, `E[e^{λX_i} | past] = 1 + μ_i (e^λ − 1) ≤ exp(μ_i (e^λ − 1))`, so
//!
//! ```text
//!     M_n(λ) = exp( λ K_n − (e^λ − 1) · n μ̄_n ),    K_n = Σ_{i≤n} X_i
//! ```
//!
//! is a non-negative supermartingale with `M_0 = 1` (a product of factors with conditional mean at
//! most 1); so is the mixture `M_n = (1/J) Σ_j M_n(λ_j)` over a fixed grid of `λ_j`
//! ([`SLOW_LAMBDA_RATIOS`], both signs). Define, for a candidate average `q`,
//!
//! ```text
//!     T_n(q) = (1/J) Σ_j exp( λ_j K_n − (e^{λ_j} − 1) · n q )
//! ```
//!
//! Then `T_n(μ̄_n) = M_n` at every `n`, and Ville's inequality gives `P(∃n: T_n(μ̄_n) ≥ 1/β) ≤ β`:
//! `D_n = { q : T_n(q) < 1/β }` contains the running average at every `n` at once with
//! probability at least `1 − β`, whatever the rates did (the Poisson form of Howard et al.'s
//! exponential supermartingales; the `λ_j` must be fixed in advance, which is why the grid is of
//! `λ` and not of rates). `ln T_n` is a log-sum-exp of functions linear in `q`, hence convex: `D_n`
//! is an interval. At a constant rate it is about as narrow as the Bernoulli sequence (the exponent
//! at the best `λ` is `n(p ln(p/q) − p + q)`, within a few percent of `n · KL(p ‖ q)` for rates
//! of a few percent).
//!
//! *The test.* Give each side `β = α/2`. Let `L` be the lower end of the stable's interval and
//! `M = m_lat(L)`. Reject "the canary's average slow share exceeds `m_lat` of the stable's" when
//! `ln T_c(M) ≥ ln(2/α)` and `T_c` rises at `M` (the canary's whole interval lies below `M`: `T_c`
//! is convex, so it stays above the threshold to the right of `M`). Outside an event of
//! probability at most α, `L ≤ μ̄_s` and `μ̄_c ∈ D_c`; then `M ≤ m_lat(μ̄_s)`, and under the null
//! `μ̄_c > m_lat(μ̄_s) ≥ M`, so `T_c(μ̄_c) ≥ T_c(M) ≥ 2/α`, which the event excludes. The argument
//! holds at any tick, however often it is read, and whatever the weights and the load did.
//!
//! *What "the same ticks" means.* Each side's average is over its own requests since `R` was
//! fixed. A drift common to both versions moves both averages alike while the weight is constant;
//! when the weight changes during a drift, the canary's requests lean towards the later ticks more
//! than the stable's do, and its average can exceed the stable's with no difference between the
//! versions (a drift that starts as the rollout moves from 10% to 25% and lasts as long as the 10%
//! step did makes the canary's average about 1.6 times the stable's). The ratio 2 absorbs that in
//! the common cases; a drift that starts just after a weight increase and is followed only
//! briefly can still hold the step until more data comes in. `make bench` (decision quality) has
//! a cell with a drift common to both versions.
//!
//! # How much more is needed
//!
//! [`ErrorNonInferiority::more_needed`] and [`LatencyNonInferiority::more_needed`] answer "about
//! how many more canary requests", by assuming the canary goes on failing (or being slow) at its
//! own rate or the stable's, whichever is higher, and the margin stays where it is, and finding the least `n` at which the test
//! would reject. `None` means not at that rate: the canary is not shown better than the margin.

use serde::{Deserialize, Serialize};

use crate::stats::{Count, log_threshold};

/// Rates in the mixture: 8 per decade from 10⁻⁶ up to 10^(−1/8) ≈ 0.75.
pub const RATE_GRID_POINTS: usize = 48;

// Counts up to 2^53 convert exactly; beyond that a relative error of 1e-16 does not matter.
#[allow(clippy::cast_precision_loss)]
fn f(n: u64) -> f64 {
    n as f64
}

/// The j-th rate of the mixture grid.
#[allow(clippy::cast_precision_loss)]
fn grid_rate(j: usize) -> f64 {
    10f64.powf(-6.0 + j as f64 / 8.0)
}

/// ln of the log-likelihood `k ln q + (n − k) ln(1 − q)`, with `0 · ln 0 = 0`.
fn log_likelihood(n: f64, k: f64, q: f64) -> f64 {
    let fail = if k > 0.0 { k * q.ln() } else { 0.0 };
    let pass = if n - k > 0.0 { (n - k) * (-q).ln_1p() } else { 0.0 };
    fail + pass
}

/// ln of the mixture's numerator, `ln (1/J) Σ_j p_j^k (1 − p_j)^(n−k)`, by log-sum-exp.
fn log_mixture(n: f64, k: f64) -> f64 {
    let terms: Vec<f64> = (0..RATE_GRID_POINTS).map(|j| log_likelihood(n, k, grid_rate(j))).collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    max + sum.ln() - f(RATE_GRID_POINTS as u64).ln()
}

/// ln E(q) for `k` events in `n` trials (real-valued, for projections).
fn log_e(n: f64, k: f64, q: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    log_mixture(n, k) - log_likelihood(n, k, q)
}

/// Bisection steps; 60 halvings of (0, 1) leave an interval below 1e-18.
const BISECTIONS: u32 = 60;

/// The anytime-valid confidence sequence for one Bernoulli rate (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RateSequence {
    pub trials: u64,
    pub events: u64,
}

impl RateSequence {
    pub fn observe(&mut self, c: Count) {
        let c = Count::new(c.trials, c.events);
        self.trials = self.trials.saturating_add(c.trials);
        self.events = self.events.saturating_add(c.events).min(self.trials);
    }

    /// The observed rate, 0 with no trials.
    pub fn rate(&self) -> f64 {
        if self.trials == 0 { 0.0 } else { f(self.events) / f(self.trials) }
    }

    /// ln E_n(q).
    pub fn log_e(&self, q: f64) -> f64 {
        log_e(f(self.trials), f(self.events), q)
    }

    /// The lower end of the interval at `log_threshold` = ln(1/β): 0 when nothing rules out 0.
    pub fn lower(&self, log_threshold: f64) -> f64 {
        let (n, k) = (f(self.trials), f(self.events));
        let mix = log_mixture(n, k);
        // ln E(q) = mix − loglik(q); the mixture is computed once, the bisection varies q only.
        let log_e = |q: f64| mix - log_likelihood(n, k, q);
        if self.events == 0 || log_e(f64::MIN_POSITIVE) < log_threshold {
            return 0.0;
        }
        // ln E falls on (0, p̂]: find where it crosses the threshold.
        let (mut lo, mut hi) = (0.0, self.rate());
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if log_e(mid) >= log_threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// The upper end of the interval at `log_threshold`: 1 when nothing rules out 1.
    pub fn upper(&self, log_threshold: f64) -> f64 {
        if self.trials == 0 || self.events == self.trials {
            return 1.0;
        }
        let (n, k) = (f(self.trials), f(self.events));
        let mix = log_mixture(n, k);
        let log_e = |q: f64| mix - log_likelihood(n, k, q);
        let (mut lo, mut hi) = (self.rate(), 1.0);
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if log_e(mid) >= log_threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        lo
    }

    /// Whether the whole interval lies at or below `margin`: the rate is shown at most `margin`.
    pub fn shown_at_most(&self, margin: f64, log_threshold: f64) -> bool {
        self.trials > 0 && margin >= self.rate() && margin < 1.0 && self.log_e(margin) >= log_threshold
    }

    /// About how many more trials until [`RateSequence::shown_at_most`] holds, if events go on at
    /// `rate`; `None` when that rate is not below `margin` (or it would take more than 10¹²
    /// trials).
    pub fn more_needed(&self, margin: f64, log_threshold: f64, rate: f64) -> Option<u64> {
        if self.shown_at_most(margin, log_threshold) {
            return Some(0);
        }
        let (n0, k0) = (f(self.trials), f(self.events));
        if !(rate < margin && margin < 1.0) {
            return None;
        }
        let shown = |extra: u64| {
            let n = n0 + f(extra);
            let k = k0 + rate * f(extra);
            k / n <= margin && log_e(n, k, margin) >= log_threshold
        };
        let mut hi: u64 = 1;
        while !shown(hi) {
            hi = hi.checked_mul(2).filter(|h| *h <= 1_000_000_000_000)?;
        }
        let mut lo = hi / 2;
        // shown(hi) holds; shown(lo) does not (or lo is 0).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if shown(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }
}

/// A saved pair of sides is one the tests could have reached: events never exceed trials.
fn check_sides(name: &str, canary: (u64, u64), stable: (u64, u64)) -> Result<(), String> {
    for (side, (trials, events)) in [("canary", canary), ("stable", stable)] {
        if events > trials {
            return Err(format!("{name}: {side} has {events} events among {trials} trials"));
        }
    }
    Ok(())
}

/// The error margin: the canary may fail up to `max(ratio × stable, stable + absolute)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorMargin {
    pub ratio: f64,
    /// A rate (0.005 for the spec's 0.5 percentage points).
    pub absolute: f64,
}

impl ErrorMargin {
    /// The highest acceptable canary rate for a stable at `stable_rate`.
    pub fn of(&self, stable_rate: f64) -> f64 {
        (self.ratio * stable_rate).max(stable_rate + self.absolute).min(1.0)
    }
}

/// One gate test's state, for people and for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateEvidence {
    /// Which test (`errors: canary within margin of stable`).
    pub test: String,
    /// Whether it currently shows the canary within the margin.
    pub shown: bool,
    /// The canary's observed rate (failures, or slow requests).
    pub canary_rate: f64,
    /// The upper end of the canary's confidence interval: what the data rules out above.
    pub canary_upper: f64,
    /// The margin the upper end must reach, as a rate; `None` before it is known.
    pub margin: Option<f64>,
    /// Canary requests the test has seen.
    pub canary_trials: u64,
    /// About how many more canary requests until it shows, at the canary's current rate;
    /// `None` when not expected at that rate (or not yet known).
    pub more_needed: Option<u64>,
}

/// Errors: is the canary's failure rate within the margin of the stable's?
#[derive(Debug, Clone)]
pub struct ErrorNonInferiority {
    name: String,
    margin: ErrorMargin,
    canary: RateSequence,
    stable: RateSequence,
    /// ln(2/α): each side's interval gets half of the test's α.
    log_threshold: f64,
}

impl ErrorNonInferiority {
    /// A test at level `alpha` (pass this test's Bonferroni share).
    pub fn new(name: impl Into<String>, margin: ErrorMargin, alpha: f64) -> ErrorNonInferiority {
        ErrorNonInferiority {
            name: name.into(),
            margin,
            canary: RateSequence::default(),
            stable: RateSequence::default(),
            log_threshold: log_threshold(alpha / 2.0),
        }
    }

    pub fn observe(&mut self, canary: Count, stable: Count) {
        self.canary.observe(canary);
        self.stable.observe(stable);
    }

    /// The same test with nothing observed.
    pub fn fresh(&self) -> Self {
        Self { canary: RateSequence::default(), stable: RateSequence::default(), ..self.clone() }
    }

    /// Both sides' sufficient statistics (canary, stable), for a checkpoint.
    pub fn sides(&self) -> (RateSequence, RateSequence) {
        (self.canary, self.stable)
    }

    /// Continues from saved sides (see [`crate::checkpoint`]); refuses more events than trials.
    pub fn resume(&mut self, canary: RateSequence, stable: RateSequence) -> Result<(), String> {
        check_sides(&self.name, (canary.trials, canary.events), (stable.trials, stable.events))?;
        (self.canary, self.stable) = (canary, stable);
        Ok(())
    }

    /// `M = m(L)`: the margin at the lowest stable rate the data allows.
    pub fn margin_rate(&self) -> f64 {
        self.margin.of(self.stable.lower(self.log_threshold))
    }

    /// Whether the data shows the canary within the margin.
    pub fn shown(&self) -> bool {
        self.canary.shown_at_most(self.margin_rate(), self.log_threshold)
    }

    /// About how many more canary requests until the test shows non-inferiority, if the canary
    /// fails from now on at its own rate or the stable's, whichever is higher (a canary is not
    /// expected to beat the stable), and the margin stays where it is.
    pub fn more_needed(&self) -> Option<u64> {
        self.canary.more_needed(self.margin_rate(), self.log_threshold, self.canary.rate().max(self.stable.rate()))
    }

    pub fn evidence(&self) -> GateEvidence {
        let margin = self.margin_rate();
        GateEvidence {
            test: self.name.clone(),
            shown: self.canary.shown_at_most(margin, self.log_threshold),
            canary_rate: self.canary.rate(),
            canary_upper: self.canary.upper(self.log_threshold),
            margin: Some(margin),
            canary_trials: self.canary.trials,
            more_needed: self.canary.more_needed(
                margin,
                self.log_threshold,
                self.canary.rate().max(self.stable.rate()),
            ),
        }
    }
}

/// The share of requests a p99 allows above it.
pub const SLOW_SHARE: f64 = 0.01;

/// How many times as often as the stable, over the same ticks, the canary may be slow.
pub const SLOW_SHARE_RATIO: f64 = 2.0;

/// `e^λ` for the positive half of the latency sequence's grid; the mixture takes `±ln` of each.
/// Fine near 1, where the stable's many requests put its lower end; coarse far out, where only
/// a canary with few requests and a rate far from the margin needs them.
pub const SLOW_LAMBDA_RATIOS: [f64; 12] = [1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0];

/// The latency margin for a stable slow share `stable`: `max(1%, 2 × stable)`, at most 1.
pub fn latency_margin(stable: f64) -> f64 {
    SLOW_SHARE.max(SLOW_SHARE_RATIO * stable).min(1.0)
}

/// The grid's `λ_j`: `± ln` of each ratio.
fn slow_lambdas() -> impl Iterator<Item = f64> {
    SLOW_LAMBDA_RATIOS.iter().flat_map(|r| [r.ln(), -r.ln()])
}

/// `ln T(q)` for `k` events in `n` trials (real-valued, for projections).
fn log_t(n: f64, k: f64, q: f64) -> f64 {
    let terms: Vec<f64> = slow_lambdas().map(|l| l * k - l.exp_m1() * n * q).collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    max + sum.ln() - f(2 * SLOW_LAMBDA_RATIOS.len() as u64).ln()
}

/// Whether `T(q)` does not fall at `q` (`q` is at or right of the minimum of the convex `T`):
/// `dT/dq = −n Σ_j T_j(q) (e^{λ_j} − 1)`.
fn t_rises_at(n: f64, k: f64, q: f64) -> bool {
    let terms: Vec<(f64, f64)> = slow_lambdas().map(|l| (l * k - l.exp_m1() * n * q, l.exp_m1())).collect();
    let max = terms.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
    terms.iter().map(|(t, d)| -(t - max).exp() * d).sum::<f64>() >= 0.0
}

/// The anytime-valid confidence sequence for the *running average* of per-request rates that
/// may drift (see the module doc, latency): one version's slow requests since `R` was fixed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct MeanSequence {
    pub trials: u64,
    pub events: u64,
}

impl MeanSequence {
    pub fn observe(&mut self, c: Count) {
        let c = Count::new(c.trials, c.events);
        self.trials = self.trials.saturating_add(c.trials);
        self.events = self.events.saturating_add(c.events).min(self.trials);
    }

    /// The observed share, 0 with no trials.
    pub fn rate(&self) -> f64 {
        if self.trials == 0 { 0.0 } else { f(self.events) / f(self.trials) }
    }

    /// ln T_n(q).
    pub fn log_t(&self, q: f64) -> f64 {
        if self.trials == 0 { 0.0 } else { log_t(f(self.trials), f(self.events), q) }
    }

    /// Where the convex `T` is least, in [0, 1].
    fn minimum(&self) -> f64 {
        let (n, k) = (f(self.trials), f(self.events));
        let (mut lo, mut hi) = (0.0, 1.0);
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if t_rises_at(n, k, mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    /// The lower end of the interval at `log_threshold` = ln(1/β): 0 when nothing rules out 0.
    pub fn lower(&self, log_threshold: f64) -> f64 {
        if self.trials == 0 || self.log_t(0.0) < log_threshold {
            return 0.0;
        }
        // T falls on [0, minimum]: find where it crosses the threshold.
        let (mut lo, mut hi) = (0.0, self.minimum());
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if self.log_t(mid) >= log_threshold {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// The upper end of the interval at `log_threshold`: 1 when nothing rules out 1.
    pub fn upper(&self, log_threshold: f64) -> f64 {
        if self.trials == 0 || self.log_t(1.0) < log_threshold {
            return 1.0;
        }
        let (mut lo, mut hi) = (self.minimum(), 1.0);
        for _ in 0..BISECTIONS {
            let mid = 0.5 * (lo + hi);
            if self.log_t(mid) >= log_threshold {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        lo
    }

    /// Whether the whole interval lies at or below `margin`: the average is shown at most `margin`.
    pub fn shown_at_most(&self, margin: f64, log_threshold: f64) -> bool {
        self.trials > 0 && margin < 1.0 && shown_at(f(self.trials), f(self.events), margin, log_threshold)
    }

    /// As [`RateSequence::more_needed`], for this sequence.
    pub fn more_needed(&self, margin: f64, log_threshold: f64, rate: f64) -> Option<u64> {
        if self.shown_at_most(margin, log_threshold) {
            return Some(0);
        }
        if !(rate < margin && margin < 1.0) {
            return None;
        }
        let (n0, k0) = (f(self.trials), f(self.events));
        let shown = |extra: u64| shown_at(n0 + f(extra), k0 + rate * f(extra), margin, log_threshold);
        let mut hi: u64 = 1;
        while !shown(hi) {
            hi = hi.checked_mul(2).filter(|h| *h <= 1_000_000_000_000)?;
        }
        let mut lo = hi / 2;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if shown(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }
}

/// `ln T(margin) ≥ threshold` and `T` rises at `margin`: the interval lies below `margin`.
fn shown_at(n: f64, k: f64, margin: f64, log_threshold: f64) -> bool {
    n > 0.0 && t_rises_at(n, k, margin) && log_t(n, k, margin) >= log_threshold
}

/// Latency: is the canary slow (above `R`) at most `max(1%, 2 ×)` as often as the stable over
/// the same ticks? (See the module doc.)
#[derive(Debug, Clone)]
pub struct LatencyNonInferiority {
    name: String,
    canary: MeanSequence,
    stable: MeanSequence,
    /// ln(2/α): each side's interval gets half of the test's α.
    log_threshold: f64,
}

impl LatencyNonInferiority {
    pub fn new(name: impl Into<String>, alpha: f64) -> LatencyNonInferiority {
        LatencyNonInferiority {
            name: name.into(),
            canary: MeanSequence::default(),
            stable: MeanSequence::default(),
            log_threshold: log_threshold(alpha / 2.0),
        }
    }

    /// Requests, and how many were above the reference `R`, per side, in the same tick. Feed
    /// only once `R` is fixed.
    pub fn observe(&mut self, canary: Count, stable: Count) {
        self.canary.observe(canary);
        self.stable.observe(stable);
    }

    /// The same test with nothing observed.
    pub fn fresh(&self) -> Self {
        Self { canary: MeanSequence::default(), stable: MeanSequence::default(), ..self.clone() }
    }

    /// Both sides' sufficient statistics (canary, stable), for a checkpoint.
    pub fn sides(&self) -> (MeanSequence, MeanSequence) {
        (self.canary, self.stable)
    }

    /// Continues from saved sides (see [`crate::checkpoint`]); refuses more events than trials.
    pub fn resume(&mut self, canary: MeanSequence, stable: MeanSequence) -> Result<(), String> {
        check_sides(&self.name, (canary.trials, canary.events), (stable.trials, stable.events))?;
        (self.canary, self.stable) = (canary, stable);
        Ok(())
    }

    /// `M = m_lat(L)`: the margin at the lowest stable slow share the data allows.
    pub fn margin_rate(&self) -> f64 {
        latency_margin(self.stable.lower(self.log_threshold))
    }

    pub fn shown(&self) -> bool {
        self.canary.shown_at_most(self.margin_rate(), self.log_threshold)
    }

    /// `reference_known`: whether `R` is fixed yet (before that nothing counts).
    pub fn evidence(&self, reference_known: bool) -> GateEvidence {
        let margin = self.margin_rate();
        GateEvidence {
            test: self.name.clone(),
            shown: self.canary.shown_at_most(margin, self.log_threshold),
            canary_rate: self.canary.rate(),
            canary_upper: self.canary.upper(self.log_threshold),
            margin: reference_known.then_some(margin),
            canary_trials: self.canary.trials,
            more_needed: if reference_known { self.more_needed() } else { None },
        }
    }

    /// As for errors: at the canary's slow share or the stable's, whichever is higher, with the
    /// margin where it is.
    pub fn more_needed(&self) -> Option<u64> {
        self.canary.more_needed(self.margin_rate(), self.log_threshold, self.canary.rate().max(self.stable.rate()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Sim;

    const MARGIN: ErrorMargin = ErrorMargin { ratio: 2.0, absolute: 0.005 };

    /// A monitored rollout: `ticks` ticks of `per_tick` requests at a weight that climbs through
    /// 10%, 25%, 50%; whether the gate ever showed non-inferiority.
    fn ever_shown(sim: &mut Sim, alpha: f64, ticks: u32, per_tick: u64, stable: f64, canary: f64) -> Option<u32> {
        let mut t = ErrorNonInferiority::new("e", MARGIN, alpha);
        for i in 0..ticks {
            let weight = [0.1, 0.25, 0.5][(i as usize * 3 / ticks as usize).min(2)];
            let n_c = sim.binomial(per_tick, weight);
            let n_s = per_tick - n_c;
            t.observe(Count::new(n_c, sim.binomial(n_c, canary)), Count::new(n_s, sim.binomial(n_s, stable)));
            if t.shown() {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_canary_just_outside_the_margin_is_rarely_shown_within_it_under_constant_monitoring() {
        // At the margin's edge (0.1% stable, 0.6% canary, the absolute part decides) and at a
        // ratio edge (1% stable, 2% canary), checked every tick for up to 200,000 canary requests.
        let alpha = 0.05;
        let mut sim = Sim::new(19);
        let runs = 300;
        let mut shown = 0;
        for i in 0..runs {
            let (stable, canary) = if i % 2 == 0 { (0.001, 0.0061) } else { (0.01, 0.0201) };
            if ever_shown(&mut sim, alpha, 400, 1000, stable, canary).is_some() {
                shown += 1;
            }
        }
        let share = shown as f64 / runs as f64;
        assert!(share <= alpha, "{shown} of {runs} bad canaries shown within the margin ({share:.3} > α)");
    }

    #[test]
    fn a_ten_times_worse_canary_at_a_low_baseline_is_never_shown() {
        let mut sim = Sim::new(7);
        for _ in 0..100 {
            assert_eq!(ever_shown(&mut sim, 0.01, 300, 100, 0.001, 0.01), None);
        }
    }

    #[test]
    fn a_good_canary_is_shown_with_enough_data() {
        let mut sim = Sim::new(3);
        for _ in 0..50 {
            let at = ever_shown(&mut sim, 0.01, 600, 100, 0.001, 0.001);
            // About 4,000 canary requests at 0.1% failures against a margin near 0.6%.
            assert!(at.is_some_and(|t| t < 400), "{at:?}");
        }
        // At a high baseline the ratio decides: 5% against 5%, margin 10%.
        let mut sim = Sim::new(4);
        assert!(ever_shown(&mut sim, 0.01, 600, 100, 0.05, 0.05).is_some());
    }

    #[test]
    fn the_estimate_of_requests_needed_is_about_right() {
        let mut t = ErrorNonInferiority::new("e", MARGIN, 0.005);
        t.observe(Count::new(100, 0), Count::new(10_000, 10));
        let need = t.more_needed().unwrap();
        let mut sim = Sim::new(11);
        let mut after = t.clone();
        let mut fed = 0;
        while !after.shown() && fed < 100_000 {
            let k = sim.binomial(100, 0.001);
            after.observe(Count::new(100, k), Count::new(1000, sim.binomial(1000, 0.001)));
            fed += 100;
        }
        assert!(after.shown());
        let (lo, hi) = (need as f64 / 3.0, need as f64 * 3.0);
        assert!((fed as f64) > lo && (fed as f64) < hi, "estimated {need}, took {fed}");
        // A canary failing above the margin is not expected to pass at that rate.
        let mut bad = ErrorNonInferiority::new("e", MARGIN, 0.005);
        bad.observe(Count::new(1000, 20), Count::new(10_000, 10));
        assert_eq!(bad.more_needed(), None);
        assert!(!bad.evidence().shown);
    }

    #[test]
    fn the_intervals_hold_their_rate_and_order() {
        let s = RateSequence { trials: 10_000, events: 10 };
        let thr = log_threshold(0.005);
        let (lo, hi) = (s.lower(thr), s.upper(thr));
        assert!(lo < 0.001 && 0.001 < hi, "{lo} {hi}");
        assert!(hi < 0.004 && lo > 0.00015, "the interval is informative: {lo} {hi}");
        assert_eq!(RateSequence { trials: 100, events: 0 }.lower(thr), 0.0);
        assert_eq!(RateSequence::default().upper(thr), 1.0);
    }

    #[test]
    fn latency_is_shown_when_few_canary_requests_are_slow() {
        let mut t = LatencyNonInferiority::new("l", 0.005);
        t.observe(Count::new(1000, 4), Count::new(9000, 40));
        assert!(!t.shown());
        assert_eq!(t.margin_rate(), SLOW_SHARE, "no drift: the stable is slow under 0.5% of the time");
        let need = t.more_needed().unwrap();
        assert!(need > 1000 && need < 20_000, "{need}");
        t.observe(Count::new(9000, 36), Count::new(0, 0));
        assert!(t.shown(), "{:?}", t.evidence(true));
        let mut slow = LatencyNonInferiority::new("l", 0.005);
        slow.observe(Count::new(10_000, 250), Count::new(10_000, 40));
        assert!(!slow.shown() && slow.more_needed().is_none());
        assert_eq!(slow.evidence(false).margin, None);
    }

    /// Slow shares of a lognormal latency with p99 200 ms (σ = 0.596) above `R` = 240 ms (1.2 ×
    /// p99): the stable's, a canary's whose latencies are `canary` times as long, both under a
    /// load that multiplies every latency by `drift`.
    fn slow_share(factor: f64) -> f64 {
        // P(Z > (ln(240/50) − ln factor) / σ), by the complementary error function's series-free
        // approximation (Abramowitz-Stegun 7.1.26, error below 1.5e-7).
        let z = ((240.0f64 / 50.0).ln() - factor.ln()) / 0.596;
        let x = z / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let poly =
            t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let erfc = poly * (-x * x).exp();
        let erfc = if x >= 0.0 { erfc } else { 2.0 - erfc };
        0.5 * erfc
    }

    /// A monitored latency gate: `ticks` ticks of `per_tick` requests at a weight that climbs
    /// through 10%, 25%, 50%; from tick `drift_at` on every latency of both versions is
    /// multiplied by `drift`; the canary's by `canary` throughout. The tick it first showed.
    fn latency_shown(
        sim: &mut Sim,
        alpha: f64,
        ticks: u32,
        per_tick: u64,
        canary: f64,
        drift: f64,
        drift_at: u32,
    ) -> Option<u32> {
        let mut t = LatencyNonInferiority::new("l", alpha);
        for i in 0..ticks {
            let weight = [0.1, 0.25, 0.5][(i as usize * 3 / ticks as usize).min(2)];
            let d = if i >= drift_at { drift } else { 1.0 };
            let n_c = sim.binomial(per_tick, weight);
            let n_s = per_tick - n_c;
            t.observe(
                Count::new(n_c, sim.binomial(n_c, slow_share(canary * d))),
                Count::new(n_s, sim.binomial(n_s, slow_share(d))),
            );
            if t.shown() {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_drift_common_to_both_versions_does_not_hold_a_healthy_canary() {
        // Both versions twice as slow from the 20th tick on (7% of requests above R, against
        // 0.4% before): a fixed 1% margin holds this canary for ever, the stable's concurrent
        // share does not.
        assert!(slow_share(2.0) > 0.06 && slow_share(1.0) < 0.005, "{} {}", slow_share(2.0), slow_share(1.0));
        let mut sim = Sim::new(23);
        let mut fixed_margin_held = 0;
        for _ in 0..40 {
            let at = latency_shown(&mut sim, 0.005, 600, 100, 1.0, 2.0, 20);
            // The canary's whole interval must lie below 2 × 7%: a few thousand canary requests.
            assert!(at.is_some_and(|t| t < 400), "{at:?}");
            // The same data against a fixed 1%: the canary's share (7%) is far above it.
            let mut one = MeanSequence::default();
            one.observe(Count::new(5_000, sim.binomial(5_000, slow_share(2.0))));
            fixed_margin_held += usize::from(!one.shown_at_most(SLOW_SHARE, log_threshold(0.0025)));
        }
        assert_eq!(fixed_margin_held, 40);
    }

    #[test]
    fn a_canary_whose_p99_grows_by_half_is_held_with_and_without_drift() {
        // × 1.5 on every latency: 2.5% of requests above R with no drift (margin 1%), 21% under
        // the drift × 2 (margin about 14%).
        let mut sim = Sim::new(29);
        for run in 0..60 {
            let drift = if run % 2 == 0 { 1.0 } else { 2.0 };
            assert_eq!(latency_shown(&mut sim, 0.005, 600, 100, 1.5, drift, 20), None, "run {run}, drift × {drift}");
        }
    }

    #[test]
    fn the_latency_gate_holds_its_level_at_the_margins_edge_under_drift() {
        // Null at its edge: the canary slow exactly at the margin of the stable's concurrent
        // share, tick by tick, while a load drift moves both (the stable between 0.2% and 9%),
        // at a constant weight so that the two averages cover the same ticks. Checked every
        // tick; the share ever shown must stay within α (0.05 here, so that 400 runs can tell).
        let alpha = 0.05;
        let mut sim = Sim::new(31);
        let (runs, mut shown) = (400, 0);
        for r in 0..runs {
            let mut t = LatencyNonInferiority::new("l", alpha);
            let weight = [0.1, 0.5][r % 2];
            for i in 0..400u32 {
                // A slow wave of load: the stable's share rises and falls twice.
                let stable = 0.002 + 0.088 * (0.5 - 0.5 * (f64::from(i) * std::f64::consts::PI / 100.0).cos());
                let canary = latency_margin(stable) * 1.0001;
                let n_c = sim.binomial(200, weight);
                let n_s = 200 - n_c;
                t.observe(Count::new(n_c, sim.binomial(n_c, canary)), Count::new(n_s, sim.binomial(n_s, stable)));
                if t.shown() {
                    shown += 1;
                    break;
                }
            }
        }
        assert!(f64::from(shown) <= alpha * runs as f64, "{shown} of {runs} shown at the margin's edge");
    }

    #[test]
    fn the_mean_sequence_covers_its_rate_and_narrows() {
        let thr = log_threshold(0.0025);
        let s = MeanSequence { trials: 100_000, events: 500 };
        let (lo, hi) = (s.lower(thr), s.upper(thr));
        assert!(lo < 0.005 && 0.005 < hi, "{lo} {hi}");
        assert!(lo > 0.004 && hi < 0.0062, "informative at 100,000 requests: {lo} {hi}");
        assert!(s.shown_at_most(0.01, thr) && !s.shown_at_most(0.005, thr));
        assert_eq!(MeanSequence { trials: 100, events: 0 }.lower(thr), 0.0);
        assert_eq!(MeanSequence::default().upper(thr), 1.0);
        assert!((latency_margin(0.001) - 0.01).abs() < 1e-12 && (latency_margin(0.07) - 0.14).abs() < 1e-12);
    }

    #[test]
    fn margins_combine_ratio_and_absolute() {
        assert!((MARGIN.of(0.001) - 0.006).abs() < 1e-12, "absolute decides at a low baseline");
        assert!((MARGIN.of(0.02) - 0.04).abs() < 1e-12, "the ratio decides at a high one");
        assert_eq!(MARGIN.of(0.9), 1.0);
    }

    proptest::proptest! {
        #[test]
        fn shown_agrees_with_the_interval(n in 1u64..1_000_000, k_frac in 0.0f64..0.05, m in 0.0001f64..0.2) {
            let k = (n as f64 * k_frac) as u64;
            let s = RateSequence { trials: n, events: k };
            let thr = log_threshold(0.005);
            let shown = s.shown_at_most(m, thr);
            let upper = s.upper(thr);
            // Shown exactly when the margin is above the interval's upper end (up to bisection).
            if shown { proptest::prop_assert!(upper <= m * (1.0 + 1e-9)); }
            else { proptest::prop_assert!(upper >= m * (1.0 - 1e-9) || (k as f64 / n as f64) > m); }
            proptest::prop_assert!(!s.log_e(m).is_nan());
        }

        #[test]
        fn the_mean_sequence_shows_exactly_below_its_upper_end(n in 1u64..1_000_000, k_frac in 0.0f64..0.2, m in 0.001f64..0.5) {
            let k = (n as f64 * k_frac) as u64;
            let s = MeanSequence { trials: n, events: k };
            let thr = log_threshold(0.0025);
            let (lower, upper) = (s.lower(thr), s.upper(thr));
            proptest::prop_assert!(lower <= upper && (0.0..=1.0).contains(&lower) && upper <= 1.0);
            if s.shown_at_most(m, thr) { proptest::prop_assert!(upper <= m * (1.0 + 1e-6)); }
            else { proptest::prop_assert!(upper >= m * (1.0 - 1e-6)); }
        }

        #[test]
        fn estimates_are_numbers_or_none(n in 0u64..10_000_000, k in 0u64..10_000, ns in 0u64..10_000_000, ks in 0u64..10_000) {
            let mut t = ErrorNonInferiority::new("e", MARGIN, 0.005);
            t.observe(Count::new(n, k), Count::new(ns, ks));
            let e = t.evidence();
            proptest::prop_assert!(e.canary_upper >= 0.0 && e.canary_upper <= 1.0);
            proptest::prop_assert!(e.margin.is_some_and(|m| (0.005..=1.0).contains(&m)));
            if e.shown { proptest::prop_assert_eq!(e.more_needed, Some(0)); }
        }
    }
}
