//! `make bench`, last step: puts the parts together. Reads `<part>.json` and `<part>.md` of every
//! part from the output directory and writes `bench/RESULTS.md` and `bench/results.json`, headed
//! by the machine and the code they ran on.
//!
//! Usage: `report [OUT_DIR]`.

use std::path::Path;
use std::process::{Command, ExitCode};

use canary_bench::out_dir;
use serde_json::{Map, Value, json};

/// The parts in the order of the questions.
const PARTS: [&str; 7] =
    ["envoy_cost", "breach", "decisions", "agent_scale", "typo", "instructions", "controller_scale"];

fn main() -> ExitCode {
    canary_bench::exit("report", run())
}

fn run() -> Result<(), String> {
    let out = out_dir();
    let root = canary_e2e::paths::workspace_root().join("bench");
    let machine = machine();
    let mut figures = Map::new();
    let mut sections = Vec::new();
    let mut missing = Vec::new();
    for part in PARTS {
        match (read(&out, &format!("{part}.json")), read(&out, &format!("{part}.md"))) {
            (Ok(json), Ok(md)) => {
                let v: Value = serde_json::from_str(&json).map_err(|e| format!("{part}.json: {e}"))?;
                figures.insert(part.to_owned(), v);
                sections.push(md);
            }
            (Err(e), _) | (_, Err(e)) => missing.push(format!("{part}: {e}")),
        }
    }
    if !missing.is_empty() {
        return Err(format!("parts missing from {}: {}", out.display(), missing.join("; ")));
    }
    let machine_md = machine_markdown(&machine);
    let results = json!({ "machine": machine, "parts": figures });
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    write(&root.join("results.json"), &format!("{json}\n"))?;
    let md = format!(
        "# canary-gate benchmark results\n\n\
         Written by `make bench` (bench/src/bin/*.rs); every figure below is in `bench/results.json`. \
         Rerun with `make bench`; the goals are reported, never asserted.\n\n{}\n{}",
        machine_md,
        sections.join("\n")
    );
    write(&root.join("RESULTS.md"), &md)?;
    eprintln!("report: wrote {} and {}", root.join("RESULTS.md").display(), root.join("results.json").display());
    Ok(())
}

fn read(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// First line a command prints (wrk prints its version and exits 1), or why there is none.
fn command(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            match stdout.lines().find(|l| !l.trim().is_empty()) {
                Some(line) => line.trim().to_owned(),
                None if o.status.success() => String::new(),
                None => format!("({program} exited with {})", o.status),
            }
        }
        Err(e) => format!("({program}: {e})"),
    }
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

fn machine() -> Value {
    let envoy =
        canary_e2e::paths::envoy_bin().map(|p| command(&p.to_string_lossy(), &["--version"])).unwrap_or_else(|e| e);
    let dirty = !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "date_utc": command("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "cpu_model": proc_field("/proc/cpuinfo", "model name"),
        "cpus_online": std::thread::available_parallelism().map(usize::from).ok(),
        "memory_total": proc_field("/proc/meminfo", "MemTotal"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "load_average_at_report": std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_owned()).ok(),
        "rustc": command("rustc", &["--version"]),
        "envoy": envoy,
        "wrk": command("wrk", &["--version"]),
        "git_commit": command("git", &["rev-parse", "--short=12", "HEAD"]),
        "git_dirty": dirty,
    })
}

fn machine_markdown(m: &Value) -> String {
    let s = |k: &str| m.get(k).map_or_else(String::new, |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    format!(
        "## Machine\n\n| | |\n|---|---|\n| date | {} |\n| CPU | {} × {} |\n| memory | {} |\n| kernel | {} |\n\
         | load average at the end | {} |\n| rustc | {} |\n| Envoy | {} |\n| wrk | {} |\n| commit | {}{} |\n",
        s("date_utc"),
        s("cpus_online"),
        s("cpu_model"),
        s("memory_total"),
        s("kernel"),
        s("load_average_at_report"),
        s("rustc"),
        s("envoy"),
        s("wrk"),
        s("git_commit"),
        if m.get("git_dirty").and_then(Value::as_bool) == Some(true) { " (with uncommitted changes)" } else { "" },
    )
}
