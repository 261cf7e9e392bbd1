//! The mesh router: the canary weight lives in an Istio `WasmPlugin`'s `spec.pluginConfig`, or a
//! `TrafficExtension`'s `spec.wasm.pluginConfig` (its successor; [`super::extension`]). Everything
//! below holds for both kinds alike; "WasmPlugin" stands for either.
//!
//! istiod pushes the plugin configuration to every proxy that runs the filter, so the
//! WasmPlugin is the durable state of the whole fleet. Each write is a JSON merge patch of the
//! fields the agent owns (`canary_weight`, `revision`, `rollout_state`, and the proxies' typo
//! `guard` from the spec when the router has one) carrying the
//! `resourceVersion` it read: the API server applies it only to the version it was computed from
//! (a newer version answers 409 Conflict, and the router reads again and recomputes), and every
//! other field, of the pluginConfig or of the WasmPlugin, stays exactly as it was, including
//! fields this type does not know.
//!
//! The three fields are the agent's alone: the shipped manifest (deploy/istio/wasmplugin.yaml)
//! leaves them out, so re-applying it (`kubectl apply`, a GitOps sync, client- or server-side)
//! never moves the weight or sends the revision backwards. Until the agent first writes, a
//! missing `canary_weight` reads as 0 and a missing `revision` as 0. Writes carry the field manager
//! [`super::FIELD_MANAGER`], so `metadata.managedFields` shows the agent as their owner.
//!
//! Fencing: with an election, every write also sets the annotation [`TERM_ANNOTATION`] to the
//! writer's [`Term`] (the Lease's `leaseTransitions` and holder), and the router refuses to write
//! over an object whose annotation names a newer term: a replica that still believes it leads
//! (its renewal deadline has not passed) cannot overwrite what a newer leader wrote. Each call is
//! also bounded by the time left in this replica's lead, so no write is still in flight when the
//! lead ends, which is well before the Lease can expire for anyone else (renew deadline 10 s,
//! lease 15 s).
//!
//! A WasmPlugin update takes seconds to reach the proxies and makes them reload the plugin; the
//! kill path does not wait for it (see `canary_core::kill`).

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::guard::Guard;

use canary_core::config::{RouteConfig, parse_route};
use canary_core::{RolloutRecord, Weight};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::extension::{PluginKind, TrafficExtension};
use super::lease::{Leadership, Term};
use super::{FIELD_MANAGER, bounded, bounded_unless_conflict};
use crate::router::{RouterError, WeightRouter};

/// Istio's WasmPlugin, as much of it as the agent reads; every other field is kept verbatim in
/// `other` so a read-modify-write could never drop it (the router patches anyway).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "extensions.istio.io", version = "v1alpha1", kind = "WasmPlugin", namespaced)]
pub struct WasmPluginSpec {
    /// The filter's configuration (canary-core's `RouteConfig` as JSON).
    #[serde(rename = "pluginConfig", default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<serde_json::Value>,
    /// `url`, `selector`, `match`, `phase`, `priority`, `failStrategy`, ...: not ours to change.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Moves the weight by patching one WasmPlugin or TrafficExtension ([`PluginKind`]): the same
/// protocol for both, only the path of the configuration differs.
#[derive(Clone)]
pub struct PluginRouter {
    api: Api<DynamicObject>,
    kind: PluginKind,
    name: String,
    timeout: Duration,
    attempts: u32,
    /// With an election: writes only while leading, within the lead, carrying its term.
    fence: Option<Leadership>,
    /// The proxies' typo guard (`canary_core::guard`), written with every weight.
    guard: Option<Guard>,
}

/// The router as it was first named, when WasmPlugin was the only kind.
pub type WasmPluginRouter = PluginRouter;

/// The annotation that carries the term of the leader that last wrote the agent's fields.
pub const TERM_ANNOTATION: &str = "canary-gate.io/leader-term";

impl std::fmt::Debug for PluginRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRouter")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PluginRouter {
    /// A router for WasmPlugin `name` through `api` (namespaced), bounding each call by `timeout`.
    pub fn new(api: Api<WasmPlugin>, name: &str, timeout: Duration) -> Self {
        let namespace = api.namespace().map(str::to_owned);
        Self::of_kind(api.into_client(), namespace.as_deref(), PluginKind::WasmPlugin, name, timeout)
    }

    /// A router for TrafficExtension `name` through `api` (namespaced).
    pub fn traffic_extension(api: Api<TrafficExtension>, name: &str, timeout: Duration) -> Self {
        let namespace = api.namespace().map(str::to_owned);
        Self::of_kind(api.into_client(), namespace.as_deref(), PluginKind::TrafficExtension, name, timeout)
    }

    /// A router for the `kind` object `name` in `namespace` (the client's default without one).
    pub fn of_kind(
        client: kube::Client,
        namespace: Option<&str>,
        kind: PluginKind,
        name: &str,
        timeout: Duration,
    ) -> Self {
        let ar = kind.api_resource();
        let api = match namespace {
            Some(ns) => Api::namespaced_with(client, ns, &ar),
            None => Api::default_namespaced_with(client, &ar),
        };
        PluginRouter { api, kind, name: name.to_owned(), timeout, attempts: 5, fence: None, guard: None }
    }

    /// The kind this router writes.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Writes `guard` into the pluginConfig with every weight, so the proxies refuse a weight
    /// someone types outside the spec's bounds (`kubectl edit`), with or without an agent.
    #[must_use]
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Fences every write with `leadership`: none outside the lead, each call bounded by the time
    /// left in it, and the term written with the data (none written over a newer term's).
    #[must_use]
    pub fn with_fence(mut self, leadership: Leadership) -> Self {
        self.fence = Some(leadership);
        self
    }

    /// The bound on the next call, and the term to write: refused once the lead is over.
    fn budget(&self) -> Result<(Duration, Option<Term>), RouterError> {
        let Some(fence) = &self.fence else { return Ok((self.timeout, None)) };
        let lead = fence.lead().ok_or(RouterError::NotLeader)?;
        let left = lead.until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(RouterError::NotLeader);
        }
        Ok((self.timeout.min(left), lead.term))
    }

    fn what(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    fn remote(&self, message: String) -> RouterError {
        RouterError::Remote { what: self.what(), message }
    }

    fn malformed(&self, problem: impl Into<String>) -> RouterError {
        RouterError::Invalid { what: format!("{} {}", self.what(), self.kind.config_path()), problem: problem.into() }
    }

    /// The object as an Event's `involvedObject`, with its uid (`kubectl describe` lists only
    /// the Events whose `involvedObject.uid` is the object's).
    pub async fn reference(&self) -> Result<k8s_openapi::api::core::v1::ObjectReference, RouterError> {
        let plugin = bounded(self.timeout, self.api.get(&self.name)).await.map_err(|m| self.remote(m))?;
        Ok(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(self.kind.api_version()),
            kind: Some(self.kind.kind().into()),
            name: Some(self.name.clone()),
            namespace: plugin.metadata.namespace.clone(),
            uid: plugin.metadata.uid.clone(),
            ..k8s_openapi::api::core::v1::ObjectReference::default()
        })
    }

    /// Reads the object: its route configuration and the resourceVersion it came with.
    async fn read(&self) -> Result<(RouteConfig, Option<String>), RouterError> {
        let plugin = bounded(self.timeout, self.api.get(&self.name)).await.map_err(|m| self.remote(m))?;
        Ok((self.route_of(&plugin)?, plugin.resource_version()))
    }

    /// The route configuration in the object's pluginConfig, checked by the filter's parser.
    fn route_of(&self, plugin: &DynamicObject) -> Result<RouteConfig, RouterError> {
        // `data` is the object without apiVersion, kind and metadata, so the pointer starts at spec.
        let config = plugin.data.pointer(self.kind.config_pointer()).ok_or_else(|| self.malformed("is missing"))?;
        route_config_of(config).map_err(|e| self.malformed(e))
    }
}

/// The route configuration in a WasmPlugin's `pluginConfig`, checked by the filter's parser. The
/// agent's fields may be absent (the shipped manifest leaves them to the agent): no
/// `canary_weight` is 0% until the agent writes one.
pub fn route_config_of(plugin_config: &serde_json::Value) -> Result<RouteConfig, String> {
    let mut config = plugin_config.clone();
    if let Some(fields) = config.as_object_mut() {
        fields.entry("canary_weight").or_insert(serde_json::json!(0));
    }
    let bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    parse_route(&bytes).map_err(|e| e.to_string())
}

/// The merge patch that sets the agent's fields (with the typo `guard` when it writes one),
/// guarded by `resource_version`, and the writer's `term` when there is an election.
pub fn weight_patch(
    resource_version: Option<&str>,
    weight: Weight,
    revision: u64,
    record: &RolloutRecord,
    term: Option<&Term>,
    guard: Option<&Guard>,
) -> Result<serde_json::Value, serde_json::Error> {
    let metadata = match term {
        Some(term) => serde_json::json!({
            "resourceVersion": resource_version,
            "annotations": { TERM_ANNOTATION: term.token() },
        }),
        None => serde_json::json!({ "resourceVersion": resource_version }),
    };
    let mut config = serde_json::Map::new();
    config.insert("canary_weight".into(), serde_json::to_value(weight)?);
    config.insert("revision".into(), revision.into());
    config.insert("rollout_state".into(), serde_json::to_value(record)?);
    if let Some(guard) = guard {
        config.insert("guard".into(), serde_json::to_value(guard)?);
    }
    Ok(serde_json::json!({ "metadata": metadata, "spec": { "pluginConfig": config } }))
}

/// [`weight_patch`] for `kind`: the agent's fields where that kind keeps its configuration.
pub fn weight_patch_for(
    kind: PluginKind,
    resource_version: Option<&str>,
    weight: Weight,
    revision: u64,
    record: &RolloutRecord,
    term: Option<&Term>,
    guard: Option<&Guard>,
) -> Result<serde_json::Value, serde_json::Error> {
    let mut patch = weight_patch(resource_version, weight, revision, record, term, guard)?;
    if let Some(spec) = patch.get_mut("spec") {
        let config = spec.get_mut("pluginConfig").map(serde_json::Value::take).unwrap_or_default();
        *spec = kind.spec_with_config(config);
    }
    Ok(patch)
}

impl WeightRouter for PluginRouter {
    async fn current(&self) -> Result<RouteConfig, RouterError> {
        self.read().await.map(|(route, _)| route)
    }

    async fn apply(&self, weight: Weight, record: RolloutRecord) -> Result<RouteConfig, RouterError> {
        for _ in 0..self.attempts {
            let (budget, term) = self.budget()?;
            let plugin = bounded(budget, self.api.get(&self.name)).await.map_err(|m| self.remote(m))?;
            let current = self.route_of(&plugin)?;
            let written_in = plugin.annotations().get(TERM_ANNOTATION).and_then(|t| Term::parse(t));
            if let (Some(theirs), Some(ours)) = (written_in, &term)
                && theirs.supersedes(ours)
            {
                return Err(RouterError::Fenced {
                    what: self.what(),
                    theirs: theirs.to_string(),
                    ours: ours.to_string(),
                });
            }
            let revision = current.revision.saturating_add(1);
            let version = plugin.resource_version();
            let patch = weight_patch_for(
                self.kind,
                version.as_deref(),
                weight,
                revision,
                &record,
                term.as_ref(),
                self.guard.as_ref(),
            )?;
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            let merge = Patch::Merge(&patch);
            // The resourceVersion makes the check above and this write one step: a newer term's
            // write in between is a 409, and the next attempt sees its annotation.
            let (budget, _) = self.budget()?;
            let patched = bounded_unless_conflict(budget, self.api.patch(&self.name, &params, &merge))
                .await
                .map_err(|m| self.remote(m))?;
            match patched {
                Some(plugin) => return self.route_of(&plugin),
                // Someone wrote in between: read again and recompute, never overwrite blindly.
                None => tracing::info!(kind = %self.kind, name = %self.name, "resourceVersion conflict; reading again"),
            }
        }
        Err(RouterError::Conflict { what: self.what(), attempts: self.attempts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_only_the_agents_fields_and_the_version() {
        let record = RolloutRecord::new(canary_core::RolloutPhase::Progressing, 1, "step 2", 5);
        let p = weight_patch(Some("42"), Weight::from_percent(25.0).unwrap(), 8, &record, None, None).unwrap();
        assert_eq!(p["metadata"], serde_json::json!({ "resourceVersion": "42" }));
        let cfg = p["spec"]["pluginConfig"].as_object().unwrap();
        let mut keys: Vec<&str> = cfg.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["canary_weight", "revision", "rollout_state"]);
        assert_eq!(cfg["canary_weight"], 25);
        assert_eq!(p["spec"].as_object().unwrap().len(), 1, "nothing else in spec");
    }

    #[test]
    fn a_traffic_extensions_patch_puts_the_same_fields_under_wasm() {
        let record = RolloutRecord::new(canary_core::RolloutPhase::Progressing, 1, "step 2", 5);
        let w = Weight::from_percent(25.0).unwrap();
        let wp = weight_patch_for(PluginKind::WasmPlugin, Some("42"), w, 8, &record, None, None).unwrap();
        let te = weight_patch_for(PluginKind::TrafficExtension, Some("42"), w, 8, &record, None, None).unwrap();
        assert_eq!(te["metadata"], wp["metadata"]);
        assert_eq!(te["spec"]["wasm"]["pluginConfig"], wp["spec"]["pluginConfig"]);
        assert_eq!(te["spec"].as_object().unwrap().len(), 1, "nothing else in spec: {te}");
        assert_eq!(te["spec"]["wasm"].as_object().unwrap().len(), 1, "nothing else in spec.wasm: {te}");
    }

    #[test]
    fn the_patch_carries_the_guard_when_the_router_writes_one() {
        let record = RolloutRecord::new(canary_core::RolloutPhase::Progressing, 1, "step 2", 5);
        let guard =
            Guard { max_weight: Weight::from_percent(50.0).unwrap(), max_raise: Weight::from_percent(25.0).unwrap() };
        let p = weight_patch(None, Weight::from_percent(25.0).unwrap(), 8, &record, None, Some(&guard)).unwrap();
        assert_eq!(p["spec"]["pluginConfig"]["guard"], serde_json::json!({ "max_weight": 50, "max_raise": 25 }));
    }

    #[test]
    fn a_write_in_a_term_carries_it_and_a_newer_term_supersedes() {
        let record = RolloutRecord::new(canary_core::RolloutPhase::Progressing, 1, "step 2", 5);
        let term = Term { transitions: 3, holder: "agent-a".into() };
        let p = weight_patch(Some("42"), Weight::from_percent(25.0).unwrap(), 8, &record, Some(&term), None).unwrap();
        assert_eq!(p["metadata"]["annotations"][TERM_ANNOTATION], "3/agent-a");
        assert_eq!(Term::parse("3/agent-a"), Some(term.clone()));
        assert_eq!(Term::parse("x/agent-a"), None);
        let newer = Term { transitions: 4, holder: "agent-b".into() };
        assert!(newer.supersedes(&term) && !term.supersedes(&newer));
        assert!(!term.supersedes(&term), "a leader may overwrite its own term's writes");
        let forged = Term { transitions: 3, holder: "agent-b".into() };
        assert!(forged.supersedes(&term), "the same term number held by another: refused");
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let json = serde_json::json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": { "name": "canary-gate", "namespace": "shop", "resourceVersion": "7" },
            "spec": { "url": "oci://r/f@sha256:00", "failStrategy": "FAIL_OPEN", "phase": "AUTHZ",
                      "futureField": { "x": 1 }, "pluginConfig": { "version": 1 } }
        });
        let plugin: WasmPlugin = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(plugin.spec.other["futureField"], serde_json::json!({ "x": 1 }));
        assert_eq!(serde_json::to_value(&plugin).unwrap()["spec"], json["spec"]);
    }
}
