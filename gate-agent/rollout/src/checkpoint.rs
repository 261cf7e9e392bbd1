//! Evidence that survives an agent restart or a change of leader: a [`Checkpoint`] of everything
//! the [`crate::judge::Judge`] accumulates over a rollout, and the rules for resuming from one.
//!
//! The durable record beside the weight (`rollout_state`) holds the phase, the step and the failed
//! checks; it is written only when they change, because every write reloads every proxy's filter.
//! Evidence changes every tick, so it is kept elsewhere (the I/O layer's evidence store) and saved
//! every few seconds; this module says what is saved and when a saved copy may be used. It does no
//! I/O: [`Checkpoint::to_json`] and [`Checkpoint::from_json`] turn it into bytes and back.
//!
//! # What is in a checkpoint
//!
//! Each sequential test's state ([`crate::stats`]: per grid point the log of the product of
//! likelihood ratios, each sticky cluster's capped log, the strata pooled until both sides have
//! requests, the canary trials), the promotion gate's sufficient statistics
//! ([`crate::noninferiority`]: trials and events per side), the latency references once fixed, or
//! the stable requests gathered towards them so far, the totals the reason texts quote, and the
//! last slot of the window checks' α spending. It is tagged with what it is valid for: the
//! rollout's name and id, the weight and step it was taken on, the durable revision, a copy of the
//! spec's statistical settings (α, interval, metrics, promotion gate) and the wall-clock time.
//!
//! Not in it: the proxies' counter baselines (the first snapshot of every proxy after a restart is
//! a baseline again, as before), and the window checks' trailing windows (they start empty, so the
//! first checks after a restart look at a shorter window).
//!
//! # Why resuming is sound
//!
//! Every test is a product of per-tick factors. A sequential test's statistic after ticks
//! `1..t` is `M_t = Π_{s ≤ t} F_s` (per grid point, per cluster, then mixed), and under its null
//! each factor has conditional mean at most 1 given everything before it: that is what makes `M` a
//! nonnegative supermartingale and Ville's inequality apply. A restart removes some ticks: those
//! after the last checkpoint, those while no agent ran, and the first tick after it (a baseline).
//! Which ticks are removed depends on when the agent stopped and started, not on the traffic's
//! outcomes in them. So the resumed statistic is `M'_t = Π_{s ≤ t, s kept} F_s`, the same product
//! with factors left out, where "kept" is decided before tick `s`'s outcomes are seen (it depends
//! only on the past and on the agent's own life). Multiplying by 1 instead of `F_s` for a removed
//! tick keeps every conditional mean at most 1, so `M'` is still a nonnegative supermartingale
//! starting at 1, Ville's bound `P(ever ≥ 1/α) ≤ α` still holds, and the threshold does not move.
//! The sticky clusters' caps are the same stopped, concave transforms as before; a cluster frozen
//! at its cap stays frozen.
//!
//! The promotion gate's confidence sequences are mixtures of likelihood ratios (errors) or of
//! exponential supermartingales (latency) in the trials and events seen: leaving out a set of
//! requests chosen without looking at their outcomes leaves each one a test supermartingale over
//! the requests kept, so each interval still holds its rate (or its running average over the kept
//! requests) at every time with probability at least `1 − β`, and the gate's argument is unchanged.
//! The latency references are fixed from stable requests only, before they are used; a reference
//! sample carried across a restart is the same sample with some requests left out.
//!
//! The window checks spend `α_j = α_w / (K j (j + 1))` in slot `j`, and their bound needs each slot
//! used at most once. A restarted judge cannot know which slots its predecessor used after the
//! checkpoint, so it skips all of them: with the checkpoint's last slot `s` and `g` ms of wall
//! clock since it was taken, the first slot after the restart is `s + ⌊g / interval⌋ + 2`, above
//! any slot a check could have had by then (a check happens at most once per slot). Skipped slots
//! are α left unspent, never spent twice. This relies on the wall clock not going backwards across
//! the restart; if it does, the gap is taken as 0 and at most one slot per interval of the clock's
//! step could be used again.
//!
//! So a resumed judge makes the same rollback and promotion-gate decisions as one that never
//! stopped and was fed the same ticks minus the removed ones (tested below, through the JSON form).
//! The window checks differ in two ways: their first windows after the restart hold only the
//! ticks since it (as they did before checkpoints existed), and their slots are later, so a miss
//! must be clearer to count as a failed check (it holds the step instead).
//!
//! # What it costs, and when it is refused
//!
//! A crash loses the ticks since the last checkpoint (a few seconds) and the first tick after the
//! restart. Restarting the agent on purpose, after seeing the evidence move, would choose which
//! ticks are dropped by looking at them: that can drop at most the seconds since the last
//! checkpoint, a bounded selection the argument above does not cover.
//!
//! [`Checkpoint::resume_into`] refuses (and the rollout starts its evidence from zero, as it did
//! before checkpoints existed) a checkpoint of another format version, rollout, rollout id, weight,
//! step, durable revision or statistical settings: evidence gathered on another weight is valid
//! for the tests (they take the weight per tick), but a revision or weight that differs means the
//! durable state moved without the checkpoint following, and a conservative start from zero is the
//! safe reading. Anything malformed is refused too: unreadable JSON, values that are not numbers,
//! more events than trials, a cluster above its cap, tests the spec does not have.

use serde::{Deserialize, Serialize};

use canary_core::Weight;

use crate::judge::{Judge, JudgeState};
use crate::spec::Spec;
use crate::time::millis;

/// The checkpoint format this agent writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;

/// Everything the judge has accumulated over a rollout, tagged with what it is valid for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    /// The rollout's name (the spec's `name`).
    pub rollout: String,
    /// The durable configuration's rollout id (kill orders name it too).
    pub rollout_id: String,
    /// The weight and step the rollout was on.
    pub weight: Weight,
    pub step: Option<usize>,
    /// The durable configuration's revision when it was taken.
    pub revision: u64,
    /// The spec's statistical settings, as [`statistical_settings`] writes them.
    pub settings: String,
    /// Wall-clock time it was taken (ms since the Unix epoch).
    pub taken_at_unix_ms: u64,
    pub judge: JudgeState,
}

/// Why a checkpoint was not resumed; the rollout's evidence then starts from zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeRefused {
    #[error("the evidence checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("the evidence checkpoint has format version {found}; this agent reads version {expected}")]
    Version { found: u32, expected: u32 },
    #[error("the evidence checkpoint was taken for {what} {saved}, but the rollout now has {now}")]
    Mismatch { what: &'static str, saved: String, now: String },
}

/// The spec's settings that the judge's tests are built from, as one string: α, the interval,
/// the metrics with their bounds and intervals, and the promotion gate. A checkpoint taken under
/// other settings holds other tests (other thresholds, caps, margins) and is refused.
pub fn statistical_settings(spec: &Spec) -> String {
    format!(
        "alpha={:?} interval_ms={} metrics={:?} promotion={:?}",
        spec.alpha(),
        millis(spec.interval()),
        spec.metrics(),
        spec.promotion()
    )
}

/// Where the rollout is, as far as a checkpoint's validity goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub rollout_id: &'a str,
    pub weight: Weight,
    pub step: Option<usize>,
    pub revision: u64,
}

impl Checkpoint {
    /// A checkpoint of `judge`, judging `spec` at `at`, taken at `now_unix_ms`.
    pub fn of(spec: &Spec, judge: &Judge, at: Position<'_>, now_unix_ms: u64) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            rollout: spec.name().to_string(),
            rollout_id: at.rollout_id.to_owned(),
            weight: at.weight,
            step: at.step,
            revision: at.revision,
            settings: statistical_settings(spec),
            taken_at_unix_ms: now_unix_ms,
            judge: judge.state(),
        }
    }

    /// The checkpoint as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, ResumeRefused> {
        serde_json::to_vec(self).map_err(|e| ResumeRefused::Malformed(format!("cannot write it as JSON: {e}")))
    }

    /// Reads a checkpoint from bytes (a file, an annotation): anything that is not one is refused.
    pub fn from_json(bytes: &[u8]) -> Result<Checkpoint, ResumeRefused> {
        // The version first, so a newer agent's format is named as such rather than as malformed.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(bytes).map_err(|e| ResumeRefused::Malformed(e.to_string()))?;
        if v.version != CHECKPOINT_VERSION {
            return Err(ResumeRefused::Version { found: v.version, expected: CHECKPOINT_VERSION });
        }
        serde_json::from_slice(bytes).map_err(|e| ResumeRefused::Malformed(e.to_string()))
    }

    /// Whether this checkpoint may be resumed by a rollout of `spec` at `at`.
    pub fn check(&self, spec: &Spec, at: Position<'_>) -> Result<(), ResumeRefused> {
        if self.version != CHECKPOINT_VERSION {
            return Err(ResumeRefused::Version { found: self.version, expected: CHECKPOINT_VERSION });
        }
        let mismatch = |what: &'static str, saved: String, now: String| {
            if saved == now { Ok(()) } else { Err(ResumeRefused::Mismatch { what, saved, now }) }
        };
        let step = |s: Option<usize>| s.map_or_else(|| "none".to_owned(), |i| (i + 1).to_string());
        mismatch("rollout", self.rollout.clone(), spec.name().to_string())?;
        mismatch("rollout id", self.rollout_id.clone(), at.rollout_id.to_owned())?;
        mismatch("revision", self.revision.to_string(), at.revision.to_string())?;
        mismatch("weight", self.weight.to_string(), at.weight.to_string())?;
        mismatch("step", step(self.step), step(at.step))?;
        mismatch("statistical settings", self.settings.clone(), statistical_settings(spec))
    }

    /// Checks this checkpoint against `spec` and `at`, then continues `judge` from it. On a
    /// refusal `judge` is left as it was (starting from zero).
    pub fn resume_into(
        &self,
        spec: &Spec,
        judge: &mut Judge,
        at: Position<'_>,
        now_unix_ms: u64,
    ) -> Result<(), ResumeRefused> {
        self.check(spec, at)?;
        judge.resume(&self.judge, now_unix_ms.saturating_sub(self.taken_at_unix_ms)).map_err(ResumeRefused::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{ByRole, Window};
    use crate::judge::tests::counters;
    use canary_core::sticky::STICKY_CLUSTERS;
    use proptest::prelude::*;

    const SPEC: &str = "
name: demo
stable: v1
canary: v2
interval: 5s
stepWeights: [10, 25, 50]
maxWeight: 50
metrics:
  - name: request-success-rate
    thresholdRange: { min: 99 }
    interval: 10s
  - name: request-duration
    thresholdRange: { max: 500 }
    interval: 10s
";

    fn spec(extra: &str) -> Spec {
        Spec::from_yaml_or_json(&format!("{SPEC}{extra}")).unwrap()
    }

    const AT: Position<'static> = Position { rollout_id: "v2", weight: Weight::ZERO, step: None, revision: 7 };

    /// One tick: (requests, failures, latency ms) per side, and the sticky cluster that all of the
    /// canary's and the stable's requests are keyed into, if any.
    type Tick = ((u64, u64, u64), (u64, u64, u64), Option<usize>);

    fn window(to_ms: u64, ((sn, sf, sms), (cn, cf, cms), keyed): Tick) -> Window {
        let side = |n: u64, f: u64, ms: u64| {
            let mut c = counters(n, f.min(n), ms);
            if let Some(j) = keyed {
                c.sticky.requests[j] = c.requests;
                c.sticky.failures[j] = c.failures;
            }
            c
        };
        Window {
            from_ms: to_ms.saturating_sub(1000),
            to_ms,
            counts: ByRole { stable: side(sn, sf, sms), canary: side(cn, cf, cms) },
            proxies_reporting: 1,
            ..Window::default()
        }
    }

    fn tick() -> impl Strategy<Value = Tick> {
        (
            (0u64..400, 0u64..6, prop_oneof![Just(20u64), Just(40), Just(300)]),
            (0u64..120, 0u64..30, prop_oneof![Just(20u64), Just(60), Just(900)]),
            prop_oneof![Just(None), (0usize..STICKY_CLUSTERS).prop_map(Some)],
        )
    }

    fn through_json(cp: &Checkpoint) -> Checkpoint {
        Checkpoint::from_json(&cp.to_json().unwrap()).unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A judge checkpointed after `cut` ticks, restarted, and fed the ticks after `dropped`
        /// more (lost in the restart) rolls back and gates promotion exactly as a judge that
        /// never stopped and was fed the same ticks without the dropped ones.
        #[test]
        fn a_resumed_judge_decides_as_an_uninterrupted_one_fed_the_same_ticks(
            ticks in proptest::collection::vec(tick(), 2..50),
            cut in 0usize..50,
            dropped in 0usize..5,
            gated in any::<bool>(),
        ) {
            let spec = spec(if gated { "" } else { "promotion: { requireEvidence: false }\n" });
            let cut = cut.min(ticks.len());
            let mut reference = Judge::new(&spec);
            let mut before = Judge::new(&spec);
            for (i, t) in ticks.iter().take(cut).enumerate() {
                let w = window(1000 * (i as u64 + 1), *t);
                before.assess(&w);
                reference.assess(&w);
            }
            let saved = through_json(&Checkpoint::of(&spec, &before, AT, 1_000_000));
            // The restarted agent's clock starts again; wall-clock time moved on by the restart.
            let mut after = Judge::new(&spec);
            saved.resume_into(&spec, &mut after, AT, 1_000_000 + 1000 * dropped as u64).unwrap();
            prop_assert_eq!(after.state().errors_vs_stable.canary_trials, before.state().errors_vs_stable.canary_trials);
            for (i, t) in ticks.iter().enumerate().skip(cut + dropped) {
                let (a, r) = (after.assess(&window(1000 * (i as u64 + 1), *t)), reference.assess(&window(1000 * (i as u64 + 1), *t)));
                prop_assert_eq!(a.is_decisive(), r.is_decisive(), "tick {}: {} / {}", i, a.summary(), r.summary());
                prop_assert_eq!(after.promotion_shown(), reference.promotion_shown(), "tick {}", i);
                for (x, y) in a.evidence.iter().zip(&r.evidence) {
                    prop_assert!(close(x.log_evidence, y.log_evidence) && x.canary_trials == y.canary_trials, "{:?} {:?}", x, y);
                }
                for (x, y) in after.promotion_evidence().iter().zip(&reference.promotion_evidence()) {
                    prop_assert_eq!((x.shown, x.canary_trials, x.margin.is_some()), (y.shown, y.canary_trials, y.margin.is_some()));
                }
                prop_assert_eq!(after.latency_reference_us(), reference.latency_reference_us());
                prop_assert_eq!(after.gate_latency_bound_us(), reference.gate_latency_bound_us());
            }
        }

        /// Whatever bytes come in, reading them never panics, and what is read back from a real
        /// checkpoint is what was written.
        #[test]
        fn any_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Checkpoint::from_json(&bytes);
        }
    }

    /// A judge that has seen a minute of traffic with some failures on both sides.
    fn judged(spec: &Spec) -> Judge {
        let mut j = Judge::new(spec);
        for i in 1..=60 {
            j.assess(&window(1000 * i, ((900, 2, 20), (100, 1, 25), (i % 3 == 0).then_some(5))));
        }
        j
    }

    #[test]
    fn a_checkpoint_for_another_rollout_step_revision_or_spec_is_refused() {
        let spec = spec("");
        let cp = through_json(&Checkpoint::of(&spec, &judged(&spec), AT, 0));
        let refused = |s: &Spec, at: Position<'_>| {
            let mut j = Judge::new(s);
            let e = cp.resume_into(s, &mut j, at, 0).unwrap_err();
            // Refused means untouched: the evidence starts from zero.
            assert_eq!(j.state(), Judge::new(s).state());
            e
        };
        let w10 = Weight::from_percent(10.0).unwrap();
        for (at, what) in [
            (Position { rollout_id: "v3", ..AT }, "rollout id"),
            (Position { revision: 8, ..AT }, "revision"),
            (Position { weight: w10, ..AT }, "weight"),
            (Position { step: Some(0), ..AT }, "step"),
        ] {
            let e = refused(&spec, at);
            assert!(matches!(e, ResumeRefused::Mismatch { what: w, .. } if w == what), "{e}");
        }
        let e = refused(&spec, Position { revision: 8, ..AT });
        assert_eq!(e.to_string(), "the evidence checkpoint was taken for revision 7, but the rollout now has 8");
        let other_alpha = Spec::from_yaml_or_json(&format!("{SPEC}alpha: 0.05\n")).unwrap();
        assert!(matches!(refused(&other_alpha, AT), ResumeRefused::Mismatch { what: "statistical settings", .. }));
        let other_name = Spec::from_yaml_or_json(&SPEC.replace("name: demo", "name: other")).unwrap();
        assert!(matches!(refused(&other_name, AT), ResumeRefused::Mismatch { what: "rollout", .. }));
        // The same checkpoint is taken where it belongs.
        let mut j = Judge::new(&spec);
        cp.resume_into(&spec, &mut j, AT, 0).unwrap();
        let (resumed, original) = (j.state().errors_vs_stable, judged(&spec).state().errors_vs_stable);
        assert_eq!((resumed.pending, resumed.canary_trials), (original.pending, original.canary_trials));
        // JSON may read a number back one ulp off (serde_json's default parser): immaterial.
        for (a, b) in resumed
            .clusters
            .iter()
            .flatten()
            .chain(&resumed.log_l)
            .zip(original.clusters.iter().flatten().chain(&original.log_l))
        {
            assert!(close(*a, *b), "{a} {b}");
        }
    }

    #[test]
    fn malformed_checkpoints_are_refused_with_the_reason() {
        let spec = spec("");
        let good = Checkpoint::of(&spec, &judged(&spec), AT, 0);
        let json: serde_json::Value = serde_json::from_slice(&good.to_json().unwrap()).unwrap();
        let tampered = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = json.clone();
            edit(&mut v);
            let bytes = serde_json::to_vec(&v).unwrap();
            match Checkpoint::from_json(&bytes) {
                Err(e) => e,
                Ok(cp) => {
                    let mut j = Judge::new(&spec);
                    let e = cp.resume_into(&spec, &mut j, AT, 0).unwrap_err();
                    assert_eq!(j.state(), Judge::new(&spec).state(), "a refused checkpoint leaves the judge at zero");
                    e
                }
            }
        };
        let malformed = |e: ResumeRefused, needle: &str| {
            assert!(matches!(&e, ResumeRefused::Malformed(m) if m.contains(needle)), "{e} lacks {needle}");
        };
        assert!(matches!(Checkpoint::from_json(b"not json"), Err(ResumeRefused::Malformed(_))));
        assert!(matches!(Checkpoint::from_json(b"{}"), Err(ResumeRefused::Malformed(_))));
        assert_eq!(
            tampered(&|v| v["version"] = 2.into()),
            ResumeRefused::Version { found: 2, expected: CHECKPOINT_VERSION }
        );
        malformed(tampered(&|v| v["judge"]["canary_totals"] = serde_json::json!([5, 6])), "6 failures among 5");
        malformed(
            tampered(&|v| v["judge"]["errors_vs_stable"]["clusters"][0][3] = 9.0.into()),
            "above the cluster cap",
        );
        malformed(
            tampered(&|v| v["judge"]["gate_errors"][0] = serde_json::json!({"trials": 1, "events": 2})),
            "2 events among 1 trials",
        );
        malformed(tampered(&|v| v["judge"]["errors_vs_slo"] = serde_json::Value::Null), "error SLO test");
        malformed(tampered(&|v| v["judge"]["gate_latency"] = serde_json::Value::Null), "promotion gate");
        malformed(tampered(&|v| v["judge"]["latency_vs_slo"]["log_l"] = serde_json::json!([0.0])), "1 burn rates");
        malformed(tampered(&|v| v["judge"]["errors_vs_stable"]["log_l"] = serde_json::json!([0.0])), "");
        malformed(tampered(&|v| v["weight"] = 250.into()), "");
    }

    #[test]
    fn a_resumed_judge_never_spends_a_check_slot_its_predecessor_may_have_used() {
        // Checks every 5 s. The checkpoint is taken in slot 12 (a minute in); the old agent may
        // have checked in slots 13 and 14 in the 8 s before it died, so the new one starts at 15.
        let spec = spec("");
        let before = judged(&spec);
        assert_eq!(before.state().last_slot, 12);
        let cp = Checkpoint::of(&spec, &before, AT, 100_000);
        let mut after = Judge::new(&spec);
        cp.resume_into(&spec, &mut after, AT, 108_000).unwrap();
        after.assess(&window(1000, ((900, 2, 20), (100, 1, 25), None)));
        assert_eq!(after.state().last_slot, 15);
        after.assess(&window(6000, ((900, 2, 20), (100, 1, 25), None)));
        assert_eq!(after.state().last_slot, 16);
        // A wall clock that went backwards counts as no gap: still past the checkpoint's slot.
        let mut after = Judge::new(&spec);
        cp.resume_into(&spec, &mut after, AT, 50_000).unwrap();
        after.assess(&window(1000, ((900, 2, 20), (100, 1, 25), None)));
        assert_eq!(after.state().last_slot, 14);
    }
}
