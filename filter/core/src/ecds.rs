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
