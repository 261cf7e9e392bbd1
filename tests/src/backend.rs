//! A stand-in for one version of the service: answers every request with its name, can be told
//! to fail a share of requests or to add latency, and counts what it received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

#[derive(Debug, Default)]
struct Behaviour {
    /// Requests that got an answer.
    received: AtomicU64,
    /// Out of 1,000 requests, how many get a 500 (spread evenly: every k-th).
    fail_per_mille: AtomicU32,
    delay_ms: AtomicU64,
    /// Label header values seen, for tests that check what Envoy forwarded.
    labels: Mutex<Vec<String>>,
    label_header: Mutex<String>,
}

/// A running backend on a loopback port.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Behaviour>,
}

async fn handle(State((name, b)): State<(String, Arc<Behaviour>)>, headers: HeaderMap) -> impl IntoResponse {
    let delay = b.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let label_header = b.label_header.lock().map(|h| h.clone()).unwrap_or_default();
    if let Some(v) = headers.get(label_header.as_str()).and_then(|v| v.to_str().ok())
        && let Ok(mut labels) = b.labels.lock()
    {
        labels.push(v.to_owned());
    }
    let n = b.received.fetch_add(1, Ordering::SeqCst) + 1;
    let per_mille = u64::from(b.fail_per_mille.load(Ordering::Relaxed));
    // Fails requests n where floor(n * p / 1000) increases: exactly p per 1,000, evenly spread.
    let fail = per_mille > 0 && (n * per_mille) / 1000 != ((n - 1) * per_mille) / 1000;
    let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    (status, [("x-served-by", name.clone())], name)
}

impl Backend {
    /// Starts a backend named `name` on a free loopback port, on the current tokio runtime.
    pub async fn start(name: &str) -> std::io::Result<Backend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Behaviour::default());
        if let Ok(mut h) = state.label_header.lock() {
            *h = canary_core::config::DEFAULT_LABEL_HEADER.to_owned();
        }
        let app = Router::new().fallback(handle).with_state((name.to_owned(), Arc::clone(&state)));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Backend { name: name.to_owned(), addr, state })
    }

    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    pub fn fail_per_mille(&self, per_mille: u32) {
        self.state.fail_per_mille.store(per_mille.min(1000), Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.state.delay_ms.store(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    pub fn labels_seen(&self) -> Vec<String> {
        self.state.labels.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
