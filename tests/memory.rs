//! Memory bounds of the real binary: what a voucher costs once it is in use, and
//! how many per-voucher metric series `/metrics` carries.
//!
//! RSS is read from `/proc/PID/status` (VmRSS) of the server process, on the
//! embedded store. The server runs with `MIMALLOC_ALLOW_THP=0`: with transparent
//! huge pages, mimalloc advises its arena for them and the kernel's khugepaged
//! collapses it in the background, so RSS moves in 2 MiB steps even while the
//! server is idle, which would drown a figure of a few hundred bytes per voucher.
//! The figures are printed (`cargo test --test memory -- --nocapture`).

use std::fs::File;
use std::time::Duration;

use futures::StreamExt;
use tempfile::TempDir;
use tokio::process::Child;
use voucherd_core::limits::MAX_VOUCHER_METRIC_SERIES;
use voucherd_test_support::binary::{self, Binary};
use voucherd_test_support::http::{phone, send, Resp};
use voucherd_test_support::server::{client, redeem_retrying, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// Vouchers of the RSS test; each gets one redemption.
const VOUCHERS: usize = 2_000;
/// Their limit: large, so that holding a leased batch per voucher would show.
const LIMIT: i64 = 1_000_000;
/// Vouchers created and redeemed before the measurement starts, so that thread
/// pools, connection buffers and allocator caches the redemption path needs exist.
const WARM_UP_VOUCHERS: usize = 400;
/// Requests in flight at once while creating and redeeming the measured vouchers.
const CONCURRENCY: usize = 8;
/// Requests in flight at once during the warm-up: more than later, so the runtime's
/// blocking pool (ledger reads) already has every thread the measured phase needs;
/// a thread started during it would add its stack and allocator pages (~0.5 MiB).
const WARM_UP_CONCURRENCY: usize = 32;
/// What one redemption of a fresh voucher may add to the server's RSS, all in:
/// the leased slots, the winner, its wallet, its ledger rows (2 KiB).
const MAX_REDEMPTION_GROWTH_PER_VOUCHER_BYTES: u64 = 2 * 1024;
/// What creating and then redeeming a voucher may add to RSS in all (3 KiB).
const MAX_GROWTH_PER_VOUCHER_BYTES: u64 = 3 * 1024;
/// What the whole test may add to the server's RSS from its start (16 MiB).
const MAX_TOTAL_GROWTH_BYTES: u64 = 16 * 1024 * 1024;
/// Time for the last settlements and frees after a phase before RSS is read.
const SETTLE: Duration = Duration::from_millis(500);

/// The binary on a fresh embedded store, with transparent huge pages off.
struct MeasuredServer {
    child: Child,
    base_url: String,
    client: reqwest::Client,
    _store: TempDir,
    log: TempDir,
}

impl MeasuredServer {
    async fn start() -> MeasuredServer {
        let store = tempfile::tempdir().expect("store directory");
        let log = tempfile::tempdir().expect("log directory");
        let stderr = File::create(log.path().join("stderr.log")).expect("stderr log");
        let mut command = VOUCHERD.serve_command(store.path(), stderr);
        command.env("MIMALLOC_ALLOW_THP", "0");
        let log_path = log.path().join("stderr.log");
        let log_text = move || std::fs::read_to_string(&log_path).unwrap_or_default();
        let (child, base_url) = binary::start(&mut command, "voucherd", log_text).await;
        MeasuredServer {
            child,
            base_url,
            client: client(),
            _store: store,
            log,
        }
    }

    /// The server's resident set size, from VmRSS in /proc/PID/status.
    fn rss_bytes(&self) -> u64 {
        self.status_field("VmRSS:") * 1024
    }

    /// A numeric field of /proc/PID/status of the server (VmRSS is in kB).
    fn status_field(&self, name: &str) -> u64 {
        let pid = self.child.id().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("read /proc/PID/status of the server");
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("a numeric {name} line in {status}"))
    }

    async fn settled_rss_bytes(&self) -> u64 {
        tokio::time::sleep(SETTLE).await;
        self.rss_bytes()
    }

    /// The server's thread count: a thread started during a measured phase adds
    /// its stack and allocator pages, which the figures should be read with.
    fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }

    async fn create_vouchers(&self, codes: &[String], limit: i64, concurrency: usize) {
        futures::stream::iter(codes)
            .for_each_concurrent(concurrency, |code| async move {
                let body = serde_json::json!({"code": code, "amount": 100, "limit": limit});
                let request = self
                    .client
                    .post(format!("{}/api/vouchers", self.base_url))
                    .json(&body);
                send(request).await.expect_status(201);
            })
            .await;
    }

    /// Redeems every code once, user `first_user + i` for code `i`.
    async fn redeem_each_once(&self, codes: &[String], first_user: u64, concurrency: usize) {
        futures::stream::iter(codes.iter().enumerate())
            .for_each_concurrent(concurrency, |(i, code)| async move {
                let user = phone(first_user + i as u64);
                let (answer, _) = redeem_retrying(&self.client, &self.base_url, &user, code).await;
                answer.expect("the server answers").expect_status(200);
            })
            .await;
    }

    async fn remaining_slot_series(&self) -> Vec<String> {
        let request = self.client.get(format!("{}/metrics", self.base_url));
        remaining_slot_series(send(request).await)
    }
}

impl Drop for MeasuredServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.log.path().join("stderr.log"));
            eprintln!("---- voucherd stderr ----\n{}", log.unwrap_or_default());
        }
    }
}

/// Lines of `voucherd_voucher_remaining_slots` in a `/metrics` answer.
fn remaining_slot_series(metrics: Resp) -> Vec<String> {
    metrics.expect_status(200);
    metrics
        .text
        .lines()
        .filter(|line| line.starts_with("voucherd_voucher_remaining_slots{"))
        .map(str::to_owned)
        .collect()
}

fn code(n: usize) -> String {
    format!("MEM{n:05}")
}

fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeemed_voucher_costs_little_memory_whatever_its_limit() {
    // Goal: a voucher in use holds its leased slots as ranges, not one number per
    // slot, so 2,000 vouchers of limit 1,000,000 with one redemption each grow the
    // server's RSS by under 2 KiB per voucher, and by a few MiB in all.
    let server = MeasuredServer::start().await;
    let started = server.settled_rss_bytes().await;

    let warm_up: Vec<String> = (0..WARM_UP_VOUCHERS).map(|n| code(VOUCHERS + n)).collect();
    server
        .create_vouchers(&warm_up, LIMIT, WARM_UP_CONCURRENCY)
        .await;
    server
        .redeem_each_once(&warm_up, 1_000_000, WARM_UP_CONCURRENCY)
        .await;
    let warm = server.settled_rss_bytes().await;

    let codes: Vec<String> = (0..VOUCHERS).map(code).collect();
    server.create_vouchers(&codes, LIMIT, CONCURRENCY).await;
    let created = server.settled_rss_bytes().await;
    let threads_before = server.threads();

    server.redeem_each_once(&codes, 0, CONCURRENCY).await;
    let redeemed = server.settled_rss_bytes().await;
    let threads_after = server.threads();

    let vouchers = VOUCHERS as u64;
    let creation_per_voucher = created.saturating_sub(warm) / vouchers;
    let redemption_per_voucher = redeemed.saturating_sub(created) / vouchers;
    let per_voucher = redeemed.saturating_sub(warm) / vouchers;
    let total = redeemed.saturating_sub(started);
    println!(
        "RSS of the server: {:.1} MiB at start, {:.1} MiB after {WARM_UP_VOUCHERS} warm-up \
         vouchers, {:.1} MiB after creating {VOUCHERS} vouchers of limit {LIMIT} \
         ({:.2} KiB each), {:.1} MiB after one redemption each ({:.2} KiB each); \
         {:.2} KiB per voucher in all, {:.1} MiB growth in all; \
         {threads_before} threads before the redemptions, {threads_after} after",
        mib(started),
        mib(warm),
        mib(created),
        kib(creation_per_voucher),
        mib(redeemed),
        kib(redemption_per_voucher),
        kib(per_voucher),
        mib(total),
    );
    assert!(
        redemption_per_voucher < MAX_REDEMPTION_GROWTH_PER_VOUCHER_BYTES,
        "a first redemption cost {redemption_per_voucher} bytes per voucher \
         (bound {MAX_REDEMPTION_GROWTH_PER_VOUCHER_BYTES})"
    );
    assert!(
        per_voucher < MAX_GROWTH_PER_VOUCHER_BYTES,
        "a created and redeemed voucher cost {per_voucher} bytes \
         (bound {MAX_GROWTH_PER_VOUCHER_BYTES})"
    );
    assert!(
        total < MAX_TOTAL_GROWTH_BYTES,
        "RSS grew by {:.1} MiB in all (bound {:.1} MiB)",
        mib(total),
        mib(MAX_TOTAL_GROWTH_BYTES)
    );
    // Every voucher still has slots, and there are more of them than the cap.
    assert_eq!(
        server.remaining_slot_series().await.len(),
        MAX_VOUCHER_METRIC_SERIES,
        "one series per voucher with slots left, up to the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_vouchers_leave_the_remaining_slots_metric() {
    // Goal: the per-voucher gauge has a series only for vouchers with slots left,
    // so vouchers that sell out stop costing a series.
    let server = TestServer::start(VOUCHERD).await;
    let sold_out: Vec<String> = (0..50).map(|n| format!("ONE{n:03}")).collect();
    let open: Vec<String> = (0..5).map(|n| format!("MANY{n:03}")).collect();
    for code in &sold_out {
        server.create_voucher(code, 100, 1).await;
    }
    for code in &open {
        server.create_voucher(code, 100, 10).await;
    }
    let series = remaining_slot_series(server.get("/metrics").await);
    assert_eq!(series.len(), sold_out.len() + open.len());

    for (i, code) in sold_out.iter().chain(&open).enumerate() {
        server
            .redeem(&phone(i as u64), code)
            .await
            .expect_status(200);
    }
    // A win is answered before its shard records it, so the gauge follows
    // shortly: wait for every series to show it (or the deadline), then check.
    let expected: Vec<String> = (open.iter())
        .map(|code| format!("voucherd_voucher_remaining_slots{{code=\"{code}\"}} 9"))
        .collect();
    let settled = |series: &[String]| {
        series.len() == expected.len() && expected.iter().all(|line| series.contains(line))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let series = loop {
        let series = remaining_slot_series(server.get("/metrics").await);
        if settled(&series) || tokio::time::Instant::now() >= deadline {
            break series;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        series.len(),
        open.len(),
        "only vouchers with slots left keep a series: {series:?}"
    );
    for line in &expected {
        assert!(series.contains(line), "{line} in {series:?}");
    }
}
