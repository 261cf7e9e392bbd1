//! One install, many rollouts: the `CanaryGate` custom resource and the controller that runs a
//! rollout for each.
//!
//! Deciding is separate from acting. The pure half: [`crd`] (the types and the shipped CRD),
//! [`convert`] (a gate to the rollout spec and filter configuration, with field paths in every
//! refusal), [`generate`] (the objects a gate owns), [`route`] (does the user's VirtualService
//! match the canary's label?) and [`reconcile`] (a gate and what exists to what should be done and
//! the status to write). The acting half, [`controller`], applies that with server-side apply
//! and runs one rollout loop ([`crate::control::Controller`]) per gate.

pub mod api;
pub mod controller;
pub mod convert;
pub mod crd;
pub mod generate;
pub mod metrics;
pub mod reconcile;
pub mod route;
