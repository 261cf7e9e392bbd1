//! Anytime-valid sequential tests: evidence against the canary that may be checked every tick.
//!
//! Each test is a test martingale (a product of likelihood ratios, mixed over a grid of
//! alternatives). By Ville's inequality, under the null hypothesis the probability that its value
//! *ever* reaches 1/α is at most α, however often it is looked at; so the agent can check every
//! second without the false alarms that repeated fixed-sample p-values ("peeking") cause. The
//! design is in `shared/notes/decision-statistics.md`:
//!
//! * [`ComparisonTest`]: canary versus stable on event counts (failures, or slow requests),
//!   conditioning on the events: with equal per-request rates, an event falls on the canary with
//!   probability equal to its request share ρ in that tick.
//! * [`SloTest`]: the canary alone against an SLO's budget rate p0, mixing over burn rates; it
//!   keeps power when the canary carries nearly all traffic (the weight-typo case), where the
//!   comparison has almost none.
//!
//! Everything is in natural-log space: evidence is compared to `ln(1/α)`.
//!
//! These tests find evidence *against* the canary. Evidence *for* it, which gates promotion, is
//! [`crate::noninferiority`].

use serde::Serialize;

/// Alternatives for the comparison: the canary's event rate is θ times the stable's.
pub const EFFECT_GRID: [f64; 6] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Alternatives for the SLO test: the canary burns the error budget this many times too fast
/// (14.4 is the SRE workbook's page-now burn rate).
pub const BURN_RATE_GRID: [f64; 4] = [2.0, 6.0, 14.4, 50.0];

/// Events among trials in one tick (failures among requests, slow requests among requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Count {
    pub trials: u64,
    pub events: u64,
}

impl Count {
    /// Events are capped at trials: a malformed delta must not fabricate evidence.
    pub fn new(trials: u64, events: u64) -> Count {
        Count { trials, events: events.min(trials) }
    }
}

/// One test's state, for people and for `/metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// Which test (`errors: canary vs stable`).
    pub test: String,
    /// ln of the mixture martingale; starts at 0.
    pub log_evidence: f64,
    /// ln(1/α) for this test's share of α; the test rejects at or above it.
    pub log_threshold: f64,
    /// Trials the test has seen on the canary.
    pub canary_trials: u64,
}

impl Evidence {
    fn of(test: &str, log_evidence: f64, log_threshold: f64, canary_trials: u64) -> Evidence {
        Evidence { test: test.to_owned(), log_evidence, log_threshold, canary_trials }
    }

    pub fn rejected(&self) -> bool {
        self.log_evidence >= self.log_threshold
    }
}

/// α split evenly among `tests` simultaneous tests (Bonferroni): the chance that *any* of them
/// falsely rejects stays at most `alpha`.
pub fn bonferroni(alpha: f64, tests: usize) -> f64 {
    // usize -> f64 is exact for any realistic number of tests.
    #[allow(clippy::cast_precision_loss)]
    let n = tests.max(1) as f64;
    alpha / n
}

/// ln(1/α), with α kept inside (0, 1) so the threshold is finite and positive.
pub fn log_threshold(alpha: f64) -> f64 {
    let a = if alpha.is_nan() { 0.01 } else { alpha.clamp(1e-300, 0.999_999) };
    -a.ln()
}

/// ln of the equal-weight mixture `(1/m) Σ exp(x_j)`, without overflow (log-sum-exp).
fn log_mean_exp(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if xs.is_empty() || max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = xs.iter().map(|x| (x - max).exp()).sum();
    // usize -> f64 exact for a grid of a few entries.
    #[allow(clippy::cast_precision_loss)]
    let m = xs.len() as f64;
    max + sum.ln() - m.ln()
}

// Counts up to 2^53 convert exactly; beyond that a relative error of 1e-16 does not matter.
#[allow(clippy::cast_precision_loss)]
fn f(n: u64) -> f64 {
    n as f64
}

/// Canary versus stable on event counts: does the canary have more events per request?
///
/// For a tick with canary events `k_c`, stable events `k_s` and canary request share ρ, the
/// likelihood ratio of "canary rate is θ × stable rate" against "equal rates" is
/// `θ^k_c / (1 + ρ(θ − 1))^(k_c + k_s)` (the notes' formula, simplified). Its product over
/// ticks, mixed over [`EFFECT_GRID`], is the evidence. ρ is taken per tick, so weight changes
/// mid-rollout are fine. One-sided: a canary with *fewer* events only lowers the evidence.
///
/// Validity with equal rates: given the tick's request counts and total events, `k_c` is
/// hypergeometric, which is smaller than the binomial in convex order (Hoeffding 1963); the
/// ratio is convex in `k_c` and has mean 1 under the binomial, so its mean under the
/// hypergeometric is at most 1: the product is a supermartingale and Ville's bound holds.
///
/// *Strata* ([`ComparisonTest::observe_strata`]): while a new weight propagates, proxies apply
/// different weights, so the canary's share differs from proxy to proxy. Pooling their counts
/// uses one ρ for all of them, and if their event rates differ too (one proxy's clients or zone
/// fail more, and that proxy still sends 10% to the canary while the others send 50%), an event
/// no longer falls on the canary with the pooled share under "no difference": the pooled test can
/// drift upwards with no regression at all. So each proxy is a stratum with its own ρ_i, and the
/// tick's factor is the product over strata of `θ^k_c,i / (1 + ρ_i(θ − 1))^(k_c,i + k_s,i)`.
/// Given the request counts, the strata's events are independent and each factor has mean at
/// most 1 under "the canary's rate equals the stable's *on that proxy*" (the argument above, per
/// stratum), so the product is still a supermartingale: the test now needs equal rates only
/// within a proxy, not across the fleet. It costs no power when every proxy applies the same
/// share: with ρ_i = ρ the exponents add up and the product equals the pooled factor exactly.
#[derive(Debug, Clone)]
pub struct ComparisonTest {
    name: String,
    /// ln Π L(θ_j) per grid point.
    log_l: [f64; EFFECT_GRID.len()],
    log_threshold: f64,
    canary_trials: u64,
}

impl ComparisonTest {
    /// A test that rejects at evidence `1/alpha` (pass this test's Bonferroni share).
    pub fn new(name: impl Into<String>, alpha: f64) -> ComparisonTest {
        ComparisonTest {
            name: name.into(),
            log_l: [0.0; EFFECT_GRID.len()],
            log_threshold: log_threshold(alpha),
            canary_trials: 0,
        }
    }

    /// Adds one tick's counts, pooled over the fleet (one stratum).
    pub fn observe(&mut self, canary: Count, stable: Count) {
        self.observe_stratum(canary, stable);
    }

    /// Adds one tick's counts given per stratum (per proxy), each with its own canary share.
    pub fn observe_strata(&mut self, strata: impl IntoIterator<Item = (Count, Count)>) {
        for (canary, stable) in strata {
            self.observe_stratum(canary, stable);
        }
    }

    fn observe_stratum(&mut self, canary: Count, stable: Count) {
        let (canary, stable) = (Count::new(canary.trials, canary.events), Count::new(stable.trials, stable.events));
        self.canary_trials = self.canary_trials.saturating_add(canary.trials);
        let events = canary.events.saturating_add(stable.events);
        // With one side empty, ρ is 0 or 1 and every event is "expected" where it fell: no information.
        if canary.trials == 0 || stable.trials == 0 || events == 0 {
            return;
        }
        let rho = f(canary.trials) / (f(canary.trials) + f(stable.trials));
        let (k_c, k) = (f(canary.events), f(events));
        for (log_l, theta) in self.log_l.iter_mut().zip(EFFECT_GRID) {
            *log_l += k_c * theta.ln() - k * (rho * (theta - 1.0)).ln_1p();
        }
    }

    pub fn log_evidence(&self) -> f64 {
        log_mean_exp(&self.log_l)
    }

    pub fn log_threshold(&self) -> f64 {
        self.log_threshold
    }

    pub fn rejected(&self) -> bool {
        self.log_evidence() >= self.log_threshold
    }

    pub fn evidence(&self) -> Evidence {
        Evidence::of(&self.name, self.log_evidence(), self.log_threshold, self.canary_trials)
    }
}

/// The canary alone against an SLO: is its event rate above the budget rate `p0`?
///
/// Each canary request is a Bernoulli trial; for burn rate b (alternative `p1 = b·p0`) a tick with
/// k events among n requests multiplies the statistic by `b^k · ((1 − p1)/(1 − p0))^(n − k)`.
/// Mixed over [`BURN_RATE_GRID`] (burn rates with `p1 ≥ 1` are left out). Under any true rate
/// at or below `p0` each factor has mean at most 1, so the guarantee is the same as above.
#[derive(Debug, Clone)]
pub struct SloTest {
    name: String,
    p0: f64,
    /// Per kept burn rate: (ln b, ln((1 − b·p0)/(1 − p0)), ln Π Λ).
    grid: Vec<(f64, f64, f64)>,
    log_threshold: f64,
    canary_trials: u64,
}

impl SloTest {
    /// A test of budget rate `p0` (e.g. 0.001 for a 99.9% SLO) at level `alpha`. `None` when no
    /// burn rate of the grid is a valid alternative (`p0` outside (0, 1/2)).
    pub fn new(name: impl Into<String>, p0: f64, alpha: f64) -> Option<SloTest> {
        if !(p0 > 0.0 && p0 < 1.0) {
            return None;
        }
        let grid: Vec<(f64, f64, f64)> = BURN_RATE_GRID
            .iter()
            .filter(|b| **b * p0 < 1.0)
            .map(|b| (b.ln(), (-b * p0).ln_1p() - (-p0).ln_1p(), 0.0))
            .collect();
        if grid.is_empty() {
            return None;
        }
        Some(SloTest { name: name.into(), p0, grid, log_threshold: log_threshold(alpha), canary_trials: 0 })
    }

    /// Adds one tick's canary counts.
    pub fn observe(&mut self, canary: Count) {
        let c = Count::new(canary.trials, canary.events);
        self.canary_trials = self.canary_trials.saturating_add(c.trials);
        let (k, rest) = (f(c.events), f(c.trials - c.events));
        for (ln_b, ln_pass, log_l) in &mut self.grid {
            *log_l += k * *ln_b + rest * *ln_pass;
        }
    }

    /// The budget rate under test.
    pub fn p0(&self) -> f64 {
        self.p0
    }

    pub fn log_evidence(&self) -> f64 {
        let xs: Vec<f64> = self.grid.iter().map(|g| g.2).collect();
        log_mean_exp(&xs)
    }

    pub fn log_threshold(&self) -> f64 {
        self.log_threshold
    }

    pub fn rejected(&self) -> bool {
        self.log_evidence() >= self.log_threshold
    }

    pub fn evidence(&self) -> Evidence {
        Evidence::of(&self.name, self.log_evidence(), self.log_threshold, self.canary_trials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Sim;

    /// One simulated rollout: `ticks` ticks of `per_tick` requests, the canary getting `weight`
    /// of them; returns the tick at which either test rejected, if any.
    #[allow(clippy::too_many_arguments)]
    fn rollout(
        sim: &mut Sim,
        alpha: f64,
        ticks: u32,
        per_tick: u64,
        weight: f64,
        stable_rate: f64,
        canary_rate: f64,
        slo_p0: f64,
    ) -> Option<u32> {
        let each = bonferroni(alpha, 2);
        let mut cmp = ComparisonTest::new("errors: canary vs stable", each);
        let mut slo = SloTest::new("errors: canary vs SLO", slo_p0, each).unwrap();
        for t in 0..ticks {
            let n_c = sim.binomial(per_tick, weight);
            let n_s = per_tick - n_c;
            let canary = Count::new(n_c, sim.binomial(n_c, canary_rate));
            let stable = Count::new(n_s, sim.binomial(n_s, stable_rate));
            cmp.observe(canary, stable);
            slo.observe(canary);
            if cmp.rejected() || slo.rejected() {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn the_binomial_sampler_has_the_right_mean() {
        let mut sim = Sim::new(7);
        let total: u64 = (0..2000).map(|_| sim.binomial(1000, 0.01)).sum();
        let mean = total as f64 / 2000.0;
        assert!((mean - 10.0).abs() < 0.3, "{mean}");
    }

    #[test]
    fn a_a_traffic_rarely_rolls_back() {
        // Identical versions, 0.1%–1% failures, 10%–50% weight, 1,000 req/s in 100 ms ticks for
        // 60 s; the SLO sits exactly at the true rate (the worst case the guarantee covers).
        let alpha = 0.05;
        let mut sim = Sim::new(0x5eed);
        let runs = 320;
        let mut alarms = 0;
        for i in 0..runs {
            let rate = [0.001, 0.003, 0.01][i % 3];
            let weight = [0.1, 0.25, 0.5][(i / 3) % 3];
            if rollout(&mut sim, alpha, 600, 100, weight, rate, rate, rate).is_some() {
                alarms += 1;
            }
        }
        let share = alarms as f64 / runs as f64;
        assert!(share <= alpha, "{alarms} false alarms in {runs} A/A rollouts ({share:.3} > α = {alpha})");
    }

    #[test]
    fn the_comparison_alone_holds_its_level_under_a_a() {
        let alpha = 0.05;
        let mut sim = Sim::new(42);
        let runs = 300;
        let mut alarms = 0;
        for _ in 0..runs {
            let mut cmp = ComparisonTest::new("c", alpha);
            for _ in 0..400 {
                let n_c = sim.binomial(100, 0.2);
                let canary = Count::new(n_c, sim.binomial(n_c, 0.02));
                let stable = Count::new(100 - n_c, sim.binomial(100 - n_c, 0.02));
                cmp.observe(canary, stable);
                if cmp.rejected() {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(alarms as f64 / runs as f64 <= alpha, "{alarms} false alarms in {runs}");
    }

    #[test]
    fn a_ten_times_error_regression_is_detected_within_seconds() {
        // 1,000 req/s, canary at 10% with 5% failures against 0.5% on stable, SLO 99.5%.
        let mut sim = Sim::new(99);
        let mut ticks = Vec::new();
        for _ in 0..50 {
            ticks.push(rollout(&mut sim, 0.01, 300, 100, 0.1, 0.005, 0.05, 0.005));
        }
        assert!(ticks.iter().all(Option::is_some), "every run detects within 30 s: {ticks:?}");
        let mut t: Vec<u32> = ticks.into_iter().flatten().collect();
        t.sort_unstable();
        assert!(t[t.len() / 2] <= 50, "median detection within 5 s (50 ticks): {t:?}");
    }

    #[test]
    fn the_comparison_alone_detects_a_ten_times_regression() {
        let mut sim = Sim::new(3);
        let mut detected = 0;
        for _ in 0..50 {
            let mut cmp = ComparisonTest::new("c", 0.01);
            for _ in 0..300 {
                let n_c = sim.binomial(100, 0.1);
                cmp.observe(
                    Count::new(n_c, sim.binomial(n_c, 0.05)),
                    Count::new(100 - n_c, sim.binomial(100 - n_c, 0.005)),
                );
                if cmp.rejected() {
                    detected += 1;
                    break;
                }
            }
        }
        assert!(detected >= 48, "{detected}/50");
    }

    #[test]
    fn the_weight_typo_is_caught_by_the_slo_test_within_a_few_ticks() {
        // 99% on a canary failing 10% of requests; SLO 99.9%. The comparison sees almost nothing:
        // nearly every failure is "expected" on the canary at ρ = 0.99.
        let mut sim = Sim::new(1234);
        for _ in 0..20 {
            let each = bonferroni(0.01, 2);
            let mut slo = SloTest::new("slo", 0.001, each).unwrap();
            let mut cmp = ComparisonTest::new("cmp", each);
            let mut caught = None;
            for t in 0..5 {
                let n_c = sim.binomial(100, 0.99);
                let canary = Count::new(n_c, sim.binomial(n_c, 0.10));
                cmp.observe(canary, Count::new(100 - n_c, sim.binomial(100 - n_c, 0.001)));
                slo.observe(canary);
                if slo.rejected() {
                    caught = Some(t);
                    break;
                }
            }
            assert!(caught.is_some_and(|t| t <= 2), "caught at {caught:?}");
            assert!(!cmp.rejected(), "the comparison alone is slow here");
        }
    }

    /// Two proxies in one tick while a new weight propagates: one still sends 10% to the canary,
    /// the other already 50%; the first proxy's clients fail `rate_a`, the second's `rate_b`, and
    /// on each proxy both versions fail alike (no regression). Returns whether the test rejected.
    fn propagating(sim: &mut Sim, strata: bool, rate_a: f64, rate_b: f64) -> bool {
        let mut cmp = ComparisonTest::new("c", 0.01);
        for _ in 0..300 {
            let mut ticks = Vec::new();
            for (weight, rate) in [(0.1, rate_a), (0.5, rate_b)] {
                let n_c = sim.binomial(200, weight);
                ticks.push((
                    Count::new(n_c, sim.binomial(n_c, rate)),
                    Count::new(200 - n_c, sim.binomial(200 - n_c, rate)),
                ));
            }
            if strata {
                cmp.observe_strata(ticks);
            } else {
                let sum = |f: fn(&(Count, Count)) -> Count| {
                    ticks
                        .iter()
                        .map(f)
                        .fold(Count::default(), |a, c| Count::new(a.trials + c.trials, a.events + c.events))
                };
                cmp.observe(sum(|t| t.0), sum(|t| t.1));
            }
            if cmp.rejected() {
                return true;
            }
        }
        false
    }

    #[test]
    fn per_proxy_strata_hold_the_level_where_pooling_proxies_at_different_weights_does_not() {
        // The proxy at 50% serves the clients that fail 5%; the one at 10% those that fail 0.1%.
        // Pooled, the canary's share of failures is far above its pooled share of requests.
        let mut sim = Sim::new(0x5717);
        let runs = 100;
        let pooled = (0..runs).filter(|_| propagating(&mut sim, false, 0.001, 0.05)).count();
        let strata = (0..runs).filter(|_| propagating(&mut sim, true, 0.001, 0.05)).count();
        assert!(pooled >= 50, "pooling rejects an A/A canary: {pooled} of {runs}");
        assert!(strata <= 3, "per proxy it holds α = 0.01: {strata} of {runs}");
    }

    #[test]
    fn strata_at_the_same_share_give_exactly_the_pooled_evidence() {
        let (mut a, mut b) = (ComparisonTest::new("a", 0.01), ComparisonTest::new("b", 0.01));
        a.observe_strata([(Count::new(100, 7), Count::new(400, 3)), (Count::new(50, 2), Count::new(200, 1))]);
        b.observe(Count::new(150, 9), Count::new(600, 4));
        assert!((a.log_evidence() - b.log_evidence()).abs() < 1e-9, "{} {}", a.log_evidence(), b.log_evidence());
    }

    #[test]
    fn a_regression_is_still_found_per_proxy() {
        let mut sim = Sim::new(11);
        let mut found = 0;
        for _ in 0..50 {
            let mut cmp = ComparisonTest::new("c", 0.01);
            for _ in 0..300 {
                let strata: Vec<(Count, Count)> = [0.1, 0.5]
                    .iter()
                    .map(|w| {
                        let n_c = sim.binomial(100, *w);
                        (
                            Count::new(n_c, sim.binomial(n_c, 0.05)),
                            Count::new(100 - n_c, sim.binomial(100 - n_c, 0.005)),
                        )
                    })
                    .collect();
                cmp.observe_strata(strata);
                if cmp.rejected() {
                    found += 1;
                    break;
                }
            }
        }
        assert!(found >= 48, "{found}/50");
    }

    #[test]
    fn no_traffic_and_one_sided_traffic_carry_no_evidence() {
        let mut cmp = ComparisonTest::new("c", 0.01);
        cmp.observe(Count::new(0, 0), Count::new(100, 50));
        cmp.observe(Count::new(100, 50), Count::new(0, 0));
        cmp.observe(Count::new(100, 0), Count::new(100, 0));
        assert_eq!(cmp.log_evidence(), 0.0);
        let mut slo = SloTest::new("s", 0.01, 0.01).unwrap();
        slo.observe(Count::new(0, 0));
        assert_eq!(slo.log_evidence(), 0.0);
    }

    #[test]
    fn a_better_canary_lowers_the_evidence() {
        let mut cmp = ComparisonTest::new("c", 0.01);
        cmp.observe(Count::new(500, 0), Count::new(500, 20));
        assert!(cmp.log_evidence() < 0.0);
        let mut slo = SloTest::new("s", 0.01, 0.01).unwrap();
        slo.observe(Count::new(10_000, 0));
        assert!(slo.log_evidence() < 0.0);
    }

    #[test]
    fn huge_counts_stay_finite() {
        let mut cmp = ComparisonTest::new("c", 0.01);
        cmp.observe(Count::new(u64::MAX, u64::MAX), Count::new(u64::MAX, 0));
        assert!(cmp.log_evidence().is_finite() && cmp.rejected());
        let mut slo = SloTest::new("s", 0.001, 0.01).unwrap();
        slo.observe(Count::new(u64::MAX, u64::MAX / 2));
        assert!(slo.log_evidence().is_finite() && slo.rejected());
    }

    #[test]
    fn burn_rates_that_exceed_certainty_are_left_out() {
        assert_eq!(SloTest::new("s", 0.01, 0.01).unwrap().grid.len(), 4);
        assert_eq!(SloTest::new("s", 0.1, 0.01).unwrap().grid.len(), 2, "14.4 × 10% and 50 × 10% are not rates");
        assert!(SloTest::new("s", 0.5, 0.01).is_none());
        assert!(SloTest::new("s", 0.0, 0.01).is_none());
    }

    #[test]
    fn thresholds_follow_alpha_and_bonferroni() {
        assert!((log_threshold(0.01) - 100f64.ln()).abs() < 1e-12);
        assert!((bonferroni(0.01, 4) - 0.0025).abs() < 1e-15);
        assert!(log_threshold(0.0).is_finite() && log_threshold(f64::NAN).is_finite());
    }

    proptest::proptest! {
        #[test]
        fn evidence_is_always_a_number(ticks in proptest::collection::vec((0u64..10_000, 0u64..10_000, 0u64..10_000, 0u64..10_000), 0..20)) {
            let mut cmp = ComparisonTest::new("c", 0.01);
            let mut slo = SloTest::new("s", 0.001, 0.01).unwrap();
            for (nc, kc, ns, ks) in ticks {
                cmp.observe(Count::new(nc, kc), Count::new(ns, ks));
                slo.observe(Count::new(nc, kc));
            }
            proptest::prop_assert!(!cmp.log_evidence().is_nan());
            proptest::prop_assert!(!slo.log_evidence().is_nan());
        }
    }
}
