//! Names of the Envoy stats the filter defines, in one place, and the filter's per-VM record of
//! their ids ([`MetricIds`]).
//!
//! Envoy shows a wasm metric named `N` as `wasmcustom.N` in `/stats` and as `N` in
//! `/stats/prometheus`. The subset goes into the name as a `.subset.<name>` suffix, which the
//! bootstrap's `stats_tags` rule (see [`SUBSET_TAG_REGEX`]) turns into a `subset` label, so
//! Prometheus sees `canary_gate_requests_total{subset="v2"}`.

use std::collections::BTreeMap;

/// Completed requests per subset.
pub const REQUESTS_TOTAL: &str = "canary_gate_requests_total";
/// Completed requests that counted as failures, per subset.
pub const FAILURES_TOTAL: &str = "canary_gate_failures_total";
/// Latency from request headers to response headers, per subset (a histogram, µs).
pub const DURATION_US: &str = "canary_gate_request_duration_microseconds";
/// Requests the route table did not send where their label said (should stay 0; see `served`).
pub const MISROUTED_TOTAL: &str = "canary_gate_misrouted_requests_total";
/// Counter updates dropped after losing every compare-and-swap retry (should stay 0).
pub const UPDATES_DROPPED_TOTAL: &str = "canary_gate_dropped_updates_total";

/// The `stats_tags` regex (Envoy RE2) that moves `.subset.<name>` into a `subset` tag.
pub const SUBSET_TAG_REGEX: &str = r"^wasmcustom\.canary_gate_\w+(\.subset\.([a-z0-9-]+))$";

/// Stat name of a per-subset metric.
pub fn per_subset(base: &str, subset: &str) -> String {
    format!("{base}.subset.{subset}")
}

/// Metric ids by name, so that each metric is defined once per VM, not once per configuration.
///
/// Envoy gives every `define_metric` call a new id and keeps it, with its stat, for as long as
/// the VM lives, and a VM outlives its configurations: a weight change reloads the configuration
/// in the same VM. Defining the metrics in every `on_configure` therefore grew Envoy's heap with
/// every weight change (7 metrics on the main thread and each worker, ~570 bytes per reload with
/// two workers, found by `make soak`). Ids belong to the VM, not to a root context, so the first
/// id of a name serves every later configuration.
#[derive(Debug, Default)]
pub struct MetricIds {
    ids: BTreeMap<String, u32>,
}

impl MetricIds {
    /// The id of metric `name`, calling `define` only if this VM has none yet. A failed
    /// definition (`None`) is not remembered, so the next configuration tries again.
    pub fn get_or_define(&mut self, name: &str, define: impl FnOnce() -> Option<u32>) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = define()?;
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seven names the filter defines for a rollout with subsets v1 and v2.
    fn filter_metrics() -> Vec<String> {
        let mut names = vec![UPDATES_DROPPED_TOTAL.to_owned()];
        for subset in ["v1", "v2"] {
            for base in [REQUESTS_TOTAL, FAILURES_TOTAL, DURATION_US] {
                names.push(per_subset(base, subset));
            }
        }
        names
    }

    #[test]
    fn a_thousand_reloads_define_each_metric_once() {
        let mut ids = MetricIds::default();
        let mut defined = Vec::new();
        let mut first = Vec::new();
        for reload in 0..1000 {
            let got: Vec<Option<u32>> = filter_metrics()
                .iter()
                .map(|name| {
                    ids.get_or_define(name, || {
                        defined.push(name.clone());
                        u32::try_from(defined.len()).ok()
                    })
                })
                .collect();
            if reload == 0 {
                first = got;
            } else {
                assert_eq!(got, first, "reload {reload} uses the ids of the first configuration");
            }
        }
        assert_eq!(defined, filter_metrics(), "one host definition per metric, in order");
        assert!(first.iter().all(Option::is_some));
    }

    #[test]
    fn a_failed_definition_is_tried_again_on_the_next_configuration() {
        let mut ids = MetricIds::default();
        assert_eq!(ids.get_or_define(REQUESTS_TOTAL, || None), None);
        assert_eq!(ids.get_or_define(REQUESTS_TOTAL, || Some(7)), Some(7));
        assert_eq!(ids.get_or_define(REQUESTS_TOTAL, || Some(8)), Some(7));
    }
}
