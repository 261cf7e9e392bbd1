//! The two Istio kinds that carry the filter's configuration, and what differs between them.
//!
//! `WasmPlugin` (`extensions.istio.io/v1alpha1`) keeps the configuration at `spec.pluginConfig`;
//! its successor `TrafficExtension` (same group and version, Istio 1.30+, schema from istio.io/api
//! v1.32.0) moves the Wasm fields under `spec.wasm`, so the configuration is at
//! `spec.wasm.pluginConfig`. istiod delivers both the same way (the JSON in a `StringValue`, over
//! ECDS), so the agent's protocol — a merge patch of its own fields carrying the resourceVersion it
//! read, under its field manager, fenced by the leader's term — is one for both
//! ([`super::wasmplugin::PluginRouter`]); only the kind, the plural and the path differ, and they
//! are here.

use std::collections::BTreeMap;

use kube::CustomResource;
use kube::api::{ApiResource, GroupVersionKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The group and version both kinds are served at.
pub const GROUP: &str = "extensions.istio.io";
pub const VERSION: &str = "v1alpha1";

/// Which kind holds the filter's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PluginKind {
    WasmPlugin,
    TrafficExtension,
}

impl PluginKind {
    pub fn kind(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "WasmPlugin",
            PluginKind::TrafficExtension => "TrafficExtension",
        }
    }

    /// The resource name in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "wasmplugins",
            PluginKind::TrafficExtension => "trafficextensions",
        }
    }

    pub fn api_version(self) -> String {
        format!("{GROUP}/{VERSION}")
    }

    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, self.kind()), self.plural())
    }

    /// Where the filter's configuration sits in the object, as a JSON pointer.
    pub fn config_pointer(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "/spec/pluginConfig",
            PluginKind::TrafficExtension => "/spec/wasm/pluginConfig",
        }
    }

    /// The same path as a user reads it in an error: `spec.wasm.pluginConfig`.
    pub fn config_path(self) -> &'static str {
        match self {
            PluginKind::WasmPlugin => "spec.pluginConfig",
            PluginKind::TrafficExtension => "spec.wasm.pluginConfig",
        }
    }

    /// `config` placed where this kind keeps it, as the `spec` of a merge patch.
    pub fn spec_with_config(self, config: Value) -> Value {
        match self {
            PluginKind::WasmPlugin => json!({ "pluginConfig": config }),
            PluginKind::TrafficExtension => json!({ "wasm": { "pluginConfig": config } }),
        }
    }

    /// The kind to generate given the resource names the cluster serves in `extensions.istio.io`
    /// (`wasmplugins`, `trafficextensions`): WasmPlugin while it is served (Istio 1.30+ serves
    /// both; WasmPlugin is the long-proven one, TrafficExtension is alpha, and istiod turns
    /// WasmPlugins into TrafficExtensions internally), TrafficExtension where it is the only one;
    /// `None` when neither is served (Istio not installed, or too old). A user who wants
    /// TrafficExtension where both are served says so (`--plugin-kind trafficextension`).
    pub fn preferred<'a>(served: impl IntoIterator<Item = &'a str>) -> Option<PluginKind> {
        let served: Vec<&str> = served.into_iter().collect();
        if served.contains(&PluginKind::WasmPlugin.plural()) {
            Some(PluginKind::WasmPlugin)
        } else if served.contains(&PluginKind::TrafficExtension.plural()) {
            Some(PluginKind::TrafficExtension)
        } else {
            None
        }
    }

    /// What the cluster serves, asked of its discovery API ([`Self::preferred`]).
    pub async fn served(client: &kube::Client, timeout: std::time::Duration) -> Result<Option<PluginKind>, String> {
        let list = super::bounded(timeout, client.list_api_group_resources(&format!("{GROUP}/{VERSION}"))).await;
        match list {
            Ok(list) => Ok(PluginKind::preferred(list.resources.iter().map(|r| r.name.as_str()))),
            // The group is not served at all.
            Err(e) if e.contains("404") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

/// Istio's TrafficExtension, as much of it as the agent reads; every other field is kept in
/// `other` (the router patches, so nothing it does not know is ever dropped).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "extensions.istio.io", version = "v1alpha1", kind = "TrafficExtension", namespaced)]
pub struct TrafficExtensionSpec {
    /// The Wasm half (a TrafficExtension holds exactly one of `wasm` and `lua`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmExtension>,
    /// `selector`, `targetRefs`, `match`, `phase`, `priority`, `lua`, ...: not ours to change.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `spec.wasm` of a TrafficExtension.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct WasmExtension {
    #[serde(rename = "pluginConfig", default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<Value>,
    /// `url`, `sha256`, `pluginName`, `failStrategy`, ...
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasmplugin_while_served_else_the_successor_and_neither_is_none() {
        assert_eq!(PluginKind::preferred(["wasmplugins", "trafficextensions"]), Some(PluginKind::WasmPlugin));
        assert_eq!(
            PluginKind::preferred(["trafficextensions/status", "trafficextensions"]),
            Some(PluginKind::TrafficExtension)
        );
        assert_eq!(PluginKind::preferred(["wasmplugins"]), Some(PluginKind::WasmPlugin));
        assert_eq!(PluginKind::preferred(["wasmplugins/status", "envoyfilters"]), None);
        assert_eq!(PluginKind::preferred([]), None);
    }

    #[test]
    fn the_config_sits_under_wasm_in_a_traffic_extension() {
        let te = json!({ "spec": PluginKind::TrafficExtension.spec_with_config(json!({ "canary_weight": 5 })) });
        assert_eq!(te.pointer(PluginKind::TrafficExtension.config_pointer()), Some(&json!({ "canary_weight": 5 })));
        let wp = json!({ "spec": PluginKind::WasmPlugin.spec_with_config(json!({ "canary_weight": 5 })) });
        assert_eq!(wp.pointer(PluginKind::WasmPlugin.config_pointer()), Some(&json!({ "canary_weight": 5 })));
        assert_eq!(PluginKind::TrafficExtension.api_resource().plural, "trafficextensions");
    }

    #[test]
    fn unknown_fields_of_a_traffic_extension_survive_a_round_trip() {
        let json = json!({
            "apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension",
            "metadata": { "name": "canary-gate", "namespace": "shop" },
            "spec": { "phase": "STATS", "targetRefs": [{ "kind": "Service", "group": "", "name": "payment-svc" }],
                      "wasm": { "url": "oci://r/f", "futureField": 1, "pluginConfig": { "version": 1 } } }
        });
        let te: TrafficExtension = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(te.spec.wasm.as_ref().unwrap().other["futureField"], 1);
        assert_eq!(serde_json::to_value(&te).unwrap()["spec"], json["spec"]);
    }
}
