//! The root context: validates the plugin configuration and hands each HTTP stream a shared,
//! already-validated view of it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use canary_core::config::{self, PluginConfig, RouteConfig, SnapshotEndpointConfig};
use canary_core::gauges;
use canary_core::guard;
use canary_core::metrics;
use canary_core::rng::SplitMix64;
use canary_core::snapshot::InstanceInfo;
use canary_core::split::Role;
use canary_core::store;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, MetricType};

use crate::host::{self, SharedData};
use crate::stream::{RouteStream, SnapshotStream};

/// Envoy stat ids of one subset's metrics (`None` where the host refused to define one).
#[derive(Debug, Clone, Copy)]
pub struct SubsetMetrics {
    pub requests: Option<u32>,
    pub failures: Option<u32>,
    pub duration: Option<u32>,
}

impl SubsetMetrics {
    /// No Envoy stats for this subset (`envoy_stats: false`): every per-request stats call is
    /// skipped, since the filter makes none for a metric without an id.
    const NONE: SubsetMetrics = SubsetMetrics { requests: None, failures: None, duration: None };

    fn define(subset: &str) -> Self {
        let name = |base| metrics::per_subset(base, subset);
        SubsetMetrics {
            requests: host::define_metric(MetricType::Counter, &name(metrics::REQUESTS_TOTAL)),
            failures: host::define_metric(MetricType::Counter, &name(metrics::FAILURES_TOTAL)),
            duration: host::define_metric(MetricType::Histogram, &name(metrics::DURATION_US)),
        }
    }

    /// As [`SubsetMetrics::define`], named per rollout when the configuration asks for it (a
    /// waypoint, where several gates' filters share one Envoy: see `canary_core::gauges`); none
    /// at all when `envoy_stats` is off.
    fn define_for(config: &RouteConfig, subset: &str) -> Self {
        if !config.envoy_stats {
            return Self::NONE;
        }
        if !config.rollout_in_metric_names {
            return Self::define(subset);
        }
        let name = |base| gauges::per_rollout_subset(base, config.rollout.as_str(), subset);
        SubsetMetrics {
            requests: host::define_metric(MetricType::Counter, &name(metrics::REQUESTS_TOTAL)),
            failures: host::define_metric(MetricType::Counter, &name(metrics::FAILURES_TOTAL)),
            duration: host::define_metric(MetricType::Histogram, &name(metrics::DURATION_US)),
        }
    }
}

/// Sets the gauges that say which configuration this proxy applies (`canary_gate_applied_*`,
/// `canary_gate_killed`, `canary_gate_start_time_seconds`): once per accepted configuration,
/// never per request. Read from Envoy's stats where no snapshot listener exists (waypoints).
fn set_applied_gauges(config: &RouteConfig, instance: Option<&InstanceInfo>) {
    for (name, value) in gauges::values(config) {
        host::record_metric(host::define_metric(MetricType::Gauge, &name), value);
    }
    if let Some(instance) = instance {
        let seconds = instance.started_at_unix_ms / 1000;
        host::record_metric(host::define_metric(MetricType::Gauge, gauges::START_TIME_SECONDS), seconds);
    }
}

/// Everything a routing stream needs, computed once per configuration.
#[derive(Debug)]
pub struct RouteState {
    pub config: RouteConfig,
    pub stable_key: String,
    pub canary_key: String,
    /// Dark-launch requests' counters, apart from the canary's (see `store::dark_launch_key`).
    pub dark_launch_key: String,
    pub stable_metrics: SubsetMetrics,
    pub canary_metrics: SubsetMetrics,
    pub updates_dropped: Option<u32>,
    pub misrouted: Option<u32>,
    /// When this proxy started (its instance record) and when this module started in this VM:
    /// after a module swap, counter records stay in format 1 for a grace (`store::RecordFormat::at`).
    pub process_started: Duration,
    pub module_started: Duration,
}

impl RouteState {
    pub fn key(&self, role: Role) -> &str {
        match role {
            Role::Stable => &self.stable_key,
            Role::Canary => &self.canary_key,
        }
    }

    pub fn metrics(&self, role: Role) -> SubsetMetrics {
        match role {
            Role::Stable => self.stable_metrics,
            Role::Canary => self.canary_metrics,
        }
    }
}

#[derive(Debug, Clone)]
enum Active {
    Route(Rc<RouteState>),
    Snapshot(Rc<SnapshotEndpointConfig>),
}

/// One per worker thread (and one on the main thread) for each plugin configuration.
#[derive(Debug, Default)]
pub struct Root {
    active: Option<Active>,
    rng: Cell<u64>,
    instance: Option<InstanceInfo>,
}

impl Root {
    fn next_random(&self) -> u64 {
        let mut r = SplitMix64::new(self.rng.get());
        let v = r.next_u64();
        self.rng.set(v);
        v
    }

    /// This process's instance record, created by whichever root asks first.
    fn ensure_instance(&mut self) {
        let now = host::now();
        let candidate = InstanceInfo {
            id: format!("{:016x}", SplitMix64::new(self.rng.get() ^ now.as_nanos() as u64).next_u64()),
            started_at_unix_ms: now.as_millis() as u64,
        };
        match store::instance(&SharedData, &candidate) {
            Ok(info) => self.instance = Some(info),
            Err(e) => host::warn(&format!("canary-gate: cannot record the proxy instance: {e}")),
        }
    }

    fn configure_route(&mut self, config: RouteConfig) -> bool {
        // The typo guard compares with what this proxy applies now (any worker's last accepted
        // configuration of the rollout); a failed read checks max_weight alone.
        let applied = store::published_route(&SharedData, &config.rollout).ok().flatten();
        if let Err(e) = guard::check(&config, applied.as_ref()) {
            host::error(&format!("canary-gate: rejected configuration (revision {}): {e}", config.revision));
            return false;
        }
        let stable_key = store::counters_key(&config.rollout, &config.stable);
        let canary_key = store::counters_key(&config.rollout, &config.canary);
        let dark_launch_key = store::dark_launch_key(&config.rollout, &config.canary);
        for key in [&stable_key, &canary_key, &dark_launch_key] {
            if let Err(status) = store::ensure_key(&SharedData, key, &[]) {
                host::error(&format!(
                    "canary-gate: rejected configuration: cannot create counters {key} (status {status})"
                ));
                return false;
            }
        }
        if let Err(status) = store::publish_route(&SharedData, &config) {
            host::warn(&format!("canary-gate: cannot publish the route for snapshots (status {status})"));
        }
        match store::clear_stale_kill(&SharedData, &config) {
            Ok(Some(stale)) => host::info(&format!(
                "canary-gate: rollout {} is now rollout id {}: dropped the kill order of rollout id {}",
                config.rollout,
                config.effective_rollout_id(),
                stale.rollout_id
            )),
            Ok(None) => {}
            Err(e) => host::warn(&format!("canary-gate: cannot check for a stale kill order: {e:?}")),
        }
        host::info(&format!(
            "canary-gate: rollout {} revision {}: {} {} / {} {}",
            config.rollout,
            config.revision,
            config.stable,
            config.canary_weight.complement(),
            config.canary,
            config.canary_weight,
        ));
        let state = RouteState {
            stable_metrics: SubsetMetrics::define_for(&config, config.stable.as_str()),
            canary_metrics: SubsetMetrics::define_for(&config, config.canary.as_str()),
            updates_dropped: host::define_metric(MetricType::Counter, metrics::UPDATES_DROPPED_TOTAL),
            misrouted: host::define_metric(MetricType::Counter, metrics::MISROUTED_TOTAL),
            stable_key,
            canary_key,
            dark_launch_key,
            process_started: self
                .instance
                .as_ref()
                .map_or(Duration::ZERO, |i| Duration::from_millis(i.started_at_unix_ms)),
            module_started: module_started(),
            config,
        };
        set_applied_gauges(&state.config, self.instance.as_ref());
        self.active = Some(Active::Route(Rc::new(state)));
        true
    }
}

thread_local! {
    /// When this VM (one per thread) first configured a root context: when this module started
    /// serving here, after Envoy started or after a module swap.
    static MODULE_STARTED: Cell<Option<Duration>> = const { Cell::new(None) };
}

fn module_started() -> Duration {
    MODULE_STARTED.with(|started| {
        let at = started.get().unwrap_or_else(host::now);
        started.set(Some(at));
        at
    })
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.rng.get() == 0 {
            self.rng.set(host::now().as_nanos() as u64 | 1);
        }
        let bytes = host::plugin_configuration().unwrap_or_default();
        let parsed = match config::parse(&bytes) {
            Ok(p) => p,
            Err(e) => {
                // One line naming the field; returning false makes Envoy keep the last good config.
                host::error(&format!("canary-gate: rejected configuration: {e}"));
                return false;
            }
        };
        self.ensure_instance();
        match parsed {
            PluginConfig::Route(route) => self.configure_route(*route),
            PluginConfig::SnapshotEndpoint(cfg) => {
                host::info(&format!("canary-gate: serving snapshots at {}", cfg.path));
                self.active = Some(Active::Snapshot(Rc::new(cfg)));
                true
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match &self.active {
            Some(Active::Route(state)) => Some(Box::new(RouteStream::new(Rc::clone(state), self.next_random()))),
            Some(Active::Snapshot(cfg)) => Some(Box::new(SnapshotStream::new(Rc::clone(cfg), self.instance.clone()))),
            // Not configured: no filtering, so the route table's default (stable) applies.
            None => None,
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
