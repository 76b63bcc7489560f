//! Shared harness for the integration tests: it runs the REAL `voucherd` binary on a free
//! port with a fresh store, talks to it over HTTP, and can stop, kill and restart it on the
//! same store. Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

#[path = "../support/binary.rs"]
pub mod binary;
pub use binary::STARTUP_TIMEOUT;

/// How long a graceful stop (SIGTERM) may take before the test fails.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound on one HTTP request, so that a hung server fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `voucherd serve` child process with its own store directory.
pub struct TestServer {
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
    /// Starts the binary on `127.0.0.1:0` with a fresh, empty store.
    pub async fn start() -> TestServer {
        Self::start_with(StartOptions::default()).await
    }

    /// Like [`TestServer::start`], with extra arguments, environment or limits.
    pub async fn start_with(options: StartOptions) -> TestServer {
        let store = tempfile::Builder::new()
            .prefix("voucherd-store-")
            .tempdir()
            .expect("create store tempdir");
        let log_dir = tempfile::Builder::new()
            .prefix("voucherd-log-")
            .tempdir()
            .expect("create log tempdir");
        let mut server = TestServer {
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_voucherd"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--store")
            .arg(self.store.path())
            .args(&self.options.args)
            .env_remove("VOUCHERD_LISTEN")
            .env_remove("VOUCHERD_STORE")
            .env_remove("VOUCHERD_ADMIN_TOKEN")
            .envs(self.options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
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
        let mut child = self.child.take().expect("server is not running");
        let pid = child.id().expect("child has a pid") as i32;
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for voucherd"),
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                panic!(
                    "voucherd did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.log()
                );
            }
        }
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
        report_all(&self.client, &self.base_url, code).await
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
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// One HTTP answer, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
    pub is_json: bool,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        self
    }

    /// Asserts an error answer: this status, a JSON body with exactly the keys `error` and
    /// `message`, `error` == `code`, and a non-empty message.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.json.get("error").and_then(Value::as_str)),
            (status, Some(code)),
            "expected {status} {code}, got {} with body {}",
            self.status,
            self.text
        );
        assert_error_shape(self);
        self
    }

    pub fn str_field(&self, key: &str) -> &str {
        self.json
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("field `{key}` is not a string in {}", self.text))
    }

    pub fn i64_field(&self, key: &str) -> i64 {
        self.json
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("field `{key}` is not an integer in {}", self.text))
    }
}

/// Every error body is `{"error": "<code>", "message": "<text>"}` and nothing else.
pub fn assert_error_shape(resp: &Resp) {
    let object = resp.json.as_object().unwrap_or_else(|| {
        panic!(
            "error body is not a JSON object (status {}): {:?}",
            resp.status, resp.text
        )
    });
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["error", "message"]),
        "error body must have exactly the keys error and message: {}",
        resp.text
    );
    let error = object["error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty() && error.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "error code must be a non-empty snake_case string: {}",
        resp.text
    );
    assert!(
        object["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message must be a non-empty string: {}",
        resp.text
    );
}

/// Asserts that `value` is an object holding at least `keys`.
pub fn assert_has_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"));
    for key in keys {
        assert!(object.contains_key(*key), "missing key `{key}` in {value}");
    }
}

/// Sends a request and reads the whole answer; panics on transport errors.
pub async fn send(request: RequestBuilder) -> Resp {
    match try_send(request).await {
        Ok(resp) => resp,
        Err(error) => panic!("HTTP request failed: {error:?}"),
    }
}

/// Sends a request and reads the whole answer; transport errors are returned.
pub async fn try_send(request: RequestBuilder) -> Result<Resp, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    Ok(Resp {
        status,
        content_type,
        is_json: parsed.is_some(),
        json: parsed.unwrap_or(Value::Null),
        text,
        headers,
    })
}

/// All redemptions of a voucher, following `next_cursor` until it is null.
pub async fn report_all(client: &reqwest::Client, base_url: &str, code: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: at most this many pages of 1000 before the test gives up.
    for _page in 0..20_000 {
        let mut query = vec![("code", code.to_string()), ("limit", "1000".to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let resp = send(
            client
                .get(format!("{base_url}/api/vouchers/report"))
                .query(&query),
        )
        .await;
        resp.expect_status(200);
        let page = resp.json["redemptions"]
            .as_array()
            .unwrap_or_else(|| panic!("report without a redemptions array: {}", resp.text))
            .clone();
        assert_eq!(
            resp.json["length"].as_u64(),
            Some(page.len() as u64),
            "report `length` must equal the page size: {}",
            resp.text
        );
        items.extend(page);
        match &resp.json["next_cursor"] {
            Value::Null => return items,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string, got {other}"),
        }
    }
    panic!("report paging for {code} did not end");
}

/// A wallet as served: its balance and all its transactions, newest first.
pub type Wallet = (i64, Vec<Value>);

/// A profile's balance and full transaction list (newest first), following `next_cursor`.
/// None when the profile does not exist (404 profile_not_found).
pub async fn profile_all(client: &reqwest::Client, base_url: &str, phone: &str) -> Option<Wallet> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut balance = None;
    for _page in 0..10_000 {
        let mut query = vec![("limit", "1000".to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let resp = send(
            client
                .get(format!("{base_url}/api/profiles/{}", encode_phone(phone)))
                .query(&query),
        )
        .await;
        if resp.status == 404 && balance.is_none() {
            resp.expect_error(404, "profile_not_found");
            return None;
        }
        resp.expect_status(200);
        balance.get_or_insert(resp.i64_field("balance"));
        items.extend(
            resp.json["transactions"]
                .as_array()
                .unwrap_or_else(|| panic!("profile without transactions: {}", resp.text))
                .iter()
                .cloned(),
        );
        match &resp.json["next_cursor"] {
            Value::Null => return Some((balance.unwrap_or_default(), items)),
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string, got {other}"),
        }
    }
    panic!("profile paging for {phone} did not end");
}

/// `+` percent-encoded, as a browser would send it.
pub fn encode_phone(phone: &str) -> String {
    phone.replace('+', "%2B")
}

/// A valid E.164 number for user `n`: `+4477` then 9 digits (13 digits in all).
pub fn phone(n: u64) -> String {
    format!("+4477{n:09}")
}

/// A small deterministic generator (SplitMix64) so shuffles and garbage are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough value in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
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

/// Checks I1, I2, I3 and I5 for one voucher over HTTP, and I4 for the redemptions a client
/// saw answered 200 (`acknowledged`: phone → redemption_id). Returns the report's phones in
/// winning order.
pub async fn check_voucher_invariants(
    client: &reqwest::Client,
    base_url: &str,
    code: &str,
    limit: usize,
    amount: i64,
    acknowledged: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    use futures::StreamExt;
    use std::collections::{HashMap, HashSet};

    let report = report_all(client, base_url, code).await;
    assert!(
        report.len() <= limit,
        "I1 limit: {} redemptions of {code} exceed its limit {limit}",
        report.len()
    );
    let mut by_phone: HashMap<String, String> = HashMap::new();
    let mut order = Vec::new();
    for item in &report {
        let phone = item["phone_number"]
            .as_str()
            .unwrap_or_else(|| panic!("report item without phone: {item}"))
            .to_string();
        let id = item["redemption_id"]
            .as_str()
            .unwrap_or_else(|| panic!("report item without redemption_id: {item}"))
            .to_string();
        assert!(
            by_phone.insert(phone.clone(), id).is_none(),
            "I2 unique: {phone} appears twice in the report of {code}"
        );
        order.push(phone);
    }
    let ids: HashSet<&String> = by_phone.values().collect();
    assert_eq!(
        ids.len(),
        by_phone.len(),
        "I2 unique: redemption ids in the report are distinct"
    );
    for (phone, id) in acknowledged {
        assert_eq!(
            by_phone.get(phone),
            Some(id),
            "I4 durable: {phone} was answered 200 with redemption {id} but the report of {code} does not hold it"
        );
    }

    let response = send(client.get(format!("{base_url}/api/vouchers/{code}"))).await;
    response.expect_status(200);
    assert_eq!(
        response.json["redeemed"].as_u64(),
        Some(report.len() as u64),
        "I1: the voucher's redeemed count equals the report: {}",
        response.text
    );
    assert_eq!(
        response.json["remaining"].as_u64(),
        Some((limit - report.len()) as u64),
        "I1: remaining = limit - redeemed: {}",
        response.text
    );

    let reference = format!("voucher:{code}");
    let wallets: Vec<(String, String, Option<Wallet>)> = futures::stream::iter(by_phone.clone())
        .map(|(phone, id)| async move {
            let wallet = profile_all(client, base_url, &phone).await;
            (phone, id, wallet)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (phone, id, wallet) in wallets {
        let (balance, transactions) =
            wallet.unwrap_or_else(|| panic!("I3 credited: winner {phone} of {code} has no wallet"));
        let credits: Vec<&Value> = transactions
            .iter()
            .filter(|t| t["reference"].as_str() == Some(reference.as_str()))
            .collect();
        assert_eq!(
            credits.len(),
            1,
            "I3 credited: winner {phone} must hold exactly one {reference} credit, has {transactions:?}"
        );
        assert_eq!(
            credits[0]["id"].as_str(),
            Some(id.as_str()),
            "I3 credited: the credit of {phone} carries the redemption id"
        );
        assert_eq!(
            credits[0]["amount"].as_i64(),
            Some(amount),
            "I3 credited: the credit of {phone} is the voucher amount"
        );
        let sum: i64 = transactions
            .iter()
            .map(|t| t["amount"].as_i64().expect("integer amount"))
            .sum();
        assert_eq!(
            balance, sum,
            "I5 balance: the balance of {phone} equals the sum of its transactions"
        );
        assert!(balance >= 0, "I5 balance: {phone} is negative");
    }
    order
}
