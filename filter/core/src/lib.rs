//! canary-gate's decision logic, free of any proxy-wasm dependency.
//!
//! The filter (a thin proxy-wasm adapter) and gate-agent share these definitions, so the
//! configuration the agent writes and the snapshot it reads have exactly one meaning. Everything
//! here takes its inputs (time, randomness, headers, stored bytes) as arguments, so it is tested
//! natively, on 32-bit wasm, and by property tests.

pub mod config;
pub mod counter_record;
pub mod counters;
pub mod ecds;
pub mod gauges;
pub mod guard;
pub mod hash;
pub mod histogram;
pub mod kill;
pub mod metrics;
pub mod outcome;
pub mod record;
pub mod rng;
pub mod served;
pub mod snapshot;
pub mod split;
pub mod sticky;
pub mod store;
pub mod weight;

pub use config::{
    ConfigError, DarkLaunch, FailurePolicy, PluginConfig, RouteConfig, SnapshotEndpointConfig, StickyKey, SubsetName,
};
pub use counters::SubsetCounters;
pub use hash::{Bucket, sticky_bucket};
pub use histogram::LatencyHistogram;
pub use kill::{KillOrder, KillRecord};
pub use outcome::{Outcome, ResponseSummary};
pub use record::{RolloutPhase, RolloutRecord};
pub use snapshot::{InstanceInfo, Snapshot, SubsetSnapshot};
pub use split::{Choice, Reason, Role, choose_subset};
pub use weight::Weight;
