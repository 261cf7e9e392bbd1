//! wrk (Debian's package) as the load generator of the cost benchmark: closed loop, keep-alive,
//! its own latency histogram. A Lua `done` hook prints the figures as one JSON line.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One wrk run, as its `done` hook reports it (latencies in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    pub duration_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx answers.
    pub errors: u64,
}

impl WrkRun {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }
}

const SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout + e.status))
end
"#;

/// Writes the reporting script into `dir`; pass the result to [`run`].
pub fn script(dir: &Path) -> Result<std::path::PathBuf, String> {
    let path = dir.join("report.lua");
    std::fs::write(&path, SCRIPT).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Runs wrk against `http://addr/` for `duration` with `connections` over one thread.
pub fn run(addr: SocketAddr, duration: Duration, connections: u32, script: &Path) -> Result<WrkRun, String> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs().max(1))])
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| format!("cannot run wrk (install Debian's wrk; `make bench` does): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wrk failed ({}): {stdout}{}", out.status, String::from_utf8_lossy(&out.stderr)));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .ok_or_else(|| format!("wrk printed no figures: {stdout}"))?;
    serde_json::from_str(line).map_err(|e| format!("wrk figures {line:?}: {e}"))
}
