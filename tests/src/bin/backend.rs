//! `backend`: one version of the demo service as a process of its own, for the docker-compose
//! setup (deploy/local/docker-compose.yaml, image deploy/local/backend.Dockerfile). It is the very
//! backend the e2e tests and `make demo` run in-process ([`canary_e2e::Backend`]): every request
//! gets `200` with the version's name in the body and in `x-served-by`.
//!
//! A control listener, on a port of its own so that nothing sent through Envoy can reach it, makes
//! it fail on demand, which is how the compose setup shows a rollback:
//! - `POST /fail?per_mille=N`: N of every 1,000 requests get a `500` (evenly spread); 0 heals it;
//! - `POST /delay?ms=N`: every request waits N ms before its answer;
//! - `GET /received`: requests received so far.
//!
//! Exit codes: 0 on SIGINT or SIGTERM, 2 a port cannot be bound, 64 bad usage.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use canary_e2e::Backend;

const USAGE: &str = "usage: backend --name NAME [--listen ADDR] [--control ADDR]   \
                     (defaults: --listen 0.0.0.0:8080, --control 0.0.0.0:8081)";

#[derive(Debug, PartialEq)]
struct Options {
    name: String,
    listen: SocketAddr,
    control: SocketAddr,
}

fn options(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let (mut name, mut listen, mut control) = (None, SocketAddr::from(([0, 0, 0, 0], 8080)), None);
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            return Err(format!("{flag}: unknown flag or missing value\n{USAGE}"));
        };
        let addr = |v: &str| v.parse::<SocketAddr>().map_err(|e| format!("{flag} {v:?}: {e}\n{USAGE}"));
        match flag.as_str() {
            "--name" => name = Some(value),
            "--listen" => listen = addr(&value)?,
            "--control" => control = Some(addr(&value)?),
            _ => return Err(format!("{flag}: unknown flag\n{USAGE}")),
        }
    }
    let name = name.filter(|n| !n.is_empty()).ok_or_else(|| format!("--name is required\n{USAGE}"))?;
    let control = control.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8081)));
    if control == listen {
        return Err(format!("--control must differ from --listen ({listen})\n{USAGE}"));
    }
    Ok(Options { name, listen, control })
}

/// The value of `key` in a query string of whole numbers (`per_mille=100`).
fn number(query: Option<&str>, key: &str) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        .ok_or_else(|| format!("missing ?{key}=N\n"))?;
    value.parse().map_err(|_| format!("{key}={value:?} is not a whole number\n"))
}

fn control_app(backend: Backend) -> Router {
    Router::new()
        .route(
            "/fail",
            post(|State(b): State<Backend>, RawQuery(q): RawQuery| async move {
                match number(q.as_deref(), "per_mille") {
                    Ok(n) if n <= 1000 => {
                        b.fail_per_mille(u32::try_from(n).unwrap_or(1000));
                        (StatusCode::OK, format!("{}: {n} of every 1000 requests now get a 500\n", b.name))
                    }
                    Ok(n) => (StatusCode::BAD_REQUEST, format!("per_mille={n} is above 1000\n")),
                    Err(e) => (StatusCode::BAD_REQUEST, e),
                }
            }),
        )
        .route(
            "/delay",
            post(|State(b): State<Backend>, RawQuery(q): RawQuery| async move {
                match number(q.as_deref(), "ms") {
                    Ok(ms) => {
                        b.delay(Duration::from_millis(ms));
                        (StatusCode::OK, format!("{}: every request now waits {ms} ms\n", b.name))
                    }
                    Err(e) => (StatusCode::BAD_REQUEST, e),
                }
            }),
        )
        .route("/received", get(|State(b): State<Backend>| async move { format!("{}\n", b.received()) }))
        .with_state(backend)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = interrupt.await;
            return;
        }
    };
    tokio::select! {
        _ = interrupt => {}
        _ = term.recv() => {}
    }
}

async fn run(o: Options) -> Result<(), String> {
    let backend = Backend::start_on(&o.name, o.listen).await.map_err(|e| format!("--listen {}: {e}", o.listen))?;
    let control =
        tokio::net::TcpListener::bind(o.control).await.map_err(|e| format!("--control {}: {e}", o.control))?;
    println!("backend {}: serving on {}, control on {}", o.name, backend.addr, o.control);
    axum::serve(control, control_app(backend))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("control: {e}"))
}

fn main() -> ExitCode {
    let o = match options(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("backend: {e}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("backend: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_name_is_required_and_the_ports_default_to_8080_and_8081() {
        let o = options(args(&["--name", "v2"])).unwrap();
        assert_eq!((o.listen.port(), o.control.port()), (8080, 8081));
        assert!(options(args(&[])).unwrap_err().contains("--name is required"));
        assert!(options(args(&["--name", "v1", "--listen", "nowhere"])).unwrap_err().contains("--listen"));
        let same = args(&["--name", "v1", "--listen", "127.0.0.1:9", "--control", "127.0.0.1:9"]);
        assert!(options(same).unwrap_err().contains("must differ"));
    }

    #[test]
    fn query_numbers_are_read_by_key() {
        assert_eq!(number(Some("per_mille=100"), "per_mille"), Ok(100));
        assert_eq!(number(Some("x=1&ms=250"), "ms"), Ok(250));
        assert!(number(None, "ms").unwrap_err().contains("missing"));
        assert!(number(Some("ms=fast"), "ms").unwrap_err().contains("not a whole number"));
    }
}
