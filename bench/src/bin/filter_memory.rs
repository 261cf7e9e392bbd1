//! By hand, for bench/PROFILE.md: the memory Envoy holds with the no-op filter and with builds of
//! canary-filter, the same way each time. Each Envoy (one worker, the shipped bootstrap and plugin
//! configuration) serves `--requests` sequential requests on one keep-alive connection, sits idle
//! for two seconds, and then its RSS (`/proc/<pid>/status`) and tcmalloc's figures (the admin
//! `/memory`: heap size, allocated, page heap free) are read. Envoys run one after the other.
//!
//! Usage: `filter_memory [--requests N] [--rounds N] [--wasm PATH]...` (defaults 2000 and 2; each
//! `--wasm` is one build of canary-filter; without any, the one `make wasm` built). Prints a
//! Markdown table; nothing is written.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use canary_bench::envoy::{BenchEnvoy, Launch, Variant, start_upstream};
use canary_e2e::procfs;
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    canary_bench::exit("filter_memory", run().await)
}

/// What one Envoy holds after its requests.
#[derive(Debug)]
struct Held {
    rss: u64,
    heap_size: u64,
    allocated: u64,
    pageheap_free: u64,
}

async fn run() -> Result<(), String> {
    let requests = canary_bench::flag_u64("--requests")?.unwrap_or(2000);
    let rounds = canary_bench::flag_u64("--rounds")?.unwrap_or(2).max(1);
    let args: Vec<String> = std::env::args().collect();
    let mut builds: Vec<Option<PathBuf>> = args
        .windows(2)
        .filter(|w| w.first().is_some_and(|f| f == "--wasm"))
        .filter_map(|w| w.get(1))
        .map(|p| Some(PathBuf::from(p)))
        .collect();
    if builds.is_empty() {
        builds.push(None);
    }
    let upstream = start_upstream()?;
    let route = canary_bench::shipped_route()?;
    let base = 47_000 + (std::process::id() % 1_000) * 4;
    println!("| Envoy | round | RSS MiB | tcmalloc heap MiB | allocated MiB | page heap free MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for round in 0..rounds {
        let mut runs: Vec<(String, Variant, Option<PathBuf>)> = vec![("no-op wasm filter".into(), Variant::Noop, None)];
        for b in &builds {
            let name = b.as_ref().map_or("canary-filter".to_owned(), |p| format!("canary-filter {}", p.display()));
            runs.push((name, Variant::Canary, b.clone()));
        }
        for (i, (name, variant, wasm)) in (0u32..).zip(runs) {
            let launch = Launch { filter_wasm: wasm, ..Launch::default() };
            let envoy = BenchEnvoy::launch(variant, upstream, 1, &route, base + i, &launch).await?;
            let held = load_and_read(&envoy, requests).await?;
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                round + 1,
                mib(held.rss),
                mib(held.heap_size),
                mib(held.allocated),
                mib(held.pageheap_free)
            );
            drop(envoy);
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

async fn load_and_read(envoy: &BenchEnvoy, requests: u64) -> Result<Held, String> {
    let public = envoy.public;
    tokio::task::spawn_blocking(move || send(public, requests)).await.map_err(|e| e.to_string())??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = procfs::rss_bytes(envoy.pid()).map_err(|e| e.to_string())?;
    let url = format!("http://{}/memory", envoy.admin);
    let body = reqwest::get(&url).await.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
    let memory: Value = serde_json::from_str(&body).map_err(|e| format!("{url}: {e}"))?;
    // Envoy prints these as decimal strings.
    let field = |name: &str| -> Result<u64, String> {
        memory
            .get(name)
            .and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()))
            .ok_or_else(|| format!("{url}: no {name}"))
    };
    Ok(Held {
        rss,
        heap_size: field("heap_size")?,
        allocated: field("allocated")?,
        pageheap_free: field("pageheap_free")?,
    })
}

/// `requests` sequential `GET /` on one keep-alive connection, each answered with 200.
fn send(at: SocketAddr, requests: u64) -> Result<(), String> {
    let stream = TcpStream::connect(at).map_err(|e| format!("connect {at}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..requests {
        reader.get_mut().write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n").map_err(|e| format!("send: {e}"))?;
        line.clear();
        reader.read_line(&mut line).map_err(|e| format!("status line: {e}"))?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("expected 200, got {:?}", line.trim()));
        }
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| format!("header: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().map_err(|e| format!("content-length: {e}"))?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    }
    Ok(())
}
