//! Per-request contexts: the routing stream and the snapshot endpoint.

use std::rc::Rc;
use std::time::Duration;

use canary_core::config::SnapshotEndpointConfig;
use canary_core::kill::KillOrder;
use canary_core::outcome::ResponseSummary;
use canary_core::snapshot::{InstanceInfo, SNAPSHOT_FORMAT, Snapshot, SubsetSnapshot};
use canary_core::split::{Reason, Role, choose_subset};
use canary_core::store::{self, UpdateError};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::host::{self, SharedData};
use crate::root::RouteState;

/// Compare-and-swap attempts before an update is dropped (and counted as dropped).
const MAX_CAS_ATTEMPTS: u32 = 64;

/// A request on the public listener.
pub struct RouteStream {
    state: Rc<RouteState>,
    random: u64,
    /// Set once the subset is chosen; only chosen requests are counted.
    chosen: Option<(Role, Duration)>,
}

impl RouteStream {
    pub fn new(state: Rc<RouteState>, random: u64) -> Self {
        RouteStream { state, random, chosen: None }
    }
}

impl Context for RouteStream {}

impl HttpContext for RouteStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let cfg = &self.state.config;
        let mut choice = choose_subset(cfg, host::request_header, self.random);
        // Only a canary choice consults the kill record: stable requests pay no extra host call.
        if choice.role == Role::Canary
            && choice.reason != Reason::DarkLaunch
            && store::kill_holds(&SharedData, &cfg.rollout, cfg.revision)
        {
            choice = choice.under_kill();
        }
        let subset = choice.subset(cfg);
        // Overwrites any value the client sent: a client cannot pick its subset with the label.
        if let Err(s) = host::set_request_header(cfg.label_header.as_str(), subset.as_str()) {
            host::error(&format!("canary-gate: cannot set {}: {s:?}; the request is not counted", cfg.label_header));
            return Action::Continue;
        }
        if let Err(s) = host::clear_route_cache() {
            host::warn(&format!("canary-gate: clear_route_cache failed: {s:?}"));
        }
        self.chosen = Some((choice.role, host::now()));
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some((role, started)) = self.chosen else {
            return;
        };
        let status = host::property_u64(&["response", "code"]).and_then(|c| u16::try_from(c).ok());
        let outcome = self.state.config.failure.classify(ResponseSummary { status: status.filter(|c| *c != 0) });
        let latency_us = u64::try_from(host::now().saturating_sub(started).as_micros()).unwrap_or(u64::MAX);
        let key = self.state.key(role);
        match store::update_counters(&SharedData, key, MAX_CAS_ATTEMPTS, |c| c.record(outcome, latency_us)) {
            Ok(report) => {
                if let Some(e) = report.replaced_corrupt {
                    host::error(&format!(
                        "canary-gate: counters at {key} were unreadable ({e}); started again from zero"
                    ));
                }
            }
            Err(UpdateError::Contended { attempts }) => {
                host::increment_metric(self.state.updates_dropped, 1);
                host::error(&format!("canary-gate: dropped a counter update for {key} after {attempts} conflicts"));
            }
            Err(UpdateError::Host(s)) => {
                host::increment_metric(self.state.updates_dropped, 1);
                host::error(&format!("canary-gate: shared data update for {key} failed with status {s}"));
            }
        }
        let m = self.state.metrics(role);
        host::increment_metric(m.requests, 1);
        if outcome == canary_core::Outcome::Failure {
            host::increment_metric(m.failures, 1);
        }
        host::record_metric(m.duration, latency_us);
    }
}

/// A request on the snapshot listener.
pub struct SnapshotStream {
    cfg: Rc<SnapshotEndpointConfig>,
    instance: Option<InstanceInfo>,
}

impl SnapshotStream {
    pub fn new(cfg: Rc<SnapshotEndpointConfig>, instance: Option<InstanceInfo>) -> Self {
        SnapshotStream { cfg, instance }
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        // Read through the store on every request, so every worker reports the same instance even
        // if two of them raced to create it.
        let candidate = self.instance.as_ref().ok_or("the proxy instance record is missing")?;
        let instance = store::instance(&SharedData, candidate).map_err(|e| e.to_string())?;
        let route = store::published_route(&SharedData).map_err(|e| e.to_string())?;
        let mut subsets = Vec::new();
        if let Some(r) = &route {
            for (role, subset) in [(Role::Stable, &r.stable), (Role::Canary, &r.canary)] {
                let key = store::counters_key(&r.rollout, subset);
                let counters = store::read_counters(&SharedData, &key).map_err(|e| format!("{key}: {e}"))?;
                subsets.push(SubsetSnapshot { subset: subset.clone(), role, counters });
            }
        }
        let kill = match &route {
            Some(r) => store::kill_record(&SharedData, &r.rollout).map_err(|e| format!("kill record: {e}"))?,
            None => None,
        };
        Ok(Snapshot {
            kill,
            format: SNAPSHOT_FORMAT.to_owned(),
            instance,
            taken_at_unix_ms: u64::try_from(host::now().as_millis()).unwrap_or(u64::MAX),
            route,
            subsets,
        })
    }

    /// Records a kill order (see `canary_core::kill`) and answers with the kill now in force.
    fn kill(query: &str) -> Action {
        let order = match KillOrder::from_query(query) {
            Ok(o) => o,
            Err(e) => {
                let body = serde_json::json!({ "error": format!("bad kill order: {e}") }).to_string();
                return Self::reply(400, body.as_bytes());
            }
        };
        let now = u64::try_from(host::now().as_millis()).unwrap_or(u64::MAX);
        match store::record_kill(&SharedData, &order, now) {
            Ok(record) => {
                host::warn(&format!(
                    "canary-gate: kill order for rollout {}: no weighted canary traffic up to revision {}",
                    order.rollout, record.up_to_revision
                ));
                let body = serde_json::json!({ "rollout": order.rollout, "kill": record }).to_string();
                Self::reply(200, body.as_bytes())
            }
            Err(e) => {
                host::error(&format!("canary-gate: cannot record the kill order for {}: {e:?}", order.rollout));
                let body = serde_json::json!({ "error": format!("cannot record the kill: {e:?}") }).to_string();
                Self::reply(500, body.as_bytes())
            }
        }
    }

    fn reply(status: u32, body: &[u8]) -> Action {
        if let Err(s) =
            host::send_response(status, &[("content-type", "application/json"), ("cache-control", "no-store")], body)
        {
            host::error(&format!("canary-gate: cannot send the snapshot response: {s:?}"));
            return Action::Continue;
        }
        Action::Pause
    }
}

impl Context for SnapshotStream {}

impl HttpContext for SnapshotStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let full = host::request_header(":path").unwrap_or_default();
        let (path, query) = full.split_once('?').unwrap_or((full.as_str(), ""));
        let method = host::request_header(":method").unwrap_or_default();
        if path == self.cfg.kill_path {
            if method != "POST" {
                return Self::reply(405, br#"{"error":"only POST"}"#);
            }
            return Self::kill(query);
        }
        if path != self.cfg.path {
            return Self::reply(404, br#"{"error":"not found"}"#);
        }
        if method != "GET" {
            return Self::reply(405, br#"{"error":"only GET"}"#);
        }
        match self.snapshot().and_then(|s| serde_json::to_vec(&s).map_err(|e| e.to_string())) {
            Ok(body) => Self::reply(200, &body),
            Err(e) => {
                host::error(&format!("canary-gate: cannot build a snapshot: {e}"));
                let body = serde_json::json!({ "error": e }).to_string();
                Self::reply(500, body.as_bytes())
            }
        }
    }
}
