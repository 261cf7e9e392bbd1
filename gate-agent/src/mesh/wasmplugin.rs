//! The mesh router: the canary weight lives in an Istio `WasmPlugin`'s `spec.pluginConfig`.
//!
//! istiod pushes the plugin configuration to every proxy that runs the filter, so the
//! WasmPlugin is the durable state of the whole fleet. Each write is a JSON merge patch of the
//! three fields the agent owns (`canary_weight`, `revision`, `rollout_state`) carrying the
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
//! A WasmPlugin update takes seconds to reach the proxies and makes them reload the plugin; the
//! kill path does not wait for it (see `canary_core::kill`).

use std::collections::BTreeMap;
use std::time::Duration;

use canary_core::config::{RouteConfig, parse_route};
use canary_core::{RolloutRecord, Weight};
use kube::api::{Api, Patch, PatchParams};
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// Moves the weight by patching one WasmPlugin.
#[derive(Clone)]
pub struct WasmPluginRouter {
    api: Api<WasmPlugin>,
    name: String,
    timeout: Duration,
    attempts: u32,
}

impl std::fmt::Debug for WasmPluginRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPluginRouter").field("name", &self.name).field("timeout", &self.timeout).finish()
    }
}

impl WasmPluginRouter {
    /// A router for WasmPlugin `name` through `api` (namespaced), bounding each call by `timeout`.
    pub fn new(api: Api<WasmPlugin>, name: &str, timeout: Duration) -> Self {
        WasmPluginRouter { api, name: name.to_owned(), timeout, attempts: 5 }
    }

    fn what(&self) -> String {
        format!("WasmPlugin {}", self.name)
    }

    fn remote(&self, message: String) -> RouterError {
        RouterError::Remote { what: self.what(), message }
    }

    fn malformed(&self, problem: impl Into<String>) -> RouterError {
        RouterError::Invalid { what: format!("WasmPlugin {} spec.pluginConfig", self.name), problem: problem.into() }
    }

    /// The WasmPlugin as an Event's `involvedObject`, with its uid (`kubectl describe` lists only
    /// the Events whose `involvedObject.uid` is the object's).
    pub async fn reference(&self) -> Result<k8s_openapi::api::core::v1::ObjectReference, RouterError> {
        let plugin = bounded(self.timeout, self.api.get(&self.name)).await.map_err(|m| self.remote(m))?;
        Ok(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("extensions.istio.io/v1alpha1".into()),
            kind: Some("WasmPlugin".into()),
            name: Some(self.name.clone()),
            namespace: plugin.metadata.namespace.clone(),
            uid: plugin.metadata.uid.clone(),
            ..k8s_openapi::api::core::v1::ObjectReference::default()
        })
    }

    /// Reads the WasmPlugin: its route configuration and the resourceVersion it came with.
    async fn read(&self) -> Result<(RouteConfig, Option<String>), RouterError> {
        let plugin = bounded(self.timeout, self.api.get(&self.name)).await.map_err(|m| self.remote(m))?;
        Ok((self.route_of(&plugin)?, plugin.resource_version()))
    }

    /// The route configuration in a WasmPlugin's pluginConfig, checked by the filter's parser.
    fn route_of(&self, plugin: &WasmPlugin) -> Result<RouteConfig, RouterError> {
        let config = plugin.spec.plugin_config.as_ref().ok_or_else(|| self.malformed("is missing"))?;
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

/// The merge patch that sets the agent's three fields, guarded by `resource_version`.
pub fn weight_patch(
    resource_version: Option<&str>,
    weight: Weight,
    revision: u64,
    record: &RolloutRecord,
) -> Result<serde_json::Value, serde_json::Error> {
    Ok(serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": { "pluginConfig": {
            "canary_weight": serde_json::to_value(weight)?,
            "revision": revision,
            "rollout_state": serde_json::to_value(record)?,
        }},
    }))
}

impl WeightRouter for WasmPluginRouter {
    async fn current(&self) -> Result<RouteConfig, RouterError> {
        self.read().await.map(|(route, _)| route)
    }

    async fn apply(&self, weight: Weight, record: RolloutRecord) -> Result<RouteConfig, RouterError> {
        for _ in 0..self.attempts {
            let (current, version) = self.read().await?;
            let revision = current.revision.saturating_add(1);
            let patch = weight_patch(version.as_deref(), weight, revision, &record)?;
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            let merge = Patch::Merge(&patch);
            let patched = bounded_unless_conflict(self.timeout, self.api.patch(&self.name, &params, &merge))
                .await
                .map_err(|m| self.remote(m))?;
            match patched {
                Some(plugin) => return self.route_of(&plugin),
                // Someone wrote in between: read again and recompute, never overwrite blindly.
                None => tracing::info!(wasmplugin = %self.name, "resourceVersion conflict; reading again"),
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
        let p = weight_patch(Some("42"), Weight::from_percent(25.0).unwrap(), 8, &record).unwrap();
        assert_eq!(p["metadata"], serde_json::json!({ "resourceVersion": "42" }));
        let cfg = p["spec"]["pluginConfig"].as_object().unwrap();
        let mut keys: Vec<&str> = cfg.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["canary_weight", "revision", "rollout_state"]);
        assert_eq!(cfg["canary_weight"], 25);
        assert_eq!(p["spec"].as_object().unwrap().len(), 1, "nothing else in spec");
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
