//! canary-filter: the proxy-wasm adapter around canary-core.
//!
//! Per request it picks stable or canary (dark-launch header, sticky key, or weighted draw),
//! writes the label header that the route table matches, and counts the outcome and latency per
//! subset in VM-wide shared data. A second role serves those counters as a JSON snapshot on a
//! dedicated loopback listener. All decisions live in canary-core; only `host` calls proxy-wasm.

mod host;
mod root;
mod stream;

mod entry {
    // proxy_wasm::main! expands to the `_initialize` export, which needs `no_mangle`.
    #![allow(unsafe_code)]
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
        proxy_wasm::set_root_context(|_| Box::new(crate::root::Root::default()));
    }}
}
