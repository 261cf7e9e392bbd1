//! The filter's configuration as Envoy's file-based extension config discovery (ECDS) reads it.
//!
//! Envoy watches a directory and re-reads one file when something is renamed into that
//! directory. The file is a discovery response: a `resources` list holding one
//! `TypedExtensionConfig` whose name equals the HTTP filter's name in the listener. Writers
//! (gate-agent, the test harness) render it here, so there is one definition of the shape.

use serde_json::{Value, json};

use crate::config::RouteConfig;

/// The HTTP filter name in the listener, and the ECDS resource name.
pub const RESOURCE_NAME: &str = "canary-gate";
/// The wasm VM id. Every canary-gate filter in one Envoy uses it, so they share counters.
pub const VM_ID: &str = "canary-gate";
/// Type URL of Envoy's wasm HTTP filter config (the `type_urls` of the discovery block).
pub const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The `envoy.extensions.filters.http.wasm.v3.Wasm` config that runs the filter with
/// `plugin_config` (a JSON string) from the wasm module at `wasm_path`.
pub fn wasm_filter(plugin_name: &str, wasm_path: &str, plugin_config: &str) -> Value {
    json!({
        "@type": WASM_TYPE_URL,
        "config": {
            "name": plugin_name,
            "root_id": RESOURCE_NAME,
            // A VM that fails (crash, bad module) lets requests through unfiltered; with no label
            // they take the route table's default route, the stable subset.
            "failure_policy": "FAIL_OPEN",
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin_config,
            },
            "vm_config": {
                "vm_id": VM_ID,
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": wasm_path } },
            },
        },
    })
}

/// The whole watched file for a plugin configuration given as raw text (which may be invalid:
/// tests use this to check that Envoy rejects it).
pub fn discovery_file_raw(wasm_path: &str, plugin_config: &str) -> Value {
    json!({
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": RESOURCE_NAME,
            "typed_config": wasm_filter("canary-gate-route", wasm_path, plugin_config),
        }],
    })
}

/// The whole watched file for a route configuration.
pub fn discovery_file(wasm_path: &str, route: &RouteConfig) -> Result<Value, serde_json::Error> {
    Ok(discovery_file_raw(wasm_path, &route.to_json()?))
}

/// The plugin configuration text inside a watched file, if the file has the expected shape.
pub fn plugin_config_of(file: &Value) -> Option<&str> {
    file.get("resources")?
        .as_array()?
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(RESOURCE_NAME))?
        .pointer("/typed_config/config/configuration/value")?
        .as_str()
}

/// The wasm module path inside a watched file.
pub fn wasm_path_of(file: &Value) -> Option<&str> {
    file.get("resources")?
        .as_array()?
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(RESOURCE_NAME))?
        .pointer("/typed_config/config/vm_config/code/local/filename")?
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_file_reads_back() {
        let route = crate::config::parse_route(
            br#"{"version":1,"rollout":"r","stable":"v1","canary":"v2","canary_weight":12.5,"revision":3}"#,
        )
        .unwrap();
        let file = discovery_file("/x/canary_filter.wasm", &route).unwrap();
        let back = crate::config::parse_route(plugin_config_of(&file).unwrap().as_bytes()).unwrap();
        assert_eq!(back, route);
        assert_eq!(wasm_path_of(&file), Some("/x/canary_filter.wasm"));
        assert_eq!(plugin_config_of(&serde_json::json!({"resources": []})), None);
    }
}
