//! The acting half of `gate-agent controller`: carries out what [`super::reconcile`],
//! [`super::generate`] and [`super::route`] decide, for every CanaryGate in the namespaces it
//! watches.
//!
//! Level-based, on a short poll (default 1 s; a list of gates and one of the generated
//! WasmPlugins per watched namespace): a new, changed or deleted gate is acted on within one poll.
//! For each gate it
//! 1. checks the gate ([`super::convert::plan`]); a refusal goes into the status with the field;
//! 2. clears the durable state when a new rollout starts (a new canary or `spec.restartedAt`);
//! 3. applies the generated objects with server-side apply under one field manager
//!    ([`FIELD_MANAGER`], forced: the controller owns them), again when an edit to a generated
//!    WasmPlugin is seen and every `resync`;
//! 4. checks the user's VirtualService for the canary's label match; without it the rollout does
//!    not start, and the `Ready` condition says what to add;
//! 5. runs one rollout loop ([`crate::control::Controller`]) per gate, with the route WasmPlugin
//!    as its durable store, the gate's pods as its proxies and Events regarding the gate, and
//!    writes the loop's view into the gate's status.
//!
//! A deleted gate's rollout is rolled back (kill order and 0% in the WasmPlugin) before its loop
//! stops; the owned objects then go with the gate through their owner references. Only the
//! leader acts: on losing the Lease every loop stops, and the next leader resumes each from its
//! WasmPlugin.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::convert::{GatePlan, plan};
use super::crd::{AttachmentMode, CanaryGate, GateCondition};
use super::generate::{self, Install, MANAGED_BY, Owner, Placement, holds, route_plugin_name};
use super::reconcile::{self, Blocked, ROLLOUT_ANNOTATION};
use crate::api::{Command, CommandRequest, StatusView};
use crate::control::{Controller, Settings, stopped};
use crate::mesh::bounded;
use crate::mesh::discovery::PodTargets;
use crate::mesh::envoy_stats::EnvoyStatsSource;
use crate::mesh::events::{Both, KubeEvents};
use crate::mesh::extension::PluginKind;
use crate::mesh::lease::{LeaderGated, Leadership};
use crate::mesh::wasmplugin::PluginRouter;
use crate::mesh::waypoint;
use crate::notify::WebhookNotifier;
use crate::source::{CounterSource, HttpSource, KillSwitch};

/// The field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "canary-gate-controller";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// The namespaces to watch; empty for all.
    pub namespaces: Vec<String>,
    pub install: Install,
    /// This replica (the pod name), as Events name it.
    pub identity: String,
    pub poll: Duration,
    /// Every generated object is applied again this often, edited or not.
    pub resync: Duration,
    pub kube_timeout: Duration,
    /// The rollout loops' tick.
    pub tick: Duration,
    pub fetch_timeout: Duration,
    pub discovery_interval: Duration,
    pub snapshot_path: String,
    pub kill_path: String,
    /// Each rollout loop's settings (targets come from pod discovery).
    pub rollout: Settings,
    /// The kind of the generated plugins; `None`: whichever the cluster serves, asked once at
    /// start ([`PluginKind::preferred`]).
    pub plugin_kind: Option<PluginKind>,
    /// Where a waypoint replica serves its Envoy stats (`/stats/prometheus`): Istio's 15090
    /// ([`crate::mesh::envoy_stats::DEFAULT_STATS_PORT`]), `--waypoint-stats-port` to override.
    pub waypoint_stats_port: u16,
}

/// A running gate as the API reaches it.
#[derive(Debug, Clone)]
pub struct GateHandle {
    pub status: watch::Receiver<StatusView>,
    pub commands: mpsc::Sender<CommandRequest>,
}

/// (namespace, name) → the gate's loop; read by the API.
pub type GateIndex = Arc<RwLock<BTreeMap<(String, String), GateHandle>>>;

/// A gate's rollout loop and its status writer.
#[derive(Debug)]
struct Run {
    stop: watch::Sender<bool>,
    /// The latest edit, when it was refused: the loop goes on with the spec it started with.
    refused: watch::Sender<Option<reconcile::RefusedEdit>>,
    handle: GateHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the controller knows about one gate.
#[derive(Debug, Default)]
struct GateState {
    uid: String,
    generation: Option<i64>,
    plan: Option<GatePlan>,
    objects: Vec<Value>,
    applied_at: Option<Instant>,
    blocked: Option<Blocked>,
    run: Option<Run>,
    conditions: Vec<GateCondition>,
}

type Key = (String, String);

/// Runs the controller until `stop` turns true: acts while `leadership` leads, stands by otherwise.
pub async fn run(
    client: Client,
    settings: ControllerSettings,
    mut leadership: Leadership,
    index: GateIndex,
    stop: watch::Receiver<bool>,
) {
    let mut settings = settings;
    let kind = match settings.plugin_kind {
        Some(kind) => kind,
        None => match PluginKind::served(&client, settings.kube_timeout).await {
            Ok(Some(kind)) => kind,
            Ok(None) => {
                tracing::error!("the cluster serves neither WasmPlugin nor TrafficExtension (is Istio installed?)");
                PluginKind::WasmPlugin
            }
            Err(e) => {
                tracing::warn!("asking which plugin kinds the cluster serves: {e}; generating WasmPlugins");
                PluginKind::WasmPlugin
            }
        },
    };
    tracing::info!(%kind, "generating the filter's plugins as {kind}s");
    settings.plugin_kind = Some(kind);
    let settings = settings;
    let mut gates: BTreeMap<Key, GateState> = BTreeMap::new();
    loop {
        if !leadership.is_leader() {
            stop_all(&mut gates, &index).await;
            tracing::info!("standing by: another replica leads");
            tokio::select! {
                () = leadership.acquired() => {}
                () = stopped(stop.clone()) => break,
            }
            tracing::info!("leading: reconciling every CanaryGate");
        }
        reconcile_all(&client, &settings, &leadership, &mut gates, &index).await;
        let mut lost = leadership.clone();
        tokio::select! {
            () = tokio::time::sleep(settings.poll) => {}
            () = lost.lost() => {}
            () = stopped(stop.clone()) => break,
        }
    }
    stop_all(&mut gates, &index).await;
}

/// Stops every loop without touching the weights: the next leader resumes them.
async fn stop_all(gates: &mut BTreeMap<Key, GateState>, index: &GateIndex) {
    for state in gates.values_mut() {
        if let Some(run) = state.run.take() {
            finish(run).await;
        }
    }
    gates.clear();
    if let Ok(mut i) = index.write() {
        i.clear();
    }
}

async fn finish(run: Run) {
    let _ = run.stop.send(true);
    for task in run.tasks {
        // A loop ends within a tick; one that does not is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

fn plugin_kind(s: &ControllerSettings) -> PluginKind {
    s.plugin_kind.unwrap_or(PluginKind::WasmPlugin)
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // The kinds generated here: AuthorizationPolicy, NetworkPolicy, Service, WasmPlugin, VirtualService.
    let lower = kind.to_ascii_lowercase();
    let plural = match lower.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{lower}s"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

fn scopes<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
    }
}

/// One pass over every gate.
async fn reconcile_all(
    client: &Client,
    s: &ControllerSettings,
    leadership: &Leadership,
    gates: &mut BTreeMap<Key, GateState>,
    index: &GateIndex,
) {
    let mut listed: Vec<CanaryGate> = Vec::new();
    let mut plugins: HashMap<Key, Value> = HashMap::new();
    // The generated WasmPlugins from the watch cache (a stale one costs at most a needless
    // re-apply); the gates themselves by a quorum read, so a gate is never taken for deleted
    // because a cache lagged behind its creation.
    let by_label = ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}")).match_any();
    let ar = plugin_kind(s).api_resource();
    let plugin_apis: Vec<Api<DynamicObject>> = if s.namespaces.is_empty() {
        vec![Api::all_with(client.clone(), &ar)]
    } else {
        s.namespaces.iter().map(|ns| Api::namespaced_with(client.clone(), ns, &ar)).collect()
    };
    for (gate_api, plugin_api) in scopes::<CanaryGate>(client, &s.namespaces).into_iter().zip(plugin_apis) {
        // A failed listing changes nothing: a gate is never taken for deleted because the API failed.
        match bounded(s.kube_timeout, gate_api.list(&ListParams::default())).await {
            Ok(list) => listed.extend(list.items),
            Err(e) => return tracing::warn!("listing CanaryGates: {e}"),
        }
        match bounded(s.kube_timeout, plugin_api.list(&by_label)).await {
            Ok(list) => {
                for p in list.items {
                    let key = (p.namespace().unwrap_or_default(), p.name_any());
                    plugins.insert(key, serde_json::to_value(&p).unwrap_or_default());
                }
            }
            Err(e) => return tracing::warn!("listing the generated {}s: {e}", plugin_kind(s)),
        }
    }
    let mut present: Vec<Key> = Vec::new();
    listed.retain(|gate| gate.metadata.deletion_timestamp.is_none()); // being deleted: handled as gone below
    let losers = conflicts(&listed);
    for gate in &listed {
        let key = (gate.namespace().unwrap_or_default(), gate.name_any());
        present.push(key.clone());
        let state = gates.entry(key.clone()).or_default();
        if let Some(why) = losers.get(&key) {
            lose(client, s, gate, state, index, &key, why.clone()).await;
            continue;
        }
        reconcile_gate(client, s, leadership, gate, state, &plugins, index).await;
    }
    let gone: Vec<Key> = gates.keys().filter(|k| !present.contains(k)).cloned().collect();
    for key in gone {
        if let Some(mut state) = gates.remove(&key) {
            if let Ok(mut i) = index.write() {
                i.remove(&key);
            }
            if let Some(run) = state.run.take() {
                tracing::info!(namespace = %key.0, canarygate = %key.1, "CanaryGate deleted: rolling the canary back to 0%");
                let (reply, answer) = oneshot::channel();
                if run.handle.commands.send((Command::Rollback, reply)).await.is_ok() {
                    match tokio::time::timeout(Duration::from_secs(5), answer).await {
                        Ok(Ok(Ok(m))) => tracing::info!(canarygate = %key.1, "{m}"),
                        Ok(Ok(Err(m))) => tracing::info!(canarygate = %key.1, "no rollback: {m}"),
                        _ => tracing::warn!(canarygate = %key.1, "the rollback on deletion got no answer"),
                    }
                }
                finish(run).await;
            }
        }
    }
}

/// The gates that lose to another on the same service, port and workloads, with why
/// ([`reconcile::conflict_winner`]).
fn conflicts(listed: &[CanaryGate]) -> HashMap<Key, String> {
    let claims: Vec<reconcile::Claim<'_>> = listed
        .iter()
        .map(|g| reconcile::Claim {
            namespace: g.metadata.namespace.as_deref().unwrap_or_default(),
            name: g.metadata.name.as_deref().unwrap_or_default(),
            created: g.metadata.creation_timestamp.as_ref().map(|t| t.0),
            service: &g.spec.service.name,
            port: g.spec.service.port,
            selector: &g.spec.workload.selector,
        })
        .collect();
    claims
        .iter()
        .filter_map(|c| {
            let winner = reconcile::conflict_winner(c, &claims)?;
            Some(((c.namespace.to_owned(), c.name.to_owned()), reconcile::conflict_message(c, winner)))
        })
        .collect()
}

/// A gate that loses a conflict: no loop, nothing generated, `Ready=False Conflict`. Checked
/// again every poll, so it starts once the winner goes or the overlap is fixed.
async fn lose(
    client: &Client,
    s: &ControllerSettings,
    gate: &CanaryGate,
    state: &mut GateState,
    index: &GateIndex,
    key: &Key,
    why: String,
) {
    if let Some(run) = state.run.take() {
        if let Ok(mut i) = index.write() {
            i.remove(key);
        }
        finish(run).await;
    }
    // Planned afresh once it no longer loses.
    state.generation = None;
    state.plan = None;
    state.objects.clear();
    block(client, s, gate, state, Blocked::Conflict(why)).await;
}

async fn reconcile_gate(
    client: &Client,
    s: &ControllerSettings,
    leadership: &Leadership,
    gate: &CanaryGate,
    state: &mut GateState,
    plugins: &HashMap<Key, Value>,
    index: &GateIndex,
) {
    let (ns, name) = (gate.namespace().unwrap_or_default(), gate.name_any());
    let uid = gate.uid().unwrap_or_default();
    let changed = state.generation != gate.metadata.generation || state.uid != uid;
    let running_generation = state.generation;
    if changed && state.uid == uid && state.run.is_some() {
        // An edit of a running gate that gate-agent refuses does not stop its rollout: the loop
        // goes on with the last good spec, and its status names the field to fix.
        if let (Err(e), Some(run)) = (plan(gate), &state.run) {
            tracing::warn!(namespace = %ns, canarygate = %name, "edit refused, the last good spec goes on: {e}");
            state.generation = gate.metadata.generation;
            let running = run.refused.borrow().as_ref().map_or(running_generation, |r| r.running);
            run.refused.send_replace(Some(reconcile::RefusedEdit {
                generation: gate.metadata.generation,
                running,
                error: e,
            }));
            return;
        }
    }
    if changed {
        state.uid = uid.clone();
        state.generation = gate.metadata.generation;
        state.applied_at = None;
        if let Some(run) = state.run.take() {
            tracing::info!(namespace = %ns, canarygate = %name, "spec changed: restarting its rollout loop");
            finish(run).await;
        }
        match plan(gate) {
            Ok(p) => {
                let owner = Owner { name: name.clone(), uid: uid.clone() };
                let placement = Placement { kind: plugin_kind(s), waypoint: waypoint_mode(gate) };
                let service = (gate.spec.service.name.as_str(), gate.spec.service.port);
                let mut objects = generate::objects_for(&p, service, &owner, &s.install, placement);
                if let Some(meta) = objects.first_mut().and_then(|o| o["metadata"].as_object_mut()) {
                    let identity = reconcile::rollout_identity(&gate.spec);
                    meta.insert("annotations".into(), json!({ ROLLOUT_ANNOTATION: identity }));
                }
                state.objects = objects;
                state.plan = Some(p);
                state.blocked = None;
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, canarygate = %name, "{e}");
                state.plan = None;
                state.blocked = Some(Blocked::Invalid(e));
            }
        }
    }
    let Some(p) = state.plan.clone() else {
        if changed {
            write_blocked(client, s, gate, state).await;
        }
        return;
    };
    // A new rollout (new canary, restartedAt): clear the last one's durable state first.
    let route_key = (ns.clone(), route_plugin_name(&name));
    let live_route = plugins.get(&route_key);
    let recorded =
        live_route.and_then(|l| l.pointer(&format!("/metadata/annotations/{}", ROLLOUT_ANNOTATION.replace('/', "~1"))));
    if changed && reconcile::starts_new_rollout(&gate.spec, recorded.and_then(Value::as_str)) {
        if let Err(e) = reset_durable_state(client, s, &ns, &route_key.1, live_route).await {
            state.generation = None; // try again next poll
            return block(client, s, gate, state, Blocked::ApplyFailed(e)).await;
        }
        tracing::info!(namespace = %ns, canarygate = %name, "a new rollout starts: cleared the last one's state");
    }
    let drifted = state.objects.iter().filter(|o| o["kind"] == plugin_kind(s).kind()).find(|o| {
        let key = (ns.clone(), str_at(o, "/metadata/name").to_owned());
        !plugins.get(&key).is_some_and(|live| holds(live, o))
    });
    let due = state.applied_at.is_none_or(|t| t.elapsed() >= s.resync);
    if due || drifted.is_some() {
        if let (Some(o), false) = (drifted, due) {
            tracing::warn!(namespace = %ns, canarygate = %name, object = %str_at(o, "/metadata/name"), "a generated plugin was edited: applying it again");
        }
        if let Err(e) = apply_all(client, s, &state.objects).await {
            tracing::warn!(namespace = %ns, canarygate = %name, "{e}");
            state.applied_at = None;
            return block(client, s, gate, state, Blocked::ApplyFailed(e)).await;
        }
        state.applied_at = Some(Instant::now());
    }
    if state.run.is_some() {
        return;
    }
    // In waypoint mode the proxies are the waypoint's replicas, read at their Envoy stats port;
    // a Service without a usable waypoint gets its reason instead of a loop that reads nothing.
    let proxies = if waypoint_mode(gate) {
        match waypoint_targets(client, s, gate).await {
            Err(problem) => {
                return block(
                    client,
                    s,
                    gate,
                    state,
                    Blocked::Waypoint { reason: problem.reason, message: problem.message },
                )
                .await;
            }
            Ok((waypoint, _)) => Proxies {
                namespace: waypoint.namespace,
                selector: waypoint.pod_selector,
                port: s.waypoint_stats_port,
                waypoint: true,
            },
        }
    } else {
        Proxies {
            namespace: p.namespace.clone(),
            selector: p.pod_selector.clone(),
            port: p.snapshot_port,
            waypoint: false,
        }
    };
    match check_route(client, s, gate, &p).await {
        Ok(()) => {}
        Err(b) => return block(client, s, gate, state, b).await,
    }
    state.blocked = None;
    let run = start_run(client, s, leadership, gate, p, proxies);
    if let Ok(mut i) = index.write() {
        i.insert((ns, name), run.handle.clone());
    }
    state.run = Some(run);
}

async fn block(client: &Client, s: &ControllerSettings, gate: &CanaryGate, state: &mut GateState, why: Blocked) {
    if state.blocked.as_ref() == Some(&why) {
        return; // already reported
    }
    tracing::warn!(namespace = ?gate.namespace(), canarygate = %gate.name_any(), "rollout not started: {why:?}");
    state.blocked = Some(why);
    write_blocked(client, s, gate, state).await;
}

async fn write_blocked(client: &Client, s: &ControllerSettings, gate: &CanaryGate, state: &mut GateState) {
    let Some(why) = &state.blocked else { return };
    let status = reconcile::status(gate.metadata.generation, Err(why), &state.conditions, &now());
    state.conditions = status.conditions.clone();
    if let Err(e) = write_status(client, s, gate, &status).await {
        tracing::warn!(canarygate = %gate.name_any(), "writing the status: {e}");
    }
}

async fn write_status(
    client: &Client,
    s: &ControllerSettings,
    gate: &CanaryGate,
    status: &super::crd::CanaryGateStatus,
) -> Result<(), String> {
    let api: Api<CanaryGate> = Api::namespaced(client.clone(), &gate.namespace().unwrap_or_default());
    let patch = json!({ "status": status });
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    bounded(s.kube_timeout, api.patch_status(&gate.name_any(), &pp, &Patch::Merge(&patch))).await.map(|_| ())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Weight 0, no rollout record, a higher revision: the filter's "new rollout" (docs/agent.md).
async fn reset_durable_state(
    client: &Client,
    s: &ControllerSettings,
    ns: &str,
    name: &str,
    live: Option<&Value>,
) -> Result<(), String> {
    let kind = plugin_kind(s);
    let revision = live
        .and_then(|l| l.pointer(&format!("{}/revision", kind.config_pointer())))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let version = live.and_then(|l| l.pointer("/metadata/resourceVersion")).cloned();
    let config = json!({ "canary_weight": 0, "rollout_state": null, "revision": revision.saturating_add(1) });
    let patch = json!({ "metadata": { "resourceVersion": version }, "spec": kind.spec_with_config(config) });
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &kind.api_resource());
    let pp = PatchParams { field_manager: Some(crate::mesh::FIELD_MANAGER.into()), ..PatchParams::default() };
    bounded(s.kube_timeout, api.patch(name, &pp, &Patch::Merge(&patch)))
        .await
        .map(|_| ())
        .map_err(|e| format!("clearing the last rollout's state in {kind} {name}: {e}"))
}

/// Server-side apply of every generated object, forced: the controller owns these fields.
async fn apply_all(client: &Client, s: &ControllerSettings, objects: &[Value]) -> Result<(), String> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let ar = api_resource(object["apiVersion"].as_str().unwrap_or_default(), kind);
        let ns = str_at(object, "/metadata/namespace");
        let name = str_at(object, "/metadata/name");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        bounded(s.kube_timeout, api.patch(name, &pp, &Patch::Apply(object)))
            .await
            .map_err(|e| format!("applying {kind} {name}: {e}"))?;
    }
    Ok(())
}

fn waypoint_mode(gate: &CanaryGate) -> bool {
    gate.spec.attachment.as_ref().is_some_and(|a| a.mode == AttachmentMode::Waypoint)
}

/// The gated Service's waypoint and its ready pods (`ip:port` at the stats port).
async fn waypoint_targets(
    client: &Client,
    s: &ControllerSettings,
    gate: &CanaryGate,
) -> Result<(waypoint::Waypoint, Vec<String>), waypoint::WaypointProblem> {
    let ns = gate.namespace().unwrap_or_default();
    let explicit = gate.spec.attachment.as_ref().and_then(|a| a.waypoint.as_deref());
    let found = waypoint::discover(client, &ns, &gate.spec.service.name, explicit, s.kube_timeout).await?;
    let port = s.waypoint_stats_port;
    let pods =
        PodTargets::new(Api::namespaced(client.clone(), &found.namespace), &found.pod_selector, port, s.kube_timeout);
    let listed = pods.list().await.map_err(|e| waypoint::WaypointProblem {
        reason: "WaypointUnreadable",
        message: format!("listing the pods of waypoint {}/{}: {e}", found.namespace, found.name),
    })?;
    Ok((found, listed))
}

/// Reads the gate's route object (VirtualService or HTTPRoute) and checks its label match.
async fn check_route(client: &Client, s: &ControllerSettings, gate: &CanaryGate, p: &GatePlan) -> Result<(), Blocked> {
    let kind = gate.spec.route.kind.as_str();
    let api_version = match kind {
        super::crd::HTTP_ROUTE => "gateway.networking.k8s.io/v1",
        _ => "networking.istio.io/v1",
    };
    let ar = api_resource(api_version, kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &p.namespace, &ar);
    let name = &gate.spec.route.name;
    let object = bounded(s.kube_timeout, api.get(name))
        .await
        .map_err(|e| Blocked::RouteUnreadable(format!("{kind} {name}: {e}")))?;
    let object = serde_json::to_value(&object).map_err(|e| Blocked::RouteUnreadable(e.to_string()))?;
    let label = super::route::canary_label(&gate.spec.canary, gate.spec.label_token.as_deref());
    let header = canary_core::config::DEFAULT_LABEL_HEADER;
    let checked = match kind {
        super::crd::HTTP_ROUTE => {
            super::route::check_httproute_label_rule(&object, header, &label, &gate.spec.canary, gate.spec.service.port)
        }
        _ => super::route::check_label_route(&object, header, &label, &gate.spec.canary, &gate.spec.service.name),
    };
    checked.map_err(|m| Blocked::RouteLabelMatchMissing(format!("{kind} {name}: {m}")))
}

/// The proxies a gate's loop reads: the calling pods' snapshot listeners (sidecar), or the
/// waypoint's replicas' Envoy stats.
#[derive(Debug, Clone)]
struct Proxies {
    namespace: String,
    selector: String,
    port: u16,
    waypoint: bool,
}

/// Starts the gate's rollout loop and its status writer.
fn start_run(
    client: &Client,
    s: &ControllerSettings,
    leadership: &Leadership,
    gate: &CanaryGate,
    p: GatePlan,
    proxies: Proxies,
) -> Run {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (status_tx, status_rx) =
        watch::channel(StatusView { rollout: p.name.clone(), phase: "starting".into(), ..StatusView::default() });
    let (command_tx, command_rx) = mpsc::channel(16);
    let regarding = ObjectReference {
        api_version: Some("canary-gate.dev/v1alpha1".into()),
        kind: Some("CanaryGate".into()),
        name: Some(p.name.clone()),
        namespace: Some(p.namespace.clone()),
        uid: gate.uid(),
        ..ObjectReference::default()
    };
    let looping = tokio::spawn(rollout_loop(
        client.clone(),
        s.clone(),
        leadership.clone(),
        (p.clone(), proxies),
        regarding,
        (status_tx, command_rx),
        stop_rx.clone(),
    ));
    let (refused_tx, refused_rx) = watch::channel(None);
    let writer =
        tokio::spawn(status_writer(client.clone(), s.clone(), gate.clone(), (status_rx.clone(), refused_rx), stop_rx));
    Run {
        stop: stop_tx,
        refused: refused_tx,
        handle: GateHandle { status: status_rx, commands: command_tx },
        tasks: vec![looping, writer],
    }
}

async fn rollout_loop(
    client: Client,
    s: ControllerSettings,
    leadership: Leadership,
    (p, proxies): (GatePlan, Proxies),
    regarding: ObjectReference,
    channels: (watch::Sender<StatusView>, mpsc::Receiver<CommandRequest>),
    stop: watch::Receiver<bool>,
) {
    if proxies.waypoint {
        let route = serde_json::to_vec(&p.plugin_config)
            .map_err(|e| e.to_string())
            .and_then(|bytes| canary_core::config::parse_route(&bytes).map_err(|e| e.to_string()));
        let source = route.and_then(|r| EnvoyStatsSource::new(r, s.fetch_timeout).map_err(|e| e.to_string()));
        match source {
            Ok(source) => {
                run_loop(client, s, leadership, (p, proxies, Arc::new(source)), regarding, channels, stop).await
            }
            Err(e) => tracing::error!(canarygate = %p.name, "waypoint stats reader: {e}"),
        }
    } else {
        let snapshot_path = format!("{}?rollout={}", s.snapshot_path, p.name);
        match HttpSource::new(&snapshot_path, &s.kill_path, s.fetch_timeout) {
            Ok(source) => {
                run_loop(client, s, leadership, (p, proxies, Arc::new(source)), regarding, channels, stop).await
            }
            Err(e) => tracing::error!(canarygate = %p.name, "HTTP client: {e}"),
        }
    }
}

/// The rollout loop over `source`, reading the pods `proxies` selects.
async fn run_loop<S: CounterSource + KillSwitch + 'static>(
    client: Client,
    s: ControllerSettings,
    leadership: Leadership,
    (p, proxies, source): (GatePlan, Proxies, Arc<S>),
    regarding: ObjectReference,
    (status, mut commands): (watch::Sender<StatusView>, mpsc::Receiver<CommandRequest>),
    stop: watch::Receiver<bool>,
) {
    let pods = PodTargets::new(
        Api::<Pod>::namespaced(client.clone(), &proxies.namespace),
        &proxies.selector,
        proxies.port,
        s.kube_timeout,
    );
    let first = pods.list().await.unwrap_or_default();
    let settings = Settings { target_updates: Some(pods.spawn(first, s.discovery_interval)), ..s.rollout.clone() };
    let router = PluginRouter::of_kind(
        client.clone(),
        Some(&p.namespace),
        plugin_kind(&s),
        &route_plugin_name(&p.name),
        s.kube_timeout,
    )
    .with_guard(p.spec.guard())
    .with_fence(leadership.clone());
    let router = LeaderGated::new(router, leadership.clone());
    let events =
        KubeEvents::new(Api::<Event>::namespaced(client, &p.namespace), regarding, &s.identity, s.kube_timeout);
    let notifier = Arc::new(Both(Some(events), None::<WebhookNotifier>));
    let mut failures: u32 = 0;
    let controller = loop {
        let started = Controller::start(
            p.spec.clone(),
            Arc::clone(&source),
            router.clone(),
            Arc::clone(&notifier),
            settings.clone(),
            status.clone(),
        )
        .await;
        match started {
            Ok(c) => break c,
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(500).saturating_mul(failures.min(16));
                let why = format!("cannot start the rollout: {e}; retrying in {backoff:?}");
                tracing::warn!(namespace = %p.namespace, canarygate = %p.name, "{why}");
                status.send_replace(StatusView {
                    rollout: p.name.clone(),
                    phase: "starting".into(),
                    not_ready: Some(why),
                    ..StatusView::default()
                });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(stop.clone()) => return,
                }
            }
        }
    };
    let mut lost = leadership.clone();
    let until = async move {
        tokio::select! {
            () = stopped(stop) => {}
            () = lost.lost() => {}
        }
    };
    controller.run(s.tick, &mut commands, until).await;
}

/// Writes the loop's view into the gate's status at most once a second when what it shows changes
/// ([`reconcile::worth_writing`]).
async fn status_writer(
    client: Client,
    s: ControllerSettings,
    gate: CanaryGate,
    (mut views, refused): (watch::Receiver<StatusView>, watch::Receiver<Option<reconcile::RefusedEdit>>),
    stop: watch::Receiver<bool>,
) {
    let mut conditions = gate.status.as_ref().map(|st| st.conditions.clone()).unwrap_or_default();
    let mut last: Option<(super::crd::CanaryGateStatus, Instant)> = None;
    loop {
        let status = {
            let view = views.borrow_and_update();
            let mut running = reconcile::status(gate.metadata.generation, Ok(&view), &conditions, &now());
            if waypoint_mode(&gate) {
                running = reconcile::with_unconfirmed_kill(running, &view, &conditions, &now());
            }
            match refused.borrow().as_ref() {
                Some(r) => reconcile::with_refused_edit(running, r, &conditions, &now()),
                None => running,
            }
        };
        let since = last.as_ref().map_or(Duration::MAX, |(_, at)| at.elapsed());
        if reconcile::worth_writing(last.as_ref().map(|(s, _)| s), &status, since) {
            match write_status(&client, &s, &gate, &status).await {
                Ok(()) => {
                    conditions = status.conditions.clone();
                    last = Some((status, Instant::now()));
                }
                Err(e) => tracing::warn!(canarygate = %gate.name_any(), "writing the status: {e}"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stopped(stop.clone()) => return,
        }
        tokio::select! {
            r = views.changed() => if r.is_err() { return },
            () = stopped(stop.clone()) => return,
        }
    }
}
