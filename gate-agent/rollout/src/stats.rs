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
//! # Sticky routing: the unit of analysis is the key's cluster
//!
//! Both tests treat requests as exchangeable: under "no difference" each request's outcome is
//! independent of the subset that served it. Sticky routing breaks that. The subset is assigned
//! per *key* (a user header, a cookie), so one key whose requests always fail (a deterministic
//! 500 caused by its own input) puts every one of its failures on one side. At 10 req/s, hashed
//! to a 10% canary, each such failure multiplies the θ = 10 likelihood ratio by `10 / 1.9`: about
//! ln 4 per second against a threshold of about ln 400, so a healthy canary was rolled back within
//! seconds (`make bench`, "A/A with one bad client": 200 of 200 at every rate). Any client can do
//! that on purpose.
//!
//! So the filter also counts keyed requests and failures in B = [`STICKY_CLUSTERS`] clusters of
//! the key's hash (`canary_core::sticky`: the hash's low bits, independent of the high bits that
//! pick the subset, so every cluster holds canary and stable keys alike), and each cluster's
//! evidence is capped:
//!
//! * Per grid point θ (or burn rate b) and per cluster j, `Λ_j(t)` is the product of that
//!   cluster's per-tick, per-proxy likelihood ratios (the same factors as below, stratum by
//!   stratum), and `τ_j` the first time `ln Λ_j ≥ c`. The cluster contributes
//!   `Y_j(t) = min(Λ_j(t ∧ τ_j), e^c)`: it is **frozen** at exactly `e^c` once it gets there.
//! * Requests without a key (placed by a random draw per request) are exchangeable per request
//!   and form one more, uncapped, factor `U(t)` per proxy stratum, as before.
//! * The evidence for θ is `U(t) · Π_j Y_j(t)`, mixed over the grid as before, and compared to
//!   `1/α`.
//!
//! *Validity under the exchangeable null.* `Λ_j(t ∧ τ_j)` is a supermartingale (a stopped
//! one), and `x ↦ min(x, e^c)` is concave and non-decreasing, so by Jensen `Y_j` is one too. Given
//! the tick's request counts and the events of each (proxy, cluster) stratum, the strata's canary
//! events are independent hypergeometrics, so the tick's factors of different clusters are
//! conditionally independent and the product `U · Π_j Y_j` still has conditional mean at most its
//! last value: a nonnegative supermartingale starting at 1. The mixture over θ with fixed weights
//! is one too, and Ville's inequality gives `P(ever ≥ 1/α) ≤ α` as before.
//!
//! *What one key can do.* A cluster contributes at most `c` to the log for every θ, whatever its
//! keys do. If the null fails only inside m clusters (their canary keys fail more than their
//! stable keys for reasons of their own), the product over the other clusters and `U` is still
//! the supermartingale above, so `P(reject) ≤ P(it ever reaches e^{T − m·c}) ≤ α·e^{m·c}`,
//! T = ln(1/α); and with nothing else against the canary one cluster never reaches T. With
//! `c = min(ln 4, T/4)` ([`cluster_cap`]): one bad key at most multiplies this test's share of α
//! by 4 (with α split four ways, to the whole spec's α), and at least `⌈T/c⌉` clusters (5 at the
//! shipped α = 1% split four ways, T = ln 400) must show harm before the test can reject; with
//! the grid's mixture, which costs up to ln 6, 6 of them in practice.
//!
//! *What it costs.* For a canary that is bad for everyone every cluster gains evidence at about
//! 1/B of the pooled rate, and while no cluster is at its cap the capped product equals the
//! uncapped per-stratum product. Rejection needs about `T + ln 6 ≈ 7.8` in total, about 0.5 per
//! cluster, below c = 1.39: so with many events the cap rarely binds before rejection and costs
//! little. With sparse events it binds: at ρ = 0.1 one canary failure is worth
//! `ln θ − ln(1 + ρ(θ − 1))`, 1.66 for θ = 10 and 2.04 for θ = 30, more than c, so the large-θ
//! alternatives need canary failures in at least 6 different clusters instead of a few failures
//! anywhere. Measured (`make bench`'s decisions part, 60 trials a row, promotion gate on, every
//! request keyed): a canary failing 10× as often for everyone was rolled back in a median of 9 s
//! instead of 7 s at 100 canary req/s, 110 s instead of 50 s at 10, and 1066 s against 1116 s at 1,
//! where strata are pooled (`ComparisonTest::observe_cluster`); the unit test below finds 9 s
//! against 7 s at 100 req/s too.
//!
//! *Pooled strata.* A (proxy, cluster) stratum of one tick with no canary or no stable requests
//! carries no information, and at low rates most of them are like that; they are pooled with the
//! cluster's next strata until both sides have requests. The pooling depends on request counts
//! only, so the pool is one more stratum for the argument above.
//!
//! *What it does not do.* It caps keys, not the population: an attacker who holds keys in ⌈T/c⌉
//! clusters of the canary's share (keys are cheap, and the default salt, the rollout and canary
//! names, is guessable; a secret `sticky_salt` hides which keys land on the canary) can still
//! force a rollback, as can a canary whose users happen to differ from the stable's in many
//! clusters. Latency is not clustered (the filter keeps no per-cluster histogram), so the latency
//! comparison still reads one persistently slow key as a slower canary.
//!
//! *Without a sticky key* the snapshot has no clusters, every request is in `U`, and the tests
//! are exactly as before.
//!
//! These tests find evidence *against* the canary. Evidence *for* it, which gates promotion, is
//! [`crate::noninferiority`].

use canary_core::sticky::{Cluster, STICKY_CLUSTERS};
use serde::{Deserialize, Serialize};

/// Alternatives for the comparison: the canary's event rate is θ times the stable's.
pub const EFFECT_GRID: [f64; 6] = [1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Alternatives for the SLO test: the canary burns the error budget this many times too fast
/// (14.4 is the SRE workbook's page-now burn rate).
pub const BURN_RATE_GRID: [f64; 4] = [2.0, 6.0, 14.4, 50.0];

/// Events among trials in one tick (failures among requests, slow requests among requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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

/// The cap `c` on one sticky cluster's log evidence for a test with threshold `log_threshold`:
/// ln 4, or a quarter of the threshold when that is less (see the module docs).
pub fn cluster_cap(log_threshold: f64) -> f64 {
    (2.0 * std::f64::consts::LN_2).min(log_threshold / 4.0)
}

/// Adds `delta` to one cluster's log evidence unless it is frozen, freezing it at the cap
/// exactly once it gets there (`min(Λ(t ∧ τ), e^c)`, module docs).
fn add_capped(log_y: &mut f64, delta: f64, cap: f64) {
    if *log_y >= cap {
        return;
    }
    *log_y = (*log_y + delta).min(cap);
}

/// One stratum's ln L(θ) per grid point; `None` when it carries no information.
fn stratum_deltas(canary: Count, stable: Count) -> Option<[f64; EFFECT_GRID.len()]> {
    let events = canary.events.saturating_add(stable.events);
    // With one side empty, ρ is 0 or 1 and every event is "expected" where it fell: no information.
    if canary.trials == 0 || stable.trials == 0 || events == 0 {
        return None;
    }
    let rho = f(canary.trials) / (f(canary.trials) + f(stable.trials));
    let (k_c, k) = (f(canary.events), f(events));
    Some(EFFECT_GRID.map(|theta| k_c * theta.ln() - k * (rho * (theta - 1.0)).ln_1p()))
}

/// One grid point's evidence: the uncapped part plus every cluster's capped part.
fn with_clusters(log_l: f64, clusters: &[f64; STICKY_CLUSTERS]) -> f64 {
    log_l + clusters.iter().sum::<f64>()
}

/// The index of the largest value (the first of equals); 0 when empty.
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, x)| if x > best.1 { (i, x) } else { best }).0
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
///
/// *Sticky clusters* ([`ComparisonTest::observe_cluster`]): keyed requests are fed per cluster
/// of the key's hash, and each cluster's evidence is capped and frozen at [`cluster_cap`] (the
/// module docs derive it). Unkeyed requests go through [`ComparisonTest::observe_strata`] as before.
#[derive(Debug, Clone)]
pub struct ComparisonTest {
    name: String,
    /// ln Π L(θ_j) per grid point, over unkeyed requests (or all, without sticky clusters).
    log_l: [f64; EFFECT_GRID.len()],
    /// Per grid point, per sticky cluster: ln of the cluster's capped, frozen likelihood ratio.
    clusters: [[f64; STICKY_CLUSTERS]; EFFECT_GRID.len()],
    /// Per sticky cluster, keyed counts from strata that lacked canary or stable requests,
    /// pooled until both sides have some (see [`ComparisonTest::observe_cluster`]).
    pending: [(Count, Count); STICKY_CLUSTERS],
    cap: f64,
    log_threshold: f64,
    canary_trials: u64,
}

impl ComparisonTest {
    /// A test that rejects at evidence `1/alpha` (pass this test's Bonferroni share).
    pub fn new(name: impl Into<String>, alpha: f64) -> ComparisonTest {
        let log_threshold = log_threshold(alpha);
        ComparisonTest {
            name: name.into(),
            log_l: [0.0; EFFECT_GRID.len()],
            clusters: [[0.0; STICKY_CLUSTERS]; EFFECT_GRID.len()],
            pending: [(Count::default(), Count::default()); STICKY_CLUSTERS],
            cap: cluster_cap(log_threshold),
            log_threshold,
            canary_trials: 0,
        }
    }

    /// Adds one proxy's counts of keyed requests in one sticky cluster for one tick. The
    /// cluster's evidence stops at the cap: one key can move this test by at most that much.
    ///
    /// A cluster holds 1/16 of the keys, so at low rates a proxy's tick of one cluster often has
    /// canary requests and no stable ones or the reverse: on its own a stratum like that says
    /// nothing (ρ is 0 or 1), and at 1 canary req/s most canary failures fell in one. Such a
    /// stratum is pooled with the cluster's next ones (over proxies and ticks) until both sides
    /// have requests, and the pool is then one stratum. Which counts are pooled depends on request
    /// counts only, never on events, so under "no difference" the pool's canary events are still
    /// hypergeometric given its counts and the argument above holds; the price is that a pool
    /// mixes proxies (and ticks) with their shares, which the per-proxy strata avoid, and only
    /// at rates too low for that to move the evidence quickly (each cluster is capped anyway).
    pub fn observe_cluster(&mut self, cluster: Cluster, canary: Count, stable: Count) {
        let (canary, stable) = (Count::new(canary.trials, canary.events), Count::new(stable.trials, stable.events));
        self.canary_trials = self.canary_trials.saturating_add(canary.trials);
        let (canary, stable) = if canary.trials > 0 && stable.trials > 0 {
            (canary, stable)
        } else {
            let Some(pool) = self.pending.get_mut(cluster.index()) else { return };
            pool.0 =
                Count::new(pool.0.trials.saturating_add(canary.trials), pool.0.events.saturating_add(canary.events));
            pool.1 =
                Count::new(pool.1.trials.saturating_add(stable.trials), pool.1.events.saturating_add(stable.events));
            if pool.0.trials == 0 || pool.1.trials == 0 {
                return;
            }
            std::mem::take(pool)
        };
        let Some(deltas) = stratum_deltas(canary, stable) else { return };
        for (row, delta) in self.clusters.iter_mut().zip(deltas) {
            if let Some(log_y) = row.get_mut(cluster.index()) {
                add_capped(log_y, delta, self.cap);
            }
        }
    }

    /// The cap on one cluster's log evidence.
    pub fn cluster_cap(&self) -> f64 {
        self.cap
    }

    /// Sticky clusters at their cap, for the grid point with the most evidence.
    pub fn clusters_at_cap(&self) -> usize {
        let best = argmax(self.log_l.iter().zip(&self.clusters).map(|(l, c)| with_clusters(*l, c)));
        self.clusters.get(best).map_or(0, |row| row.iter().filter(|v| **v >= self.cap).count())
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
        let Some(deltas) = stratum_deltas(canary, stable) else { return };
        for (log_l, delta) in self.log_l.iter_mut().zip(deltas) {
            *log_l += delta;
        }
    }

    pub fn log_evidence(&self) -> f64 {
        let xs: Vec<f64> = self.log_l.iter().zip(&self.clusters).map(|(l, c)| with_clusters(*l, c)).collect();
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

/// What a [`ComparisonTest`] has accumulated, for a checkpoint ([`crate::checkpoint`]): the
/// per-grid-point products, the capped clusters, the pooled strata and the trials. The name, α,
/// threshold and cap are not in it: they come from the spec the test is resumed under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonState {
    pub log_l: [f64; EFFECT_GRID.len()],
    pub clusters: [[f64; STICKY_CLUSTERS]; EFFECT_GRID.len()],
    pub pending: [(Count, Count); STICKY_CLUSTERS],
    pub canary_trials: u64,
}

/// Why a saved test state cannot be resumed: it is not one this test could have reached.
fn check_logs<'a>(what: &str, values: impl IntoIterator<Item = &'a f64>, cap: Option<f64>) -> Result<(), String> {
    for v in values {
        if !v.is_finite() {
            return Err(format!("{what}: {v} is not a finite number"));
        }
        // A frozen cluster sits at exactly the cap; nothing this test computes goes above it.
        if let Some(cap) = cap
            && *v > cap + 1e-9
        {
            return Err(format!("{what}: {v} is above the cluster cap {cap}"));
        }
    }
    Ok(())
}

fn check_count(what: &str, c: &Count) -> Result<(), String> {
    if c.events > c.trials {
        return Err(format!("{what}: {} events among {} trials", c.events, c.trials));
    }
    Ok(())
}

impl ComparisonTest {
    /// The same test with nothing observed.
    pub fn fresh(&self) -> ComparisonTest {
        ComparisonTest {
            log_l: [0.0; EFFECT_GRID.len()],
            clusters: [[0.0; STICKY_CLUSTERS]; EFFECT_GRID.len()],
            pending: [(Count::default(), Count::default()); STICKY_CLUSTERS],
            canary_trials: 0,
            ..self.clone()
        }
    }

    /// Its accumulated state.
    pub fn state(&self) -> ComparisonState {
        ComparisonState {
            log_l: self.log_l,
            clusters: self.clusters,
            pending: self.pending,
            canary_trials: self.canary_trials,
        }
    }

    /// Continues from `state` (see [`crate::checkpoint`] for why that is sound). Refuses a state
    /// this test could not have reached: a value that is not a number, a cluster above this
    /// test's cap (another α), more events than trials.
    pub fn resume(&mut self, state: &ComparisonState) -> Result<(), String> {
        check_logs(&format!("{}: log_l", self.name), &state.log_l, None)?;
        check_logs(&format!("{}: clusters", self.name), state.clusters.iter().flatten(), Some(self.cap))?;
        for (c, s) in &state.pending {
            check_count(&format!("{}: pending", self.name), c)?;
            check_count(&format!("{}: pending", self.name), s)?;
        }
        self.log_l = state.log_l;
        self.clusters = state.clusters;
        self.pending = state.pending;
        self.canary_trials = state.canary_trials;
        Ok(())
    }
}

/// What an [`SloTest`] has accumulated, for a checkpoint: per kept burn rate, ln Π Λ of the
/// unkeyed requests and the capped clusters, and the trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloState {
    pub log_l: Vec<f64>,
    pub clusters: Vec<[f64; STICKY_CLUSTERS]>,
    pub canary_trials: u64,
}

/// The canary alone against an SLO: is its event rate above the budget rate `p0`?
///
/// Each canary request is a Bernoulli trial; for burn rate b (alternative `p1 = b·p0`) a tick with
/// k events among n requests multiplies the statistic by `b^k · ((1 − p1)/(1 − p0))^(n − k)`.
/// Mixed over [`BURN_RATE_GRID`] (burn rates with `p1 ≥ 1` are left out). Under any true rate
/// at or below `p0` each factor has mean at most 1, so the guarantee is the same as above.
///
/// Keyed canary requests are fed per sticky cluster ([`SloTest::observe_cluster`]) and capped
/// as in the comparison (module docs): one key that always fails cannot by itself make the
/// canary look like it burns the budget.
#[derive(Debug, Clone)]
pub struct SloTest {
    name: String,
    p0: f64,
    /// Per kept burn rate: (ln b, ln((1 − b·p0)/(1 − p0)), ln Π Λ).
    grid: Vec<(f64, f64, f64)>,
    /// Per kept burn rate, per sticky cluster: ln of the cluster's capped, frozen ratio.
    clusters: Vec<[f64; STICKY_CLUSTERS]>,
    cap: f64,
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
        let log_threshold = log_threshold(alpha);
        Some(SloTest {
            name: name.into(),
            p0,
            clusters: vec![[0.0; STICKY_CLUSTERS]; grid.len()],
            grid,
            cap: cluster_cap(log_threshold),
            log_threshold,
            canary_trials: 0,
        })
    }

    /// Adds one tick's canary counts (unkeyed, or all without sticky clusters).
    pub fn observe(&mut self, canary: Count) {
        let c = Count::new(canary.trials, canary.events);
        self.canary_trials = self.canary_trials.saturating_add(c.trials);
        let (k, rest) = (f(c.events), f(c.trials - c.events));
        for (ln_b, ln_pass, log_l) in &mut self.grid {
            *log_l += k * *ln_b + rest * *ln_pass;
        }
    }

    /// Adds one tick's keyed canary counts of one sticky cluster, capped per cluster.
    pub fn observe_cluster(&mut self, cluster: Cluster, canary: Count) {
        let c = Count::new(canary.trials, canary.events);
        self.canary_trials = self.canary_trials.saturating_add(c.trials);
        let (k, rest) = (f(c.events), f(c.trials - c.events));
        for ((ln_b, ln_pass, _), row) in self.grid.iter().zip(&mut self.clusters) {
            if let Some(log_y) = row.get_mut(cluster.index()) {
                add_capped(log_y, k * *ln_b + rest * *ln_pass, self.cap);
            }
        }
    }

    /// Sticky clusters at their cap, for the burn rate with the most evidence.
    pub fn clusters_at_cap(&self) -> usize {
        let best = argmax(self.grid.iter().zip(&self.clusters).map(|(g, c)| with_clusters(g.2, c)));
        self.clusters.get(best).map_or(0, |row| row.iter().filter(|v| **v >= self.cap).count())
    }

    /// The budget rate under test.
    pub fn p0(&self) -> f64 {
        self.p0
    }

    pub fn log_evidence(&self) -> f64 {
        let xs: Vec<f64> = self.grid.iter().zip(&self.clusters).map(|(g, c)| with_clusters(g.2, c)).collect();
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

impl SloTest {
    /// The same test with nothing observed.
    pub fn fresh(&self) -> SloTest {
        SloTest {
            grid: self.grid.iter().map(|(b, pass, _)| (*b, *pass, 0.0)).collect(),
            clusters: vec![[0.0; STICKY_CLUSTERS]; self.grid.len()],
            canary_trials: 0,
            ..self.clone()
        }
    }

    /// Its accumulated state.
    pub fn state(&self) -> SloState {
        SloState {
            log_l: self.grid.iter().map(|g| g.2).collect(),
            clusters: self.clusters.clone(),
            canary_trials: self.canary_trials,
        }
    }

    /// Continues from `state`, as [`ComparisonTest::resume`]; also refuses a state for another
    /// number of burn rates (another budget).
    pub fn resume(&mut self, state: &SloState) -> Result<(), String> {
        if state.log_l.len() != self.grid.len() || state.clusters.len() != self.grid.len() {
            return Err(format!(
                "{}: {} burn rates and {} cluster rows saved, the test has {}",
                self.name,
                state.log_l.len(),
                state.clusters.len(),
                self.grid.len()
            ));
        }
        check_logs(&format!("{}: log_l", self.name), &state.log_l, None)?;
        check_logs(&format!("{}: clusters", self.name), state.clusters.iter().flatten(), Some(self.cap))?;
        for (g, v) in self.grid.iter_mut().zip(&state.log_l) {
            g.2 = *v;
        }
        self.clusters.clone_from(&state.clusters);
        self.canary_trials = state.canary_trials;
        Ok(())
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

    // ---- Sticky clusters ----------------------------------------------------------------

    fn cluster(j: usize) -> Cluster {
        Cluster::new(j).unwrap()
    }

    /// One tick of keyed traffic: `per_tick` requests from many keys, spread evenly over the
    /// clusters (each key's cluster is a hash), each request on the canary with `weight`.
    fn keyed_tick(
        sim: &mut Sim,
        per_tick: u64,
        weight: f64,
        canary_rate: f64,
        stable_rate: f64,
    ) -> Vec<(Count, Count)> {
        let per_cluster = per_tick / STICKY_CLUSTERS as u64;
        (0..STICKY_CLUSTERS)
            .map(|_| {
                let n_c = sim.binomial(per_cluster, weight);
                let n_s = per_cluster - n_c;
                (Count::new(n_c, sim.binomial(n_c, canary_rate)), Count::new(n_s, sim.binomial(n_s, stable_rate)))
            })
            .collect()
    }

    /// Feeds a tick to both tests, cluster by cluster; `bad` adds a key in cluster 3 on the
    /// canary whose `bad` requests a tick all fail.
    fn feed(cmp: &mut ComparisonTest, slo: &mut SloTest, tick: &[(Count, Count)], bad: u64) {
        for (j, (c, st)) in tick.iter().enumerate() {
            let c = if j == 3 { Count::new(c.trials + bad, c.events + bad) } else { *c };
            cmp.observe_cluster(cluster(j), c, *st);
            slo.observe_cluster(cluster(j), c);
        }
    }

    #[test]
    fn a_cluster_freezes_at_exactly_the_cap_and_stays_there() {
        let mut cmp = ComparisonTest::new("c", bonferroni(0.01, 4));
        assert!((cmp.cluster_cap() - 4f64.ln()).abs() < 1e-12, "ln 4 at T = ln 400");
        cmp.observe_cluster(cluster(5), Count::new(100, 100), Count::new(900, 0));
        assert_eq!(cmp.clusters_at_cap(), 1);
        let frozen = cmp.log_evidence();
        assert!((frozen - cmp.cluster_cap()).abs() < 1e-9, "{frozen}");
        // Stable failures later in the same cluster no longer move it (a stopped process).
        cmp.observe_cluster(cluster(5), Count::new(100, 0), Count::new(900, 500));
        assert_eq!(cmp.log_evidence(), frozen);
        // Another cluster's evidence still counts, in both directions.
        cmp.observe_cluster(cluster(6), Count::new(100, 0), Count::new(900, 30));
        assert!(cmp.log_evidence() < frozen);
        assert!(cluster_cap(2.0) < 4f64.ln() && (cluster_cap(2.0) - 0.5).abs() < 1e-12, "a quarter of a low threshold");
    }

    #[test]
    fn one_key_that_always_fails_at_ten_per_second_cannot_roll_back_a_healthy_canary() {
        // 100 canary requests a second at 10% (1,000 in all, from many keys), both versions
        // failing 0.1%, and one key pinned to the canary sending 10 req/s that all fail, for an
        // hour. Pooled over requests, both tests reject within seconds; per cluster, never.
        let each = bonferroni(0.01, 4);
        let mut sim = Sim::new(0xbad);
        for run in 0..10 {
            let mut cmp = ComparisonTest::new("c", each);
            let mut slo = SloTest::new("s", 0.01, each).unwrap();
            let (mut pooled_cmp, mut pooled_slo) =
                (ComparisonTest::new("p", each), SloTest::new("ps", 0.01, each).unwrap());
            let mut pooled_at = None;
            for t in 0..3_600 {
                let tick = keyed_tick(&mut sim, 1_000, 0.1, 0.001, 0.001);
                feed(&mut cmp, &mut slo, &tick, 10);
                assert!(
                    !cmp.rejected() && !slo.rejected(),
                    "run {run}: rejected at {t} s: {:?} {:?}",
                    cmp.evidence(),
                    slo.evidence()
                );
                let sum = |f: fn(&(Count, Count)) -> Count| {
                    tick.iter()
                        .map(f)
                        .fold(Count::default(), |a, c| Count::new(a.trials + c.trials, a.events + c.events))
                };
                let (c, st) = (sum(|x| x.0), sum(|x| x.1));
                let c = Count::new(c.trials + 10, c.events + 10);
                pooled_cmp.observe(c, st);
                pooled_slo.observe(c);
                if pooled_at.is_none() && (pooled_cmp.rejected() || pooled_slo.rejected()) {
                    pooled_at = Some(t);
                }
            }
            assert!(
                pooled_at.is_some_and(|t| t <= 5),
                "run {run}: pooled over requests it rolls back at once: {pooled_at:?}"
            );
            assert!(cmp.log_evidence() <= cmp.cluster_cap() + 1e-9, "{:?}", cmp.evidence());
        }
    }

    #[test]
    fn the_clustered_tests_hold_their_level_under_the_exchangeable_null() {
        // A/A with keyed traffic over three proxies, 0.1%–2% failures, weights 10%–50%, the SLO
        // exactly at the true rate; 10 minutes at 1,000 req/s per proxy, read every second.
        let alpha = 0.05;
        let mut sim = Sim::new(0xc105);
        let runs = 300;
        let mut alarms = 0;
        for i in 0..runs {
            let rate = [0.001, 0.005, 0.02][i % 3];
            let weight = [0.1, 0.25, 0.5][(i / 3) % 3];
            let each = bonferroni(alpha, 2);
            let mut cmp = ComparisonTest::new("c", each);
            let mut slo = SloTest::new("s", rate, each).unwrap();
            'run: for _ in 0..600 {
                for _proxy in 0..3 {
                    let tick = keyed_tick(&mut sim, 320, weight, rate, rate);
                    feed(&mut cmp, &mut slo, &tick, 0);
                    // Some requests on each proxy have no key.
                    let n_c = sim.binomial(40, weight);
                    let (c, st) =
                        (Count::new(n_c, sim.binomial(n_c, rate)), Count::new(40 - n_c, sim.binomial(40 - n_c, rate)));
                    cmp.observe_strata([(c, st)]);
                    slo.observe(c);
                }
                if cmp.rejected() || slo.rejected() {
                    alarms += 1;
                    break 'run;
                }
            }
        }
        eprintln!("clustered A/A: {alarms} false alarms in {runs} rollouts at α = {alpha}");
        // P(Bin(300, 0.05) ≥ 25) < 0.01: more would mean the level is not held.
        assert!(alarms <= 24, "{alarms} false alarms in {runs} A/A rollouts at α = {alpha}");
    }

    /// Seconds until the comparison alone rejects a canary failing `factor` × the stable's 0.1%,
    /// 10% weight, `per_s` requests a second from many keys; clustered, or pooled as before.
    fn detection_s(sim: &mut Sim, per_s: u64, factor: f64, clustered: bool) -> Option<u32> {
        let mut cmp = ComparisonTest::new("c", bonferroni(0.01, 4));
        for t in 0..3_600 {
            let tick = keyed_tick(sim, per_s, 0.1, 0.001 * factor, 0.001);
            if clustered {
                for (j, (c, st)) in tick.iter().enumerate() {
                    cmp.observe_cluster(cluster(j), *c, *st);
                }
            } else {
                cmp.observe_strata(tick);
            }
            if cmp.rejected() {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn a_canary_bad_for_everyone_is_still_rolled_back_somewhat_later() {
        // 10× errors at 100 canary req/s (1,000 in all): the pooled test's median is about 7 s.
        let mut sim = Sim::new(0x10);
        let (mut pooled, mut clustered) = (Vec::new(), Vec::new());
        for _ in 0..60 {
            pooled.push(detection_s(&mut sim, 1_008, 10.0, false));
            clustered.push(detection_s(&mut sim, 1_008, 10.0, true));
        }
        assert!(clustered.iter().all(Option::is_some), "every run is rolled back within the hour: {clustered:?}");
        let median = |v: &[Option<u32>]| {
            let mut v: Vec<u32> = v.iter().flatten().copied().collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let (p, c) = (median(&pooled), median(&clustered));
        eprintln!("10x errors at 100 canary req/s: median detection {p} s pooled, {c} s clustered");
        assert!(c >= p, "the cap can only slow detection: {c} < {p}");
        assert!(c <= 3 * p.max(1), "clustered {c} s against pooled {p} s");
    }

    #[test]
    fn a_cluster_stratum_with_one_side_empty_is_pooled_until_both_sides_have_requests() {
        // At low rates one proxy's tick of one cluster has a canary failure and no stable request;
        // alone it says nothing, pooled with the cluster's next stable requests it does.
        let mut cmp = ComparisonTest::new("c", 0.01);
        cmp.observe_cluster(cluster(2), Count::new(1, 1), Count::new(0, 0));
        assert_eq!(cmp.log_evidence(), 0.0, "nothing yet");
        cmp.observe_cluster(cluster(2), Count::new(0, 0), Count::new(5, 0));
        cmp.observe_cluster(cluster(2), Count::new(0, 0), Count::new(4, 0));
        // The pool closed at the first stable requests: canary 1 of 1 failed, stable 0 of 5.
        let mut same = ComparisonTest::new("s", 0.01);
        same.observe_cluster(cluster(2), Count::new(1, 1), Count::new(5, 0));
        assert!(cmp.log_evidence() > 0.0 && (cmp.log_evidence() - same.log_evidence()).abs() < 1e-12);
        // A stratum with both sides is used as it is, and does not close another cluster's pool.
        cmp.observe_cluster(cluster(7), Count::new(3, 0), Count::new(0, 0));
        cmp.observe_cluster(cluster(8), Count::new(3, 0), Count::new(30, 1));
        assert_eq!(cmp.pending[7].0.trials, 3);
    }

    #[test]
    fn without_sticky_clusters_the_tests_are_unchanged() {
        let (mut a, mut b) = (ComparisonTest::new("a", 0.01), ComparisonTest::new("b", 0.01));
        a.observe(Count::new(150, 9), Count::new(600, 4));
        // The same counts through the old formula, by hand: mean over θ of θ^9 / (1 + ρ(θ − 1))^13.
        let rho: f64 = 150.0 / 750.0;
        let xs: Vec<f64> = EFFECT_GRID.iter().map(|t| 9.0 * t.ln() - 13.0 * (rho * (t - 1.0)).ln_1p()).collect();
        assert!((a.log_evidence() - log_mean_exp(&xs)).abs() < 1e-12);
        assert_eq!(a.clusters_at_cap(), 0);
        // Keyed counts in clusters at equal shares and below the cap give the pooled evidence.
        b.observe_cluster(cluster(0), Count::new(100, 1), Count::new(400, 2));
        b.observe_cluster(cluster(1), Count::new(50, 0), Count::new(200, 1));
        let mut c = ComparisonTest::new("c", 0.01);
        c.observe(Count::new(150, 1), Count::new(600, 3));
        assert!((b.log_evidence() - c.log_evidence()).abs() < 1e-9, "{} {}", b.log_evidence(), c.log_evidence());
    }

    proptest::proptest! {
        #[test]
        fn one_cluster_alone_never_reaches_the_threshold(ticks in proptest::collection::vec((0u64..10_000, 0u64..10_000, 0u64..10_000, 0u64..10_000), 1..30), j in 0usize..STICKY_CLUSTERS) {
            let each = bonferroni(0.01, 4);
            let mut cmp = ComparisonTest::new("c", each);
            let mut slo = SloTest::new("s", 0.001, each).unwrap();
            for (nc, kc, ns, ks) in ticks {
                cmp.observe_cluster(cluster(j), Count::new(nc, kc), Count::new(ns, ks));
                slo.observe_cluster(cluster(j), Count::new(nc, kc));
            }
            proptest::prop_assert!(cmp.log_evidence() <= cmp.cluster_cap() + 1e-9 && !cmp.rejected());
            proptest::prop_assert!(slo.log_evidence() <= cluster_cap(slo.log_threshold()) + 1e-9 && !slo.rejected());
        }

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
