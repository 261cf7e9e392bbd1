//! Shared plumbing for `make bench`.
//!
//! Each part of the benchmark is its own binary (`envoy_cost`, `breach`, `decisions`, `agent_scale`,
//! `typo`, `instructions`) that writes two files into the output directory given as its first
//! argument: `<part>.json` (every figure it measured, machine-readable) and `<part>.md` (its section
//! of `bench/RESULTS.md`: tables and a short reading, including any goal it misses). The `report`
//! binary puts the parts together with the machine they ran on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub mod envoy;
pub mod wrk;

/// Where a part writes its files: the first command-line argument unless it is a flag, else
/// `target/bench` (where `make bench` puts them).
pub fn out_dir() -> PathBuf {
    std::env::args_os()
        .nth(1)
        .filter(|a| !a.to_string_lossy().starts_with('-'))
        .map_or_else(|| PathBuf::from("target/bench"), PathBuf::from)
}

/// A part's exit status: success, or its error on stderr after the part's name.
pub fn exit(part: &str, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{part}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole number after flag `name` on the command line (`--trials 20`), if the flag is there.
pub fn flag_u64(name: &str) -> Result<Option<u64>, String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let value = args.get(i + 1).ok_or_else(|| format!("{name} needs a value"))?;
    value.parse().map(Some).map_err(|e| format!("{name} {value:?} is not a whole number: {e}"))
}

/// A whole-number setting from environment variable `name`, or `default` when it is unset.
pub fn env_u64(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|e| format!("{name}={v:?} is not a whole number: {e}")),
        Err(_) => Ok(default),
    }
}

/// The shipped local rollout spec, `deploy/local/rollout.yaml`: the breach and decision parts
/// judge with it, so their figures describe what users run.
pub fn shipped_spec() -> Result<String, String> {
    let path = canary_e2e::paths::deploy_local().join("rollout.yaml");
    std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The plugin configuration that ships in deploy/local/ecds/canary-gate.json (10% by weight,
/// sticky header, dark-launch header, failure classification), as the cost parts run it.
pub fn shipped_route() -> Result<canary_core::config::RouteConfig, String> {
    let path = canary_e2e::paths::deploy_local().join("ecds/canary-gate.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let plugin = canary_core::ecds::plugin_config_of(&file)
        .ok_or_else(|| format!("{}: no plugin configuration", path.display()))?;
    canary_core::config::parse_route(plugin.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts a fresh rollout on `fx`'s Envoy: weight 0 at a revision above every earlier one (the
/// agent's writes included), which also lifts an earlier trial's kill order (kills hold up to a
/// revision); returns once Envoy applies it.
pub async fn fresh_rollout(fx: &canary_e2e::Fixture) -> Result<(), String> {
    let before = fx.envoy.snapshot().await?;
    let revision =
        before.route.as_ref().map_or(0, |r| r.revision).max(before.kill.as_ref().map_or(0, |k| k.up_to_revision)) + 1;
    let route = canary_e2e::route(0.0, revision, "").map_err(|e| e.to_string())?;
    fx.envoy.write_route(&route).map_err(|e| e.to_string())?;
    fx.envoy.wait_for_revision(revision, std::time::Duration::from_secs(10)).await?;
    Ok(())
}

/// `spec` with its top-level field `key` set to `value` (the whole line replaced). The field must
/// be there exactly once, so a change to the shipped file cannot make the benchmark judge with
/// something else unnoticed.
pub fn set_top_level(spec: &str, key: &str, value: &str) -> Result<String, String> {
    let prefix = format!("{key}:");
    let mut found = 0;
    let mut out = String::with_capacity(spec.len());
    for line in spec.lines() {
        if line.starts_with(&prefix) {
            found += 1;
            out.push_str(&format!("{key}: {value}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    match found {
        1 => Ok(out),
        n => Err(format!("rollout spec: expected one top-level `{key}:` line, found {n}")),
    }
}

/// `text` with `from` replaced by `to`; `from` must occur exactly once.
pub fn replace_once(text: &str, from: &str, to: &str) -> Result<String, String> {
    match text.matches(from).count() {
        1 => Ok(text.replacen(from, to, 1)),
        n => Err(format!("expected `{from}` once, found it {n} times")),
    }
}

/// Writes `<dir>/<part>.json` and `<dir>/<part>.md`.
pub fn write_part(dir: &Path, part: &str, figures: &serde_json::Value, markdown: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(figures).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{part}.json")), json)?;
    std::fs::write(dir.join(format!("{part}.md")), markdown)?;
    Ok(())
}

/// Percentile `q` (0..=1) of `sorted` by the nearest-rank method; `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn spec_edits_need_exactly_one_match() {
        let spec = "name: demo\ninterval: 10s\nmetrics:\n  - name: x\n    interval: 30s\n";
        let set = super::set_top_level(spec, "interval", "60s").unwrap();
        assert_eq!(set, "name: demo\ninterval: 60s\nmetrics:\n  - name: x\n    interval: 30s\n");
        assert!(super::set_top_level(spec, "maxWeight", "10").is_err(), "absent");
        assert!(super::set_top_level("a: 1\na: 2\n", "a", "3").is_err(), "twice");
        assert_eq!(super::replace_once(spec, "30s", "5s").unwrap(), spec.replace("30s", "5s"));
        assert!(super::replace_once(spec, "s\n", "m\n").is_err(), "more than once");
    }
}
