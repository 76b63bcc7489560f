//! Restarts of the real binary on the same store: a graceful stop (SIGTERM) keeps every
//! answer the same, and a crash (SIGKILL) in the middle of a race loses no acknowledged
//! redemption (I4) and no slot, with I1, I2, I3 and I5 intact.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use voucherd_test_support::binary::Binary;
use voucherd_test_support::http::{encode_phone, phone, send, Resp};
use voucherd_test_support::rng::Rng;
use voucherd_test_support::server::{
    assert_no_panic_in_log, check_voucher_invariants, client, phones_with_wallet, redeem_retrying,
    TestServer, CROWD_DEADLINE,
};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

/// Every read the test compares before and after a restart.
async fn snapshot(server: &TestServer, phones: &[String]) -> Vec<(String, Value)> {
    let mut paths = vec![
        "/api/vouchers/KEEP".to_string(),
        "/api/vouchers?code=KEEP".to_string(),
        "/api/vouchers/WINDOW".to_string(),
        "/api/vouchers/report?code=KEEP".to_string(),
        "/api/vouchers/report?code=KEEP&limit=1&offset=1".to_string(),
        "/api/vouchers/report?code=WINDOW".to_string(),
    ];
    for phone in phones {
        paths.push(format!("/api/profiles/{}", encode_phone(phone)));
        paths.push(format!("/api/vouchers/KEEP/redemptions/{phone}"));
    }
    let mut reads = Vec::new();
    for path in paths {
        let resp = server.get(&path).await;
        resp.expect_status(200);
        reads.push((path, resp.json));
    }
    reads
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_serves_the_same_state() {
    // Goal: after SIGTERM (exit 0) and a restart on the same store, the same state is served (I4).
    let mut server = TestServer::start(VOUCHERD).await;
    server.create_voucher("KEEP", 1_500, 3).await;
    server
        .post_json(
            "/api/vouchers",
            &json!({"code": "WINDOW", "amount": 9, "limit": 7,
                    "starts_at": "2000-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await
        .expect_status(201);
    let users: Vec<String> = (0..3).map(|n| phone(10 + n)).collect();
    server.create_profile(&users[0], 250).await;
    let mut won = HashMap::new();
    for user in &users[..2] {
        let resp = server.redeem(user, "KEEP").await;
        resp.expect_status(200);
        won.insert(user.clone(), resp.str_field("redemption_id").to_string());
    }
    server.redeem(&users[2], "WINDOW").await.expect_status(200);
    // users[2] has a wallet from the WINDOW credit; give it some history.
    let keyed = json!({"phone_number": users[2], "amount": -4, "reference": "coffee"});
    let first_debit = send(
        server
            .request(Method::POST, "/api/transactions")
            .header("Idempotency-Key", "restart-key")
            .json(&keyed),
    )
    .await;
    first_debit.expect_status(200);
    let before = snapshot(&server, &users[..2]).await;
    let wallet_before = server.profile_all(&users[2]).await.expect("wallet");

    server.stop().await;
    server.restart().await;

    let after = snapshot(&server, &users[..2]).await;
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(
            old, new,
            "I4 durable: GET {path} changed across a graceful restart"
        );
    }
    assert_eq!(
        server.profile_all(&users[2]).await.expect("wallet"),
        wallet_before,
        "I4 durable: the wallet of {} changed across a graceful restart",
        users[2]
    );

    // The store still refuses what it refused before, and the limit still counts.
    server
        .redeem(&users[0], "KEEP")
        .await
        .expect_error(409, "already_redeemed");
    server
        .post_json(
            "/api/vouchers",
            &json!({"code": "KEEP", "amount": 1, "limit": 1}),
        )
        .await
        .expect_error(409, "voucher_exists");
    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": users[0], "balance": 0}),
        )
        .await
        .expect_error(409, "profile_exists");
    let replay = send(
        server
            .request(Method::POST, "/api/transactions")
            .header("Idempotency-Key", "restart-key")
            .json(&keyed),
    )
    .await;
    replay.expect_status(200);
    assert_eq!(
        replay.json, first_debit.json,
        "an Idempotency-Key replay after a restart returns the first answer"
    );
    server.redeem(&phone(99), "KEEP").await.expect_status(200);
    server
        .redeem(&phone(98), "KEEP")
        .await
        .expect_error(410, "voucher_exhausted");
    let client = client();
    let order = check_voucher_invariants(&client, server.base_url(), "KEEP", 3, 1_500, &won).await;
    assert_eq!(order[..2], users[..2], "winning order survives the restart");
    server.stop().await;
    assert_no_panic_in_log(&server);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_race_loses_nothing() {
    // Goal: SIGKILL mid-race, restart: acknowledged wins survive (I4), I1-I5 hold, no slot is lost.
    // The limit leaves room after the kill (a group commit can acknowledge a few hundred
    // wins at once), so the fresh wave really has lost-or-free slots to find.
    const LIMIT: usize = 1_000;
    const AMOUNT: i64 = 1_000;
    const USERS: u64 = 3_000;
    const IN_FLIGHT: usize = 256;
    const KILL_AFTER_WINS: usize = 100;
    let mut server = TestServer::start(VOUCHERD).await;
    server.create_voucher("CRASH", AMOUNT, LIMIT as i64).await;

    let mut users: Vec<u64> = (0..USERS).collect();
    Rng::seeded(0xdead_beef).shuffle(&mut users);
    let client = client();
    let base_url = server.base_url().to_string();
    let wins = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let race = {
        let (client, wins, enough) = (client.clone(), wins.clone(), enough.clone());
        tokio::spawn(async move {
            futures::stream::iter(users)
                .map(|user| {
                    let (client, base_url) = (client.clone(), base_url.clone());
                    let (wins, enough) = (wins.clone(), enough.clone());
                    async move {
                        let (result, _) =
                            redeem_retrying(&client, &base_url, &phone(user), "CRASH").await;
                        if matches!(&result, Ok(resp) if resp.status == 200)
                            && wins.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_WINS
                        {
                            enough.notify_one();
                        }
                        (user, result.ok())
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<(u64, Option<Resp>)>>()
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), enough.notified())
        .await
        .expect("the race reached 100 wins within 60 s");
    server.kill_hard().await;
    let answers = tokio::time::timeout(CROWD_DEADLINE, race)
        .await
        .expect("the cut race ended within the crowd deadline")
        .expect("race task");

    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut lost_answers = 0;
    for (user, resp) in &answers {
        match resp {
            Some(resp) if resp.status == 200 => {
                let id = resp.str_field("redemption_id").to_string();
                assert!(
                    acknowledged.insert(phone(*user), id).is_none(),
                    "I2 unique: {} answered 200 twice",
                    phone(*user)
                );
            }
            Some(resp) => assert!(
                matches!(resp.status, 409 | 410),
                "unexpected answer before the kill: {} {}",
                resp.status,
                resp.text
            ),
            None => lost_answers += 1,
        }
    }
    eprintln!(
        "sigkill_mid_race: {} acknowledged wins, {lost_answers} requests cut by the kill",
        acknowledged.len()
    );
    assert!(acknowledged.len() >= KILL_AFTER_WINS);
    assert!(
        lost_answers > 0,
        "the kill happened while the race was running"
    );

    server.restart().await;
    server.wait_ready().await;
    let base_url = server.base_url().to_string();
    let survivors =
        check_voucher_invariants(&client, &base_url, "CRASH", LIMIT, AMOUNT, &acknowledged).await;
    eprintln!(
        "sigkill_mid_race: {} redemptions after restart ({} acknowledged)",
        survivors.len(),
        acknowledged.len()
    );

    // I2 survives the crash: acknowledged winners cannot win again.
    for user in acknowledged.keys().take(50) {
        server
            .redeem(user, "CRASH")
            .await
            .expect_error(409, "already_redeemed");
    }
    // I3: a first-wave user who is not in the report holds no credit.
    let survivor_set: HashSet<&String> = survivors.iter().collect();
    let not_won: Vec<String> = (0..USERS)
        .map(phone)
        .filter(|p| !survivor_set.contains(p))
        .collect();
    let credited_without_redemption = phones_with_wallet(&client, &base_url, not_won).await;
    assert!(
        credited_without_redemption.is_empty(),
        "I3 credited: wallets without a redemption after the crash: {credited_without_redemption:?}"
    );

    // A fresh wave of new users takes exactly the slots that are left: none was lost.
    let fresh: Vec<u64> = (USERS..USERS + 1_500).collect();
    let wave = futures::stream::iter(fresh)
        .map(|user| {
            let (client, base_url) = (client.clone(), base_url.clone());
            async move {
                let (result, _) = redeem_retrying(&client, &base_url, &phone(user), "CRASH").await;
                (
                    user,
                    Some(result.expect("no transport error after the restart")),
                )
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>();
    let wave = tokio::time::timeout(CROWD_DEADLINE, wave)
        .await
        .expect("the fresh wave finished within the crowd deadline");
    let mut fresh_wins = HashMap::new();
    for (user, resp) in &wave {
        let resp = resp.as_ref().expect("answer");
        match resp.status {
            200 => {
                fresh_wins.insert(phone(*user), resp.str_field("redemption_id").to_string());
            }
            _ => {
                resp.expect_error(410, "voucher_exhausted");
            }
        }
    }
    assert_eq!(
        survivors.len() + fresh_wins.len(),
        LIMIT,
        "I1 and no lost slot: {} survivors + {} fresh wins must fill the limit",
        survivors.len(),
        fresh_wins.len()
    );
    let mut all_acknowledged = acknowledged.clone();
    all_acknowledged.extend(fresh_wins);
    let final_order = check_voucher_invariants(
        &client,
        &base_url,
        "CRASH",
        LIMIT,
        AMOUNT,
        &all_acknowledged,
    )
    .await;
    assert_eq!(
        final_order.len(),
        LIMIT,
        "I1: the voucher is redeemed exactly to its limit"
    );
    let final_set: HashSet<&String> = final_order.iter().collect();
    assert!(
        survivors.iter().all(|p| final_set.contains(p)),
        "I4 durable: every redemption that survived the crash is still reported"
    );
    let voucher = server.voucher("CRASH").await;
    assert_eq!(voucher["remaining"].as_u64(), Some(0));
    server.stop().await;
    assert_no_panic_in_log(&server);
}
