//! No downtime, measured: the split topology (three voucher services on one PostgreSQL
//! ledger and one Redis, two wallet services on another) behind a real haproxy running
//! the shipped configuration (`deploy/haproxy/local-cluster.cfg`, its addresses moved to
//! free ports), and a steady crowd of fresh users redeeming through haproxy while every
//! instance is restarted in turn.
//!
//! - `sigterm_one_instance_at_a_time`: each voucher and wallet service gets SIGTERM, drains
//!   (`/readyz` 503 `draining` while it keeps serving for the default drain delay with
//!   `Connection: close`), exits 0 and starts again on its port; the next one goes once
//!   haproxy shows it up. Zero failed requests (transport errors and 5xx), every answer
//!   200 (or 202 pending, or 409 `already_redeemed` naming the redemption when haproxy
//!   resent a redeem whose first answer was lost), every win credited exactly once, I1–I5.
//! - `sigkill_one_instance_at_a_time`: the same with SIGKILL and a restart 3 s later.
//!   Requests may fail only if they were sent before haproxy marked the killed instance
//!   down; every acknowledged win is kept and credited once. The test prints how many
//!   failed and the longest window from a kill to haproxy marking it down.
//!
//! - `a_stopping_instance_drains_before_it_stops`: one instance alone, what its drain
//!   looks like from outside (`/readyz`, the metric, `Connection: close`, and a second
//!   SIGTERM ending the delay).
//!
//! Status codes and counts only, never timings in assertions.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use voucherd_core::limits::DRAIN_DELAY_MS;
use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster::crowd::{check_answer, fresh_phone, Seen};
use voucherd_test_support::cluster::http::{client, create_voucher, redeem, try_send};
use voucherd_test_support::cluster::process::{free_port, which, Proc};
use voucherd_test_support::cluster::redis_server::RedisServer;
use voucherd_test_support::cluster::split::wait_all_credited;
use voucherd_test_support::cluster::voucherd::Instance;
use voucherd_test_support::cluster::wait_until;
use voucherd_test_support::database::TestDatabase;
use voucherd_test_support::invariants::{check_invariants_at, Expect};

const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// The shipped haproxy configuration the test runs.
const HAPROXY_CONFIG: &str = "deploy/haproxy/local-cluster.cfg";
/// Credit per redemption.
const AMOUNT: i64 = 700;
/// More slots than the crowd can take: every fresh user wins.
const LIMIT: u32 = 1_000_000;
/// Redeems in flight at once through haproxy.
const IN_FLIGHT: usize = 128;
/// Upper bound on haproxy taking an instance in or out (checks every 1 s, 2 to change).
const HAPROXY_CHANGE_LIMIT: Duration = Duration::from_secs(20);

/// The instances, haproxy in front, and their stores.
struct Topology {
    vouchers: Vec<Instance>,
    wallets: Vec<Instance>,
    haproxy: Proc,
    front: String,
    stats: String,
    _voucher_db: TestDatabase,
    _wallet_db: TestDatabase,
    _redis: RedisServer,
    _dir: tempfile::TempDir,
}

impl Topology {
    async fn start(drain_delay_ms: u64) -> Topology {
        let haproxy_binary = which("haproxy")
            .expect("haproxy is not installed: run scripts/services.sh up (Debian: haproxy)");
        let dir = tempfile::Builder::new()
            .prefix("rolling-")
            .tempdir()
            .expect("a temp dir");
        let voucher_db = TestDatabase::create().await;
        let wallet_db = TestDatabase::create().await;
        let redis = RedisServer::start("rolling").await;
        let voucher_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let wallet_ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let (front_port, stats_port) = (free_port(), free_port());
        let drain = drain_delay_ms.to_string();

        let mut wallets = Vec::new();
        for (n, port) in wallet_ports.iter().enumerate() {
            let args = vec![
                "--role".to_owned(),
                "wallet".to_owned(),
                "--drain-delay-ms".to_owned(),
                drain.clone(),
            ];
            let listen = format!("127.0.0.1:{port}");
            let name = format!("w{n}");
            wallets.push(
                Instance::start_on(VOUCHERD, &name, &listen, &wallet_db.url, args, dir.path())
                    .await,
            );
        }
        let wallet_urls = wallet_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut vouchers = Vec::new();
        for (n, port) in voucher_ports.iter().enumerate() {
            let args = vec![
                "--role".to_owned(),
                "voucher".to_owned(),
                "--wallet-url".to_owned(),
                wallet_urls.clone(),
                "--redis".to_owned(),
                format!("redis://127.0.0.1:{}", redis.port()),
                "--redeem-rate-per-phone".to_owned(),
                "0".to_owned(),
                "--drain-delay-ms".to_owned(),
                drain.clone(),
            ];
            let listen = format!("127.0.0.1:{port}");
            let name = format!("v{n}");
            vouchers.push(
                Instance::start_on(VOUCHERD, &name, &listen, &voucher_db.url, args, dir.path())
                    .await,
            );
        }

        let config = haproxy_config(
            dir.path(),
            front_port,
            stats_port,
            &voucher_ports,
            &wallet_ports,
        );
        let mut command = Command::new(haproxy_binary);
        command.arg("-db").arg("-f").arg(&config);
        let haproxy = Proc::spawn(
            "haproxy",
            command,
            &dir.path().join("haproxy.log"),
            Signal::SIGTERM,
        );
        let topology = Topology {
            vouchers,
            wallets,
            haproxy,
            front: format!("http://127.0.0.1:{front_port}"),
            stats: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            _voucher_db: voucher_db,
            _wallet_db: wallet_db,
            _redis: redis,
            _dir: dir,
        };
        for name in ["voucher1", "voucher2", "voucher3", "wallet1", "wallet2"] {
            topology.wait_server(name, "UP").await;
        }
        topology
    }

    /// What haproxy's stats say of `server` (`UP`, `DOWN`, `UP 1/2`, ...).
    async fn server_status(&self, server: &str) -> Option<String> {
        let text = try_send(client().get(&self.stats)).await.ok()?.text;
        text.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields.get(1) == Some(&server) && fields.len() > 17).then(|| fields[17].to_owned())
        })
    }

    /// Waits (bounded) until haproxy shows `server` as exactly `status`.
    async fn wait_server(&self, server: &str, status: &str) {
        let what = format!("haproxy shows {server} {status}");
        wait_until(
            &what,
            HAPROXY_CHANGE_LIMIT,
            Duration::from_millis(50),
            || async {
                (self.server_status(server).await.as_deref() == Some(status)).then_some(())
            },
        )
        .await;
    }

    /// The instance haproxy calls `server`, and its name there.
    fn instance(&mut self, server: &str) -> &mut Instance {
        let (list, index) = match server.strip_prefix("voucher") {
            Some(n) => (&mut self.vouchers, n),
            None => (&mut self.wallets, server.trim_start_matches("wallet")),
        };
        let index: usize = index.parse().expect("a numbered server");
        &mut list[index - 1]
    }
}

/// The shipped configuration with its addresses moved to the test's ports. Every
/// address it names must be found, so a change of the file fails here, loudly.
fn haproxy_config(
    dir: &Path,
    front: u16,
    stats: u16,
    vouchers: &[u16],
    wallets: &[u16],
) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join(HAPROXY_CONFIG);
    let mut text = std::fs::read_to_string(&shipped).expect("read the haproxy configuration");
    let mut moves = vec![
        ("127.0.0.1:8080".to_owned(), front),
        ("127.0.0.1:8404".to_owned(), stats),
    ];
    for (n, port) in vouchers.iter().enumerate() {
        moves.push((format!("127.0.0.1:{}", 8001 + n), *port));
    }
    for (n, port) in wallets.iter().enumerate() {
        moves.push((format!("127.0.0.1:{}", 8101 + n), *port));
    }
    for (shipped_address, port) in moves {
        assert!(
            text.contains(&format!("{shipped_address}\n")),
            "{HAPROXY_CONFIG} no longer names {shipped_address}: update this test"
        );
        text = text.replace(
            &format!("{shipped_address}\n"),
            &format!("127.0.0.1:{port}\n"),
        );
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, text).expect("write the haproxy configuration");
    path
}

/// One request of the steady crowd.
struct Sent {
    phone: String,
    sent: Instant,
    outcome: Result<voucherd_test_support::cluster::http::Resp, String>,
}

/// Fresh users redeeming `code` through `front`, [`IN_FLIGHT`] at a time, until `stop`.
fn steady_crowd(
    front: String,
    code: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        let client = client();
        let mut workers = Vec::new();
        for worker in 0..IN_FLIGHT as u64 {
            let (client, front, code, stop) =
                (client.clone(), front.clone(), code.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    let phone = fresh_phone(worker + 1, n);
                    n += 1;
                    let at = Instant::now();
                    let outcome = redeem(&client, &front, &phone, &code).await;
                    sent.push(Sent {
                        phone,
                        sent: at,
                        outcome,
                    });
                }
                sent
            }));
        }
        let mut all = Vec::new();
        for worker in workers {
            all.extend(worker.await.expect("a crowd worker"));
        }
        all
    })
}

/// What the crowd saw: answers checked as a crowd's must be, failures apart.
fn tally(sent: &[Sent], code: &str) -> (Seen, Vec<(Instant, String)>) {
    let mut seen = Seen::default();
    let mut failures = Vec::new();
    for request in sent {
        match &request.outcome {
            Ok(resp) if resp.status >= 500 => {
                failures.push((request.sent, format!("HTTP {}: {}", resp.status, resp.text)));
                seen.tried.insert(request.phone.clone());
            }
            Ok(resp) => {
                if resp.status == 409 {
                    // Only a resent redeem of a fresh user meets its own redemption:
                    // the answer names it, so the client knows it won.
                    assert!(
                        resp.json["redemption_id"].is_string(),
                        "a 409 to a fresh user names the redemption it holds: {}",
                        resp.text
                    );
                }
                check_answer(&mut seen, &request.phone, resp, code, AMOUNT, "crowd");
            }
            Err(error) => {
                failures.push((request.sent, format!("transport: {error}")));
                seen.tried.insert(request.phone.clone());
            }
        }
    }
    (seen, failures)
}

/// Waits every redemption credited, then checks I1–I5 through haproxy.
async fn verify(topology: &Topology, code: &str, seen: &Seen) {
    let client = client();
    wait_all_credited(&client, &topology.front, code).await;
    let winners = seen.winners();
    let expect = Expect {
        code,
        limit: u64::from(LIMIT),
        amount: AMOUNT,
        acknowledged: &winners,
        told_redeemed: &seen.told_already_redeemed,
        wallets_of: Some(&seen.tried),
    };
    let wallets = [topology.front.clone()];
    check_invariants_at(&client, &topology.front, &wallets, &expect).await;
}

const SERVERS: [&str; 5] = ["wallet1", "voucher1", "voucher2", "wallet2", "voucher3"];

/// One instance, no load balancer: after SIGTERM it answers `/readyz` 503 `draining`
/// (and says so in `voucherd_not_ready`) while it still serves, every answer with
/// `Connection: close`, then stops accepting and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_instance_drains_before_it_stops() {
    let dir = tempfile::Builder::new()
        .prefix("drain-")
        .tempdir()
        .expect("a temp dir");
    let store = dir.path().join("store");
    let args = vec!["--drain-delay-ms".to_owned(), "60000".to_owned()];
    let mut instance = Instance::start_with(
        VOUCHERD,
        "drain",
        store.to_str().expect("a UTF-8 path"),
        args,
        dir.path(),
    )
    .await;
    let base = instance.base_url().to_owned();
    let client = client();
    let before = try_send(client.get(format!("{base}/healthz")))
        .await
        .expect("healthz");
    assert_eq!(before.status, 200);
    assert!(
        before.headers.get("connection").is_none(),
        "a ready instance keeps connections alive: {:?}",
        before.headers
    );
    instance.begin_stop();
    let ready = wait_until(
        "/readyz answers 503 after SIGTERM",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            let resp = try_send(client.get(format!("{base}/readyz"))).await.ok()?;
            (resp.status == 503).then_some(resp)
        },
    )
    .await;
    assert_eq!(
        ready.json["reasons"],
        serde_json::json!(["draining"]),
        "{}",
        ready.text
    );
    let healthz = try_send(client.get(format!("{base}/healthz")))
        .await
        .expect("still serving while it drains");
    assert_eq!(healthz.status, 200, "it keeps serving: {}", healthz.text);
    assert_eq!(
        healthz.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "every answer while draining closes its connection"
    );
    let metrics = try_send(client.get(format!("{base}/metrics")))
        .await
        .expect("metrics")
        .text;
    assert!(
        metrics.contains("voucherd_not_ready{reason=\"draining\"} 1"),
        "the metric names the reason: {}",
        metrics
            .lines()
            .filter(|l| l.contains("not_ready"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A second SIGTERM ends the (here one-minute) drain delay at once.
    instance.begin_stop();
    instance.stopped().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_one_instance_at_a_time() {
    let started = Instant::now();
    let mut topology = Topology::start(DRAIN_DELAY_MS).await;
    let code = "ROLLING";
    create_voucher(&client(), &topology.front, code, AMOUNT, LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let crowd = steady_crowd(topology.front.clone(), code.to_owned(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for server in SERVERS {
        topology.instance(server).stop().await;
        topology.instance(server).start_again().await;
        topology.wait_server(server, "UP").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let sent = crowd.await.expect("the crowd");
    let (seen, failures) = tally(&sent, code);
    println!(
        "rolling restart (SIGTERM, drain {DRAIN_DELAY_MS} ms) of {} instances: {} requests, \
         {} failed, statuses {:?}, {:?} in all",
        SERVERS.len(),
        sent.len(),
        failures.len(),
        seen.statuses,
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "a rolling restart with SIGTERM must fail no request; {} did, e.g. {:?}\nhaproxy:\n{}",
        failures.len(),
        failures.iter().take(5).map(|(_, f)| f).collect::<Vec<_>>(),
        topology.haproxy.log_tail(40)
    );
    seen.assert_no_violations("the rolling restart");
    assert!(
        seen.count("200") > 0,
        "the crowd won through haproxy: {:?}",
        seen.statuses
    );
    verify(&topology, code, &seen).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_one_instance_at_a_time() {
    let started = Instant::now();
    let mut topology = Topology::start(DRAIN_DELAY_MS).await;
    let code = "KILLED";
    create_voucher(&client(), &topology.front, code, AMOUNT, LIMIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let crowd = steady_crowd(topology.front.clone(), code.to_owned(), stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // For each kill: when, and when haproxy had marked the instance down.
    let mut windows: BTreeMap<&str, (Instant, Instant)> = BTreeMap::new();
    for server in SERVERS {
        let killed = Instant::now();
        topology.instance(server).kill_hard().await;
        topology.wait_server(server, "DOWN").await;
        windows.insert(server, (killed, Instant::now()));
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
        topology.instance(server).start_again().await;
        topology.wait_server(server, "UP").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let sent = crowd.await.expect("the crowd");
    let (seen, failures) = tally(&sent, code);
    let longest = windows
        .values()
        .map(|(killed, down)| down.duration_since(*killed))
        .max()
        .unwrap_or_default();
    println!(
        "SIGKILL of {} instances in turn (restart 3 s later): {} requests, {} failed, statuses \
         {:?}; the longest kill-to-marked-down window {longest:?}; {:?} in all",
        SERVERS.len(),
        sent.len(),
        failures.len(),
        seen.statuses,
        started.elapsed()
    );
    // A request can fail only if it was sent while a killed instance was still in the
    // pool: before haproxy marked it down.
    let outside: Vec<&String> = failures
        .iter()
        .filter(|(sent, _)| {
            !windows
                .values()
                .any(|(killed, down)| *sent + IN_FLIGHT_SLACK >= *killed && sent <= down)
        })
        .map(|(_, failure)| failure)
        .collect();
    assert!(
        outside.is_empty(),
        "requests failed outside every kill-to-marked-down window: {outside:?}"
    );
    seen.assert_no_violations("the SIGKILLs");
    verify(&topology, code, &seen).await;
}

/// How long before a kill a request still in flight at it may have been sent (the
/// client's bound on one request).
const IN_FLIGHT_SLACK: Duration = voucherd_test_support::cluster::http::REQUEST_TIMEOUT;
