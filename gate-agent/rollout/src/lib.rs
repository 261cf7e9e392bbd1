//! canary-rollout: how gate-agent decides, with no I/O.
//!
//! The agent reads canary-filter snapshots from every proxy and turns them into one fleet-wide
//! [`Window`] of deltas per tick ([`collect`]); judges the canary with anytime-valid sequential
//! tests and Flagger-style window checks ([`stats`], [`judge`]) against a rollout [`Spec`]
//! ([`spec`]); and steps a [`Rollout`] through its [`Phase`]s ([`rollout`]), returning
//! [`Decision`]s for the I/O layer (the gate-agent crate) to carry out. [`foreign`] tells the
//! agent's own writes from everyone else's; [`latency`] keeps the sliding latency window of the
//! status view; [`checkpoint`] carries the evidence across agent restarts.
//!
//! This crate uses no sockets, files, clocks or async runtime, and builds for wasm32 to prove it
//! (`make lint`). Time is always passed in as milliseconds since an arbitrary epoch, so every rule
//! here is tested by stepping fabricated windows tick by tick.

pub mod checkpoint;
pub mod collect;
pub mod envoy_stats;
pub mod foreign;
pub mod judge;
pub mod latency;
pub mod noninferiority;
pub mod rollout;
#[cfg(test)]
mod sim;
pub mod spec;
pub mod stats;
pub mod time;

pub use checkpoint::{Checkpoint, ResumeRefused};
pub use collect::{ByRole, Fleet, Observation, ProxyProblem, Window};
pub use judge::{Finding, Judge, Reason, Verdict, VerdictKind};
pub use noninferiority::{ErrorMargin, GateEvidence};
pub use rollout::{ChangeKind, CommandRefused, Decision, Phase, PhaseChange, Rollout, RolloutStatus, WeightChange};
pub use spec::{Metric, MetricKind, NoDataPolicy, Spec, SpecError};
pub use stats::{ComparisonTest, Count, Evidence, SloTest};
