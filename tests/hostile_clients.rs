//! Hostile clients cannot stop the service or hold it: descriptor exhaustion,
//! connection floods, stalled heads and bodies, ambiguous framing, oversized heads
//! and a phone hammering redeem. Every test runs the real binary.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use voucherd_test_support::binary::{Binary, STARTUP_TIMEOUT};
use voucherd_test_support::http::{assert_error_shape, send, try_send};
use voucherd_test_support::server::{StartOptions, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// Generous bound on "the server closes the connection by itself".
const CLOSE_WAIT_SLACK: Duration = Duration::from_secs(5);

fn host_port(server: &TestServer) -> String {
    server.base_url().trim_start_matches("http://").to_owned()
}

/// Opens up to `count` TCP connections (stopping early if this process runs out).
async fn open_connections(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let address = host_port(server);
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect(&address).await {
            Ok(socket) => sockets.push(socket),
            Err(_) => break,
        }
    }
    sockets
}

/// The value of a metric line `name{labels} value` (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Reads until the server closes the connection or `within` passes; returns what
/// was read and whether the connection was closed.
async fn read_until_closed(socket: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

/// Waits until the server answers `/readyz` with 200 again. Right after a flood
/// closes, the server may not have seen every close yet, so a new connection can
/// still meet the cap and be closed: those transport errors are retried.
async fn wait_serving(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let answer = try_send(server.request(reqwest::Method::GET, "/readyz")).await;
        if matches!(&answer, Ok(response) if response.status == 200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not serve again after the flood: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json_body(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON body: {response:?}"))
}

/// Goal: with the open-file limit far below the clients' connections and the cap
/// set above it, accept fails with EMFILE; the server counts it, keeps running,
/// and serves normally once the clients close.
#[tokio::test]
async fn descriptor_exhaustion_does_not_stop_the_server() {
    let mut server = TestServer::start_with(
        VOUCHERD,
        StartOptions {
            args: vec!["--max-connections".into(), "100000".into()],
            open_files: Some(128),
            ..StartOptions::default()
        },
    )
    .await;
    let sockets = open_connections(&server, 400).await;
    assert!(
        sockets.len() >= 300,
        "opened only {} sockets",
        sockets.len()
    );
    // Give the accept loop time to run into the limit and back off.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server.is_alive(),
        "voucherd exited under descriptor exhaustion; stderr:\n{}",
        server.log()
    );
    drop(sockets);
    wait_serving(&server).await;
    let metrics = server.get("/metrics").await;
    metrics.expect_status(200);
    let exhausted = metric(
        &metrics.text,
        "voucherd_http_accept_errors_total{kind=\"descriptors_exhausted\"}",
    );
    assert!(exhausted >= 1.0, "no EMFILE was counted:\n{}", metrics.text);
    server.create_voucher("EMFILE", 100, 5).await;
    server
        .redeem("+989120000001", "EMFILE")
        .await
        .expect_status(200);
    assert!(server.log().contains("accept failed"), "{}", server.log());
    server.stop().await;
}

/// Goal: past the connection cap (by default derived from the open-file limit)
/// new connections are closed at once and counted; the server keeps serving.
#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let mut server =
        TestServer::start_with(VOUCHERD, StartOptions::args(&["--max-connections", "20"])).await;
    let mut held = open_connections(&server, 20).await;
    assert_eq!(held.len(), 20);
    // Let the server accept the 20 it may hold before the next ones arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut extra = open_connections(&server, 5).await;
    for socket in &mut extra {
        let (_, closed) = read_until_closed(socket, CLOSE_WAIT_SLACK).await;
        assert!(closed, "a connection past the cap stayed open");
    }
    drop(held.drain(..));
    wait_serving(&server).await;
    let metrics = server.get("/metrics").await;
    let refused = metric(
        &metrics.text,
        "voucherd_http_connections_closed_by_server_total{reason=\"refused_over_cap\"}",
    );
    assert!(refused >= 5.0, "refusals not counted:\n{}", metrics.text);
    assert!(server.is_alive());
    server.stop().await;

    // The default cap fits the open-file limit, so a flood never reaches EMFILE.
    let mut server = TestServer::start_with(
        VOUCHERD,
        StartOptions {
            open_files: Some(128),
            ..StartOptions::default()
        },
    )
    .await;
    let sockets = open_connections(&server, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(sockets);
    wait_serving(&server).await;
    let metrics = server.get("/metrics").await;
    assert!(
        metric(
            &metrics.text,
            "voucherd_http_connections_closed_by_server_total{reason=\"refused_over_cap\"}"
        ) >= 1.0,
        "{}",
        metrics.text
    );
    assert_eq!(
        metric(&metrics.text, "voucherd_http_accept_errors_total"),
        0.0,
        "{}",
        metrics.text
    );
    server.stop().await;
}

/// Goal: a client that starts a head and never finishes it is disconnected
/// within the header timeout; one that sends nothing, within the idle timeout.
#[tokio::test]
async fn stalled_heads_and_idle_connections_are_closed() {
    let mut server = TestServer::start_with(
        VOUCHERD,
        StartOptions::args(&["--header-timeout-secs", "1", "--idle-timeout-secs", "2"]),
    )
    .await;
    let mut slow = TcpStream::connect(host_port(&server)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(1) + CLOSE_WAIT_SLACK).await;
    assert!(closed, "an unfinished head held its connection");

    let mut silent = TcpStream::connect(host_port(&server)).await.unwrap();
    let (_, closed) =
        read_until_closed(&mut silent, Duration::from_secs(2) + CLOSE_WAIT_SLACK).await;
    assert!(closed, "a silent connection was never closed");

    // A keep-alive connection serves requests, then closes when left idle.
    let mut kept = TcpStream::connect(host_port(&server)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (response, closed) =
        read_until_closed(&mut kept, Duration::from_secs(2) + CLOSE_WAIT_SLACK).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(closed, "an idle keep-alive connection was never closed");

    let metrics = server.get("/metrics").await;
    for reason in ["header_timeout", "idle_timeout"] {
        let series =
            format!("voucherd_http_connections_closed_by_server_total{{reason=\"{reason}\"}}");
        assert!(
            metric(&metrics.text, &series) >= 1.0,
            "{reason} not counted:\n{}",
            metrics.text
        );
    }
    server.stop().await;
}

/// Goal: a body that stops arriving is answered 408 with the JSON error, and
/// changes nothing.
#[tokio::test]
async fn a_stalled_body_gets_408() {
    let mut server =
        TestServer::start_with(VOUCHERD, StartOptions::args(&["--body-timeout-secs", "1"])).await;
    server.create_voucher("SLOWBODY", 100, 5).await;
    let mut socket = TcpStream::connect(host_port(&server)).await.unwrap();
    let body = br#"{"phone_number":"+989120000001","code":"SLOWBODY"}"#;
    let head = format!(
        "POST /api/vouchers/redeem HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body[..10]).await.unwrap();
    let (response, _) =
        read_until_closed(&mut socket, Duration::from_secs(1) + CLOSE_WAIT_SLACK).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert_eq!(json_body(&response)["error"], "request_timeout");
    assert_eq!(server.voucher("SLOWBODY").await["redeemed"], 0);
    server.stop().await;
}

/// Goal: Content-Length together with Transfer-Encoding is refused with 400 and
/// the JSON error, the request is not applied, and the connection is closed.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let mut server = TestServer::start(VOUCHERD).await;
    server.create_voucher("SMUGGLE", 100, 5).await;
    let body = r#"{"phone_number":"+989120000001","code":"SMUGGLE"}"#;
    for (first, second) in [
        (
            format!("Content-Length: {}", body.len()),
            "Transfer-Encoding: chunked".to_owned(),
        ),
        (
            "Transfer-Encoding: chunked".to_owned(),
            format!("content-length: {}", body.len()),
        ),
    ] {
        let mut socket = TcpStream::connect(host_port(&server)).await.unwrap();
        let request = format!(
            "POST /api/vouchers/redeem HTTP/1.1\r\nHost: x\r\n{first}\r\n{second}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let (response, closed) = read_until_closed(&mut socket, CLOSE_WAIT_SLACK).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert_eq!(json_body(&response)["error"], "ambiguous_framing");
        assert!(closed, "the connection stayed open after ambiguous framing");
    }
    assert_eq!(server.voucher("SMUGGLE").await["redeemed"], 0);
    // Either header alone is fine.
    server
        .redeem("+989120000001", "SMUGGLE")
        .await
        .expect_status(200);
    server.stop().await;
}

/// Goal: oversized targets and heads get 414 / 431 with the JSON error.
#[tokio::test]
async fn oversized_heads_get_json_errors() {
    let mut server = TestServer::start(VOUCHERD).await;
    let long_path = format!("/api/vouchers/{}", "A".repeat(3_000));
    let response = server.get(&long_path).await;
    response.expect_error(414, "uri_too_long");

    let mut request = server.request(reqwest::Method::GET, "/healthz");
    for i in 0..80 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let response = send(request).await;
    response.expect_error(431, "headers_too_large");

    let response = send(
        server
            .request(reqwest::Method::GET, "/healthz")
            .header("x-big", "b".repeat(9_000)),
    )
    .await;
    response.expect_error(431, "headers_too_large");
    server.stop().await;
}

/// Goal: one phone hammering redeem gets 429 `rate_limited` with Retry-After,
/// other phones are unaffected, and the limit is configurable.
#[tokio::test]
async fn a_phone_over_its_rate_gets_429() {
    let mut server = TestServer::start_with(
        VOUCHERD,
        StartOptions::args(&[
            "--redeem-rate-per-phone",
            "1",
            "--redeem-burst-per-phone",
            "3",
        ]),
    )
    .await;
    // An unknown voucher: every attempt is a cheap 404, so only the limit changes the answer.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let response = server.redeem("+989120000009", "NOSUCHCODE").await;
        statuses.push(response.status);
        if response.status == 429 && limited.is_none() {
            limited = Some(response);
        }
    }
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    limited.expect_error(429, "rate_limited");
    let retry_after: u64 = limited
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds");
    assert!(retry_after >= 1);
    assert_eq!(&statuses[..3], &[404, 404, 404], "{statuses:?}");
    server.create_voucher("RATE", 100, 5).await;
    server
        .redeem("+989120000010", "RATE")
        .await
        .expect_status(200);
    let metrics = server.get("/metrics").await;
    assert!(
        metric(
            &metrics.text,
            "voucherd_redemptions_total{outcome=\"rate_limited\"}"
        ) >= 7.0,
        "{}",
        metrics.text
    );
    server.stop().await;
}

/// Goal: bodies of every error produced at the edge are JSON, never empty.
#[tokio::test]
async fn edge_errors_are_json() {
    let mut server = TestServer::start(VOUCHERD).await;
    let response = server.post_json("/api/vouchers/redeem", &json!({})).await;
    assert_error_shape(&response);
    server.stop().await;
}
