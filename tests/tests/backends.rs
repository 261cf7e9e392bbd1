//! The test backends on their own, without Envoy: each outcome they are meant to produce is seen
//! by a client exactly as the e2e tests rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use canary_e2e::Backend;
use canary_e2e::backend::{RESET_CONTENT_LENGTH, RESET_PARTIAL_BODY};
use canary_e2e::grpc::{GrpcBackend, GrpcOutcome, channel, grpc_stream, grpc_unary, unary_on_the_wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

#[tokio::test]
async fn a_plain_request_still_gets_the_backends_name() {
    let b = Backend::start("v1").await.unwrap();
    let resp = client().get(format!("http://{}/any", b.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "v1");
    assert_eq!(resp.text().await.unwrap(), "v1");
    assert_eq!(b.received(), 1);
}

#[tokio::test]
async fn a_cut_off_response_has_a_200_and_its_headers_then_the_body_read_fails() {
    let b = Backend::start("v2").await.unwrap();
    b.reset_mid_body(1000);
    let resp = client().get(format!("http://{}/", b.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "v2");
    assert_eq!(resp.content_length(), Some(RESET_CONTENT_LENGTH));
    let body = resp.bytes().await;
    assert!(body.is_err(), "the body should be cut off, got {body:?}");
    assert_eq!(b.received(), 1);
}

#[tokio::test]
async fn a_cut_off_response_sends_a_few_body_bytes_then_an_rst() {
    let b = Backend::start("v2").await.unwrap();
    b.reset_mid_body(1000);
    let mut tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the backend should end the connection");
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 1000\r\n"), "{text}");
    assert!(text.contains("x-served-by: v2\r\n"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body.as_bytes(), RESET_PARTIAL_BODY);
    let err = end.expect_err("the connection should end in an RST, not a FIN");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn the_reset_share_cuts_off_exactly_that_many_and_the_rest_are_whole() {
    let b = Backend::start("v2").await.unwrap();
    b.reset_mid_body(250);
    let http = client();
    let mut cut = 0;
    for _ in 0..20 {
        let resp = http.get(format!("http://{}/", b.addr)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        match resp.bytes().await {
            Ok(body) => assert_eq!(&body[..], b"v2"),
            Err(_) => cut += 1,
        }
    }
    assert_eq!(cut, 5);
    assert_eq!(b.received(), 20);
    b.reset_mid_body(0);
    assert_eq!(http.get(format!("http://{}/", b.addr)).send().await.unwrap().text().await.unwrap(), "v2");
}

#[tokio::test]
async fn sse_streams_an_event_every_100ms_for_its_duration_then_ends() {
    let b = Backend::start("v1").await.unwrap();
    b.sse_duration(Duration::from_millis(1000));
    let start = Instant::now();
    let mut resp = client().get(format!("http://{}/sse", b.addr)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-served-by"], "v1");
    let mut body = Vec::new();
    let mut first_chunk_at = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        first_chunk_at.get_or_insert(start.elapsed());
        body.extend_from_slice(&chunk);
    }
    let took = start.elapsed();
    let first = first_chunk_at.unwrap();
    assert!(first < Duration::from_millis(500), "events should stream, the first came after {first:?}");
    assert!(took >= Duration::from_millis(950), "the stream should last its duration, ended after {took:?}");
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.matches("data: v1\n").count(), 10, "{text}");
    assert_eq!(b.received(), 1);
}

#[tokio::test]
async fn a_slow_body_has_its_headers_at_once_and_trickles_for_its_duration() {
    let b = Backend::start("v2").await.unwrap();
    b.slow_body_duration(Duration::from_millis(1000));
    let start = Instant::now();
    let mut resp = client().get(format!("http://{}/slow-body", b.addr)).send().await.unwrap();
    let headers_at = start.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "v2");
    assert!(headers_at < Duration::from_millis(500), "headers should come at once, came after {headers_at:?}");
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(950), "the body should last its duration, ended after {took:?}");
    assert_eq!(String::from_utf8(body).unwrap(), "v2\n".repeat(10));
    assert_eq!(b.received(), 1);
}

#[tokio::test]
async fn sse_is_counted_and_other_methods_on_its_path_get_the_plain_answer() {
    let b = Backend::start("v1").await.unwrap();
    b.sse_duration(Duration::ZERO);
    let http = client();
    let resp = http.get(format!("http://{}/sse", b.addr)).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.unwrap(), "");
    let resp = http.post(format!("http://{}/sse", b.addr)).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "v1");
    assert_eq!(b.received(), 2);
}

async fn grpc_backend(name: &str) -> (GrpcBackend, tonic::transport::Channel) {
    let b = GrpcBackend::start(name).await.unwrap();
    let ch = channel(&b.url()).unwrap();
    (b, ch)
}

#[tokio::test]
async fn grpc_unary_answers_ok_with_the_backends_name() {
    let (b, ch) = grpc_backend("v2").await;
    let outcome = grpc_unary(&ch, &[("x-canary-subset", "v2".to_owned())]).await.unwrap();
    assert_eq!(outcome, GrpcOutcome { served_by: Some("v2".to_owned()), code: Code::Ok, messages: 1 });
    assert_eq!(b.received(), 1);
    assert_eq!(b.labels_seen(), ["v2"]);
}

#[tokio::test]
async fn grpc_unary_told_to_fail_returns_that_code_with_the_backends_name() {
    let (b, ch) = grpc_backend("v2").await;
    b.fail_with(Some(Code::Unavailable));
    let outcome = grpc_unary(&ch, &[]).await.unwrap();
    assert_eq!(outcome, GrpcOutcome { served_by: Some("v2".to_owned()), code: Code::Unavailable, messages: 0 });
    b.fail_with(None);
    assert_eq!(grpc_unary(&ch, &[]).await.unwrap().code, Code::Ok);
    assert_eq!(b.received(), 2);
}

#[tokio::test]
async fn a_failing_unary_call_is_trailers_only_on_the_wire() {
    let b = GrpcBackend::start("v2").await.unwrap();
    b.fail_with(Some(Code::Unavailable));
    let wire = unary_on_the_wire(b.addr, &[]).await.unwrap();
    assert_eq!(wire.status, 200);
    assert!(wire.trailers_only, "{wire:?}");
    assert_eq!(wire.body_len, 0);
    assert!(wire.trailers.is_none(), "{wire:?}");
    assert_eq!(wire.headers["grpc-status"], "14");
    assert_eq!(wire.headers["x-served-by"], "v2");
    assert_eq!(wire.grpc_status(), Some(Code::Unavailable as i32));
}

#[tokio::test]
async fn a_successful_unary_call_has_headers_a_message_and_ok_in_trailers_on_the_wire() {
    let b = GrpcBackend::start("v1").await.unwrap();
    let wire = unary_on_the_wire(b.addr, &[]).await.unwrap();
    assert_eq!(wire.status, 200);
    assert!(!wire.trailers_only, "{wire:?}");
    assert!(wire.body_len > 5, "{wire:?}");
    assert_eq!(wire.headers["x-served-by"], "v1");
    assert!(wire.headers.get("grpc-status").is_none(), "{wire:?}");
    assert_eq!(wire.trailers.as_ref().unwrap()["grpc-status"], "0");
    assert_eq!(wire.grpc_status(), Some(0));
}

#[tokio::test]
async fn grpc_stream_sends_one_message_then_ok() {
    let (b, ch) = grpc_backend("v1").await;
    let outcome = grpc_stream(&ch, &[]).await.unwrap();
    assert_eq!(outcome, GrpcOutcome { served_by: Some("v1".to_owned()), code: Code::Ok, messages: 1 });
    assert_eq!(b.received(), 1);
}

#[tokio::test]
async fn grpc_stream_told_to_fail_sends_one_message_then_the_error_in_trailers() {
    let (b, ch) = grpc_backend("v2").await;
    b.fail_with(Some(Code::ResourceExhausted));
    let outcome = grpc_stream(&ch, &[]).await.unwrap();
    assert_eq!(outcome, GrpcOutcome { served_by: Some("v2".to_owned()), code: Code::ResourceExhausted, messages: 1 });
}

#[tokio::test]
async fn grpc_fails_exactly_its_share_spread_evenly() {
    let (b, ch) = grpc_backend("v2").await;
    b.fail_per_mille(Code::Internal, 250);
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(grpc_unary(&ch, &[]).await.unwrap().code);
    }
    use Code::{Internal, Ok};
    assert_eq!(codes, [Ok, Ok, Ok, Internal, Ok, Ok, Ok, Internal]);
    assert_eq!(b.received(), 8);
}

#[tokio::test]
async fn grpc_to_a_closed_port_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ch = channel(&format!("http://127.0.0.1:{port}")).unwrap();
    assert_eq!(grpc_unary(&ch, &[]).await.unwrap().code, Code::Unavailable);
}

/// A free loopback port (bound, read and released: another process could take it in between,
/// which on a test machine does not happen in practice).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The compose setup's backend image runs this binary; its control port makes the canary fail.
#[tokio::test]
async fn the_backend_binary_fails_on_demand_through_its_control_port() {
    let (port, control) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backend"))
        .args(["--name", "v2", "--listen", &format!("127.0.0.1:{port}"), "--control", &format!("127.0.0.1:{control}")])
        .spawn()
        .unwrap();
    let c = client();
    let (url, ctl) = (format!("http://127.0.0.1:{port}/"), format!("http://127.0.0.1:{control}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match c.get(&url).send().await {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "the backend never answered: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!((first.status().as_u16(), first.headers()["x-served-by"].to_str().unwrap()), (200, "v2"));
    let told = c.post(format!("{ctl}/fail?per_mille=1000")).send().await.unwrap();
    assert_eq!(told.status(), 200, "{:?}", told.text().await);
    for _ in 0..5 {
        assert_eq!(c.get(&url).send().await.unwrap().status(), 500);
    }
    assert_eq!(c.post(format!("{ctl}/fail?per_mille=0")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(c.post(format!("{ctl}/fail?per_mille=5000")).send().await.unwrap().status(), 400);
    assert_eq!(c.get(format!("{ctl}/received")).send().await.unwrap().text().await.unwrap(), "7\n");
    child.kill().unwrap();
    let _ = child.wait();
}
