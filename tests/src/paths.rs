//! Where the harness finds Envoy, the built filter and the shipped config.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `make tools` installs into `.venv`.
pub fn envoy_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("ENVOY_BIN={} is not a file", p.display())) };
    }
    let p = workspace_root().join(".venv/bin/envoy");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("Envoy not found at {}: run `make tools` (or set ENVOY_BIN)", p.display()))
    }
}

/// The release build of the filter.
pub fn filter_wasm() -> Result<PathBuf, String> {
    let p = workspace_root().join("target/wasm32-wasip1/release/canary_filter.wasm");
    if p.is_file() { Ok(p) } else { Err(format!("{} is missing: run `make wasm` first", p.display())) }
}

/// The gate-agent binary: `$GATE_AGENT_BIN`, else the debug build (`cargo build -p gate-agent`).
pub fn gate_agent_bin() -> Result<PathBuf, String> {
    let p = std::env::var_os("GATE_AGENT_BIN")
        .map_or_else(|| workspace_root().join("target/debug/gate-agent"), PathBuf::from);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("gate-agent not found at {}: run `cargo build -p gate-agent` (or set GATE_AGENT_BIN)", p.display()))
    }
}

pub fn deploy_local() -> PathBuf {
    workspace_root().join("deploy/local")
}
