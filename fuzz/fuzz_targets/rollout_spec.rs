//! The rollout spec (`Spec::from_yaml_or_json`) and its durations (`parse_duration`), as
//! `gate-agent run --spec` and `check-spec` read them. Whatever the text, an accepted spec keeps
//! the invariants the rollout relies on, and a rejection names a field.
#![no_main]

use std::time::Duration;

use canary_core::Weight;
use canary_rollout::spec::{MetricKind, Spec, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Specs are read with `read_to_string`: text that is not UTF-8 is refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse_duration(text) {
        assert!(d > Duration::ZERO, "{text:?} parsed as a zero duration");
    }
    let spec = match Spec::from_yaml_or_json(text) {
        Ok(spec) => spec,
        Err(e) => {
            assert!(!e.field.is_empty() && !e.problem.is_empty(), "an error without a field or problem: {e:?}");
            return;
        }
    };
    let steps = spec.steps();
    assert!(!steps.is_empty(), "no steps");
    assert!(steps.first().is_some_and(|w| *w > Weight::ZERO), "first step at 0%: {steps:?}");
    assert!(steps.windows(2).all(|p| matches!(p, [a, b] if a < b)), "steps do not increase: {steps:?}");
    assert!(steps.iter().all(|w| *w <= spec.max_weight()), "a step above maxWeight: {steps:?}");
    assert!(spec.max_weight() <= Weight::FULL && spec.max_weight() > Weight::ZERO);
    assert_eq!(spec.next_step_above(Weight::ZERO), steps.first().copied());
    assert_eq!(steps.last().and_then(|last| spec.next_step_above(*last)), None);
    assert!(spec.threshold() >= 1);
    assert!(spec.alpha() > 0.0 && spec.alpha() <= 0.5, "alpha {}", spec.alpha());
    assert!(spec.interval() > Duration::ZERO);
    assert_ne!(spec.stable(), spec.canary());
    let metrics = spec.metrics();
    for (i, m) in metrics.iter().enumerate() {
        assert!(m.interval > Duration::ZERO);
        assert!(metrics.iter().skip(i + 1).all(|other| other.name() != m.name()), "{} listed twice", m.name());
        match m.kind {
            MetricKind::SuccessRate { min_percent } => assert!(min_percent > 0.0 && min_percent < 100.0),
            MetricKind::Duration { max_ms } => assert!(max_ms > 0.0 && max_ms.is_finite()),
        }
    }
});
