//! gate-agent: the I/O that carries out canary-rollout's decisions.
//!
//! The decisions live in crates with no I/O, which this crate re-exports under their old paths:
//! `canary-rollout` ([`collect`], [`stats`], [`judge`], [`spec`], [`rollout`], [`foreign`],
//! [`latency`]) and `canary-manifests` (in [`validate`], which adds the `CanaryGate` kind). Dependencies point one way: gate-agent →
//! canary-manifests → canary-rollout → canary-core.
//!
//! Here, each effect sits behind a small trait: [`source`] reads snapshots and sends kill orders
//! ([`source::CounterSource`], [`source::KillSwitch`]), [`router`] applies weights
//! ([`router::WeightRouter`]; the WasmPlugin one is in [`mesh`]), [`notify`] posts phase changes
//! and foreign writes ([`notify::Notifier`]). [`control`] runs the loop (read, judge, decide, act)
//! and publishes a [`status::StatusView`], saving the statistics' checkpoint in an
//! [`evidence::EvidenceStore`] so that a restarted agent resumes them; [`api`] serves HTTP and composes the Flagger,
//! Prometheus and Argo endpoints of [`integrations`]. Both read the status only through
//! [`status`], so the modules point one way: api → integrations → status ← control.

pub mod api;
pub mod control;
pub mod evidence;
pub mod gate;
pub mod integrations;
pub mod mesh;
pub mod notify;
pub mod router;
pub mod source;
pub mod status;
pub mod time;
pub mod validate;

pub use canary_rollout::{collect, envoy_stats, foreign, judge, latency, rollout, spec, stats};

pub use canary_rollout::{
    ByRole, ChangeKind, CommandRefused, ComparisonTest, Count, Decision, Evidence, Finding, Fleet, Judge, Metric,
    MetricKind, NoDataPolicy, Observation, Phase, PhaseChange, ProxyProblem, Reason, Rollout, RolloutStatus, SloTest,
    Spec, SpecError, Verdict, VerdictKind, WeightChange, Window,
};
