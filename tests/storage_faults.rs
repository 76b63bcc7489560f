//! The embedded ledger on a disk that fills up, through the real binary on a small
//! tmpfs: writes then fail with 503 (none is acknowledged that is not durable), the
//! instance says it is not ready and why, and once the disk has room again the
//! ledger writes again by itself, without a restart. SIGTERM exits 0 whether or
//! not the disk recovered, and a restart on the same store finds every
//! acknowledged write (I4) with I1, I2, I3 and I5 intact.
//!
//! Mounting needs root, which CI has; a failed mount fails the test (nothing is
//! skipped).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::process::Child;
use voucherd_test_support::binary::{self, Binary};
use voucherd_test_support::http::{encode_phone, phone, profile_all, try_send, Resp};
use voucherd_test_support::server::{check_voucher_invariants, client};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// The disk the ledger fills: small, so that it fills within seconds.
const SMALL_DISK: &str = "4m";
/// The disk after an operator made room.
const LARGER_DISK: &str = "64m";
/// The voucher the crowd redeems: a limit the small disk cannot hold.
const CODE: &str = "FULL";
const LIMIT: usize = 1_000_000;
const AMOUNT: i64 = 10;
/// Opening balance of every profile the crowd creates.
const OPENING_BALANCE: i64 = 100;
/// Requests in flight while filling the disk, and per wave.
const IN_FLIGHT: usize = 64;
const WAVE: u64 = 512;
/// Bounds on filling the disk, so a disk that never fills fails the test.
const MAX_FILL_REQUESTS: u64 = 400_000;
const MAX_FILL_TIME: Duration = Duration::from_secs(240);
/// Generous bound on any state change the test waits for.
const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted on a fresh directory; unmounted (lazily, so a process still
/// using it cannot keep it) on Drop, also when the test fails.
struct Tmpfs {
    mount_point: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let mount_point = tempfile::Builder::new()
            .prefix("voucherd-tmpfs-")
            .tempdir()
            .expect("create a mount point");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Tmpfs { mount_point },
            Ok(output) => panic!(
                "mounting a {size} tmpfs at {} failed ({}): {}; this test needs root \
                 (CI runs as root) to fill a real filesystem",
                mount_point.path().display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("cannot run mount(8) to mount a tmpfs: {error}"),
        }
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Gives the filesystem a new size in place: what an operator making room does.
    fn resize(&self, size: &str) {
        let output = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .expect("run mount(8)");
        assert!(
            output.status.success(),
            "remounting the tmpfs with size={size} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.path())
            .status();
    }
}

/// `voucherd serve` on a given store directory; killed on Drop.
struct Server {
    child: Option<Child>,
    base: String,
    store: PathBuf,
    /// Holds stderr, outside the store so that the full disk cannot cut the log.
    log_dir: TempDir,
}

impl Server {
    async fn start(store: &Path) -> Server {
        let log_dir = tempfile::Builder::new()
            .prefix("voucherd-log-")
            .tempdir()
            .expect("create log dir");
        let mut server = Server {
            child: None,
            base: String::new(),
            store: store.to_owned(),
            log_dir,
        };
        server.spawn().await;
        server
    }

    fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("stderr.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open stderr log");
        let mut command = VOUCHERD.serve_command(&self.store, log);
        let (child, base) = binary::start(&mut command, "voucherd", || self.log()).await;
        self.child = Some(child);
        self.base = base;
    }

    /// SIGTERM, and the exit status (bounded).
    async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.take().expect("server is running");
        binary::terminate(child, "voucherd", || self.log()).await
    }

    /// SIGTERM must end the process with exit code 0 and no panic in its log.
    async fn stop(&mut self) {
        let status = self.terminate().await;
        let log = self.log();
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM must exit 0 (everything acknowledged is durable), got {status:?}; stderr:\n{log}"
        );
        assert!(
            !log.contains("panicked"),
            "voucherd panicked; stderr:\n{log}"
        );
    }

    async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn().await;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!("---- voucherd stderr (tail) ----\n{tail}");
        }
    }
}

/// Every write the test sent while filling the disk, by how it was answered.
#[derive(Default)]
struct Writes {
    /// Redemptions answered 200: phone → redemption id.
    redeemed: HashMap<String, String>,
    /// Profiles answered 201: phone → opening balance.
    opened: HashMap<String, i64>,
    /// Redemptions and profiles answered 503, which must not have been applied.
    refused_redemptions: Vec<String>,
    refused_profiles: Vec<String>,
}

impl Writes {
    fn refused(&self) -> usize {
        self.refused_redemptions.len() + self.refused_profiles.len()
    }
}

/// Even users redeem the voucher, odd ones open a profile.
fn is_redemption(n: u64) -> bool {
    n.is_multiple_of(2)
}

/// A write to the ledger: redeem or open a profile, for user `n`.
async fn write(client: &reqwest::Client, server: &Server, n: u64) -> (u64, Resp) {
    let request = if is_redemption(n) {
        client
            .post(server.url("/api/vouchers/redeem"))
            .json(&json!({"phone_number": phone(n), "code": CODE}))
    } else {
        client
            .post(server.url("/api/profiles"))
            .json(&json!({"phone_number": phone(n), "balance": OPENING_BALANCE}))
    };
    let resp = try_send(request)
        .await
        .unwrap_or_else(|e| panic!("write {n} failed at the transport: {e}"));
    (n, resp)
}

/// Records one answer; every answer must be a success or a 503 `unavailable`.
fn record(writes: &mut Writes, n: u64, resp: &Resp) {
    match (is_redemption(n), resp.status) {
        (true, 200) => {
            writes
                .redeemed
                .insert(phone(n), resp.str_field("redemption_id").to_owned());
        }
        (false, 201) => {
            writes.opened.insert(phone(n), OPENING_BALANCE);
        }
        (redemption, 503) => {
            resp.expect_error(503, "unavailable");
            if redemption {
                writes.refused_redemptions.push(phone(n));
            } else {
                writes.refused_profiles.push(phone(n));
            }
        }
        (_, status) => panic!(
            "write {n} got {status} {}: a full disk must answer 503, never 500",
            resp.text
        ),
    }
}

/// Sends waves of writes until one is refused with 503; returns every answer.
async fn fill_the_disk(client: &reqwest::Client, server: &Server) -> Writes {
    let mut writes = Writes::default();
    let started = Instant::now();
    let mut next = 0;
    while writes.refused() == 0 {
        assert!(
            next < MAX_FILL_REQUESTS && started.elapsed() < MAX_FILL_TIME,
            "the {SMALL_DISK} disk did not fill after {next} writes in {:?}",
            started.elapsed()
        );
        let answers: Vec<(u64, Resp)> = futures::stream::iter(next..next + WAVE)
            .map(|n| write(client, server, n))
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (n, resp) in &answers {
            record(&mut writes, *n, resp);
        }
        next += WAVE;
    }
    eprintln!(
        "storage_faults: the disk filled after {next} writes in {:?}: {} redemptions and {} \
         profiles acknowledged, {} writes refused",
        started.elapsed(),
        writes.redeemed.len(),
        writes.opened.len(),
        writes.refused()
    );
    writes
}

/// The body of `/readyz` once it answers `status` (bounded wait).
async fn wait_for_readyz(client: &reqwest::Client, server: &Server, status: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = try_send(client.get(server.url("/readyz")))
            .await
            .expect("/readyz answers");
        if resp.status == status {
            return resp.json;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within {WAIT:?}; last: {} {}",
            resp.status,
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While the disk is full: writes get 503 with Retry-After and an opaque body,
/// `/readyz` says why, reads work, and the errors are counted.
async fn check_unwritable(client: &reqwest::Client, server: &Server) {
    let readyz = wait_for_readyz(client, server, 503).await;
    assert_eq!(readyz["status"], "not_ready", "{readyz}");
    assert!(
        readyz["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("ledger_unwritable"))),
        "/readyz must name the reason: {readyz}"
    );
    let response = client
        .post(server.url("/api/profiles"))
        .json(&json!({"phone_number": phone(900_000_001), "balance": 1}))
        .send()
        .await
        .expect("write sent");
    assert_eq!(response.status().as_u16(), 503, "a write on a full disk");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "a 503 tells the client when to retry"
    );
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(
        body,
        json!({"error": "unavailable", "message": "temporarily unavailable; retry shortly"}),
        "5xx bodies are opaque"
    );
    // Reads go on: the writer swaps in a fresh database handle and probes the
    // disk beside it, so the handle is not poisoned again while the disk is full.
    for path in [
        format!("/api/vouchers/{CODE}"),
        format!("/api/profiles/{}", encode_phone(&phone(1))),
    ] {
        let deadline = Instant::now() + WAIT;
        loop {
            let resp = try_send(client.get(server.url(&path)))
                .await
                .expect("read answers");
            if resp.status == 200 {
                break;
            }
            assert!(
                resp.status == 503 && Instant::now() < deadline,
                "a read on a full disk answers 200 (or 503 while the ledger reopens its \
                 database), got {} {} for {path}",
                resp.status,
                resp.text
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let metrics = try_send(client.get(server.url("/metrics")))
        .await
        .expect("metrics");
    let errors = metrics
        .text
        .lines()
        .find_map(|line| line.strip_prefix("voucherd_ledger_write_errors_total "))
        .and_then(|value| value.trim().parse::<f64>().ok());
    assert!(
        errors.is_some_and(|count| count >= 1.0),
        "the I/O errors are counted in voucherd_ledger_write_errors_total: {errors:?}"
    );
}

/// After a restart on the same store: every acknowledged write is there (I4), no
/// refused one is (a 503 means not applied), and I1, I2, I3, I5 hold.
async fn check_durable(client: &reqwest::Client, server: &Server, writes: &Writes) {
    let report =
        check_voucher_invariants(client, &server.base, CODE, LIMIT, AMOUNT, &writes.redeemed).await;
    let winners: std::collections::HashSet<&String> = report.iter().collect();
    for refused in &writes.refused_redemptions {
        assert!(
            !winners.contains(refused),
            "{refused} was answered 503 yet holds a redemption: a refused write was applied"
        );
    }
    let base = server.base.clone();
    let opened: Vec<(String, i64)> = writes
        .opened
        .iter()
        .map(|(phone, balance)| (phone.clone(), *balance))
        .collect();
    let missing: Vec<String> = futures::stream::iter(opened)
        .map(|(phone, balance)| {
            let base = base.clone();
            async move {
                match profile_all(client, &base, &phone).await {
                    Some((held, transactions)) => {
                        let sum: i64 = transactions
                            .iter()
                            .map(|t| t["amount"].as_i64().expect("integer amount"))
                            .sum();
                        assert_eq!(held, sum, "I5: the balance of {phone} is its sum");
                        assert_eq!(held, balance, "I4: {phone} keeps its opening balance");
                        None
                    }
                    None => Some(phone),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|missing| async move { missing })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "I4 durable: profiles answered 201 are missing after the restart: {missing:?}"
    );
    for refused in &writes.refused_profiles {
        assert!(
            profile_all(client, &base, refused).await.is_none(),
            "{refused} was answered 503 yet its profile exists: a refused write was applied"
        );
    }
}

async fn start_on_a_small_disk() -> (Tmpfs, Server, reqwest::Client) {
    let disk = Tmpfs::mount(SMALL_DISK);
    let server = Server::start(disk.path()).await;
    let client = client();
    let created = try_send(
        client
            .post(server.url("/api/vouchers"))
            .json(&json!({"code": CODE, "amount": AMOUNT, "limit": LIMIT})),
    )
    .await
    .expect("create the voucher");
    created.expect_status(201);
    (disk, server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_503_and_the_ledger_recovers_without_a_restart() {
    // Goal: fill the disk; writes get 503 and /readyz says ledger_unwritable; make
    // room; writes succeed again without a restart; SIGTERM exits 0; a restart
    // finds every acknowledged write (I4) and I5 holds.
    let (disk, mut server, client) = start_on_a_small_disk().await;
    let mut writes = fill_the_disk(&client, &server).await;
    check_unwritable(&client, &server).await;

    disk.resize(LARGER_DISK);
    let room_made = Instant::now();
    let deadline = room_made + WAIT;
    let mut n = 800_000_001;
    loop {
        let (_, resp) = write(&client, &server, n).await;
        record(&mut writes, n, &resp);
        if resp.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not succeed within {WAIT:?} of making room on the disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        n += 2;
    }
    let writes_back = room_made.elapsed();
    eprintln!(
        "storage_faults: writes succeeded again {} ms after the disk was enlarged",
        writes_back.as_millis()
    );
    let readyz = wait_for_readyz(&client, &server, 200).await;
    assert_eq!(readyz, json!({"status": "ready"}));
    let (_, resp) = write(&client, &server, 800_000_000).await;
    resp.expect_status(200);
    record(&mut writes, 800_000_000, &resp);

    server.stop().await;
    server.restart().await;
    check_durable(&client, &server, &writes).await;
    server.stop().await;
    drop(server);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_a_still_full_disk_exits_0_and_loses_nothing() {
    // Goal: SIGTERM while the ledger still cannot write exits 0 (nothing
    // acknowledged is pending), and after making room a restart finds every
    // acknowledged write (I4).
    let (disk, mut server, client) = start_on_a_small_disk().await;
    let writes = fill_the_disk(&client, &server).await;
    check_unwritable(&client, &server).await;
    server.stop().await;

    disk.resize(LARGER_DISK);
    server.restart().await;
    wait_for_readyz(&client, &server, 200).await;
    check_durable(&client, &server, &writes).await;
    server.stop().await;
    drop(server);
    drop(disk);
}
