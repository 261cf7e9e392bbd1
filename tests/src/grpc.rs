//! A gRPC stand-in for one version of a service, and the clients to call it, for the tests of how
//! the filter classifies gRPC outcomes (where HTTP says `200` and `grpc-status` says how it went).
//!
//! [`GrpcBackend`] is a real tonic server on HTTP/2 cleartext (h2c) serving `canarytest.Echo`:
//! - `Unary`: one reply, or, when told to fail, an error status before any message, which tonic
//!   sends as a trailers-only answer (`:status 200` and `grpc-status` in a single HEADERS frame);
//! - `Stream`: one reply, then `grpc-status` in trailers: OK, or the error it was told to fail
//!   with.
//!
//! Every answer carries `x-served-by: <name>` in its headers (initial metadata; on a trailers-only
//! error too). The messages are hand-written prost structs and the service a hand-written tonic
//! service, so nothing needs protoc.
//!
//! The clients: [`grpc_unary`] and [`grpc_stream`] call through a tonic [`Channel`] (to the
//! backend or to Envoy) and report what the application would see; [`unary_on_the_wire`] makes
//! the same unary call with a plain HTTP/2 client and reports the frames, to check that an answer
//! is trailers-only.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::server::{NamedService, ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use crate::backend::picked;

/// The service's full name.
pub const SERVICE: &str = "canarytest.Echo";
/// The unary method's path.
pub const UNARY_PATH: &str = "/canarytest.Echo/Unary";
/// The server-streaming method's path.
pub const STREAM_PATH: &str = "/canarytest.Echo/Stream";

/// The request of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The reply of both methods.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The backend's name.
    #[prost(string, tag = "1")]
    pub served_by: String,
    /// The request's text.
    #[prost(string, tag = "2")]
    pub text: String,
}

#[derive(Debug)]
struct Behaviour {
    /// Requests received, on any path.
    received: AtomicU64,
    /// The code failed requests end with; 0 (OK) while no failures are asked for.
    fail_code: AtomicI32,
    /// Out of 1,000 requests, how many fail (spread evenly: every k-th).
    fail_per_mille: AtomicU32,
    /// Label header values seen, for tests that check what Envoy forwarded.
    labels: Mutex<Vec<String>>,
}

/// A running gRPC backend on a loopback port.
#[derive(Debug, Clone)]
pub struct GrpcBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Behaviour>,
}

impl GrpcBackend {
    /// Starts a gRPC backend named `name` on a free loopback port (h2c), on the current tokio
    /// runtime.
    pub async fn start(name: &str) -> std::io::Result<GrpcBackend> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Behaviour {
            received: AtomicU64::new(0),
            fail_code: AtomicI32::new(0),
            fail_per_mille: AtomicU32::new(0),
            labels: Mutex::new(Vec::new()),
        });
        let echo = Echo { name: Arc::from(name), state: Arc::clone(&state) };
        let server = tonic::transport::Server::builder()
            .add_service(echo)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(async move {
            let _ = server.await;
        });
        Ok(GrpcBackend { name: name.to_owned(), addr, state })
    }

    /// `http://127.0.0.1:PORT`, for [`channel`].
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received, on any path, failed or not.
    pub fn received(&self) -> u64 {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Every request fails with `code` (`None`: none fail).
    pub fn fail_with(&self, code: Option<Code>) {
        match code {
            Some(code) => self.fail_per_mille(code, 1000),
            None => self.fail_per_mille(Code::Ok, 0),
        }
    }

    /// `per_mille` of every 1,000 requests (evenly spread) fail with `code`.
    pub fn fail_per_mille(&self, code: Code, per_mille: u32) {
        self.state.fail_code.store(code as i32, Ordering::SeqCst);
        self.state.fail_per_mille.store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// Values of the label header (`x-canary-subset`) the requests carried.
    pub fn labels_seen(&self) -> Vec<String> {
        self.state.labels.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// The server side: `canarytest.Echo` as tonic's generated code would route it.
#[derive(Debug, Clone)]
struct Echo {
    name: Arc<str>,
    state: Arc<Behaviour>,
}

impl Echo {
    /// Counts a request, records its label, and says whether it is to fail, and how.
    fn admit(&self, headers: &HeaderMap) -> Option<Status> {
        if let Some(v) = headers.get(canary_core::config::DEFAULT_LABEL_HEADER).and_then(|v| v.to_str().ok())
            && let Ok(mut labels) = self.state.labels.lock()
        {
            labels.push(v.to_owned());
        }
        let n = self.state.received.fetch_add(1, Ordering::SeqCst) + 1;
        let code = Code::from_i32(self.state.fail_code.load(Ordering::Relaxed));
        picked(n, self.state.fail_per_mille.load(Ordering::Relaxed))
            .then(|| Status::new(code, format!("{} was told to fail", self.name)))
    }

    fn served_by(&self) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Ok(name) = MetadataValue::try_from(&*self.name) {
            metadata.insert("x-served-by", name);
        }
        metadata
    }

    fn reply(&self, request: tonic::Request<EchoRequest>) -> EchoReply {
        EchoReply { served_by: self.name.to_string(), text: request.into_inner().text }
    }
}

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let failure = self.admit(request.headers());
        let method = Method { echo: self.clone(), failure };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
            let response = match request.uri().path() {
                UNARY_PATH => grpc.unary(method, request).await,
                STREAM_PATH => grpc.server_streaming(method, request).await,
                _ => Status::unimplemented("canarytest.Echo has Unary and Stream").into_http(),
            };
            Ok(response)
        })
    }
}

/// One call of either method, with its fate decided on arrival.
struct Method {
    echo: Echo,
    failure: Option<Status>,
}

impl UnaryService<EchoRequest> for Method {
    type Response = EchoReply;
    type Future = Ready<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        ready(match self.failure.take() {
            // Metadata on an error status goes into its (only) HEADERS frame.
            Some(status) => Err(Status::with_metadata(status.code(), status.message(), self.echo.served_by())),
            None => {
                let mut response = tonic::Response::new(self.echo.reply(request));
                *response.metadata_mut() = self.echo.served_by();
                Ok(response)
            }
        })
    }
}

type ReplyStream = futures_util::stream::Iter<std::vec::IntoIter<Result<EchoReply, Status>>>;

impl ServerStreamingService<EchoRequest> for Method {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = Ready<Result<tonic::Response<ReplyStream>, Status>>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let mut replies = vec![Ok(self.echo.reply(request))];
        // An error after a message can only go in the trailers.
        replies.extend(self.failure.take().map(Err));
        let mut response = tonic::Response::new(futures_util::stream::iter(replies));
        *response.metadata_mut() = self.echo.served_by();
        ready(Ok(response))
    }
}

/// What a gRPC call came to, as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcOutcome {
    /// `x-served-by` from the answer's headers (or from a trailers-only error).
    pub served_by: Option<String>,
    /// The final status: `Ok` only if the call completed with `grpc-status: 0`.
    pub code: Code,
    /// Messages received before the end.
    pub messages: usize,
}

/// A channel to `url` (`http://127.0.0.1:PORT`: a [`GrpcBackend`] or an Envoy listener, which
/// takes h2c). It connects on first use, so a refused connection shows as `Unavailable`.
pub fn channel(url: &str) -> Result<Channel, String> {
    Endpoint::from_shared(url.to_owned()).map(|e| e.connect_lazy()).map_err(|e| format!("{url}: {e}"))
}

/// Calls `Unary` with `headers` as request metadata. `Err` only for a header that can't be
/// metadata.
pub async fn grpc_unary(channel: &Channel, headers: &[(&str, String)]) -> Result<GrpcOutcome, String> {
    let request = request(headers)?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if grpc.ready().await.is_err() {
        return Ok(GrpcOutcome { served_by: None, code: Code::Unavailable, messages: 0 });
    }
    let path = PathAndQuery::from_static(UNARY_PATH);
    Ok(match grpc.unary(request, path, ProstCodec::<EchoRequest, EchoReply>::default()).await {
        Ok(response) => GrpcOutcome { served_by: served_by(response.metadata()), code: Code::Ok, messages: 1 },
        Err(status) => failed(&status),
    })
}

/// Calls `Stream` with `headers` as request metadata and reads it to the end. `Err` only for a
/// header that can't be metadata.
pub async fn grpc_stream(channel: &Channel, headers: &[(&str, String)]) -> Result<GrpcOutcome, String> {
    let request = request(headers)?;
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if grpc.ready().await.is_err() {
        return Ok(GrpcOutcome { served_by: None, code: Code::Unavailable, messages: 0 });
    }
    let path = PathAndQuery::from_static(STREAM_PATH);
    let response = match grpc.server_streaming(request, path, ProstCodec::<EchoRequest, EchoReply>::default()).await {
        Ok(response) => response,
        Err(status) => return Ok(failed(&status)),
    };
    let served_by = served_by(response.metadata());
    let mut replies = response.into_inner();
    let mut messages = 0;
    loop {
        match replies.message().await {
            Ok(Some(_)) => messages += 1,
            Ok(None) => return Ok(GrpcOutcome { served_by, code: Code::Ok, messages }),
            Err(status) => return Ok(GrpcOutcome { served_by, code: status.code(), messages }),
        }
    }
}

fn request(headers: &[(&str, String)]) -> Result<tonic::Request<EchoRequest>, String> {
    let mut request = tonic::Request::new(EchoRequest { text: "hello".to_owned() });
    for (name, value) in headers {
        let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|e| format!("metadata name {name:?}: {e}"))?;
        let value = MetadataValue::try_from(value.as_str()).map_err(|e| format!("metadata {name}: {e}"))?;
        request.metadata_mut().insert(key, value);
    }
    Ok(request)
}

fn served_by(metadata: &MetadataMap) -> Option<String> {
    metadata.get("x-served-by").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn failed(status: &Status) -> GrpcOutcome {
    GrpcOutcome { served_by: served_by(status.metadata()), code: status.code(), messages: 0 }
}

/// A gRPC answer frame by frame, as a plain HTTP/2 client sees it.
#[derive(Debug)]
pub struct WireAnswer {
    /// `:status`.
    pub status: u16,
    pub headers: HeaderMap,
    /// The answer was a single HEADERS frame that ended the stream (gRPC trailers-only).
    pub trailers_only: bool,
    /// Bytes of DATA (length-prefixed gRPC messages).
    pub body_len: usize,
    pub trailers: Option<HeaderMap>,
}

impl WireAnswer {
    /// `grpc-status`: from the trailers, or from the headers of a trailers-only answer.
    pub fn grpc_status(&self) -> Option<i32> {
        let map = self.trailers.as_ref().unwrap_or(&self.headers);
        map.get("grpc-status")?.to_str().ok()?.parse().ok()
    }
}

/// Calls `Unary` at `addr` (a [`GrpcBackend`] or an Envoy listener) with a plain HTTP/2 client
/// over a new connection, and reports the answer's frames.
pub async fn unary_on_the_wire(addr: SocketAddr, headers: &[(&str, String)]) -> Result<WireAnswer, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let (client, connection) = h2::client::handshake(tcp).await.map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("h2: {e}"))?;
    let mut builder = http::Request::post(format!("http://{addr}{UNARY_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    let request = builder.body(()).map_err(|e| format!("request: {e}"))?;
    let (response, mut send) = client.send_request(request, false).map_err(|e| format!("send: {e}"))?;
    send.send_data(grpc_frame(&EchoRequest { text: "hello".to_owned() }), true)
        .map_err(|e| format!("send body: {e}"))?;
    let response = response.await.map_err(|e| format!("answer: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let trailers_only = body.is_end_stream();
    let mut body_len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("answer body: {e}"))?;
        body_len += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| format!("trailers: {e}"))?;
    Ok(WireAnswer { status: parts.status.as_u16(), headers: parts.headers, trailers_only, body_len, trailers })
}

/// A message as gRPC frames it: no compression flag, 4-byte big-endian length, the bytes.
fn grpc_frame(message: &EchoRequest) -> tonic::codegen::Bytes {
    let bytes = prost::Message::encode_to_vec(message);
    let mut frame = Vec::with_capacity(5 + bytes.len());
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&bytes);
    frame.into()
}
