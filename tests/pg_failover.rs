//! A PostgreSQL that survives losing its primary, with voucherd on it: the test starts
//! the Patroni cluster of `scripts/patroni.sh` (etcd, a primary and its synchronous
//! standby, on free ports in a tempdir of its own), two voucherd instances (role `all`,
//! no Redis) share the ledger through the multi-host URL the script prints
//! (`target_session_attrs=read-write`), and a steady crowd redeems a voucher (fresh
//! users) and posts keyed wallet transactions (`Idempotency-Key`) over both. Midway,
//! `scripts/patroni.sh kill-primary` SIGKILLs the leader's Patroni and postmaster (a lost
//! machine); Patroni promotes the standby once the leader lock expires, and the
//! instances must find it by themselves.
//!
//! Clients behave as clients should: an answer 503 (or a lost one) is retried with the
//! same request (the same user, the same Idempotency-Key) until it is answered. Asserted:
//!
//! - every answer is 200, 409 `already_redeemed` naming the redemption (a retried
//!   redeem whose first commit landed), or 503 `unavailable` as a JSON error body that
//!   names no internals; no other 5xx, no transport error (nothing hangs), no panic in
//!   the logs;
//! - writes come back within [`WRITES_BACK_LIMIT`] of the kill, on both instances;
//! - every acknowledged redemption is in the report and credited exactly once, every user
//!   that tried holds exactly one redemption (I1–I5 through `check_invariants_at`);
//! - every acknowledged transaction is in its wallet exactly once, the wallet holds
//!   nothing else, and its balance is the sum (and what the last answer said);
//! - `/readyz` is truthful on each instance: it answers 503 with `database_unreachable`
//!   at least once between the kill and that instance's first successful write after
//!   it, it is 200 again within [`READY_AGAIN_LIMIT`] of writes succeeding, and writes
//!   sent [`READY_MEANS_WRITABLE`] after it says ready again all succeed.
//!
//! The seconds without writes are printed, never asserted (only the generous bounds
//! above are). `scripts/patroni.sh stop --wipe` runs at the end, also when the test fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster::crowd::{check_answer, fresh_phone, Seen};
use voucherd_test_support::cluster::http::{client, create_voucher, redeem, try_send, Resp};
use voucherd_test_support::cluster::process::{free_port, log_tail, which};
use voucherd_test_support::cluster::voucherd::Instance;
use voucherd_test_support::cluster::wait_until;
use voucherd_test_support::http::{assert_error_shape, create_profile, phone, profile_all};
use voucherd_test_support::invariants::{check_invariants_at, check_wallets, Expect};

const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// The script that runs the Patroni cluster.
const PATRONI_SCRIPT: &str = "scripts/patroni.sh";
/// What `scripts/patroni.sh` runs, and the Debian package of each.
const PATRONI_NEEDS: [(&str, &str); 4] = [
    ("patroni", "patroni"),
    ("patronictl", "patroni"),
    ("etcd", "etcd-server"),
    ("curl", "curl"),
];

/// Voucher instances on the one ledger.
const INSTANCES: usize = 2;
/// Credit per redemption.
const AMOUNT: i64 = 700;
/// More slots than the crowd can take: every fresh user wins.
const LIMIT: u32 = 1_000_000;
/// Redeem clients and transaction clients, each with one request at a time.
const REDEEM_CLIENTS: u64 = 8;
const TRANSACTION_CLIENTS: u64 = 8;
/// How long a client waits before it sends a request again that was answered 503.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often `/readyz` is asked, on each instance.
const READYZ_EVERY: Duration = Duration::from_millis(100);
/// The crowd runs this long before the kill.
const BEFORE_KILL: Duration = Duration::from_secs(3);
/// Writes must succeed again within this of the kill (a failover takes about
/// Patroni's ttl, 10 s).
const WRITES_BACK_LIMIT: Duration = Duration::from_secs(60);
/// Once writes succeed again, `/readyz` must be 200 within this.
const READY_AGAIN_LIMIT: Duration = Duration::from_secs(15);
/// Writes sent this long after `/readyz` said ready again must succeed (the writer may
/// still be in a batch's backoff, at most a few hundred milliseconds, when it does).
const READY_MEANS_WRITABLE: Duration = Duration::from_secs(3);
/// The crowd goes on this long once every instance writes and is ready again.
const AFTER_RECOVERY: Duration = Duration::from_secs(5);
/// Bound on a client's last request being answered once the crowd is told to stop.
const CLIENT_STOP_LIMIT: Duration = Duration::from_secs(60);
/// Words a 503's message must not carry: the cause is logged, never answered.
const INTERNALS: [&str; 9] = [
    "postgres",
    "sqlstate",
    "db error",
    "127.0.0.1",
    "read-only",
    "read_only",
    "pool",
    "tokio",
    "timed out",
];

// ---- the Patroni cluster -----------------------------------------------------------------

/// The cluster of `scripts/patroni.sh`, on ports of its own and in a directory of its
/// own (so that neither a developer's cluster on the default ports nor another test
/// run meets it); `stop --wipe` on Drop, also when the test panics.
struct Patroni {
    dir: PathBuf,
    ports: [(&'static str, u16); 3],
    log: PathBuf,
    url: String,
    stopped: bool,
}

impl Patroni {
    /// Runs `scripts/patroni.sh start` and returns once a leader accepts writes and the
    /// other node is its synchronous standby.
    fn start(log_dir: &Path) -> Patroni {
        let missing: Vec<String> = PATRONI_NEEDS
            .iter()
            .filter(|(binary, _)| which(binary).is_none())
            .map(|(binary, package)| format!("{binary} (Debian package {package})"))
            .collect();
        assert!(
            missing.is_empty(),
            "this test runs a Patroni cluster with scripts/patroni.sh, which needs {}: \
             run `scripts/services.sh up`, which installs them (or `scripts/test.sh`, which \
             runs it)",
            missing.join(", ")
        );
        let dir = tempfile::Builder::new()
            .prefix("pg-failover-")
            .tempdir()
            .expect("a temp dir for the Patroni cluster")
            .keep();
        let mut patroni = Patroni {
            dir,
            ports: cluster_ports(),
            log: log_dir.join("patroni.sh.log"),
            url: String::new(),
            stopped: false,
        };
        let started = Instant::now();
        let url = patroni.run(&["start"]);
        patroni.url = url.trim().to_owned();
        assert!(
            patroni.url.starts_with("postgres://") && patroni.url.contains(','),
            "scripts/patroni.sh start prints the multi-host URL, got {url:?}"
        );
        eprintln!(
            "Patroni cluster up in {:.1?}: {} (state {})",
            started.elapsed(),
            patroni.url,
            patroni.dir.display()
        );
        patroni
    }

    /// Runs `scripts/patroni.sh COMMAND… --dir DIR` with the cluster's ports; its stderr
    /// goes to the log. Returns its stdout; fails the test when it fails.
    fn run(&self, args: &[&str]) -> String {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the patroni.sh log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(PATRONI_SCRIPT);
        let mut command = Command::new(script);
        command
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .env_remove("VOUCHERD_PATRONI_DIR")
            .stdin(Stdio::null())
            .stderr(Stdio::from(stderr));
        for (name, port) in self.ports {
            command.env(name, port.to_string());
        }
        let output = command.output().expect("run scripts/patroni.sh");
        assert!(
            output.status.success(),
            "scripts/patroni.sh {} failed ({}); its stderr:\n{}",
            args.join(" "),
            output.status,
            log_tail(&self.log, 40),
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The tails of Patroni's and PostgreSQL's logs, for a failure message.
    fn logs(&self) -> String {
        [
            "node1/patroni.log",
            "node1/log/postgresql.log",
            "node2/patroni.log",
            "node2/log/postgresql.log",
        ]
        .iter()
        .map(|log| format!("---- {log} ----\n{}\n", log_tail(&self.dir.join(log), 25)))
        .collect()
    }

    fn stop(&mut self) {
        if !self.stopped {
            self.stopped = true;
            self.run(&["stop", "--wipe"]);
        }
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // No assertion here: a panic while panicking aborts the test binary.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(PATRONI_SCRIPT);
        let mut command = Command::new(script);
        command
            .args(["stop", "--wipe", "--dir"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (name, port) in self.ports {
            command.env(name, port.to_string());
        }
        match command.status() {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "scripts/patroni.sh stop --wipe --dir {} failed: {other:?}",
                self.dir.display()
            ),
        }
    }
}

/// Ports for the cluster, all free on 127.0.0.1 now: PostgreSQL on `base` and
/// `base + 1` (node2 takes the next port), Patroni's REST API on `base + 2` and
/// `base + 3`, etcd on `base + 4` with its peer port 10 above.
fn cluster_ports() -> [(&'static str, u16); 3] {
    for _ in 0..1_000 {
        let base = free_port();
        let free = [1, 2, 3, 4, 14]
            .iter()
            .all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return [
                ("VOUCHERD_PATRONI_PG_PORT", base),
                ("VOUCHERD_PATRONI_REST_PORT", base + 2),
                ("VOUCHERD_PATRONI_ETCD_PORT", base + 4),
            ];
        }
    }
    panic!("no free ports for the Patroni cluster on 127.0.0.1");
}

// ---- the crowd ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redeem,
    Transaction,
}

/// One request of the crowd and what came back.
struct Sent {
    kind: Kind,
    /// The user (redeem) or the wallet (transaction).
    phone: String,
    /// The transaction's Idempotency-Key.
    key: Option<String>,
    /// Index of the instance it was sent to.
    instance: usize,
    sent: Instant,
    done: Instant,
    outcome: Result<Resp, String>,
}

impl Sent {
    fn status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|resp| resp.status)
    }

    fn succeeded(&self) -> bool {
        self.status() == Some(200)
    }

    /// Whether the client sends the same request again: a 503, or no answer.
    fn to_retry(&self) -> bool {
        matches!(self.status(), None | Some(503))
    }
}

/// When each instance last answered a write 200: the sending time of that write.
#[derive(Default)]
struct LastWrite(std::sync::Mutex<HashMap<usize, Instant>>);

impl LastWrite {
    fn record(&self, request: &Sent) {
        if request.succeeded() {
            let mut last = self.0.lock().expect("last write lock");
            let at = last.entry(request.instance).or_insert(request.sent);
            *at = (*at).max(request.sent);
        }
    }

    /// True when a write sent at or after `from` succeeded through `instance`.
    fn since(&self, instance: usize, from: Instant) -> bool {
        let last = self.0.lock().expect("last write lock");
        last.get(&instance).is_some_and(|at| *at >= from)
    }
}

/// A redeem client: fresh users one after another, each sent again (alternating
/// instances) until it is answered 200 or 409, until `stop`.
async fn redeem_client(
    client: reqwest::Client,
    urls: Arc<Vec<String>>,
    code: String,
    worker: u64,
    stop: Arc<AtomicBool>,
    last: Arc<LastWrite>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut n = 0;
    let mut turn = worker as usize;
    while !stop.load(Ordering::Acquire) {
        let user = fresh_phone(worker + 1, n);
        n += 1;
        let given_up = Instant::now() + CLIENT_STOP_LIMIT;
        loop {
            let instance = turn % urls.len();
            turn += 1;
            let at = Instant::now();
            let outcome = redeem(&client, &urls[instance], &user, &code).await;
            let request = Sent {
                kind: Kind::Redeem,
                phone: user.clone(),
                key: None,
                instance,
                sent: at,
                done: Instant::now(),
                outcome,
            };
            let again = request.to_retry();
            last.record(&request);
            sent.push(request);
            if !again || Instant::now() > given_up {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    sent
}

/// A transaction client: its own wallet, created first; keyed credits of 1 to 7 and,
/// every fourth, a debit of 1 (always covered: every earlier one was answered), each
/// sent again with the same Idempotency-Key until it is answered, until `stop`.
async fn transaction_client(
    client: reqwest::Client,
    urls: Arc<Vec<String>>,
    wallet: String,
    worker: u64,
    stop: Arc<AtomicBool>,
    last: Arc<LastWrite>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut n: u64 = 0;
    let mut turn = worker as usize;
    while !stop.load(Ordering::Acquire) {
        let key = format!("pg-failover-{worker}-{n}");
        let amount = if n % 4 == 3 { -1 } else { 1 + (n % 7) as i64 };
        let body = json!({
            "phone_number": wallet,
            "amount": amount,
            "reference": format!("order-{worker}-{n}"),
        });
        n += 1;
        let given_up = Instant::now() + CLIENT_STOP_LIMIT;
        loop {
            let instance = turn % urls.len();
            turn += 1;
            let at = Instant::now();
            let outcome = try_send(
                client
                    .post(format!("{}/api/transactions", urls[instance]))
                    .header("Idempotency-Key", &key)
                    .json(&body),
            )
            .await
            .map_err(|e| format!("{e:?}"));
            let request = Sent {
                kind: Kind::Transaction,
                phone: wallet.clone(),
                key: Some(key.clone()),
                instance,
                sent: at,
                done: Instant::now(),
                outcome,
            };
            let again = request.to_retry();
            last.record(&request);
            sent.push(request);
            if !again || Instant::now() > given_up {
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    sent
}

/// One answer of `/readyz`.
struct Probe {
    instance: usize,
    sent: Instant,
    done: Instant,
    status: Option<u16>,
    reasons: Vec<String>,
}

impl Probe {
    fn unreachable(&self) -> bool {
        self.status == Some(503) && self.reasons.iter().any(|r| r == "database_unreachable")
    }
}

/// Asks `/readyz` of every instance every [`READYZ_EVERY`] until `stop`.
async fn readiness_poller(
    client: reqwest::Client,
    urls: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> Vec<Probe> {
    let mut probes = Vec::new();
    let mut ticks = tokio::time::interval(READYZ_EVERY);
    while !stop.load(Ordering::Acquire) {
        ticks.tick().await;
        let answers = futures::future::join_all(urls.iter().enumerate().map(|(instance, url)| {
            let client = client.clone();
            async move {
                let sent = Instant::now();
                let answer = try_send(
                    client
                        .get(format!("{url}/readyz"))
                        .timeout(Duration::from_secs(5)),
                )
                .await;
                (instance, sent, Instant::now(), answer)
            }
        }))
        .await;
        for (instance, sent, done, answer) in answers {
            let (status, reasons) = match answer {
                Ok(resp) => {
                    let reasons = if resp.status == 200 {
                        assert_eq!(
                            resp.json["status"], "ready",
                            "/readyz 200 says ready: {}",
                            resp.text
                        );
                        Vec::new()
                    } else {
                        assert_eq!(
                            (resp.status, resp.json["status"].as_str()),
                            (503, Some("not_ready")),
                            "/readyz is 200 ready or 503 not_ready: {}",
                            resp.text
                        );
                        resp.json["reasons"]
                            .as_array()
                            .unwrap_or_else(|| panic!("/readyz 503 lists reasons: {}", resp.text))
                            .iter()
                            .map(|r| r.as_str().unwrap_or_default().to_owned())
                            .collect()
                    };
                    (Some(resp.status), reasons)
                }
                Err(_) => (None, Vec::new()),
            };
            probes.push(Probe {
                instance,
                sent,
                done,
                status,
                reasons,
            });
        }
    }
    probes
}

// ---- checks ------------------------------------------------------------------------------

/// What the crowd saw of the transactions: by Idempotency-Key, the wallet, the id and
/// the amount of its one 200, and the balance that answer said.
#[derive(Default)]
struct Transactions {
    acknowledged: HashMap<String, (String, String, i64, i64)>,
    violations: Vec<String>,
}

/// Checks every answer, redeems as a crowd's must be (see `check_answer`) and
/// transactions as a client of the wallet API expects them.
fn tally(sent: &[Sent], code: &str) -> (Seen, Transactions) {
    let mut seen = Seen::default();
    let mut transactions = Transactions::default();
    for request in sent {
        let context = format!(
            "{:?} for {} ({}) to v{}",
            request.kind,
            request.phone,
            request.key.as_deref().unwrap_or("-"),
            request.instance
        );
        let resp = match &request.outcome {
            Ok(resp) => resp,
            Err(error) => {
                // Neither instance was killed: an answer must come within the client's
                // bound, whatever the database does.
                let violation = format!("{context}: no answer (transport): {error}");
                match request.kind {
                    Kind::Redeem => {
                        seen.tried.insert(request.phone.clone());
                        *seen.statuses.entry("transport".into()).or_default() += 1;
                        seen.violating_users.insert(request.phone.clone());
                        seen.violations.push(violation);
                    }
                    Kind::Transaction => transactions.violations.push(violation),
                }
                continue;
            }
        };
        if resp.status == 503 {
            assert_error_shape(resp);
            let message = resp.json["message"].as_str().unwrap_or_default();
            let leaked: Vec<&str> = INTERNALS
                .iter()
                .copied()
                .filter(|word| message.to_lowercase().contains(word))
                .collect();
            assert!(
                leaked.is_empty(),
                "{context}: a 503's message names internals {leaked:?}: {}",
                resp.text
            );
        }
        match request.kind {
            Kind::Redeem => {
                if resp.status == 409 {
                    // A redeem sent again after a 503 whose commit had landed: the
                    // answer names the redemption, so the client knows it won.
                    assert!(
                        resp.json["redemption_id"].is_string(),
                        "{context}: a 409 to a fresh user names the redemption it holds: {}",
                        resp.text
                    );
                }
                check_answer(&mut seen, &request.phone, resp, code, AMOUNT, &context);
            }
            Kind::Transaction => check_transaction(&mut transactions, request, resp, &context),
        }
    }
    (seen, transactions)
}

fn check_transaction(transactions: &mut Transactions, request: &Sent, resp: &Resp, context: &str) {
    match resp.status {
        200 => {
            let key = request.key.clone().expect("a keyed transaction");
            let id = resp.str_field("id").to_owned();
            let entry = (
                request.phone.clone(),
                id,
                resp.i64_field("amount"),
                resp.i64_field("balance"),
            );
            assert_eq!(
                resp.str_field("phone_number"),
                request.phone,
                "{context}: the answer names the wallet: {}",
                resp.text
            );
            if let Some(first) = transactions.acknowledged.insert(key, entry) {
                transactions
                    .violations
                    .push(format!("{context}: answered 200 twice (first {first:?})"));
            }
        }
        503 if resp.error_code() == "unavailable" => {}
        other => transactions.violations.push(format!(
            "{context}: HTTP {other}, which a keyed credit or covered debit must never get: {}",
            resp.text
        )),
    }
}

/// Every acknowledged transaction is in its wallet exactly once, with its amount; the
/// wallet holds nothing else (every key was sent until answered) and its balance is
/// the sum of them, which the last answer also said.
async fn check_transaction_wallets(
    client: &reqwest::Client,
    urls: &[String],
    wallets: &[String],
    transactions: &Transactions,
    sent: &[Sent],
) {
    check_wallets(client, urls, wallets.to_vec()).await;
    for (n, wallet) in wallets.iter().enumerate() {
        let (balance, stored) = profile_all(client, &urls[n % urls.len()], wallet)
            .await
            .unwrap_or_else(|| panic!("the wallet {wallet} exists"));
        let mut stored_ids: HashMap<String, (usize, i64)> = HashMap::new();
        for transaction in &stored {
            let id = transaction["id"]
                .as_str()
                .expect("a transaction id")
                .to_owned();
            let amount = transaction["amount"].as_i64().expect("an amount");
            stored_ids.entry(id).or_insert((0, amount)).0 += 1;
        }
        let acknowledged: Vec<&(String, String, i64, i64)> = transactions
            .acknowledged
            .values()
            .filter(|(phone, ..)| phone == wallet)
            .collect();
        for (_, id, amount, _) in &acknowledged {
            assert_eq!(
                stored_ids.get(id),
                Some(&(1, *amount)),
                "{wallet}: the acknowledged transaction {id} of {amount} is in its wallet \
                 exactly once"
            );
        }
        let keys_sent: HashSet<&str> = sent
            .iter()
            .filter(|s| s.kind == Kind::Transaction && &s.phone == wallet)
            .filter_map(|s| s.key.as_deref())
            .collect();
        assert_eq!(
            (stored.len(), acknowledged.len()),
            (keys_sent.len(), keys_sent.len()),
            "{wallet}: every key sent was answered 200 once and is one transaction, \
             nothing else is in the wallet"
        );
        let sum: i64 = acknowledged.iter().map(|(_, _, amount, _)| amount).sum();
        assert_eq!(
            balance, sum,
            "{wallet}: the balance is the sum of its transactions"
        );
        if let Some(last) = sent
            .iter()
            .filter(|s| s.kind == Kind::Transaction && &s.phone == wallet && s.succeeded())
            .max_by_key(|s| s.done)
        {
            let told = last
                .outcome
                .as_ref()
                .expect("answered")
                .i64_field("balance");
            assert_eq!(
                told, balance,
                "{wallet}: the last answer's balance is the wallet's"
            );
        }
    }
}

/// The first request through `instance` sent at or after `from` that succeeded.
fn first_success_after(sent: &[Sent], instance: Option<usize>, from: Instant) -> Option<&Sent> {
    sent.iter()
        .filter(|s| instance.is_none_or(|i| s.instance == i))
        .filter(|s| s.sent >= from && s.succeeded())
        .min_by_key(|s| s.done)
}

/// The longest time between two successive successful answers (by answer time).
fn longest_gap(sent: &[Sent]) -> Duration {
    let mut done: Vec<Instant> = sent
        .iter()
        .filter(|s| s.succeeded())
        .map(|s| s.done)
        .collect();
    done.sort();
    done.windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .unwrap_or_default()
}

/// `/readyz` told the truth on `instance` around the kill; returns when it was ready again.
fn check_readiness(
    probes: &[Probe],
    sent: &[Sent],
    instance: usize,
    killed: Instant,
    back: &Sent,
) -> Instant {
    let own: Vec<&Probe> = probes.iter().filter(|p| p.instance == instance).collect();
    assert!(
        own.iter()
            .any(|p| p.done <= killed && p.status == Some(200)),
        "v{instance}: /readyz was 200 before the kill"
    );
    let unreachable = own
        .iter()
        .find(|p| p.sent >= killed && p.done <= back.done && p.unreachable());
    assert!(
        unreachable.is_some(),
        "v{instance}: between the kill and its first successful write after it \
         ({:.1?} later), /readyz never answered 503 database_unreachable: {:?}",
        back.done.duration_since(killed),
        own.iter()
            .filter(|p| p.sent >= killed && p.done <= back.done)
            .map(|p| (p.status, p.reasons.clone()))
            .collect::<Vec<_>>()
    );
    let ready = own
        .iter()
        .find(|p| p.sent >= back.done && p.status == Some(200))
        .unwrap_or_else(|| {
            panic!("v{instance}: /readyz never answered 200 after writes came back")
        });
    let after = ready.sent.duration_since(back.done);
    assert!(
        after <= READY_AGAIN_LIMIT,
        "v{instance}: /readyz answered 200 only {after:.1?} after writes succeeded again \
         (bound {READY_AGAIN_LIMIT:?})"
    );
    // Ready means writable: writes sent a little after /readyz said ready again all
    // succeed.
    let settled = ready.done + READY_MEANS_WRITABLE;
    let failed: Vec<String> = sent
        .iter()
        .filter(|s| s.instance == instance && s.sent >= settled && !s.succeeded())
        .filter(|s| s.to_retry())
        .map(|s| format!("{:?} {} {:?}", s.kind, s.phone, s.status()))
        .collect();
    assert!(
        failed.is_empty(),
        "v{instance}: /readyz said ready, yet writes sent well after that failed: {failed:?}"
    );
    ready.done
}

// ---- the test ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn primary_lost_mid_crowd() {
    // Goal: losing the Patroni primary mid-crowd loses no acknowledged redemption or transaction, writes come back by themselves, /readyz tells the truth meanwhile.
    let started = Instant::now();
    // CLUSTER_LOG_DIR=dir keeps the instances' and patroni.sh's logs there (as the
    // other cluster tests do).
    let mut builder = tempfile::Builder::new();
    builder.prefix("pg-failover-logs-");
    let log_dir = match std::env::var_os("CLUSTER_LOG_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).expect("create CLUSTER_LOG_DIR");
            builder.disable_cleanup(true).tempdir_in(dir)
        }
        None => builder.tempdir(),
    }
    .expect("a temp dir for the logs");
    let mut patroni = tokio::task::block_in_place(|| Patroni::start(log_dir.path()));

    let mut instances = Vec::new();
    for n in 0..INSTANCES {
        let args = ["--role", "all", "--redeem-rate-per-phone", "0"]
            .map(str::to_owned)
            .to_vec();
        instances.push(
            Instance::start_with(
                VOUCHERD,
                &format!("v{n}"),
                &patroni.url,
                args,
                log_dir.path(),
            )
            .await,
        );
    }
    let urls: Arc<Vec<String>> =
        Arc::new(instances.iter().map(|i| i.base_url().to_owned()).collect());
    let http = client();
    let code = "PGFAILOVER";
    create_voucher(&http, &urls[0], code, AMOUNT, LIMIT).await;
    let wallets: Vec<String> = (0..TRANSACTION_CLIENTS).map(|n| phone(900 + n)).collect();
    for (n, wallet) in wallets.iter().enumerate() {
        create_profile(&http, &urls[n % INSTANCES], wallet, 0).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stop_probes = Arc::new(AtomicBool::new(false));
    let last = Arc::new(LastWrite::default());
    let poller = tokio::spawn(readiness_poller(
        http.clone(),
        urls.clone(),
        stop_probes.clone(),
    ));
    let mut clients = Vec::new();
    for worker in 0..REDEEM_CLIENTS {
        clients.push(tokio::spawn(redeem_client(
            http.clone(),
            urls.clone(),
            code.to_owned(),
            worker,
            stop.clone(),
            last.clone(),
        )));
    }
    for (worker, wallet) in wallets.iter().enumerate() {
        clients.push(tokio::spawn(transaction_client(
            http.clone(),
            urls.clone(),
            wallet.clone(),
            worker as u64,
            stop.clone(),
            last.clone(),
        )));
    }
    tokio::time::sleep(BEFORE_KILL).await;

    let lost = tokio::task::block_in_place(|| patroni.run(&["kill-primary"]));
    let killed = Instant::now();
    eprintln!(
        "killed the primary {} {:.1?} into the test",
        lost.trim(),
        started.elapsed()
    );

    // Writes come back by themselves: the clients' own requests succeed again on every
    // instance (the test only watches), and every instance says it is ready again.
    let watch = (http.clone(), urls.clone(), last.clone());
    wait_until(
        "writes and readiness back on every instance after the kill",
        WRITES_BACK_LIMIT + READY_AGAIN_LIMIT,
        Duration::from_millis(200),
        || {
            let (http, urls, last) = watch.clone();
            async move {
                for (instance, url) in urls.iter().enumerate() {
                    if !last.since(instance, killed) {
                        return None;
                    }
                    let ready = try_send(http.get(format!("{url}/readyz")))
                        .await
                        .is_ok_and(|r| r.status == 200);
                    if !ready {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    tokio::time::sleep(AFTER_RECOVERY).await;
    stop.store(true, Ordering::Release);
    let mut sent = Vec::new();
    for client_task in clients {
        sent.extend(client_task.await.expect("a crowd client"));
    }
    stop_probes.store(true, Ordering::Release);
    let probes = poller.await.expect("the readiness poller");

    // The figures: printed, never asserted.
    let mut statuses: BTreeMap<(String, String), usize> = BTreeMap::new();
    for request in &sent {
        let status = match &request.outcome {
            Ok(resp) => resp.status.to_string(),
            Err(_) => "transport".to_owned(),
        };
        *statuses
            .entry((format!("{:?}", request.kind), status))
            .or_default() += 1;
    }
    let first_back = first_success_after(&sent, None, killed);
    let gap = longest_gap(&sent);
    eprintln!(
        "pg_failover: {} requests, by kind and status {statuses:?}; first write acknowledged \
         {:.1?} after the kill; longest time without an acknowledged write {gap:.1?}",
        sent.len(),
        first_back.map(|s| s.done.duration_since(killed))
    );

    // Writes came back, on every instance, in time.
    let mut back = Vec::new();
    for instance in 0..INSTANCES {
        let first = first_success_after(&sent, Some(instance), killed)
            .unwrap_or_else(|| panic!("v{instance}: no write succeeded after the kill"));
        let after = first.done.duration_since(killed);
        assert!(
            after <= WRITES_BACK_LIMIT,
            "v{instance}: writes came back {after:.1?} after the kill (bound {WRITES_BACK_LIMIT:?})"
        );
        back.push(first);
    }
    for (instance, first) in back.iter().enumerate() {
        let ready = check_readiness(&probes, &sent, instance, killed, first);
        let down = probes
            .iter()
            .find(|p| p.instance == instance && p.sent >= killed && p.unreachable())
            .map(|p| p.done.duration_since(killed));
        eprintln!(
            "v{instance}: /readyz 503 database_unreachable from {down:.1?} after the kill, 200 \
             again {:.1?} after it; first successful write {:.1?} after it",
            ready.duration_since(killed),
            first.done.duration_since(killed)
        );
    }

    // Every answer was one a client may get.
    let (seen, transactions) = tally(&sent, code);
    seen.assert_no_violations("the redeems across the failover");
    assert!(
        transactions.violations.is_empty(),
        "the transactions across the failover: {:?}",
        &transactions.violations[..transactions.violations.len().min(10)]
    );

    // Nothing acknowledged was lost, nothing applied twice.
    let winners = seen.winners();
    let expect = Expect {
        code,
        limit: u64::from(LIMIT),
        amount: AMOUNT,
        acknowledged: &winners,
        told_redeemed: &seen.told_already_redeemed,
        wallets_of: Some(&seen.tried),
    };
    let report = check_invariants_at(&http, &urls[0], &urls, &expect).await;
    assert_eq!(
        report.len(),
        seen.tried.len(),
        "every user that tried holds one redemption (each was sent until answered)"
    );
    assert!(
        seen.count("200") > 0 && !transactions.acknowledged.is_empty(),
        "the crowd wrote: {:?}",
        seen.statuses
    );
    check_transaction_wallets(&http, &urls, &wallets, &transactions, &sent).await;
    eprintln!(
        "pg_failover: {} redemptions acknowledged (200), {} told already_redeemed after a \
         retry, {} transactions acknowledged; I1-I5 and every wallet hold",
        seen.acknowledged.len(),
        seen.told_already_redeemed.len(),
        transactions.acknowledged.len()
    );

    for instance in &mut instances {
        assert!(
            !instance.log().contains("panicked"),
            "voucherd {} logged a panic:\n{}",
            instance.name,
            instance.log_tail(80)
        );
        instance.stop().await;
    }
    tokio::task::block_in_place(|| patroni.stop());
    eprintln!("pg_failover took {:.1?}", started.elapsed());
}
