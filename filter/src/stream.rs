//! Per-request contexts: the routing stream and the snapshot endpoint.

use std::rc::Rc;
use std::time::Duration;

use canary_core::config::{SnapshotEndpointConfig, SubsetName};
use canary_core::counter_record::CompletedRequest;
use canary_core::kill::KillOrder;
use canary_core::outcome::ResponseSummary;
use canary_core::served;
use canary_core::snapshot::{
    COMPACT_CONTENT_TYPE, InstanceInfo, SNAPSHOT_FORMAT, Snapshot, SubsetSnapshot, accepts_compact, snapshot_query,
};
use canary_core::split::{Choice, Reason, Role, affinity_value, choose_subset, header_text};
use canary_core::store::{self, UpdateError, UpdateOrRefuse};
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
    chosen: Option<Chosen>,
}

/// What a routing stream remembers between its callbacks.
#[derive(Debug, Clone, Copy)]
struct Chosen {
    choice: Choice,
    started: Duration,
    /// When the response headers came: the end of the latency an SLO means (time to first
    /// byte), leaving out the client's download and a stream's life.
    responded: Option<Duration>,
    /// The response is a stream (`LatencyPolicy`): counted, but not timed.
    untimed: bool,
    grpc: bool,
    grpc_status: Option<u32>,
}

impl RouteStream {
    pub fn new(state: Rc<RouteState>, random: u64) -> Self {
        RouteStream { state, random, chosen: None }
    }
}

/// A `grpc-status` value (`"14"`); anything else is unreadable and `None`.
fn grpc_status(value: Option<Vec<u8>>) -> Option<u32> {
    canary_core::split::header_text(value).and_then(|v| v.trim().parse().ok())
}

impl Context for RouteStream {}

impl HttpContext for RouteStream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let cfg = &self.state.config;
        let mut choice = choose_subset(cfg, &host::RequestHeaders, self.random);
        // Only a canary choice consults the kill record: stable requests pay no extra host call.
        if choice.role == Role::Canary && store::kill_holds(&SharedData, cfg) {
            choice = choice.under_kill(cfg);
        }
        let label = cfg.label_value(choice.subset(cfg));
        // Overwrites any value the client sent: a client cannot pick its subset with the label.
        // Envoy clears its route cache when wasm writes a request header, so the router matches
        // the route again with this label (labels_e2e.rs proves it with a route matched before
        // the filter ran); no separate `clear_route_cache` call is needed.
        if let Err(s) = host::set_request_header(cfg.label_header.as_str(), &label) {
            host::error(&format!("canary-gate: cannot set {}: {s:?}; the request is not counted", cfg.label_header));
            return Action::Continue;
        }
        self.chosen = Some(Chosen {
            choice,
            started: host::now(),
            responded: None,
            untimed: false,
            grpc: false,
            grpc_status: None,
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(chosen) = self.chosen.as_mut() else { return Action::Continue };
        chosen.responded = Some(host::now());
        let content_type = host::response_header("content-type");
        chosen.untimed = self.state.config.latency.excludes(None, content_type.as_deref());
        chosen.grpc = content_type.as_deref().is_some_and(|ct| ct.starts_with(b"application/grpc"));
        if chosen.grpc {
            // A trailers-only response carries its status in the headers.
            chosen.grpc_status = grpc_status(host::response_header("grpc-status"));
        }
        if chosen.choice.new_affinity
            && let Some(cookie) = &self.state.config.affinity_cookie
            && let Err(s) = host::add_response_header("set-cookie", &cookie.set_cookie(&affinity_value(self.random)))
        {
            host::warn(&format!("canary-gate: cannot set the affinity cookie: {s:?}"));
        }
        #[cfg(feature = "host-call-count")]
        host::report_calls();
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(chosen) = self.chosen.as_mut()
            && chosen.grpc
            && let Some(status) = grpc_status(host::response_trailer("grpc-status"))
        {
            chosen.grpc_status = Some(status);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(chosen) = self.chosen else {
            return;
        };
        let cfg = &self.state.config;
        let status = host::property_u64(&["response", "code"]).and_then(|c| u16::try_from(c).ok()).filter(|c| *c != 0);
        let summary = ResponseSummary {
            status,
            grpc_status: chosen.grpc_status,
            // Read only where the policy looks at it (`failure.resets`): one host call fewer.
            flags: if cfg.failure.reads_flags() { host::property_u64(&["response", "flags"]).unwrap_or(0) } else { 0 },
        };
        let outcome = cfg.failure.classify(summary);
        let end = chosen.responded.unwrap_or_else(host::now);
        let latency_us = u64::try_from(end.saturating_sub(chosen.started).as_micros()).unwrap_or(u64::MAX);
        let timed = !chosen.untimed && !cfg.latency.excludes(status, None);

        let labelled = chosen.choice.role;
        let cluster = host::property(&["xds", "cluster_name"]);
        let attribution = served::attribute(cfg, labelled, served::served(cfg, cluster.as_deref()));
        if attribution.misrouted {
            host::increment_metric(self.state.misrouted, 1);
            if let Err(e) = store::record_misrouted(&SharedData, &cfg.rollout, labelled, cluster.as_deref()) {
                host::error(&format!("canary-gate: cannot count a misrouted request: {e:?}"));
            }
        }
        let key = if chosen.choice.reason == Reason::DarkLaunch && attribution.counted_as == Role::Canary {
            self.state.dark_launch_key.as_str()
        } else {
            self.state.key(attribution.counted_as)
        };
        // A keyed request is also counted under its key's cluster, in the same record and the
        // same write: no extra host call (canary_core::sticky).
        let request =
            CompletedRequest { outcome, latency_us: timed.then_some(latency_us), cluster: chosen.choice.cluster };
        // Just after a module swap an older filter may still finish requests, and it cannot
        // read format 2: keep format-1 records as they are until it is surely done.
        let format = store::RecordFormat::at(self.state.process_started, self.state.module_started, chosen.started);
        match store::update_counters(&SharedData, key, MAX_CAS_ATTEMPTS, &request, format) {
            Ok(report) => {
                if report.converted {
                    host::info(&format!("canary-gate: counters at {key} converted from an earlier filter's format"));
                }
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
        let m = self.state.metrics(attribution.counted_as);
        host::increment_metric(m.requests, 1);
        if outcome == canary_core::Outcome::Failure {
            host::increment_metric(m.failures, 1);
        }
        if timed {
            host::record_metric(m.duration, latency_us);
        }
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

    /// The snapshot of rollout `wanted`, or of the only rollout when none is named.
    fn snapshot(&self, wanted: Option<SubsetName>) -> Result<Snapshot, (u32, String)> {
        let internal = |e: String| (500, e);
        // Read through the store on every request, so every worker reports the same instance even
        // if two of them raced to create it.
        let candidate =
            self.instance.as_ref().ok_or_else(|| internal("the proxy instance record is missing".into()))?;
        let instance = store::instance(&SharedData, candidate).map_err(|e| internal(e.to_string()))?;
        let rollouts = store::rollouts(&SharedData).map_err(|e| internal(e.to_string()))?;
        let rollout = match (wanted, rollouts.as_slice()) {
            (Some(name), _) => Some(name),
            (None, []) => None,
            (None, [only]) => Some(only.clone()),
            (None, many) => {
                let names: Vec<&str> = many.iter().map(SubsetName::as_str).collect();
                return Err((
                    400,
                    format!("this proxy runs {} rollouts ({}); name one with ?rollout=", many.len(), names.join(", ")),
                ));
            }
        };
        let route = match &rollout {
            Some(name) => Some(
                store::published_route(&SharedData, name)
                    .map_err(|e| internal(e.to_string()))?
                    .ok_or_else(|| (404, format!("this proxy runs no rollout {name}")))?,
            ),
            None => None,
        };
        let (mut subsets, mut kill, mut misrouted, mut dark_launch) = (Vec::new(), None, None, None);
        if let Some(r) = &route {
            for (role, subset) in [(Role::Stable, &r.stable), (Role::Canary, &r.canary)] {
                let key = store::counters_key(&r.rollout, subset);
                let counters = store::read_counters(&SharedData, &key).map_err(|e| internal(format!("{key}: {e}")))?;
                subsets.push(SubsetSnapshot { subset: subset.clone(), role, counters });
            }
            kill = store::kill_record(&SharedData, &r.rollout).map_err(|e| internal(format!("kill record: {e}")))?;
            misrouted = Some(store::misrouted(&SharedData, &r.rollout).map_err(|e| internal(e.to_string()))?)
                .filter(|m| m.total() > 0);
            if r.dark_launch.is_some() {
                let key = store::dark_launch_key(&r.rollout, &r.canary);
                dark_launch =
                    Some(store::read_counters(&SharedData, &key).map_err(|e| internal(format!("{key}: {e}")))?);
            }
        }
        Ok(Snapshot {
            kill,
            format: SNAPSHOT_FORMAT.to_owned(),
            instance,
            taken_at_unix_ms: u64::try_from(host::now().as_millis()).unwrap_or(u64::MAX),
            route,
            subsets,
            misrouted,
            dark_launch,
            rollouts,
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
                    "canary-gate: kill order for rollout {} ({}): no canary traffic up to revision {}",
                    order.rollout, order.id, record.up_to_revision
                ));
                let body = serde_json::json!({ "rollout": order.rollout, "kill": record }).to_string();
                Self::reply(200, body.as_bytes())
            }
            Err(UpdateOrRefuse::Refused(why)) => {
                host::warn(&format!("canary-gate: refused a kill order: {why}"));
                let body = serde_json::json!({ "error": format!("kill order refused: {why}") }).to_string();
                Self::reply(409, body.as_bytes())
            }
            Err(UpdateOrRefuse::Update(e)) => {
                host::error(&format!("canary-gate: cannot record the kill order for {}: {e:?}", order.rollout));
                let body = serde_json::json!({ "error": format!("cannot record the kill: {e:?}") }).to_string();
                Self::reply(500, body.as_bytes())
            }
        }
    }

    fn reply(status: u32, body: &[u8]) -> Action {
        Self::reply_as(status, "application/json", body)
    }

    fn reply_as(status: u32, content_type: &str, body: &[u8]) -> Action {
        if let Err(s) =
            host::send_response(status, &[("content-type", content_type), ("cache-control", "no-store")], body)
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
        let full = header_text(host::request_header(":path")).unwrap_or_default();
        let (path, query) = full.split_once('?').unwrap_or((full.as_str(), ""));
        let method = header_text(host::request_header(":method")).unwrap_or_default();
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
        let wanted = match snapshot_query(query) {
            Ok(w) => w,
            Err(e) => return Self::reply(400, serde_json::json!({ "error": e }).to_string().as_bytes()),
        };
        // The compact form only for a client that asks for it (gate-agent); anything else, and
        // every agent built before it, gets the JSON form as before.
        let compact = host::request_header("accept").is_some_and(|a| accepts_compact(&a));
        let encoded = self.snapshot(wanted).and_then(|s| {
            let body = if compact { s.to_compact_json() } else { serde_json::to_vec(&s) };
            body.map_err(|e| (500, e.to_string()))
        });
        match encoded {
            Ok(body) if compact => Self::reply_as(200, COMPACT_CONTENT_TYPE, &body),
            Ok(body) => Self::reply(200, &body),
            Err((status, e)) => {
                if status == 500 {
                    host::error(&format!("canary-gate: cannot build a snapshot: {e}"));
                }
                let body = serde_json::json!({ "error": e }).to_string();
                Self::reply(status, body.as_bytes())
            }
        }
    }
}
