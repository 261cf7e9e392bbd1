//! A stand-in for one version of an HTTP service: answers every request with its name, can be
//! told to fail a share of requests or to add latency, and counts what it received.
//!
//! It also produces the outcomes that are not a plain request and response, for the tests of how
//! the filter classifies them:
//! - a response cut off after its headers: `reset_mid_body` makes a share of requests get a
//!   `200` with `content-length: 1000` and a few body bytes, then an RST on the connection. No
//!   well-behaved server does this on purpose, so this is a test double for a crashing upstream;
//! - a long stream: `GET /sse` sends a server-sent event every 100 ms for `sse_duration`, then
//!   ends normally;
//! - a slow body: `GET /slow-body` sends its `200` and headers at once, then a line every 100 ms
//!   for `slow_body_duration`.
//!
//! The backend serves each connection itself (hyper, HTTP/1.1 or h2c, as `axum::serve` does) so a
//! handler can reach its own socket to abort it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;

/// Time between two events of `GET /sse`.
pub const SSE_EVENT_EVERY: Duration = Duration::from_millis(100);
/// How long `GET /sse` streams unless told otherwise.
pub const SSE_DEFAULT_DURATION: Duration = Duration::from_secs(2);
/// The `content-length` a cut-off response announces; it never sends that many bytes.
pub const RESET_CONTENT_LENGTH: u64 = 1000;
/// The body bytes a cut-off response sends before the reset.
pub const RESET_PARTIAL_BODY: &[u8] = b"partial ";
/// How long a cut-off response waits after its partial body before the reset, so the bytes are
/// on the wire first (an RST discards what is still unsent).
const RESET_AFTER: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Behaviour {
    /// Requests that got an answer, of any kind.
    received: AtomicU64,
    /// Out of 1,000 requests, how many get a 500 (spread evenly: every k-th).
    fail_per_mille: AtomicU32,
    /// Out of 1,000 requests, how many are cut off after their headers (spread evenly). A request
    /// picked by both shares is cut off.
    reset_per_mille: AtomicU32,
    delay_ms: AtomicU64,
    sse_ms: AtomicU64,
    slow_body_ms: AtomicU64,
    /// Label header values seen, for tests that check what Envoy forwarded.
    labels: Mutex<Vec<String>>,
    label_header: Mutex<String>,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            received: AtomicU64::new(0),
            fail_per_mille: AtomicU32::new(0),
            reset_per_mille: AtomicU32::new(0),
            delay_ms: AtomicU64::new(0),
            sse_ms: AtomicU64::new(millis(SSE_DEFAULT_DURATION)),
            slow_body_ms: AtomicU64::new(millis(SSE_DEFAULT_DURATION)),
            labels: Mutex::new(Vec::new()),
            label_header: Mutex::new(canary_core::config::DEFAULT_LABEL_HEADER.to_owned()),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether request `n` (counting from 1) is one of `per_mille` per 1,000: the requests where
/// floor(n * p / 1000) increases, so exactly p per 1,000, evenly spread.
pub(crate) fn picked(n: u64, per_mille: u32) -> bool {
    let p = u64::from(per_mille);
    p > 0 && (n * p) / 1000 != ((n - 1) * p) / 1000
}

/// A second handle on a connection's socket, handed to the handlers as a request extension so
/// one can make the connection end with an RST.
#[derive(Debug, Clone)]
struct Socket(Arc<std::net::TcpStream>);

/// A running backend on a loopback port.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Behaviour>,
}

type AppState = (String, Arc<Behaviour>);

/// A request with this header gets a `500` from every backend, whatever its version: a client
/// whose own input makes the service fail (the sticky-key tests' always-failing client).
pub const FAIL_HEADER: &str = "x-test-always-fail";

/// What every request goes through, whatever its answer: the delay, the label record and the
/// count. Returns the request's number, from 1.
async fn admit(b: &Behaviour, headers: &HeaderMap) -> u64 {
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
    b.received.fetch_add(1, Ordering::SeqCst) + 1
}

async fn handle(State((name, b)): State<AppState>, socket: Option<Extension<Socket>>, headers: HeaderMap) -> Response {
    let n = admit(&b, &headers).await;
    if picked(n, b.reset_per_mille.load(Ordering::Relaxed))
        && let Some(Extension(socket)) = socket
    {
        return cut_off(&name, &socket);
    }
    // A request that carries FAIL_HEADER fails on every version: its own input is at fault.
    let fail = picked(n, b.fail_per_mille.load(Ordering::Relaxed)) || headers.contains_key(FAIL_HEADER);
    let status = if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    (status, [("x-served-by", name.clone())], name).into_response()
}

/// A `200` whose body stops after a few bytes, then an RST on the connection: with SO_LINGER 0
/// the close that follows the body error is an abort, not a FIN.
fn cut_off(name: &str, socket: &Socket) -> Response {
    // If the option can't be set the close is a FIN: the body is still cut short.
    let _ = socket2::SockRef::from(socket.0.as_ref()).set_linger(Some(Duration::ZERO));
    let body = futures_util::stream::unfold(0u8, |step| async move {
        match step {
            0 => Some((Ok(Bytes::from_static(RESET_PARTIAL_BODY)), 1)),
            1 => {
                tokio::time::sleep(RESET_AFTER).await;
                let abort = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "backend cuts the body off");
                Some((Err(abort), 2))
            }
            _ => None,
        }
    });
    // hyper keeps an explicit content-length for a body of unknown size, and closes the
    // connection when that body fails.
    (
        StatusCode::OK,
        [
            (header::CONTENT_LENGTH, RESET_CONTENT_LENGTH.to_string()),
            (header::HeaderName::from_static("x-served-by"), name.to_owned()),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// `n` ticks, one every [`SSE_EVENT_EVERY`], the first at once; the stream ends one more
/// interval after the last, so it lasts `n` intervals.
fn ticks(n: u64) -> impl futures_util::Stream<Item = u64> {
    futures_util::stream::unfold(0u64, move |i| async move {
        if i > 0 {
            tokio::time::sleep(SSE_EVENT_EVERY).await;
        }
        (i < n).then_some((i, i + 1))
    })
}

fn intervals(ms: &AtomicU64) -> u64 {
    ms.load(Ordering::Relaxed) / millis(SSE_EVENT_EVERY).max(1)
}

/// `GET /sse`: an event every [`SSE_EVENT_EVERY`], the first at once, for the set duration;
/// then the stream ends normally.
async fn sse(State((name, b)): State<AppState>, headers: HeaderMap) -> Response {
    admit(&b, &headers).await;
    let label = name.clone();
    let events = ticks(intervals(&b.sse_ms))
        .map(move |i| Ok::<_, Infallible>(Event::default().id(i.to_string()).data(label.as_str())));
    ([("x-served-by", name)], Sse::new(events)).into_response()
}

/// `GET /slow-body`: a `200` with its headers at once, then a plain body that trickles in, the
/// name and a newline every [`SSE_EVENT_EVERY`], for the set duration.
async fn slow_body(State((name, b)): State<AppState>, headers: HeaderMap) -> Response {
    admit(&b, &headers).await;
    let line = Bytes::from(format!("{name}\n"));
    let chunks = ticks(intervals(&b.slow_body_ms)).map(move |_| Ok::<_, Infallible>(line.clone()));
    ([("x-served-by", name)], Body::from_stream(chunks)).into_response()
}

/// Serves one connection with `app`, giving the handlers a second handle on its socket.
async fn serve_connection(stream: tokio::net::TcpStream, app: Router) -> std::io::Result<()> {
    let std_stream = stream.into_std()?;
    let socket = Socket(Arc::new(std_stream.try_clone()?));
    let stream = tokio::net::TcpStream::from_std(std_stream)?;
    let service = TowerToHyperService::new(app.layer(Extension(socket)));
    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
        .map_err(std::io::Error::other)
}

async fn serve(listener: tokio::net::TcpListener, app: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    // A connection's end, clean or not, is the client's business.
                    let _ = serve_connection(stream, app).await;
                });
            }
            // Out of descriptors or similar: wait for some to close rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

impl Backend {
    /// Starts a backend named `name` on a free loopback port, on the current tokio runtime.
    pub async fn start(name: &str) -> std::io::Result<Backend> {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// The same on `addr` (the container image listens on `0.0.0.0:8080`).
    pub async fn start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Behaviour::default());
        let app = Router::new()
            .route("/sse", get(sse).fallback(handle))
            .route("/slow-body", get(slow_body).fallback(handle))
            .fallback(handle)
            .with_state((name.to_owned(), Arc::clone(&state)));
        tokio::spawn(serve(listener, app));
        Ok(Backend { name: name.to_owned(), addr, state })
    }

    /// Requests received, of every kind (plain, failed, cut off, event streams).
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    pub fn fail_per_mille(&self, per_mille: u32) {
        self.state.fail_per_mille.store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// Cuts off `per_mille` of every 1,000 requests (evenly spread) after their headers: a `200`
    /// announcing [`RESET_CONTENT_LENGTH`] bytes, [`RESET_PARTIAL_BODY`], then an RST. 1000: all.
    /// Applies to every path but `GET /sse` and `GET /slow-body`. Meant for HTTP/1.1 (what Envoy
    /// speaks to this backend): on h2c hyper resets just the stream.
    pub fn reset_mid_body(&self, per_mille: u32) {
        self.state.reset_per_mille.store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// How long `GET /sse` streams (an event every [`SSE_EVENT_EVERY`]); [`SSE_DEFAULT_DURATION`]
    /// until set.
    pub fn sse_duration(&self, d: Duration) {
        self.state.sse_ms.store(millis(d), Ordering::SeqCst);
    }

    /// How long `GET /slow-body` trickles its body (a chunk every [`SSE_EVENT_EVERY`]);
    /// [`SSE_DEFAULT_DURATION`] until set.
    pub fn slow_body_duration(&self, d: Duration) {
        self.state.slow_body_ms.store(millis(d), Ordering::SeqCst);
    }

    pub fn delay(&self, d: Duration) {
        self.state.delay_ms.store(millis(d), Ordering::SeqCst);
    }

    pub fn labels_seen(&self) -> Vec<String> {
        self.state.labels.lock().map(|l| l.clone()).unwrap_or_default()
    }
}
