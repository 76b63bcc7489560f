//! The CQL ledger through the real binary on Apache Cassandra 5.0 (the clusters
//! `scripts/cassandra.sh` runs; `voucherd_test_support::cql` names them), each scenario on a
//! fresh keyspace migrated from `cql/schema.cql`, served with
//! `--store scylla://HOSTS/KEYSPACE?replication_factor=N`.
//!
//! On one node (replication factor 1): a flash crowd in one process (role `all`) and in
//! a voucher + wallet pair (two binaries, a keyspace each), the wallet API's credits,
//! debits and idempotency keys, and a graceful restart that keeps everything.
//!
//! On three nodes (replication factor 3, QUORUM commits and SERIAL rounds), one fault at
//! a time in a crowd on one process: a node SIGKILLed, then a node frozen (SIGSTOP) for
//! longer than every timeout of a lightweight transaction (the server's write timeout
//! is 2 s, its CAS contention timeout 1 s, the driver's request timeout 8 s), so that
//! outcomes become unknown and recovery must settle them. Each scenario waits until no
//! redemption is pending, then checks I1–I5 with the one checker (every 200 a client got
//! is in the report, credited once under its id), and fills the voucher with fresh
//! users to exactly its limit: no slot is lost to the fault.
//!
//! Status codes only, never timings. Healthy, a redeem answers 200, 409
//! already_redeemed or 410 voucher_exhausted (a pair also 202 pending); under a fault
//! also 503 `unavailable` with `Retry-After` (docs/API.md: "a bounded internal wait ran
//! out, retry later": a claim outlasting the 10 s actor call timeout, or refused because
//! its replicas could not answer), counted. Nothing else: no 500, no transport error
//! (voucherd itself is never faulted).
//!
//! All scenarios of this file run one at a time (two cores, and the three-node ones
//! fault a shared cluster); the two three-node scenarios are one test, the faulted node
//! runs again when each ends, whatever happened ([`FaultedNode`]), and their keyspaces
//! are dropped only once the nodes delivered their hints ([`FaultKeyspace`]).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tempfile::TempDir;

use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster;
use voucherd_test_support::cluster::crowd::{
    self, check_crowd, crowd_users, Attempt, Progress, Seen, Targets,
};
use voucherd_test_support::cluster::http::{create_voucher, metric, send, Resp};
use voucherd_test_support::cluster::scenario::{summary, RunningCrowd, AMOUNT, SERIAL};
use voucherd_test_support::cluster::split::{wait_all_credited, Backend, Split, RECOVERY_AFTER_MS};
use voucherd_test_support::cluster::verify::{check_invariants, final_wave, Expect};
use voucherd_test_support::cluster::voucherd::Instance;
use voucherd_test_support::cql::{self, CqlCluster, TestKeyspace};
use voucherd_test_support::http::{create_profile, encode_phone, phone, profile_all, report_all};
use voucherd_test_support::invariants::check_wallets;

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// The race: [`RACE_USERS`] distinct users and [`RACE_REPEATS`] repeated requests from
/// them, [`RACE_IN_FLIGHT`] at once, for a voucher of [`RACE_LIMIT`].
const RACE_USERS: u64 = 2_000;
const RACE_REPEATS: u64 = 500;
const RACE_IN_FLIGHT: usize = 256;
const RACE_LIMIT: u32 = 100;

/// The crowd of a three-node scenario (128 in flight): the fault strikes after
/// [`FAULT_AFTER`] answers, while most of the [`FAULT_LIMIT`] slots are still free.
const FAULT_USERS: u64 = 1_500;
const FAULT_REPEATS: u64 = 300;
const FAULT_LIMIT: u32 = 300;
const FAULT_AFTER: usize = 60;
/// How long the frozen node stays stopped: past the driver's request timeout (8 s), so
/// every LWT it coordinates when it stops times out in the client, and past the
/// server's write (2 s) and CAS contention (1 s) timeouts for the rounds it takes part in.
const FREEZE: Duration = Duration::from_secs(9);
/// The node each three-node scenario faults, by its index among the contact points:
/// the kill takes a node that is neither the seed nor the driver's first contact point;
/// the freeze takes the first contact point (the seed).
const KILLED_NODE: usize = 1;
const FROZEN_NODE: usize = 0;

/// What a redeem answers on a healthy cluster: in one process, and in a pair.
const HEALTHY: &[&str] = &["200", "409", "410"];
const HEALTHY_PAIR: &[&str] = &["200", "202", "409", "410"];
/// What a redeem answers while a node is killed or frozen.
const UNDER_FAULT: &[&str] = &["200", "409", "410", "503"];

/// One process (role `all`) on a keyspace of `cluster`, with recovery taking what has
/// been pending [`RECOVERY_AFTER_MS`] (as the pair's voucher service does) and no
/// per-phone rate limit; killed on Drop, its log printed when the test failed.
struct OneProcess {
    instance: Instance,
    client: reqwest::Client,
    log_dir: TempDir,
    /// The keyspace when the process owns it (dropped after the instance).
    keyspace: Option<TestKeyspace>,
}

impl OneProcess {
    /// On a fresh keyspace of its own, dropped with it.
    async fn start(cluster: &CqlCluster, prefix: &str) -> OneProcess {
        let keyspace = cluster.fresh_keyspace(prefix).await;
        let mut service = OneProcess::start_on(cluster, &keyspace, prefix).await;
        service.keyspace = Some(keyspace);
        service
    }

    /// On `keyspace`, which the caller keeps.
    async fn start_on(cluster: &CqlCluster, keyspace: &TestKeyspace, prefix: &str) -> OneProcess {
        // CLUSTER_LOG_DIR=dir keeps the log there after the test (as for the clusters
        // of voucherd_test_support::cluster::voucherd).
        let log_prefix = format!("cassandra-{prefix}-");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&log_prefix);
        let log_dir = match std::env::var_os("CLUSTER_LOG_DIR") {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("create CLUSTER_LOG_DIR");
                builder.disable_cleanup(true).tempdir_in(dir)
            }
            None => builder.tempdir(),
        }
        .expect("create a log directory");
        let args = [
            "--role",
            "all",
            "--recovery-after-ms",
            &RECOVERY_AFTER_MS.to_string(),
            "--redeem-rate-per-phone",
            "0",
        ];
        let args = args.iter().map(|a| a.to_string()).collect();
        let store = cluster.store_url(keyspace);
        let instance = Instance::start_with(VOUCHERD, "all", &store, args, log_dir.path()).await;
        OneProcess {
            instance,
            client: cluster::http::client(),
            log_dir,
            keyspace: None,
        }
    }

    /// Graceful stop (SIGTERM, exit 0), so that no write of it is in flight when its
    /// keyspace is dropped (Cassandra 5.0 can lose schema agreement when a write to a
    /// keyspace lands while the keyspace is being dropped).
    async fn stop(mut self) {
        self.instance.stop().await;
    }

    fn url(&self) -> String {
        self.instance.base_url().to_owned()
    }

    fn urls(&self) -> Vec<String> {
        vec![self.url()]
    }

    /// I1–I5 over `code` with the one checker, against what the clients saw; the report.
    async fn check(&self, code: &str, limit: u32, seen: &Seen) -> Vec<stress::verify::ReportEntry> {
        let expect = Expect {
            code,
            limit,
            amount: AMOUNT,
            seen,
        };
        check_invariants(&self.client, &self.urls(), &expect).await
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.instance.log().contains("panicked"),
            "voucherd logged a panic:\n{}",
            self.instance.log_tail(80)
        );
    }
}

impl Drop for OneProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- voucherd (log in {}) ----\n{}",
                self.log_dir.path().display(),
                self.instance.log_tail(60)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flash_crowd_in_one_process() {
    // Goal: on one Cassandra node, 2,000 users and 500 repeats race 256 at a time for a
    // voucher of 100 in one process: exactly 100 winners, each answered 200 and credited
    // once, I1–I5.
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "RACE";
    let service = OneProcess::start(&cql::one_node(), "race").await;
    create_voucher(&service.client, &service.url(), code, AMOUNT, RACE_LIMIT).await;
    let seen = race(&service.client, &service.url(), code, 1).await;
    let report = service.check(code, RACE_LIMIT, &seen).await;
    assert_statuses(&seen, code, HEALTHY);
    assert_eq!(
        report.len(),
        RACE_LIMIT as usize,
        "{code}: exactly 100 winners"
    );
    assert_eq!(
        seen.acknowledged.len(),
        RACE_LIMIT as usize,
        "{code}: every winner was answered 200"
    );
    assert_all_credited(&service.client, &service.url(), code).await;
    service.assert_no_panic();
    eprintln!(
        "{code}: {}",
        lwt_counters(&service.client, &service.url()).await
    );
    eprintln!("{code} took {:.1?}", started.elapsed());
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flash_crowd_in_a_voucher_and_wallet_pair() {
    // Goal: the same race in a voucher service and a wallet service, each on its own
    // keyspace: once every redemption is settled, exactly 100 winners, each credited once
    // in the wallet service (200 or 202 alike), I1–I5.
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "PAIRRACE";
    let mut split = Split::start(VOUCHERD, Backend::Cassandra).await;
    create_voucher(
        &split.client,
        &split.voucher_url(),
        code,
        AMOUNT,
        RACE_LIMIT,
    )
    .await;
    let seen = race(&split.client, &split.voucher_url(), code, 2).await;
    let report = split.check(code, RACE_LIMIT, AMOUNT, &seen).await;
    assert_statuses(&seen, code, HEALTHY_PAIR);
    assert_eq!(
        report.len(),
        RACE_LIMIT as usize,
        "{code}: exactly 100 winners"
    );
    assert_eq!(
        seen.winners().len(),
        RACE_LIMIT as usize,
        "{code}: every winner was answered 200 or 202"
    );
    split.assert_no_panic();
    eprintln!("{code}: {}", split.protocol_counters().await);
    eprintln!(
        "{code}: voucher service {}",
        lwt_counters(&split.client, &split.voucher_url()).await
    );
    eprintln!(
        "{code}: wallet service {}",
        lwt_counters(&split.client, &split.wallet_url()).await
    );
    eprintln!("{code} took {:.1?}", started.elapsed());
    // Both exit before their keyspaces are dropped (see OneProcess::stop).
    split.voucher.stop().await;
    split.wallet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wallet_credits_and_debits() {
    // Goal: through the wallet API on the CQL ledger, every balance stays the sum of its
    // transactions (I5): a debit within the balance succeeds, one beyond it is refused
    // and changes nothing, an Idempotency-Key replay returns the first answer and moves
    // nothing (the key reused for another request is refused), a credit opens a wallet,
    // and concurrent debits take exactly what the balance covers.
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let service = OneProcess::start(&cql::one_node(), "wallet").await;
    let (client, url) = (&service.client, service.url());
    let user = phone(1);
    create_profile(client, &url, &user, OPENING).await;
    let top_up = json!({"phone_number": user, "amount": 500, "reference": "top-up"});
    let first = transact(client, &url, &top_up, Some("top-up-1")).await;
    first.expect_status_for(200, "a keyed credit");
    assert_eq!(first.i64_field("balance"), OPENING + 500, "{}", first.text);
    let within = json!({"phone_number": user, "amount": -700, "reference": "purchase"});
    let debit = transact(client, &url, &within, None).await;
    debit.expect_status_for(200, "a debit within the balance");
    assert_eq!(
        debit.i64_field("balance"),
        OPENING + 500 - 700,
        "{}",
        debit.text
    );

    let before = profile_all(client, &url, &user).await.expect("the wallet");
    let beyond = json!({"phone_number": user, "amount": -(before.0 + 1)});
    transact(client, &url, &beyond, None)
        .await
        .expect_error(409, "insufficient_funds");
    let replay = transact(client, &url, &top_up, Some("top-up-1")).await;
    replay.expect_status_for(200, "a replay of the keyed credit");
    assert_eq!(replay.json, first.json, "a replay returns the first answer");
    let other_amount = json!({"phone_number": user, "amount": 501, "reference": "top-up"});
    let other_phone = json!({"phone_number": phone(9), "amount": 500, "reference": "top-up"});
    for reused in [other_amount, other_phone] {
        transact(client, &url, &reused, Some("top-up-1"))
            .await
            .expect_error(409, "idempotency_key_reused");
    }
    let after = profile_all(client, &url, &user).await.expect("the wallet");
    assert_eq!(
        after, before,
        "the refused debit, the replay and the reused keys changed nothing"
    );
    let amounts: Vec<i64> = after
        .1
        .iter()
        .filter_map(|t| t["amount"].as_i64())
        .collect();
    assert_eq!(amounts, [-700, 500, OPENING], "newest first");
    assert!(
        profile_all(client, &url, &phone(9)).await.is_none(),
        "a refused request opened no wallet"
    );

    let newcomer = phone(2);
    let credit = json!({"phone_number": newcomer, "amount": 250, "reference": "gift"});
    transact(client, &url, &credit, None)
        .await
        .expect_status_for(200, "a credit to a phone without a wallet");
    assert_eq!(
        profile_all(client, &url, &newcomer).await.map(|w| w.0),
        Some(250),
        "the credit opened the wallet"
    );

    let busy = phone(3);
    create_profile(client, &url, &busy, OPENING).await;
    let debit = json!({"phone_number": busy, "amount": -DEBIT, "reference": "debit"});
    let answers =
        futures::future::join_all((0..DEBITS).map(|_| transact(client, &url, &debit, None))).await;
    let successes = answers.iter().filter(|a| a.status == 200).count() as i64;
    let refused = answers
        .iter()
        .filter(|a| a.status == 409 && a.error_code() == "insufficient_funds")
        .count() as i64;
    assert_eq!(
        (successes, refused),
        (OPENING / DEBIT, DEBITS as i64 - OPENING / DEBIT),
        "as many debits succeed as the balance covers, the rest are 409 insufficient_funds: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for answer in answers.iter().filter(|a| a.status == 200) {
        assert!(answer.i64_field("balance") >= 0, "I5: {}", answer.text);
    }
    assert_eq!(
        profile_all(client, &url, &busy).await.map(|w| w.0),
        Some(OPENING - successes * DEBIT),
        "the successes account for the whole difference"
    );
    check_wallets(client, &service.urls(), vec![user, newcomer, busy]).await;
    service.assert_no_panic();
    eprintln!("wallet: {}", lwt_counters(client, &url).await);
    eprintln!("wallet took {:.1?}", started.elapsed());
    service.stop().await;
}

/// The opening balance of the wallet tests; the concurrent debits, [`DEBITS`] of
/// [`DEBIT`] each.
const OPENING: i64 = 1_000;
const DEBITS: usize = 30;
const DEBIT: i64 = 70;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_everything() {
    // Goal: after SIGTERM (exit 0), a new binary on the same keyspace serves the same
    // voucher, report, wallets and redemption statuses (I4 durable); winners redeeming
    // again are told already_redeemed, an Idempotency-Key replay returns its first
    // answer, fresh users fill exactly the slots left (I1), and I1–I5 hold.
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (code, limit) = ("RESTART", 100);
    let mut service = OneProcess::start(&cql::one_node(), "restart").await;
    create_voucher(&service.client, &service.url(), code, AMOUNT, limit).await;
    let mut seen = wave(
        &service.client,
        &service.url(),
        code,
        crowd_users(0, 60, 20, 4),
    )
    .await;
    assert_statuses(&seen, code, HEALTHY);
    let saver = phone(1_000);
    create_profile(&service.client, &service.url(), &saver, OPENING).await;
    let debit = json!({"phone_number": saver, "amount": -300, "reference": "before-restart"});
    let first = transact(&service.client, &service.url(), &debit, Some("restart-key")).await;
    first.expect_status_for(200, "a keyed debit");

    let mut phones: Vec<String> = seen.tried.iter().cloned().collect();
    phones.push(saver.clone());
    phones.sort();
    let before = snapshot(&service.client, &service.url(), code, &phones).await;
    service.instance.stop().await;
    service.instance.start_again().await;
    let after = snapshot(&service.client, &service.url(), code, &phones).await;
    for (what, read) in &before {
        assert_eq!(
            after.get(what),
            Some(read),
            "I4 durable: {what} is the same after the restart"
        );
    }
    let replay = transact(&service.client, &service.url(), &debit, Some("restart-key")).await;
    assert_eq!(
        replay.json, first.json,
        "the replay returns the first answer"
    );

    let winners: Vec<String> = seen.acknowledged.keys().cloned().collect();
    let again = wave(&service.client, &service.url(), code, winners.clone()).await;
    assert_eq!(
        again.statuses,
        BTreeMap::from([("409".to_owned(), winners.len())]),
        "{code}: every winner redeeming again is told already_redeemed"
    );
    seen.merge(again);
    seen.merge(final_wave(&service.client, &service.urls(), code, limit, AMOUNT, 1).await);
    let report = service.check(code, limit, &seen).await;
    assert_statuses(&seen, code, HEALTHY);
    assert_eq!(
        report.len(),
        limit as usize,
        "{code}: filled to exactly its limit"
    );
    check_wallets(&service.client, &service.urls(), vec![saver]).await;
    service.assert_no_panic();
    eprintln!("{code} took {:.1?}", started.elapsed());
    service.stop().await;
}

/// Every read [`a_restart_keeps_everything`] compares, by what was read: the voucher,
/// its report, and per phone its wallet and its redemption's status.
async fn snapshot(
    client: &reqwest::Client,
    base: &str,
    code: &str,
    phones: &[String],
) -> BTreeMap<String, Value> {
    let mut reads = BTreeMap::new();
    let voucher = cluster::http::voucher(client, base, code).await;
    voucher.expect_status_for(200, "the voucher");
    reads.insert(format!("voucher {code}"), voucher.json);
    let report = report_all(client, base, code).await;
    reads.insert(format!("report of {code}"), Value::Array(report.items));
    for phone in phones {
        let wallet = profile_all(client, base, phone).await;
        let wallet = wallet.map(|(balance, transactions)| json!([balance, transactions]));
        reads.insert(format!("wallet of {phone}"), wallet.unwrap_or(Value::Null));
        let status = lookup(client, base, code, phone).await;
        reads.insert(
            format!("redemption of {phone}"),
            json!([status.status, status.json]),
        );
    }
    reads
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_one_node_faulted_at_a_time() {
    // Goal: on three Cassandra nodes with replication factor 3, a crowd keeps being
    // served while one node is SIGKILLed, and then while one node is frozen past every
    // LWT timeout: every request is answered with an allowed status, nothing stays
    // pending once recovery ran, every 200 is credited once, no slot is lost, I1–I5.
    let _serial = SERIAL.lock().await;
    let cluster = cql::three_nodes();
    ensure_all_up(&cluster).await;
    node_killed_mid_crowd(&cluster).await;
    node_frozen_mid_crowd(&cluster).await;
}

/// One node SIGKILLed after [`FAULT_AFTER`] answers; the crowd goes on at QUORUM on the
/// two others and still wins slots after the kill. The node is started again at the end.
async fn node_killed_mid_crowd(cluster: &CqlCluster) {
    let started = Instant::now();
    let code = "NODEKILL";
    let keyspace = FaultKeyspace::fresh(cluster, "nodekill").await;
    let service = OneProcess::start_on(cluster, keyspace.keyspace(), "nodekill").await;
    create_voucher(&service.client, &service.url(), code, AMOUNT, FAULT_LIMIT).await;
    let node = FaultedNode::of(cluster, KILLED_NODE);
    let crowd = fault_crowd(&service, code, 51);
    crowd.progress.reached(FAULT_AFTER).await;
    node.signal(Signal::SIGKILL);
    let killed_at = Instant::now();
    eprintln!("{code}: SIGKILLed Cassandra node {}", node.address);
    let crowd_started = crowd.started;
    let attempts = crowd.finish().await;
    let seen = check_crowd(&attempts, code, AMOUNT, None);
    summary(code, &seen, crowd_started);
    let wins_after_the_kill = wins_sent_after(&attempts, killed_at);
    eprintln!("{code}: {wins_after_the_kill} wins among requests sent after the kill");
    settle_and_check(&service, code, seen, &attempts).await;
    assert!(
        wins_after_the_kill > 0,
        "{code}: with one node of three down, quorum claims go on: some request sent after \
         the kill must win"
    );
    service.assert_no_panic();
    eprintln!(
        "{code}: {}",
        lwt_counters(&service.client, &service.url()).await
    );
    eprintln!(
        "{code} took {:.1?} before the node's restart",
        started.elapsed()
    );
    service.stop().await;
    let restarting = Instant::now();
    node.restore().await;
    eprintln!(
        "{code}: node {} is UP again after {:.1?}",
        node_address(cluster, KILLED_NODE),
        restarting.elapsed()
    );
    keyspace.drop_once_hints_are_delivered().await;
}

/// One node frozen (SIGSTOP) for [`FREEZE`] after [`FAULT_AFTER`] answers, then
/// continued (SIGCONT): LWTs it coordinated end unknown in the driver, and the ledger
/// settles each by a serial read or leaves it to recovery. Every redemption ends
/// credited (or void), none pending.
async fn node_frozen_mid_crowd(cluster: &CqlCluster) {
    let started = Instant::now();
    let code = "NODEFREEZE";
    let keyspace = FaultKeyspace::fresh(cluster, "nodefreeze").await;
    let service = OneProcess::start_on(cluster, keyspace.keyspace(), "nodefreeze").await;
    create_voucher(&service.client, &service.url(), code, AMOUNT, FAULT_LIMIT).await;
    let node = FaultedNode::of(cluster, FROZEN_NODE);
    let crowd = fault_crowd(&service, code, 61);
    crowd.progress.reached(FAULT_AFTER).await;
    node.signal(Signal::SIGSTOP);
    eprintln!(
        "{code}: froze Cassandra node {} for {FREEZE:?}",
        node.address
    );
    tokio::time::sleep(FREEZE).await;
    node.signal(Signal::SIGCONT);
    eprintln!("{code}: continued node {}", node.address);
    let crowd_started = crowd.started;
    let attempts = crowd.finish().await;
    let seen = check_crowd(&attempts, code, AMOUNT, None);
    summary(code, &seen, crowd_started);
    let unknown = unknown_outcomes(&service).await;
    eprintln!("{code}: {unknown} LWT outcomes unknown by the end of the crowd");
    settle_and_check(&service, code, seen, &attempts).await;
    let unknown = unknown_outcomes(&service).await;
    if unknown == 0.0 {
        eprintln!(
            "{code}: NOTE no LWT outcome was unknown: the freeze hit no conditional write \
             in flight (the scenario then checked the slow path only)"
        );
    }
    service.assert_no_panic();
    eprintln!(
        "{code}: {}",
        lwt_counters(&service.client, &service.url()).await
    );
    eprintln!("{code} took {:.1?}", started.elapsed());
    service.stop().await;
    node.restore().await;
    keyspace.drop_once_hints_are_delivered().await;
}

/// The crowd of a three-node scenario on `service`, shuffled by `seed`.
fn fault_crowd(service: &OneProcess, code: &str, seed: u64) -> RunningCrowd {
    RunningCrowd::start(
        &service.client,
        service.urls(),
        code,
        0,
        FAULT_USERS,
        FAULT_REPEATS,
        seed,
    )
}

/// After a faulted crowd: waits until recovery left no redemption of `code` pending
/// (each user answered 503 then holds a credited redemption, a void one, or none),
/// checks I1–I5 against what the crowd saw, fills the voucher with fresh users to
/// exactly its limit (no slot lost), checks I1–I5 again, and asserts the crowd's
/// answers were all allowed ones.
async fn settle_and_check(service: &OneProcess, code: &str, mut seen: Seen, attempts: &[Attempt]) {
    let (client, url) = (&service.client, service.url());
    let settling = Instant::now();
    wait_all_credited(client, &url, code).await;
    eprintln!(
        "{code}: no redemption pending {:.1?} after the crowd; {}",
        settling.elapsed(),
        lwt_counters(client, &url).await
    );
    let unavailable: HashSet<&str> = attempts
        .iter()
        .filter(|a| a.outcome.as_ref().is_ok_and(|r| r.status == 503))
        .map(|a| a.phone.as_str())
        .collect();
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for user in &unavailable {
        let resp = lookup(client, &url, code, user).await;
        let status = resp.json["status"].as_str().unwrap_or_default();
        *ends.entry(status.to_owned()).or_default() += 1;
        assert!(
            (resp.status == 200 && ["credited", "void"].contains(&status))
                || (resp.status == 404 && resp.error_code() == "redemption_not_found"),
            "{code}: {user}, answered 503, ends with a credited or void redemption or none: {}",
            resp.text
        );
    }
    service.check(code, FAULT_LIMIT, &seen).await;
    let filling = Instant::now();
    let wave = final_wave(client, &service.urls(), code, FAULT_LIMIT, AMOUNT, 1).await;
    summary(&format!("{code}: final wave"), &wave, filling);
    seen.merge(wave);
    let report = service.check(code, FAULT_LIMIT, &seen).await;
    assert_eq!(
        report.len(),
        FAULT_LIMIT as usize,
        "I1: {code} filled to exactly its limit"
    );
    assert_statuses(&seen, code, UNDER_FAULT);
    let without_retry_after = attempts
        .iter()
        .filter_map(|a| a.outcome.as_ref().ok())
        .filter(|r| r.status == 503 && r.headers.get("retry-after").is_none())
        .count();
    assert_eq!(
        without_retry_after, 0,
        "{code}: every 503 carries Retry-After"
    );
    let log = service.instance.log();
    let recovered = log
        .lines()
        .filter(|l| l.contains("recovered interrupted claims"));
    eprintln!(
        "{code}: {} answers 503 unavailable, from {} users, whose redemptions ended {ends:?} \
         (\"\": none); {} recovery passes finished interrupted claims",
        seen.count("503"),
        unavailable.len(),
        recovered.count()
    );
}

/// Requests sent at or after `from` that won (200).
fn wins_sent_after(attempts: &[Attempt], from: Instant) -> usize {
    attempts
        .iter()
        .filter(|a| a.sent >= from)
        .filter(|a| a.outcome.as_ref().is_ok_and(|r| r.status == 200))
        .count()
}

/// A fresh keyspace of a three-node scenario, dropped only once no hint is pending on
/// any node. A fault makes the nodes store hints (writes a down or frozen replica
/// missed), delivered within seconds of its return; a hint that lands while its
/// keyspace is being dropped makes Cassandra 5.0.9 fail the drop on that node
/// (`IllegalArgumentException: Unknown CF` in MigrationStage, seen here) and the cluster
/// then disagrees on its schema until that node restarts. Declared before the
/// [`OneProcess`] and the [`FaultedNode`] of its scenario, so that on a failure too it
/// is dropped last, once the node runs again.
struct FaultKeyspace {
    /// None once left in place.
    keyspace: Option<TestKeyspace>,
    /// Each node's hints directory (`scripts/cassandra.sh` layout).
    hints: Vec<PathBuf>,
}

/// How long no hint file may show in any node's hints directory before the keyspace is
/// dropped: longer than Cassandra's hints flush period (10 s), so a hint still in a
/// node's buffer when the wait began would have shown as a file.
const HINTS_QUIET: Duration = Duration::from_secs(12);
/// Upper bound on that wait; past it the keyspace is left in place (and said so).
const HINTS_WAIT_LIMIT: Duration = Duration::from_secs(120);

impl FaultKeyspace {
    async fn fresh(cluster: &CqlCluster, prefix: &str) -> FaultKeyspace {
        let home = std::env::var_os("VOUCHERD_CASSANDRA_HOME")
            .map_or_else(|| PathBuf::from("/tmp/voucherd-cassandra"), PathBuf::from);
        let nodes = home.join(node_address(cluster, 0));
        let hints = (1..=cluster.hosts.len())
            .map(|n| nodes.join(format!("node{n}")).join("hints"))
            .collect();
        FaultKeyspace {
            keyspace: Some(cluster.fresh_keyspace(prefix).await),
            hints,
        }
    }

    fn keyspace(&self) -> &TestKeyspace {
        self.keyspace.as_ref().expect("the keyspace is in place")
    }

    /// Hint files in any node's hints directory now.
    fn hint_files(&self) -> usize {
        self.hints
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".hints"))
            .count()
    }

    /// Waits until no hint file showed for [`HINTS_QUIET`], then drops the keyspace.
    async fn drop_once_hints_are_delivered(self) {
        let started = Instant::now();
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .expect("drop the keyspace");
        eprintln!(
            "waited {:.1?} for hints, then dropped the keyspace",
            started.elapsed()
        );
    }
}

impl Drop for FaultKeyspace {
    fn drop(&mut self) {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < HINTS_QUIET {
            if self.hint_files() > 0 {
                quiet_since = Instant::now();
            }
            if started.elapsed() > HINTS_WAIT_LIMIT {
                // Leaving it costs its tables' memory; dropping it now may cost the
                // cluster its schema agreement.
                let left = self.keyspace.take();
                eprintln!(
                    "hints still pending after {HINTS_WAIT_LIMIT:?}: keyspace {:?} is left in \
                     place (drop it by hand once they are delivered)",
                    left.as_ref().map(|k| &k.name)
                );
                std::mem::forget(left);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A node of the three-node cluster a scenario faults. Whatever becomes of the test, the
/// node runs again when this is dropped: SIGCONT (a frozen node), then
/// `scripts/cassandra.sh start 3 --first FIRST`, which starts a killed node and returns
/// once every node is UP.
struct FaultedNode {
    address: String,
    pid: i32,
    /// The script's arguments that bring the cluster back.
    start: Vec<String>,
    /// Set once [`FaultedNode::restore`] brought it back.
    restored: bool,
}

impl FaultedNode {
    /// Node `index` of `cluster` (its address among the contact points), by the pid
    /// `scripts/cassandra.sh pids` reports.
    fn of(cluster: &CqlCluster, index: usize) -> FaultedNode {
        let first = node_address(cluster, 0);
        let address = node_address(cluster, index);
        let output = Command::new(CASSANDRA_SH)
            .args(["pids", "--first", &first])
            .output()
            .expect("run scripts/cassandra.sh pids");
        let pids = String::from_utf8_lossy(&output.stdout);
        let pid = pids
            .lines()
            .find_map(|line| {
                let (at, pid) = line.split_once(' ')?;
                (at == address).then(|| pid.trim().parse::<i32>().ok())?
            })
            .unwrap_or_else(|| {
                panic!(
                    "no running Cassandra node at {address} (`scripts/cassandra.sh pids --first \
                     {first}` says {pids:?}); start the cluster with `{}`",
                    cluster.start
                )
            });
        let start = vec![
            "start".to_owned(),
            cluster.hosts.len().to_string(),
            "--first".to_owned(),
            first,
        ];
        FaultedNode {
            address,
            pid,
            start,
            restored: false,
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid), signal).unwrap_or_else(|e| {
            panic!(
                "{signal} to Cassandra node {} ({}): {e}",
                self.address, self.pid
            )
        });
    }

    /// Continues the node and starts it again if it is not running; panics when the
    /// cluster does not come back.
    async fn restore(mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
        let output = tokio::process::Command::new(CASSANDRA_SH)
            .args(&self.start)
            .output()
            .await
            .expect("run scripts/cassandra.sh start");
        assert!(
            output.status.success(),
            "`scripts/cassandra.sh {}` did not bring the cluster back:\n{}",
            self.start.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        self.restored = true;
    }
}

impl Drop for FaultedNode {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
        eprintln!(
            "bringing Cassandra node {} back: scripts/cassandra.sh {}",
            self.address,
            self.start.join(" ")
        );
        match Command::new(CASSANDRA_SH).args(&self.start).status() {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "scripts/cassandra.sh {} failed ({other:?}): start the cluster by hand",
                self.start.join(" ")
            ),
        }
    }
}

const CASSANDRA_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cassandra.sh");

/// The address (no port) of contact point `index` of `cluster`.
fn node_address(cluster: &CqlCluster, index: usize) -> String {
    let host = cluster.hosts.get(index).unwrap_or_else(|| {
        panic!(
            "the three-node cluster has no node {index}: {:?}",
            cluster.hosts
        )
    });
    host.rsplit_once(':')
        .map_or(host.as_str(), |(address, _)| address)
        .to_owned()
}

/// Every node of `cluster` runs and sees the others UP before a fault is injected (a
/// node a previous run left down would make the fault take a quorum away).
async fn ensure_all_up(cluster: &CqlCluster) {
    let args = [
        "start".to_owned(),
        cluster.hosts.len().to_string(),
        "--first".to_owned(),
        node_address(cluster, 0),
    ];
    let output = tokio::process::Command::new(CASSANDRA_SH)
        .args(&args)
        .output()
        .await
        .expect("run scripts/cassandra.sh start");
    assert!(
        output.status.success(),
        "the three-node cluster is not up (`{}`):\n{}",
        cluster.start,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The race of the one-node scenarios: [`RACE_USERS`] users and [`RACE_REPEATS`]
/// repeats shuffled by `seed`, [`RACE_IN_FLIGHT`] at once, on `base`.
async fn race(client: &reqwest::Client, base: &str, code: &str, seed: u64) -> Seen {
    let started = Instant::now();
    let attempts = crowd::run_in_flight(
        client.clone(),
        Targets::new(vec![base.to_owned()]),
        code.to_owned(),
        crowd_users(0, RACE_USERS, RACE_REPEATS, seed),
        Progress::new(),
        RACE_IN_FLIGHT,
    )
    .await;
    let seen = check_crowd(&attempts, code, AMOUNT, None);
    summary(code, &seen, started);
    seen
}

/// The redeems of `phones` on `base` (128 in flight); what they saw.
async fn wave(client: &reqwest::Client, base: &str, code: &str, phones: Vec<String>) -> Seen {
    let started = Instant::now();
    let targets = Targets::new(vec![base.to_owned()]);
    let attempts = crowd::run(
        client.clone(),
        targets,
        code.to_owned(),
        phones,
        Progress::new(),
    )
    .await;
    let seen = check_crowd(&attempts, code, AMOUNT, None);
    summary(&format!("{code}: wave"), &seen, started);
    seen
}

/// No answer a client must never get, and none outside `allowed` (a 500 or a transport
/// error never is).
fn assert_statuses(seen: &Seen, code: &str, allowed: &[&str]) {
    seen.assert_no_violations(code);
    let unexpected: Vec<_> = seen
        .statuses
        .keys()
        .filter(|status| !allowed.contains(&status.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{code}: answers {unexpected:?} outside {allowed:?}: {:?}",
        seen.statuses
    );
}

/// Every redemption in the report of `code` is credited.
async fn assert_all_credited(client: &reqwest::Client, base: &str, code: &str) {
    let report = report_all(client, base, code).await;
    let uncredited: Vec<&Value> = report
        .items
        .iter()
        .filter(|item| item["status"] != "credited")
        .collect();
    assert!(
        uncredited.is_empty(),
        "{code}: in one process a redemption answered 200 is credited: {uncredited:?}"
    );
}

/// `POST /api/transactions`, with `key` as its Idempotency-Key.
async fn transact(client: &reqwest::Client, base: &str, body: &Value, key: Option<&str>) -> Resp {
    let mut request = client.post(format!("{base}/api/transactions")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    send(request).await
}

/// `GET /api/vouchers/{code}/redemptions/{phone}`.
async fn lookup(client: &reqwest::Client, base: &str, code: &str, user: &str) -> Resp {
    let path = format!("/api/vouchers/{code}/redemptions/{}", encode_phone(user));
    send(client.get(format!("{base}{path}"))).await
}

/// `voucherd_lwt_outcomes_total{result="unknown"}` of `service`.
async fn unknown_outcomes(service: &OneProcess) -> f64 {
    let name = "voucherd_lwt_outcomes_total{result=\"unknown\"}";
    metric(&service.client, &service.url(), name)
        .await
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

/// The LWT counters of the service at `base` and its recovery's, one line for the
/// test output.
async fn lwt_counters(client: &reqwest::Client, base: &str) -> String {
    let text = send(client.get(format!("{base}/metrics"))).await.text;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.starts_with("voucherd_lwt_outcomes_total")
                || line.starts_with("voucherd_lwt_serial_reads_total")
                || line.starts_with("voucherd_lwt_unknowns_resolved_total")
                || line.contains("recovered_total")
        })
        .map(|line| line.trim_start_matches("voucherd_"))
        .collect::<Vec<_>>()
        .join("; ")
}
