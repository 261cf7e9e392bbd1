//! The rollout spec: what to roll out, in which steps, and what "healthy" means.
//!
//! Written in YAML (or JSON) with field names Flagger users know (`interval`, `threshold`,
//! `stepWeight`/`stepWeights`, `maxWeight`, `metrics` with `thresholdRange`). Everything is checked
//! when the spec is read: unknown fields, wrong types and inconsistent values are errors that name
//! the field path, so a typo never silently becomes a default.
//!
//! ```yaml
//! name: payment-svc        # the filter's `rollout`
//! stable: v1               # subset names, as in the filter config and the DestinationRule
//! canary: v2
//! interval: 30s            # how often a check runs (and the least time spent on a step)
//! threshold: 5             # failed checks before rollback
//! stepWeights: [1, 5, 10, 25, 50]   # or `stepWeight: 10` with `maxWeight`
//! maxWeight: 50            # the highest canary weight before promotion
//! minRequests: 500         # canary requests needed on each step before it may advance
//! alpha: 0.01              # false-alarm level of the sequential tests
//! noData: hold             # or `noData: { fail: 5m }`: no canary traffic at all
//! promotion:               # the evidence gate (on by default, with these margins)
//!   requireEvidence: true  # advance and promote only once the data shows the canary within:
//!   errorMargin: { ratio: 2, absolute: 0.5 }   # failures ≤ max(2 × stable, stable + 0.5 pp)
//!   latencyMargin: { p99Increase: 20% }        # p99 ≤ max(1.2 × the stable's, + 10 ms)
//!   maxWait: 2h            # optional: roll back after waiting this long for evidence on a step
//! metrics:
//!   - name: request-success-rate
//!     thresholdRange: { min: 99 }     # percent
//!     interval: 1m
//!   - name: request-duration
//!     thresholdRange: { max: 500 }    # milliseconds, p99
//!     interval: 1m
//! ```

use std::fmt;
use std::time::Duration;

use canary_core::{SubsetName, Weight};
use serde::{Deserialize, Serialize};

/// Default false-alarm level when `alpha` is not given.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Default failed checks before rollback, as in Flagger's examples.
pub const DEFAULT_THRESHOLD: u32 = 5;
/// Default canary requests per step. Promotion on a handful of requests proves nothing.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// The quantile that `request-duration` bounds (Flagger's builtin is p99).
pub const DURATION_QUANTILE: f64 = 0.99;
/// Default error margin of the promotion gate: the canary may fail up to twice as often as the
/// stable, or 0.5 percentage points more, whichever is more (docs/agent.md says why).
pub const DEFAULT_ERROR_RATIO: f64 = 2.0;
pub const DEFAULT_ERROR_ABSOLUTE_PP: f64 = 0.5;
/// Default latency margin: the canary's p99 may be up to 20% above the stable's.
pub const DEFAULT_P99_INCREASE_PERCENT: f64 = 20.0;

/// The promotion gate: advance and promote only on evidence that the canary is not worse than
/// the stable by more than the margins ([`crate::noninferiority`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Promotion {
    /// `requireEvidence`; when false, a step advances on passing checks alone (as in Flagger).
    pub require_evidence: bool,
    pub error_margin: crate::noninferiority::ErrorMargin,
    /// `latencyMargin.p99Increase` as a fraction (0.2 for 20%).
    pub p99_increase: f64,
    /// `maxWait`: how long a step may wait for the evidence before the rollout rolls back;
    /// `None` waits for as long as it takes (the state shows how much is missing).
    pub max_wait: Option<Duration>,
}

impl Default for Promotion {
    fn default() -> Promotion {
        Promotion {
            require_evidence: true,
            error_margin: crate::noninferiority::ErrorMargin {
                ratio: DEFAULT_ERROR_RATIO,
                absolute: DEFAULT_ERROR_ABSOLUTE_PP / 100.0,
            },
            p99_increase: DEFAULT_P99_INCREASE_PERCENT / 100.0,
            max_wait: None,
        }
    }
}

/// A spec that was rejected: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Path of the offending field (`metrics[1].thresholdRange.max`), or `.` for the document.
    pub field: String,
    pub problem: String,
}

impl SpecError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        SpecError { field: field.to_owned(), problem: problem.into() }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rollout spec field `{}`: {}", self.field, self.problem)
    }
}

impl std::error::Error for SpecError {}

/// What to do when the canary gets too little traffic to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoDataPolicy {
    /// Stay on the current step for as long as it takes (never promotes).
    Hold,
    /// Roll back once there has been no judgeable data for this long.
    FailAfter(Duration),
}

/// What a metric measures, with its bound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// `request-success-rate`: the canary's success rate in percent must stay at or above `min_percent`.
    SuccessRate { min_percent: f64 },
    /// `request-duration`: the canary's p99 latency in milliseconds must stay at or below `max_ms`.
    Duration { max_ms: f64 },
}

/// One health check over a trailing window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metric {
    pub kind: MetricKind,
    /// How far back the window check looks.
    pub interval: Duration,
}

impl Metric {
    /// The Flagger name of the metric.
    pub fn name(&self) -> &'static str {
        match self.kind {
            MetricKind::SuccessRate { .. } => "request-success-rate",
            MetricKind::Duration { .. } => "request-duration",
        }
    }
}

/// A validated rollout spec. Built only by [`Spec::from_yaml_or_json`], so its invariants hold:
/// steps strictly increase, are above 0% and at most `max_weight`, which is at most 100%.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    name: SubsetName,
    stable: SubsetName,
    canary: SubsetName,
    interval: Duration,
    threshold: u32,
    steps: Vec<Weight>,
    max_weight: Weight,
    min_requests: u64,
    alpha: f64,
    no_data: NoDataPolicy,
    metrics: Vec<Metric>,
    promotion: Promotion,
}

impl Spec {
    /// Reads a spec from YAML or JSON (JSON is tried first when the text starts with `{`).
    pub fn from_yaml_or_json(text: &str) -> Result<Spec, SpecError> {
        let value: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| SpecError::new(".", format!("not valid JSON: {e}")))?
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| SpecError::new(".", format!("not valid YAML: {e}")))?
        };
        if !value.is_object() {
            return Err(SpecError::new(".", "a rollout spec is a mapping of fields (`name`, `stable`, `canary`, ...)"));
        }
        let raw: RawSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            // An unknown field named "" has the empty path; it is at the document itself.
            let path = Some(e.path().to_string()).filter(|p| !p.is_empty()).unwrap_or_else(|| ".".to_owned());
            SpecError { field: path, problem: e.into_inner().to_string() }
        })?;
        raw.validate()
    }

    /// The rollout name (the filter's `rollout`).
    pub fn name(&self) -> &SubsetName {
        &self.name
    }
    pub fn stable(&self) -> &SubsetName {
        &self.stable
    }
    pub fn canary(&self) -> &SubsetName {
        &self.canary
    }
    /// Time between checks; also the least time spent on each step.
    pub fn interval(&self) -> Duration {
        self.interval
    }
    /// Failed checks that trigger a rollback.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }
    /// The canary weights, in order; promotion follows the last.
    pub fn steps(&self) -> &[Weight] {
        &self.steps
    }
    pub fn max_weight(&self) -> Weight {
        self.max_weight
    }
    /// The proxies' typo guard for this spec: `maxWeight`, and the largest step (from 0 to the
    /// first step, or between two steps) as the largest raise.
    pub fn guard(&self) -> canary_core::guard::Guard {
        let mut max_raise = Weight::ZERO;
        let mut from = Weight::ZERO;
        for &to in &self.steps {
            let raise = to.basis_points().saturating_sub(from.basis_points());
            if raise > max_raise.basis_points() {
                max_raise = Weight::from_basis_points(raise).unwrap_or(Weight::FULL);
            }
            from = to;
        }
        canary_core::guard::Guard { max_weight: self.max_weight, max_raise }
    }
    /// Canary requests needed on a step before it may advance.
    pub fn min_requests(&self) -> u64 {
        self.min_requests
    }
    /// Overall false-alarm level, split among the sequential tests.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    pub fn no_data(&self) -> NoDataPolicy {
        self.no_data
    }
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }
    /// The promotion gate (on unless the spec says `requireEvidence: false`).
    pub fn promotion(&self) -> &Promotion {
        &self.promotion
    }

    /// The first step strictly above `weight`: the most any increase from `weight` may reach
    /// before promotion. `None` when `weight` is at or above the last step.
    pub fn next_step_above(&self, weight: Weight) -> Option<Weight> {
        self.steps.iter().copied().find(|s| *s > weight)
    }
}

/// The document as written; [`RawSpec::validate`] turns it into a [`Spec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    name: SubsetName,
    stable: SubsetName,
    canary: SubsetName,
    interval: DurationText,
    #[serde(default)]
    threshold: Option<u32>,
    #[serde(default)]
    step_weight: Option<Weight>,
    #[serde(default)]
    step_weights: Option<Vec<Weight>>,
    #[serde(default)]
    max_weight: Option<Weight>,
    #[serde(default)]
    min_requests: Option<u64>,
    #[serde(default)]
    alpha: Option<f64>,
    #[serde(default)]
    no_data: Option<RawNoData>,
    #[serde(default)]
    metrics: Vec<RawMetric>,
    #[serde(default)]
    promotion: Option<RawPromotion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPromotion {
    #[serde(default)]
    require_evidence: Option<bool>,
    #[serde(default)]
    error_margin: Option<RawErrorMargin>,
    #[serde(default)]
    latency_margin: Option<RawLatencyMargin>,
    #[serde(default)]
    max_wait: Option<DurationText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrorMargin {
    #[serde(default)]
    ratio: Option<f64>,
    /// Percentage points.
    #[serde(default)]
    absolute: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawLatencyMargin {
    p99_increase: Percent,
}

/// A percentage written `20%` or `20`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
struct Percent(f64);

impl TryFrom<serde_json::Value> for Percent {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let bad = || format!("{v} is not a percentage (e.g. 20% or 20)");
        match &v {
            serde_json::Value::Number(n) => n.as_f64().map(Percent).ok_or_else(bad),
            serde_json::Value::String(s) => {
                s.trim().strip_suffix('%').unwrap_or(s).trim().parse::<f64>().map(Percent).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }
}

impl RawPromotion {
    fn validate(self) -> Result<Promotion, SpecError> {
        let mut p = Promotion::default();
        if let Some(on) = self.require_evidence {
            p.require_evidence = on;
        }
        if let Some(m) = self.error_margin {
            let ratio = m.ratio.unwrap_or(DEFAULT_ERROR_RATIO);
            if !(ratio.is_finite() && (1.0..=1000.0).contains(&ratio)) {
                return Err(SpecError::new(
                    "promotion.errorMargin.ratio",
                    format!("{ratio} is outside [1, 1000] (times the stable's failure rate)"),
                ));
            }
            let absolute = m.absolute.unwrap_or(DEFAULT_ERROR_ABSOLUTE_PP);
            if !(absolute.is_finite() && (0.0..100.0).contains(&absolute)) {
                return Err(SpecError::new(
                    "promotion.errorMargin.absolute",
                    format!("{absolute} is outside [0, 100) (percentage points)"),
                ));
            }
            // No margin at all: a canary exactly as good as the stable could never be shown within it.
            if ratio <= 1.0 && absolute <= 0.0 {
                return Err(SpecError::new(
                    "promotion.errorMargin",
                    "ratio 1 with absolute 0 leaves no margin: even a canary as good as the stable could never be promoted",
                ));
            }
            p.error_margin = crate::noninferiority::ErrorMargin { ratio, absolute: absolute / 100.0 };
        }
        if let Some(m) = self.latency_margin {
            let pct = m.p99_increase.0;
            // 0% leaves no margin (see above); above 100% is no longer a check of the tail.
            if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
                return Err(SpecError::new(
                    "promotion.latencyMargin.p99Increase",
                    format!("{pct}% is outside (0, 100] percent"),
                ));
            }
            p.p99_increase = pct / 100.0;
        }
        p.max_wait = self.max_wait.map(|d| d.0);
        Ok(p)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum RawNoData {
    Hold,
    Fail(DurationText),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetric {
    name: String,
    threshold_range: RawRange,
    #[serde(default)]
    interval: Option<DurationText>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

/// A duration written as `500ms`, `30s`, `5m`, `1h` or a sum such as `1m30s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
struct DurationText(Duration);

impl TryFrom<String> for DurationText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).map(DurationText)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1m30s`. Zero and bare numbers are errors: a unit-less
/// `30` could mean seconds or milliseconds, and a zero interval would check in a busy loop.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"1m30s\")");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit()).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total_ms = n.checked_mul(scale).and_then(|v| total_ms.checked_add(v)).ok_or_else(bad)?;
        rest = tail;
    }
    if total_ms == 0 {
        return Err(format!("{text:?} is zero; a duration must be positive"));
    }
    Ok(Duration::from_millis(total_ms))
}

impl RawSpec {
    fn validate(self) -> Result<Spec, SpecError> {
        if self.stable == self.canary {
            return Err(SpecError::new("canary", format!("is the same subset as `stable` ({})", self.stable)));
        }
        let threshold = self.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if threshold == 0 {
            return Err(SpecError::new("threshold", "must be at least 1 (failed checks before rollback)"));
        }
        let alpha = self.alpha.unwrap_or(DEFAULT_ALPHA);
        // Above 0.5 the "sequential test" would roll back healthy canaries more often than not.
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(SpecError::new("alpha", format!("{alpha} is outside (0, 0.5] (a false-alarm probability)")));
        }
        let (steps, max_weight) = self.steps()?;
        let no_data = match self.no_data {
            None | Some(RawNoData::Hold) => NoDataPolicy::Hold,
            Some(RawNoData::Fail(d)) => NoDataPolicy::FailAfter(d.0),
        };
        let promotion = self.promotion.map_or_else(|| Ok(Promotion::default()), RawPromotion::validate)?;
        let interval = self.interval.0;
        let mut metrics: Vec<Metric> = Vec::with_capacity(self.metrics.len());
        for (i, m) in self.metrics.into_iter().enumerate() {
            let metric = m.validate(i, interval)?;
            if metrics.iter().any(|seen| seen.name() == metric.name()) {
                return Err(SpecError::new(
                    &format!("metrics[{i}].name"),
                    format!("{:?} is listed twice", metric.name()),
                ));
            }
            metrics.push(metric);
        }
        Ok(Spec {
            name: self.name,
            stable: self.stable,
            canary: self.canary,
            interval,
            threshold,
            steps,
            max_weight,
            min_requests: self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
            alpha,
            no_data,
            metrics,
            promotion,
        })
    }

    fn steps(&self) -> Result<(Vec<Weight>, Weight), SpecError> {
        let steps = match (self.step_weight, &self.step_weights) {
            (Some(_), Some(_)) => {
                return Err(SpecError::new("stepWeights", "give either `stepWeight` or `stepWeights`, not both"));
            }
            (None, None) => return Err(SpecError::new(".", "missing `stepWeight` or `stepWeights`")),
            (Some(step), None) => {
                if step == Weight::ZERO {
                    return Err(SpecError::new("stepWeight", "must be above 0%"));
                }
                let Some(max) = self.max_weight else {
                    // Explicit on purpose: the cap is the guard against the weight typo.
                    return Err(SpecError::new("maxWeight", "is required with `stepWeight`"));
                };
                let mut steps = Vec::new();
                let mut bp = step.basis_points();
                while let Some(w) = Weight::from_basis_points(bp).filter(|w| *w <= max) {
                    steps.push(w);
                    bp = bp.saturating_add(step.basis_points());
                }
                if steps.is_empty() {
                    return Err(SpecError::new("stepWeight", format!("{step} is above `maxWeight` ({max})")));
                }
                steps
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err(SpecError::new("stepWeights", "must list at least one weight"));
                }
                let mut prev = Weight::ZERO;
                for (i, w) in list.iter().enumerate() {
                    if *w <= prev {
                        let problem = if i == 0 {
                            "must be above 0%".to_owned()
                        } else {
                            format!("{w} is not above the previous step ({prev}); steps must increase")
                        };
                        return Err(SpecError::new(&format!("stepWeights[{i}]"), problem));
                    }
                    prev = *w;
                }
                list.clone()
            }
        };
        let last = steps.last().copied().unwrap_or(Weight::ZERO);
        let max = self.max_weight.unwrap_or(last);
        if max == Weight::ZERO {
            return Err(SpecError::new("maxWeight", "must be above 0%"));
        }
        if let Some((i, w)) = steps.iter().enumerate().find(|(_, w)| **w > max) {
            return Err(SpecError::new(&format!("stepWeights[{i}]"), format!("{w} is above `maxWeight` ({max})")));
        }
        Ok((steps, max))
    }
}

impl RawMetric {
    fn validate(self, i: usize, default_interval: Duration) -> Result<Metric, SpecError> {
        let at = |field: &str| format!("metrics[{i}].{field}");
        let interval = self.interval.map_or(default_interval, |d| d.0);
        let kind = match self.name.as_str() {
            "request-success-rate" => {
                if self.threshold_range.max.is_some() {
                    return Err(SpecError::new(&at("thresholdRange.max"), "a success rate takes only `min` (percent)"));
                }
                let Some(min) = self.threshold_range.min else {
                    return Err(SpecError::new(&at("thresholdRange.min"), "is required (percent, e.g. 99)"));
                };
                // 100% would make every single failure an SLO breach; 0% checks nothing.
                if !(min > 0.0 && min < 100.0) {
                    return Err(SpecError::new(
                        &at("thresholdRange.min"),
                        format!("{min} is outside (0, 100) percent"),
                    ));
                }
                MetricKind::SuccessRate { min_percent: min }
            }
            "request-duration" => {
                if self.threshold_range.min.is_some() {
                    return Err(SpecError::new(&at("thresholdRange.min"), "a duration takes only `max` (ms)"));
                }
                let Some(max) = self.threshold_range.max else {
                    return Err(SpecError::new(&at("thresholdRange.max"), "is required (milliseconds, e.g. 500)"));
                };
                if !(max > 0.0 && max.is_finite() && max <= 3_600_000.0) {
                    return Err(SpecError::new(&at("thresholdRange.max"), format!("{max} ms is not a latency bound")));
                }
                MetricKind::Duration { max_ms: max }
            }
            other => {
                return Err(SpecError::new(
                    &at("name"),
                    format!("{other:?} is not a builtin metric (\"request-success-rate\" or \"request-duration\")"),
                ));
            }
        };
        Ok(Metric { kind, interval })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_proxies_guard_is_max_weight_and_the_largest_step() {
        let spec = Spec::from_yaml_or_json(
            "name: demo\nstable: v1\ncanary: v2\ninterval: 1s\nthreshold: 2\nstepWeights: [5, 25, 40]\nmaxWeight: 40\n",
        )
        .unwrap();
        let g = spec.guard();
        assert_eq!((g.max_weight.percent(), g.max_raise.percent()), (40.0, 20.0));
    }

    use super::*;

    const FULL: &str = r#"
name: payment-svc
stable: v1
canary: v2
interval: 30s
threshold: 3
stepWeights: [1, 5, 10, 25, 50]
maxWeight: 50
minRequests: 500
alpha: 0.02
noData: { fail: 5m }
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99.5 }
    interval: 1m
  - name: request-duration
    thresholdRange: { max: 500 }
"#;

    fn err(text: &str) -> SpecError {
        Spec::from_yaml_or_json(text).unwrap_err()
    }

    fn minimal(extra: &str) -> String {
        format!("name: r\nstable: v1\ncanary: v2\ninterval: 1s\n{extra}")
    }

    #[test]
    fn a_full_spec_reads_with_every_field() {
        let s = Spec::from_yaml_or_json(FULL).unwrap();
        assert_eq!(s.name().as_str(), "payment-svc");
        assert_eq!(s.interval(), Duration::from_secs(30));
        assert_eq!(s.threshold(), 3);
        let bp: Vec<u16> = s.steps().iter().map(|w| w.basis_points()).collect();
        assert_eq!(bp, [100, 500, 1000, 2500, 5000]);
        assert_eq!(s.max_weight().basis_points(), 5000);
        assert_eq!(s.min_requests(), 500);
        assert_eq!(s.alpha(), 0.02);
        assert_eq!(s.no_data(), NoDataPolicy::FailAfter(Duration::from_secs(300)));
        assert_eq!(s.metrics().len(), 2);
        assert_eq!(s.metrics()[0].kind, MetricKind::SuccessRate { min_percent: 99.5 });
        assert_eq!(s.metrics()[0].interval, Duration::from_secs(60));
        assert_eq!(s.metrics()[1].interval, Duration::from_secs(30), "a metric's interval defaults to the spec's");
    }

    #[test]
    fn json_reads_too_and_defaults_apply() {
        let s = Spec::from_yaml_or_json(
            r#"{"name":"r","stable":"v1","canary":"v2","interval":"1m30s","stepWeight":20,"maxWeight":50}"#,
        )
        .unwrap();
        assert_eq!(s.interval(), Duration::from_secs(90));
        let bp: Vec<u16> = s.steps().iter().map(|w| w.basis_points()).collect();
        assert_eq!(bp, [2000, 4000], "stepWeight walks up to maxWeight without passing it");
        assert_eq!(s.alpha(), DEFAULT_ALPHA);
        assert_eq!(s.threshold(), DEFAULT_THRESHOLD);
        assert_eq!(s.min_requests(), DEFAULT_MIN_REQUESTS);
        assert_eq!(s.no_data(), NoDataPolicy::Hold);
        assert!(s.metrics().is_empty());
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = err(&minimal("stepWeight: 10\nmaxWeight: 50\nstepWieght: 5\n"));
        assert!(e.problem.contains("unknown field `stepWieght`"), "{e}");
        let e = err(&minimal(
            "stepWeight: 10\nmaxWeight: 50\nmetrics:\n  - name: request-duration\n    thresholdRange: { max: 5, mix: 1 }\n",
        ));
        assert_eq!(e.field, "metrics[0].thresholdRange.mix", "{e}");
        assert!(e.problem.contains("mix"), "{e}");
    }

    /// Found by fuzzing (fuzz/regressions/rollout_spec/): an unknown field named "" was reported
    /// at the field "", which says nowhere.
    #[test]
    fn an_unknown_field_with_an_empty_name_is_reported_at_the_document() {
        let e = err(&minimal("stepWeight: 10\nmaxWeight: 50\n\"\": 1\n"));
        assert_eq!(e.field, ".", "{e}");
        assert!(e.problem.contains("unknown field ``"), "{e}");
    }

    #[test]
    fn wrong_values_name_the_field() {
        let cases = [
            (minimal("stepWeights: [10, 5]\n"), "stepWeights[1]"),
            (minimal("stepWeights: [0, 5]\n"), "stepWeights[0]"),
            (minimal("stepWeights: [10, 60]\nmaxWeight: 50\n"), "stepWeights[1]"),
            (minimal("stepWeights: [10]\nmaxWeight: 150\n"), "maxWeight"),
            (minimal("stepWeight: 10\n"), "maxWeight"),
            (minimal("stepWeight: 10\nstepWeights: [10]\nmaxWeight: 50\n"), "stepWeights"),
            (minimal(""), "."),
            (minimal("stepWeight: 60\nmaxWeight: 50\n"), "stepWeight"),
            (minimal("stepWeight: 10\nmaxWeight: 50\nthreshold: 0\n"), "threshold"),
            (minimal("stepWeight: 10\nmaxWeight: 50\nalpha: 0\n"), "alpha"),
            (minimal("stepWeight: 10\nmaxWeight: 50\nnoData: { fail: soon }\n"), "noData.fail"),
            (minimal("stepWeight: 10\nmaxWeight: 50\nnoData: wait\n"), "noData"),
            (
                minimal(
                    "stepWeight: 10\nmaxWeight: 50\nmetrics:\n  - name: request-success-rate\n    thresholdRange: { min: 100 }\n",
                ),
                "metrics[0].thresholdRange.min",
            ),
            (
                minimal(
                    "stepWeight: 10\nmaxWeight: 50\nmetrics:\n  - name: error-rate\n    thresholdRange: { max: 1 }\n",
                ),
                "metrics[0].name",
            ),
            (
                minimal(
                    "stepWeight: 10\nmaxWeight: 50\nmetrics:\n  - name: request-duration\n    thresholdRange: { max: 5 }\n  - name: request-duration\n    thresholdRange: { max: 9 }\n",
                ),
                "metrics[1].name",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { errorMargin: { ratio: 0.5 } }\n"),
                "promotion.errorMargin.ratio",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { errorMargin: { absolute: -1 } }\n"),
                "promotion.errorMargin.absolute",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { errorMargin: { absolute: 100 } }\n"),
                "promotion.errorMargin.absolute",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { errorMargin: { ratio: 1, absolute: 0 } }\n"),
                "promotion.errorMargin",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { latencyMargin: { p99Increase: 150% } }\n"),
                "promotion.latencyMargin.p99Increase",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { latencyMargin: { p99Increase: \"-5%\" } }\n"),
                "promotion.latencyMargin.p99Increase",
            ),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { latencyMargin: { p99Increase: fast } }\n"),
                "promotion.latencyMargin.p99Increase",
            ),
            (minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { maxWait: 0s }\n"), "promotion.maxWait"),
            (
                minimal("stepWeight: 10\nmaxWeight: 50\npromotion: { requireEvidense: true }\n"),
                "promotion.requireEvidense",
            ),
            ("name: r\nstable: v1\ncanary: v1\ninterval: 1s\nstepWeight: 10\nmaxWeight: 50\n".to_owned(), "canary"),
            ("name: R_1\nstable: v1\ncanary: v2\ninterval: 1s\nstepWeight: 10\nmaxWeight: 50\n".to_owned(), "name"),
            ("name: r\nstable: v1\ncanary: v2\ninterval: 30\nstepWeight: 10\nmaxWeight: 50\n".to_owned(), "interval"),
        ];
        for (text, field) in cases {
            let e = err(&text);
            assert_eq!(e.field, field, "{text}\n=> {e}");
            assert!(!e.problem.is_empty());
        }
    }

    #[test]
    fn the_promotion_gate_is_on_by_default_and_reads_flagger_style() {
        let s = Spec::from_yaml_or_json(&minimal("stepWeight: 10\nmaxWeight: 50\n")).unwrap();
        assert_eq!(*s.promotion(), Promotion::default());
        assert!(s.promotion().require_evidence);
        assert_eq!(s.promotion().error_margin.ratio, 2.0);
        assert!((s.promotion().error_margin.absolute - 0.005).abs() < 1e-15);
        assert!((s.promotion().p99_increase - 0.2).abs() < 1e-15);
        let s = Spec::from_yaml_or_json(&minimal(
            "stepWeight: 10\nmaxWeight: 50\npromotion:\n  requireEvidence: true\n  errorMargin: {ratio: 1.5, absolute: 0.2}\n  latencyMargin: {p99Increase: 10%}\n  maxWait: 2h\n",
        ))
        .unwrap();
        let p = s.promotion();
        assert_eq!((p.error_margin.ratio, p.max_wait), (1.5, Some(Duration::from_secs(7200))));
        assert!((p.error_margin.absolute - 0.002).abs() < 1e-15 && (p.p99_increase - 0.1).abs() < 1e-15);
        let off =
            Spec::from_yaml_or_json(&minimal("stepWeight: 10\nmaxWeight: 50\npromotion: {requireEvidence: false}\n"))
                .unwrap();
        assert!(!off.promotion().require_evidence);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in ["", "{", "[1,2]", "name: [", "\u{0}", "- a\n- b"] {
            assert!(Spec::from_yaml_or_json(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn durations_parse_in_the_usual_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "30", "0s", "1d", "s", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn next_step_above_is_the_one_step_cap() {
        let s = Spec::from_yaml_or_json(FULL).unwrap();
        let w = |p| Weight::from_percent(p).unwrap();
        assert_eq!(s.next_step_above(Weight::ZERO), Some(w(1.0)));
        assert_eq!(s.next_step_above(w(7.0)), Some(w(10.0)));
        assert_eq!(s.next_step_above(w(10.0)), Some(w(25.0)));
        assert_eq!(s.next_step_above(w(50.0)), None);
    }
}
