//! Split mode under faults: a voucher service and a wallet service (real binaries, each
//! with its own store), the voucher service crediting the wallet service through a TCP
//! proxy the test controls (see `voucherd_test_support::cluster::split`). Each scenario
//! drives redeem requests while a fault strikes (a SIGKILL of either service, a
//! partition, a wallet slower than the credit deadline, a credit the wallet refuses for
//! good), then asserts what a client was told and, once every redemption is settled,
//! I1–I5 with the one checker: the report from the voucher service, the wallets from the
//! wallet service, each winner credited exactly once (one wallet transaction whose id is
//! the redemption id, reference `voucher:<code>`) and no voucher credit for anyone else.
//!
//! Status codes only, never timings: a redeem answers 200 (credited), 202 (pending: the
//! credit did not land within the deadline), 409 already_redeemed or 410
//! voucher_exhausted. The bound on 5xx is zero: a wallet that is down, partitioned away
//! or slow only makes a credit's answer unknown, which the voucher service answers 202,
//! and its own store stays healthy throughout, so no answer here has a reason to be 5xx.
//!
//! Every scenario runs on embedded stores and on PostgreSQL (a throwaway database per
//! service).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster;
use voucherd_test_support::cluster::crowd::{check_crowd, crowd_users, Attempt, Seen};
use voucherd_test_support::cluster::http::{create_voucher, send};
use voucherd_test_support::cluster::scenario::{summary, RunningCrowd, AMOUNT, SERIAL};
use voucherd_test_support::cluster::split::{Backend, Split, CREDIT_DEADLINE_MS, SETTLE_LIMIT};
use voucherd_test_support::cluster::verify::final_wave;
use voucherd_test_support::http::{create_profile, encode_phone, phone, profile_all};
use voucherd_test_support::invariants::check_wallets;
use voucherd_test_support::newman::run_seed_collection;
use voucherd_test_support::proxy::Mode;

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// The crowd of a kill scenario: distinct users and repeated requests from them, on a
/// voucher of [`LIMIT`]; the fault strikes after [`FAULT_AFTER`] answers, while most
/// winners' credits are still on their way.
const DISTINCT_USERS: u64 = 300;
const REPEATS: u64 = 100;
const LIMIT: u32 = 100;
const FAULT_AFTER: usize = 30;
/// The voucher of the voucher-kill scenario: more slots than the crowd claims before
/// the kill (its first 128 requests are in flight at once), so that fresh users must
/// find the rest after the restart.
const LARGE_LIMIT: u32 = 250;
/// How long a SIGKILLed wallet service stays down.
const WALLET_DOWN: Duration = Duration::from_secs(1);
/// The shortest partition: the blackhole heals no earlier than this after it began,
/// longer than the voucher service's wallet call timeout (5 s), so that calls cut off
/// give up (their credits stay pending) and their requests reach the wallet late, after
/// the heal, as recovery re-sends them.
const PARTITION: Duration = Duration::from_secs(6);
/// What the slow wallet adds to each request (one delay per burst of bytes, and a
/// request is written at once): seven times the credit deadline, so no credit can land
/// before its redeem stops waiting, yet within the wallet call timeout (5 s), so that
/// every call lands.
const SLOW_WALLET: Duration = Duration::from_millis(7 * CREDIT_DEADLINE_MS);
/// The recovery threshold of the slow-wallet scenario, far below [`SLOW_WALLET`]: a
/// recovery pass starts at most 3 s after the previous one, so one starts while the
/// first calls are on their way and re-sends their credits; the wallet gets each
/// credit twice.
const EAGER_RECOVERY_MS: u64 = 200;

/// The answers a redeem may get in these scenarios, and with a killed voucher service,
/// the transport errors of requests sent to it.
const ANSWERS: &[&str] = &["200", "202", "409", "410"];
const ANSWERS_OR_TRANSPORT: &[&str] = &["200", "202", "409", "410", "transport"];

/// The wallet service is SIGKILLed in the middle of a crowd and started again on its
/// store: no 5xx, every redemption credited exactly once, every 202's too, I1–I5, and
/// the voucher sold out (more distinct users than slots, none refused for good).
async fn wallet_killed_mid_crowd(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "WALLETKILL";
    let mut split = Split::start(VOUCHERD, backend).await;
    create_voucher(&split.client, &split.voucher_url(), code, AMOUNT, LIMIT).await;
    let crowd = start_crowd(&split, code, 11);
    crowd.progress.reached(FAULT_AFTER).await;
    split.wallet.kill_hard().await;
    tokio::time::sleep(WALLET_DOWN).await;
    split.start_wallet_again().await;
    let crowd_started = crowd.started;
    let seen = check_crowd(&crowd.finish().await, code, AMOUNT, None);
    summary(code, &seen, crowd_started);
    let report = split.check(code, LIMIT, AMOUNT, &seen).await;
    assert_statuses(&seen, code, ANSWERS);
    assert_eq!(report.len(), LIMIT as usize, "{code} sold out");
    finish(&split, code, started).await;
}

/// The voucher service is SIGKILLed in the middle of a crowd and started again on its
/// store: recovery credits every redemption left pending, then fresh users fill the
/// voucher to exactly its limit (no slot lost), I1–I5 over everyone.
async fn voucher_killed_mid_crowd(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (code, limit) = ("VOUCHERKILL", LARGE_LIMIT);
    let mut split = Split::start(VOUCHERD, backend).await;
    create_voucher(&split.client, &split.voucher_url(), code, AMOUNT, limit).await;
    let crowd = start_crowd(&split, code, 12);
    crowd.progress.reached(FAULT_AFTER).await;
    split.voucher.kill_hard().await;
    let crowd_started = crowd.started;
    let mut seen = check_crowd(&crowd.finish().await, code, AMOUNT, Some(0));
    summary(code, &seen, crowd_started);
    split.voucher.start_again().await;
    split.wait_all_credited(code).await;
    let urls = [split.voucher_url()];
    seen.merge(final_wave(&split.client, &urls, code, limit, AMOUNT, 1).await);
    let report = split.check(code, limit, AMOUNT, &seen).await;
    assert_statuses(&seen, code, ANSWERS_OR_TRANSPORT);
    assert_eq!(report.len(), limit as usize, "{code} filled to its limit");
    finish(&split, code, started).await;
}

/// A partition during a crowd, in three waves of one crowd on a voucher of 120: 40 users
/// win through a healthy network; the proxy blackholes; 60 fresh users (and 20 repeated
/// requests) take the 60 free slots, and since no credit can land, each of the 60 is
/// answered 202 within the deadline; the partition heals after [`PARTITION`]; 200 fresh
/// users (and 50 repeats) take the last 20 slots. No 5xx, everything credited once, I1–I5.
async fn partition_mid_crowd(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (code, limit) = ("PARTITION", 120);
    let split = Split::start(VOUCHERD, backend).await;
    create_voucher(&split.client, &split.voucher_url(), code, AMOUNT, limit).await;
    let mut seen = wave(&split, code, crowd_users(0, 40, 10, 21)).await;
    split.proxy.set_mode(Mode::Blackhole);
    let partitioned = Instant::now();
    let cut_off = wave(&split, code, crowd_users(40, 60, 20, 22)).await;
    tokio::time::sleep(PARTITION.saturating_sub(partitioned.elapsed())).await;
    split.proxy.set_mode(Mode::Pass);
    assert_eq!(
        cut_off.statuses,
        BTreeMap::from([("202".to_owned(), 60), ("409".to_owned(), 20)]),
        "{code}: during the partition each of the 60 fresh users wins a free slot and is \
         answered 202 pending (its credit cannot land); the repeats 409"
    );
    seen.merge(cut_off);
    seen.merge(wave(&split, code, crowd_users(100, 200, 50, 23)).await);
    let report = split.check(code, limit, AMOUNT, &seen).await;
    assert_statuses(&seen, code, ANSWERS);
    assert_eq!(report.len(), limit as usize, "{code} sold out");
    finish(&split, code, started).await;
}

/// A wallet slower than the credit deadline (the proxy delays every request by
/// [`SLOW_WALLET`]): every winner is answered 202 (never 200: no credit can land in
/// time), each redemption then becomes credited (the status lookup says so, with the id
/// the 202 gave), and none is credited twice although its credit is sent twice
/// (recovery re-sends it while the first call is still on its way).
async fn slow_wallet(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (code, limit) = ("SLOWWALLET", 30);
    let split = Split::start_with(VOUCHERD, backend, EAGER_RECOVERY_MS).await;
    create_voucher(&split.client, &split.voucher_url(), code, AMOUNT, limit).await;
    split.proxy.set_mode(Mode::Delay(SLOW_WALLET));
    let seen = wave(&split, code, crowd_users(0, 40, 10, 31)).await;
    assert_eq!(
        (seen.count("202"), seen.count("200")),
        (limit as usize, 0),
        "{code}: every winner is answered 202 pending, none 200: {:?}",
        seen.statuses
    );
    assert_statuses(&seen, code, &["202", "409", "410"]);
    split.check(code, limit, AMOUNT, &seen).await;
    assert_lookups_credited(&split, code, &seen).await;
    finish(&split, code, started).await;
}

/// Fifty debits at once on one wallet through the wallet service, each of [`DEBIT`] from
/// an opening balance of [`OPENING`]: exactly as many succeed as the balance covers, the
/// rest are 409 insufficient_funds, no answer shows a balance below zero, the successes
/// account for the whole difference, and I5 holds.
async fn concurrent_debits(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let split = Split::start(VOUCHERD, backend).await;
    let user = phone(7);
    create_profile(&split.client, &split.wallet_url(), &user, OPENING).await;
    let answers = futures::future::join_all((0..DEBITS).map(|_| debit(&split, &user))).await;
    let successes = answers.iter().filter(|(status, _)| *status == 200).count() as i64;
    let refused = answers
        .iter()
        .filter(|a| a.0 == 409 && a.1 == "insufficient_funds");
    assert_eq!(
        refused.count() as i64,
        DEBITS as i64 - successes,
        "every debit is 200 or 409 insufficient_funds: {answers:?}"
    );
    let (balance, _) = profile_all(&split.client, &split.wallet_url(), &user)
        .await
        .expect("the wallet exists");
    assert_eq!(successes * DEBIT, OPENING - balance, "successes x amount");
    assert_eq!(
        successes,
        OPENING / DEBIT,
        "as many succeed as the balance covers"
    );
    check_wallets(&split.client, &[split.wallet_url()], vec![user]).await;
    finish(&split, "concurrent debits", started).await;
}

const DEBITS: usize = 50;
const DEBIT: i64 = 70;
const OPENING: i64 = 1_000;

/// One debit of [`DEBIT`] from `user`: its status and error code (empty on success);
/// a 200 must show a balance that is not below zero.
async fn debit(split: &Split, user: &str) -> (u16, String) {
    let body = serde_json::json!({"phone_number": user, "amount": -DEBIT, "reference": "debit"});
    let url = format!("{}/api/transactions", split.wallet_url());
    let resp = send(split.client.post(url).json(&body)).await;
    if resp.status == 200 {
        assert!(resp.i64_field("balance") >= 0, "I5: {}", resp.text);
    }
    (resp.status, resp.error_code().to_owned())
}

/// The seed's Postman collection under newman with `voucherURL` on the voucher service
/// and `walletURL` on the wallet service: every request gets its success code (the
/// redeem 200, or 202 should its credit be late), and the redeem's credit shows in the
/// wallet service's profile: one transaction with the redemption's id, the voucher's
/// amount and reference, on top of the collection's own top-up.
async fn seed_collection(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let split = Split::start(VOUCHERD, backend).await;
    let run = run_seed_collection(&split.voucher_url(), &split.wallet_url()).await;
    let expected = [201, 200, 200, 201, 200, 200, 200];
    for ((name, code), want) in run.statuses().into_iter().zip(expected) {
        let late_credit = name == "Redeem Voucher" && code == Some(202);
        assert!(
            code == Some(want) || late_credit,
            "{name:?} answered {code:?}, wanted {want}\n{}",
            run.stdout
        );
    }
    let (code, user) = ("test_voucher", "+989371209055");
    let seen = seen_redeemed(&split, code, user).await;
    split.check(code, 10, 2_000, &seen).await;
    let (balance, transactions) = profile_all(&split.client, &split.wallet_url(), user)
        .await
        .expect("the collection created the profile");
    let credit = |t: &&serde_json::Value| t["id"] == *seen.winners()[user];
    let credits: Vec<_> = transactions.iter().filter(credit).collect();
    assert_eq!(
        credits
            .iter()
            .map(|t| (t["amount"].as_i64(), t["reference"].as_str()))
            .collect::<Vec<_>>(),
        [(Some(2_000), Some("voucher:test_voucher"))],
        "one credit of the redemption, of the voucher's amount and reference"
    );
    assert_eq!(
        balance,
        10_000 + 2_000,
        "the top-up and the voucher's credit"
    );
    finish(&split, "the seed collection", started).await;
}

/// Credits the wallet refuses for good (each would overflow its user's balance) while
/// their redemptions are pending, on a voucher of two: one user redeems during a short
/// partition (its credit's answer comes late, after the redeem answered 202), another
/// during a partition longer than the wallet call timeout (the first call gives up, and
/// recovery gets the refusal). Both redemptions are voided, and their slots and user
/// keys come back at once, in the ledger and in the voucher service's memory: each user
/// redeeming again is told its credit is refused (not already_redeemed: it holds no
/// redemption), and two fresh users take both slots. I1–I5.
async fn refused_while_pending(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (code, limit) = ("REFUSED", 2);
    let split = Split::start(VOUCHERD, backend).await;
    create_voucher(&split.client, &split.voucher_url(), code, AMOUNT, limit).await;
    let mut seen = Seen::default();
    for (user, partition) in [(phone(1), WALLET_DOWN), (phone(2), PARTITION)] {
        create_profile(&split.client, &split.wallet_url(), &user, i64::MAX).await;
        split.proxy.set_mode(Mode::Blackhole);
        let cut_off = wave(&split, code, vec![user.clone()]).await;
        assert_eq!(cut_off.pending.len(), 1, "{code}: 202 while partitioned");
        // A retry while the credit is pending (as after a lost answer) is told the
        // redemption it holds: same id, status pending.
        let retry = redeem(&split, code, &user).await;
        retry.expect_error(409, "already_redeemed");
        assert_eq!(
            (
                retry.json["redemption_id"].as_str(),
                retry.json["status"].as_str()
            ),
            (
                cut_off.pending.get(&user).map(String::as_str),
                Some("pending")
            ),
            "{code}: the retry names the pending redemption: {}",
            retry.text
        );
        tokio::time::sleep(partition).await;
        split.proxy.set_mode(Mode::Pass);
        wait_status(&split, code, &user, "void").await;
        let again = redeem(&split, code, &user).await;
        again.expect_error(409, "credit_refused");
        seen.tried.insert(user);
    }
    let fresh = wave(&split, code, vec![phone(3), phone(4)]).await;
    assert_eq!(fresh.count("200"), 2, "{code}: both slots are free again");
    seen.merge(fresh);
    split.check(code, limit, AMOUNT, &seen).await;
    finish(&split, code, started).await;
}

/// One redeem of `code` by `user` on the voucher service.
async fn redeem(split: &Split, code: &str, user: &str) -> cluster::http::Resp {
    cluster::http::redeem(&split.client, &split.voucher_url(), user, code)
        .await
        .unwrap_or_else(|e| panic!("redeem for {user}: {e}"))
}

/// Waits (bounded) until the status lookup says `user`'s redemption of `code` is `status`.
async fn wait_status(split: &Split, code: &str, user: &str, status: &str) {
    let what = format!("{user}'s redemption of {code} {status}");
    cluster::wait_until(&what, SETTLE_LIMIT, Duration::from_millis(200), || async {
        let resp = lookup(split, code, user).await;
        (resp.json["status"] == status).then_some(())
    })
    .await;
}

/// What a client of `code` learns from the status lookup about `user`'s redemption, as
/// if it had been answered 200 with that id.
async fn seen_redeemed(split: &Split, code: &str, user: &str) -> Seen {
    let resp = lookup(split, code, user).await;
    resp.expect_status_for(200, "the redemption's status");
    let mut seen = Seen::default();
    seen.tried.insert(user.to_owned());
    let id = resp.str_field("redemption_id").to_owned();
    seen.acknowledged.insert(user.to_owned(), id);
    seen
}

/// `GET /api/vouchers/{code}/redemptions/{phone}` on the voucher service.
async fn lookup(split: &Split, code: &str, user: &str) -> cluster::http::Resp {
    let path = format!("/api/vouchers/{code}/redemptions/{}", encode_phone(user));
    send(split.client.get(format!("{}{path}", split.voucher_url()))).await
}

/// Every redemption a client was told of (200 or 202) is `credited` in the status
/// lookup, under the id the client was given.
async fn assert_lookups_credited(split: &Split, code: &str, seen: &Seen) {
    for (user, id) in seen.winners() {
        let resp = lookup(split, code, &user).await;
        resp.expect_status_for(200, &format!("status of {user}'s redemption"));
        assert_eq!(
            (resp.str_field("status"), resp.str_field("redemption_id")),
            ("credited", id.as_str()),
            "{code}: {user}'s redemption ends credited under the id its client got"
        );
    }
}

/// A crowd of [`DISTINCT_USERS`] plus [`REPEATS`] (shuffled by `seed`) on the voucher
/// service.
fn start_crowd(split: &Split, code: &str, seed: u64) -> RunningCrowd {
    let urls = vec![split.voucher_url()];
    RunningCrowd::start(&split.client, urls, code, 0, DISTINCT_USERS, REPEATS, seed)
}

/// One wave of a crowd: the redeems of `phones` on the voucher service, all answered
/// (a transport error fails the test); what they saw.
async fn wave(split: &Split, code: &str, phones: Vec<String>) -> Seen {
    let started = Instant::now();
    let targets = cluster::crowd::Targets::new(vec![split.voucher_url()]);
    let progress = cluster::crowd::Progress::new();
    let client = split.client.clone();
    let attempts: Vec<Attempt> =
        cluster::crowd::run(client, targets, code.to_owned(), phones, progress).await;
    let seen = check_crowd(&attempts, code, AMOUNT, None);
    summary(&format!("{code}: wave"), &seen, started);
    seen
}

/// No answer a client must never get, none outside `allowed` (so no 5xx: see the
/// crate's doc).
fn assert_statuses(seen: &Seen, code: &str, allowed: &[&str]) {
    seen.assert_no_violations(code);
    assert_eq!(
        seen.server_errors(),
        0,
        "{code}: no 5xx: {:?}",
        seen.statuses
    );
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

async fn finish(split: &Split, scenario: &str, started: Instant) {
    split.assert_no_panic();
    eprintln!("{scenario}: {}", split.protocol_counters().await);
    eprintln!("{scenario} took {:.1?}", started.elapsed());
}

/// Instantiates each scenario on embedded stores and on PostgreSQL.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Backend::Embedded).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $scenario() {
                    super::$scenario(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_stores!(
    wallet_killed_mid_crowd,
    voucher_killed_mid_crowd,
    partition_mid_crowd,
    slow_wallet,
    refused_while_pending,
    seed_collection,
);

/// The wallet half alone, on both stores.
mod wallet_half {
    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_debits_embedded() {
        super::concurrent_debits(super::Backend::Embedded).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_debits_postgres() {
        super::concurrent_debits(super::Backend::Postgres).await;
    }
}
