//! Who may call what: with an admin token configured, every route that creates
//! vouchers, moves money or reads someone's wallet or the winners answers 401
//! without it or with a wrong one, and works with it; redeem, voucher reads, the
//! redemption status and health stay public. Without a token the service runs
//! open only on a loopback address. Every test runs the real binary.

use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use voucherd_test_support::binary::{Binary, STARTUP_TIMEOUT};
use voucherd_test_support::http::{send, Resp};
use voucherd_test_support::server::{client, StartOptions, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn with_token_env() -> StartOptions {
    StartOptions {
        env: vec![("VOUCHERD_ADMIN_TOKEN".into(), TOKEN.into())],
        ..StartOptions::default()
    }
}

/// One route as a client calls it.
struct Call {
    method: Method,
    path: &'static str,
    body: Option<Value>,
}

impl Call {
    fn new(method: Method, path: &'static str, body: Option<Value>) -> Self {
        Self { method, path, body }
    }

    async fn send(&self, server: &TestServer, authorization: Option<&str>) -> Resp {
        let mut request = server.request(self.method.clone(), self.path);
        if let Some(body) = &self.body {
            request = request.json(body);
        }
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        send(request).await
    }
}

fn admin_calls() -> Vec<(Call, u16)> {
    vec![
        (
            Call::new(
                Method::POST,
                "/api/vouchers",
                Some(json!({"code": "ADMINV", "amount": 500, "limit": 10})),
            ),
            201,
        ),
        (
            Call::new(Method::GET, "/api/vouchers/report?code=ACCESS", None),
            200,
        ),
        (
            Call::new(
                Method::POST,
                "/api/profiles",
                Some(json!({"phone_number": "+989120000077", "balance": 0})),
            ),
            201,
        ),
        (
            Call::new(
                Method::POST,
                "/api/transactions",
                Some(json!({"phone_number": "+989120000001", "amount": 100})),
            ),
            200,
        ),
        (
            Call::new(Method::GET, "/api/profiles/+989120000001", None),
            200,
        ),
        (Call::new(Method::GET, "/metrics", None), 200),
    ]
}

fn public_calls() -> Vec<(Call, u16)> {
    vec![
        (
            Call::new(
                Method::POST,
                "/api/vouchers/redeem",
                Some(json!({"phone_number": "+989120000002", "code": "ACCESS"})),
            ),
            200,
        ),
        (Call::new(Method::GET, "/api/vouchers/ACCESS", None), 200),
        (
            Call::new(Method::GET, "/api/vouchers?code=ACCESS", None),
            200,
        ),
        (
            Call::new(
                Method::GET,
                "/api/vouchers/ACCESS/redemptions/+989120000002",
                None,
            ),
            200,
        ),
        (Call::new(Method::GET, "/healthz", None), 200),
        (Call::new(Method::GET, "/readyz", None), 200),
    ]
}

/// Goal: each admin route is 401 `unauthorized` (JSON, with WWW-Authenticate)
/// without a token, with a wrong token or another scheme, and succeeds with the
/// admin token; a refused request changes nothing; public routes need nothing.
#[tokio::test]
async fn every_route_follows_its_access_rule() {
    let mut server = TestServer::start_with(VOUCHERD, with_token_env()).await;
    let admin = format!("Bearer {TOKEN}");
    // The voucher the public calls use, created as the admin.
    let created = Call::new(
        Method::POST,
        "/api/vouchers",
        Some(json!({"code": "ACCESS", "amount": 1000, "limit": 10})),
    )
    .send(&server, Some(&admin))
    .await;
    created.expect_status(201);

    for (call, success) in admin_calls() {
        for authorization in [
            None,
            Some("Bearer wrong-token-wrong-token-0000".to_owned()),
            Some(format!("Basic {TOKEN}")),
            Some(TOKEN.to_owned()),
        ] {
            let refused = call.send(&server, authorization.as_deref()).await;
            refused.expect_error(401, "unauthorized");
            assert_eq!(
                refused
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{} {}",
                call.method,
                call.path
            );
        }
        // Nothing a refused request carried was applied.
        if call.path == "/api/vouchers" {
            let missing = server.get("/api/vouchers/ADMINV").await;
            missing.expect_error(404, "voucher_not_found");
        }
        if call.path == "/api/transactions" {
            let missing = server
                .request(Method::GET, "/api/profiles/+989120000001")
                .header("authorization", &admin)
                .send()
                .await
                .unwrap();
            assert_eq!(missing.status(), 404, "a refused credit opened a wallet");
        }
        let granted = call.send(&server, Some(&admin)).await;
        granted.expect_status(success);
    }
    for (call, success) in public_calls() {
        call.send(&server, None).await.expect_status(success);
    }
    // The public lookup of one's own redemption stays public; the wallet it
    // credited is not.
    Call::new(Method::GET, "/api/profiles/+989120000002", None)
        .send(&server, None)
        .await
        .expect_error(401, "unauthorized");

    let log = server.log();
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
    server.stop().await;
}

/// Goal: the token can come from a file (a trailing newline is not part of it);
/// `/metrics` on a separate metrics address needs no token.
#[tokio::test]
async fn token_file_and_metrics_address() {
    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = TestServer::start_with(
        VOUCHERD,
        StartOptions::args(&[
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ]),
    )
    .await;
    let admin = format!("Bearer {TOKEN}");
    server
        .get("/metrics")
        .await
        .expect_error(401, "unauthorized");
    let metrics = send(
        server
            .request(Method::GET, "/metrics")
            .header("authorization", &admin),
    )
    .await;
    metrics.expect_status(200);
    let client = client();
    let separate = send(client.get(format!("http://127.0.0.1:{metrics_port}/metrics"))).await;
    separate.expect_status(200);
    assert!(
        separate.text.contains("voucherd_http_requests_total"),
        "{}",
        separate.text
    );
    let other = send(client.get(format!("http://127.0.0.1:{metrics_port}/api/vouchers/X"))).await;
    other.expect_error(404, "not_found");
    server.stop().await;
}

/// Runs `voucherd serve` with `args` (and `env`) until it prints its listening
/// line or exits; returns the exit code (None while running, then killed) and stderr.
async fn run_briefly(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let store = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(VOUCHERD.path());
    command
        .arg("serve")
        .arg("--store")
        .arg(store.path())
        .args(args)
        .env_remove("VOUCHERD_ADMIN_TOKEN")
        .env_remove("VOUCHERD_LISTEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut first = [0u8; 32];
    use tokio::io::AsyncReadExt;
    let started = tokio::time::timeout(STARTUP_TIMEOUT, stdout.read(&mut first)).await;
    let code = match started {
        Ok(Ok(n)) if n > 0 => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
        _ => tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("voucherd neither started nor exited")
            .unwrap()
            .code(),
    };
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log).await;
    (code, log)
}

/// Goal: without a token the service refuses to listen on a non-loopback address
/// (non-zero exit, a message naming the ways out), unless --insecure-no-auth is
/// given; with a token it starts there; a weak or doubly given token is refused.
#[tokio::test]
async fn open_mode_is_loopback_only() {
    let (code, log) = run_briefly(&["--listen", "0.0.0.0:0"], &[]).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "started open on 0.0.0.0: {code:?}\n{log}"
    );
    assert!(
        log.contains("--insecure-no-auth") && log.contains("--admin-token-file"),
        "{log}"
    );

    let (code, log) = run_briefly(&["--listen", "0.0.0.0:0", "--insecure-no-auth"], &[]).await;
    assert_eq!(code, None, "--insecure-no-auth did not start:\n{log}");

    let (code, log) = run_briefly(
        &["--listen", "0.0.0.0:0"],
        &[("VOUCHERD_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(code, None, "a token on 0.0.0.0 did not start:\n{log}");
    assert!(!log.contains(TOKEN), "{log}");

    let (code, log) = run_briefly(&["--listen", "127.0.0.1:0"], &[]).await;
    assert_eq!(code, None, "open mode on loopback did not start:\n{log}");

    let (code, log) = run_briefly(
        &["--listen", "127.0.0.1:0"],
        &[("VOUCHERD_ADMIN_TOKEN", "short")],
    )
    .await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "a weak token was accepted\n{log}"
    );
    assert!(log.contains("at least 16"), "{log}");

    let directory = tempfile::tempdir().unwrap();
    let token_file = directory.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (code, log) = run_briefly(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
        &[("VOUCHERD_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "a token given twice was accepted\n{log}"
    );
    assert!(log.contains("given twice"), "{log}");
}
