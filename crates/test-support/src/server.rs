//! One real `voucherd` per test: [`TestServer`] runs the binary on a free port with a
//! fresh store, talks to it over HTTP, and can stop, kill and restart it on the same
//! store; and the checks the single-instance tests share (a crowd's bounded retries,
//! I1–I5 of one voucher, no panic in the log).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::Child;

use crate::binary::{self, Binary, STARTUP_TIMEOUT};
use crate::http::{profile_all, send, try_send, Resp, Wallet};
use crate::invariants::{check_invariants, Expect};

/// Upper bound on one HTTP request, so that a hung server fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `voucherd serve` child process with its own store directory.
pub struct TestServer {
    binary: Binary,
    child: Option<Child>,
    base_url: String,
    /// The ledger directory; kept across `restart()`.
    store: TempDir,
    /// Holds the stderr log (outside the store so that it never confuses the ledger).
    log_dir: TempDir,
    client: reqwest::Client,
    options: StartOptions,
}

/// How to start the binary beyond the defaults (kept across restarts).
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Soft and hard RLIMIT_NOFILE of the child.
    pub open_files: Option<u64>,
}

impl StartOptions {
    pub fn args(args: &[&str]) -> Self {
        Self {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }
}

impl TestServer {
    /// Starts `binary` on `127.0.0.1:0` with a fresh, empty store.
    pub async fn start(binary: Binary) -> TestServer {
        Self::start_with(binary, StartOptions::default()).await
    }

    /// Like [`TestServer::start`], with extra arguments, environment or limits.
    pub async fn start_with(binary: Binary, options: StartOptions) -> TestServer {
        let store = tempfile::Builder::new()
            .prefix("voucherd-store-")
            .tempdir()
            .expect("create store tempdir");
        let log_dir = tempfile::Builder::new()
            .prefix("voucherd-log-")
            .tempdir()
            .expect("create log tempdir");
        let mut server = TestServer {
            binary,
            child: None,
            base_url: String::new(),
            store,
            log_dir,
            client: client(),
            options,
        };
        server.spawn().await;
        server
    }

    /// `http://127.0.0.1:PORT` as printed by the binary (changes on every restart).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("stderr.log")
    }

    /// Everything the binary wrote to stderr, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The process id of the running child (panics when it is not running).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("server is not running")
    }

    /// True while the child has not exited.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a child is running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open stderr log");
        let mut command = self.binary.serve_command(self.store.path(), log);
        command
            .args(&self.options.args)
            .envs(self.options.env.iter().cloned());
        if let Some(limit) = self.options.open_files {
            // SAFETY: only an async-signal-safe system call runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        limit,
                        limit,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let (child, url) = binary::start(&mut command, "voucherd", || self.log()).await;
        self.base_url = url;
        self.child = Some(child);
    }

    /// Sends SIGKILL and reaps the child: a crash with no chance to flush anything.
    pub async fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Sends SIGTERM and waits for the exit status (no assertion on it).
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.take().expect("voucherd is not running");
        binary::terminate(child, "voucherd", || self.log()).await
    }

    /// Graceful stop: SIGTERM, then the process must exit with code 0.
    pub async fn stop(&mut self) {
        let status = self.terminate().await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must end voucherd with exit code 0, got {status:?}; stderr:\n{}",
            self.log()
        );
    }

    /// Starts the binary again on the same store (stops nothing: call stop/kill_hard first
    /// or it is killed hard here). The port changes: re-read `base_url()`.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.kill_hard().await;
        }
        self.spawn().await;
    }

    // ---- HTTP helpers -------------------------------------------------------------------

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(Method::GET, path)).await
    }

    /// POST /api/transactions with `body`, and an Idempotency-Key when given.
    pub async fn transaction(&self, body: Value, key: Option<&str>) -> Resp {
        let mut request = self.request(Method::POST, "/api/transactions").json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        send(request).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        send(self.request(Method::POST, path).json(body)).await
    }

    /// POST with a raw body and `Content-Type: application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Resp {
        send(
            self.request(Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn create_voucher(&self, code: &str, amount: i64, limit: i64) -> Value {
        let resp = self
            .post_json(
                "/api/vouchers",
                &serde_json::json!({"code": code, "amount": amount, "limit": limit}),
            )
            .await;
        resp.expect_status(201);
        resp.json
    }

    /// Creates the wallet of `phone` with `balance`; it must not exist yet.
    pub async fn create_profile(&self, phone: &str, balance: i64) {
        crate::http::create_profile(&self.client, &self.base_url, phone, balance).await;
    }

    pub async fn redeem(&self, phone: &str, code: &str) -> Resp {
        self.post_json(
            "/api/vouchers/redeem",
            &serde_json::json!({"phone_number": phone, "code": code}),
        )
        .await
    }

    pub async fn voucher(&self, code: &str) -> Value {
        let resp = self.get(&format!("/api/vouchers/{code}")).await;
        resp.expect_status(200);
        resp.json
    }

    /// All redemptions of a voucher, following `next_cursor` until it is null.
    pub async fn report_all(&self, code: &str) -> Vec<Value> {
        crate::http::report_all(&self.client, &self.base_url, code)
            .await
            .items
    }

    /// A profile's full transaction list (newest first), following `next_cursor`.
    /// Returns None when the profile does not exist (404 profile_not_found).
    pub async fn profile_all(&self, phone: &str) -> Option<Wallet> {
        profile_all(&self.client, &self.base_url, phone).await
    }

    /// Waits until `/readyz` answers 200 (bounded).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let resp = self.get("/readyz").await;
            if resp.status == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never became 200, last: {resp:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "---- voucherd stderr (last {} lines) ----\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// A client suited to the tests: bounded per request, many connections allowed.
pub fn client() -> reqwest::Client {
    crate::http::client(REQUEST_TIMEOUT, Duration::from_secs(10))
}

/// Those of `phones` that hold a wallet (read 64 at a time), in no particular order.
pub async fn phones_with_wallet(
    client: &reqwest::Client,
    base_url: &str,
    phones: Vec<String>,
) -> Vec<String> {
    futures::stream::iter(phones)
        .map(|user| async move {
            let wallet = profile_all(client, base_url, &user).await;
            (user, wallet.is_some())
        })
        .buffer_unordered(64)
        .filter_map(|(user, has)| async move { has.then_some(user) })
        .collect()
        .await
}

/// Asserts the stderr log of a server shows no panic.
pub fn assert_no_panic_in_log(server: &TestServer) {
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "voucherd stderr contains a panic:\n{log}"
    );
}

/// How many times a redeem is retried after 429 overloaded / 503 unavailable, which the
/// contract says mean "retry later"; a client in a flash crowd does exactly that. Bounded
/// (about 2.5 s of backoff per request) so that a server stuck answering 503 fails the test
/// with that answer instead of hanging it.
pub const MAX_RETRIES_ON_BACKPRESSURE: u32 = 30;

/// Upper bound on one crowd of concurrent requests, so that a stuck server fails the test.
pub const CROWD_DEADLINE: Duration = Duration::from_secs(60);

/// Redeems, retrying (bounded) on 429/503. Returns the final answer and the retry count;
/// transport errors (e.g. the server was killed) are returned as Err.
pub async fn redeem_retrying(
    client: &reqwest::Client,
    base_url: &str,
    phone: &str,
    code: &str,
) -> (Result<Resp, reqwest::Error>, u32) {
    let body = serde_json::json!({"phone_number": phone, "code": code});
    let mut retries = 0;
    loop {
        let result = try_send(
            client
                .post(format!("{base_url}/api/vouchers/redeem"))
                .json(&body),
        )
        .await;
        match &result {
            Ok(resp)
                if (resp.status == 429 || resp.status == 503)
                    && retries < MAX_RETRIES_ON_BACKPRESSURE =>
            {
                retries += 1;
                let backoff_ms = 5 * u64::from(retries.min(20));
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            }
            _ => return (result, retries),
        }
    }
}

/// Checks I1–I5 for one voucher over HTTP (the winners' wallets; I4 for the redemptions a
/// client saw answered 200, `acknowledged`: phone → redemption_id). Returns the report's
/// phones in winning order.
pub async fn check_voucher_invariants(
    client: &reqwest::Client,
    base_url: &str,
    code: &str,
    limit: usize,
    amount: i64,
    acknowledged: &HashMap<String, String>,
) -> Vec<String> {
    let expect = Expect {
        code,
        limit: limit as u64,
        amount,
        acknowledged,
        told_redeemed: &Default::default(),
        wallets_of: None,
    };
    check_invariants(client, &[base_url.to_owned()], &expect)
        .await
        .into_iter()
        .map(|entry| entry.phone_number)
        .collect()
}
