//! Names of the Envoy stats the filter defines, in one place.
//!
//! Envoy shows a wasm metric named `N` as `wasmcustom.N` in `/stats` and as `N` in
//! `/stats/prometheus`. The subset goes into the name as a `.subset.<name>` suffix, which the
//! bootstrap's `stats_tags` rule (see [`SUBSET_TAG_REGEX`]) turns into a `subset` label, so
//! Prometheus sees `canary_gate_requests_total{subset="v2"}`.

/// Completed requests per subset.
pub const REQUESTS_TOTAL: &str = "canary_gate_requests_total";
/// Completed requests that counted as failures, per subset.
pub const FAILURES_TOTAL: &str = "canary_gate_failures_total";
/// Latency from request headers to end of response, per subset (a histogram, µs).
pub const DURATION_US: &str = "canary_gate_request_duration_microseconds";
/// Counter updates dropped after losing every compare-and-swap retry (should stay 0).
pub const UPDATES_DROPPED_TOTAL: &str = "canary_gate_dropped_updates_total";

/// The `stats_tags` regex (Envoy RE2) that moves `.subset.<name>` into a `subset` tag.
pub const SUBSET_TAG_REGEX: &str = r"^wasmcustom\.canary_gate_\w+(\.subset\.([a-z0-9-]+))$";

/// Stat name of a per-subset metric.
pub fn per_subset(base: &str, subset: &str) -> String {
    format!("{base}.subset.{subset}")
}
