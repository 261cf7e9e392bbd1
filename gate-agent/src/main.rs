//! gate-agent: judges the canary from canary-filter snapshots and moves its weight.
//!
//! This build only checks filter configurations (`gate-agent check-config FILE`) with the
//! filter's own parser; the rollout loop arrives with the agent issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, path] if cmd == "check-config" => match std::fs::read(path) {
            Ok(bytes) => match canary_core::config::parse(&bytes) {
                Ok(_) => {
                    println!("{path}: ok");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{path}: {e}");
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("{path}: cannot read: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: gate-agent check-config FILE");
            ExitCode::from(64)
        }
    }
}
