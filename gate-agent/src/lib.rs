//! gate-agent: decisions free of I/O, and the thin I/O pieces that carry them out.
//!
//! The decision modules ([`collect`], [`stats`], [`judge`], [`spec`], [`rollout`]) use no sockets,
//! files, clocks or async runtime. The acting modules sit behind small traits: [`source`] reads
//! snapshots ([`source::CounterSource`]), [`router`] applies weights ([`router::WeightRouter`]),
//! [`notify`] posts phase changes ([`notify::Notifier`]), and [`api`] serves HTTP.
//!
//! The agent reads canary-filter snapshots from every proxy, turns them into one fleet-wide
//! [`Window`] of deltas per tick ([`collect`]), judges the canary with anytime-valid sequential
//! tests and Flagger-style window checks ([`stats`], [`judge`]), and steps a [`Rollout`] through
//! its [`Phase`]s, returning [`Decision`]s that the I/O layer applies through its router. Time is
//! always passed in as milliseconds since an arbitrary epoch, so every rule here is tested by
//! stepping fabricated windows tick by tick.

pub mod api;
pub mod collect;
pub mod control;
pub mod foreign;
pub mod gate;
pub mod integrations;
pub mod judge;
pub mod latency;
pub mod mesh;
pub mod notify;
pub mod rollout;
pub mod router;
pub mod source;
pub mod spec;
pub mod stats;
pub mod time;
pub mod validate;

pub use collect::{ByRole, Fleet, Observation, ProxyProblem, Window};
pub use judge::{Finding, Judge, Reason, Verdict, VerdictKind};
pub use rollout::{ChangeKind, CommandRefused, Decision, Phase, PhaseChange, Rollout, RolloutStatus, WeightChange};
pub use spec::{Metric, MetricKind, NoDataPolicy, Spec, SpecError};
pub use stats::{ComparisonTest, Count, Evidence, SloTest};
