//! noop-filter: the same shape as canary-filter (a root context that creates one HTTP context per
//! request, loaded by the V8 runtime with the same VM settings) and nothing else, so that
//! Envoy with this filter is the floor for any proxy-wasm filter. `make bench` compares
//! canary-filter with it.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

#[derive(Debug, Default)]
struct NoopRoot;

impl Context for NoopRoot {}

impl RootContext for NoopRoot {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopStream))
    }
}

/// Every callback keeps its default: continue, touch nothing.
#[derive(Debug)]
struct NoopStream;

impl Context for NoopStream {}

impl HttpContext for NoopStream {}

mod entry {
    // proxy_wasm::main! expands to the `_initialize` export, which needs `no_mangle`.
    #![allow(unsafe_code)]
    proxy_wasm::main! {{
        proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Warn);
        proxy_wasm::set_root_context(|_| Box::new(crate::NoopRoot));
    }}
}
