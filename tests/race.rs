//! Flash-crowd races against the real binary: many concurrent redeems, checked against the
//! invariants I1 (limit), I2 (unique), I3 (credited), I4 (durable) and I5 (balance).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use voucherd_test_support::binary::Binary;
use voucherd_test_support::http::{assert_error_shape, phone, Resp};
use voucherd_test_support::rng::Rng;
use voucherd_test_support::server::{
    assert_no_panic_in_log, check_voucher_invariants, client, phones_with_wallet, redeem_retrying,
    StartOptions, TestServer, CROWD_DEADLINE,
};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

const IN_FLIGHT: usize = 256;

/// Sends one redeem per entry of `users` with `IN_FLIGHT` requests in flight; returns each
/// answer with its user, the total number of 429/503 retries and the peak number in flight.
async fn crowd(server: &TestServer, code: &str, users: Vec<u64>) -> (Vec<(u64, Resp)>, u32, usize) {
    let client = client();
    let base_url = server.base_url().to_string();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    // The first wave waits until all of it has started, so the server really sees
    // IN_FLIGHT concurrent requests (the stream starts futures in slices, and fast
    // answers could otherwise finish before the last of the wave started).
    let first_wave = users.len().min(IN_FLIGHT);
    let wave = Arc::new(tokio::sync::Barrier::new(first_wave));
    let started = Arc::new(AtomicUsize::new(0));
    let results = futures::stream::iter(users)
        .map(|user| {
            let client = client.clone();
            let base_url = base_url.clone();
            let in_flight = in_flight.clone();
            let peak = peak.clone();
            let wave = wave.clone();
            let started = started.clone();
            let code = code.to_string();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if started.fetch_add(1, Ordering::SeqCst) < first_wave {
                    wave.wait().await;
                }
                let (result, retries) =
                    redeem_retrying(&client, &base_url, &phone(user), &code).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let resp = result.unwrap_or_else(|e| panic!("redeem for user {user} failed: {e}"));
                (user, resp, retries)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect();
    let results: Vec<(u64, Resp, u32)> = tokio::time::timeout(CROWD_DEADLINE, results)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the crowd on {code} did not finish within {:?}; {} requests still in flight",
                CROWD_DEADLINE,
                in_flight.load(Ordering::SeqCst)
            )
        });
    let retries = results.iter().map(|(_, _, r)| r).sum();
    let answers = results.into_iter().map(|(u, r, _)| (u, r)).collect();
    (answers, retries, peak.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread")]
async fn flash_crowd_limit_100() {
    // Goal: 2,000 users + 500 repeats, 256 in flight, limit 100 -> 100 winners (I1, I2, I3, I5).
    const LIMIT: usize = 100;
    const AMOUNT: i64 = 50_000;
    const USERS: u64 = 2_000;
    const REPEATS: usize = 500;
    let server = TestServer::start(VOUCHERD).await;
    server.create_voucher("RACE", AMOUNT, LIMIT as i64).await;

    let mut rng = Rng::seeded(20_260_101);
    let mut attempts: Vec<u64> = (0..USERS).collect();
    for _ in 0..REPEATS {
        attempts.push(rng.below(USERS));
    }
    rng.shuffle(&mut attempts);
    let (answers, retries, peak) = crowd(&server, "RACE", attempts).await;
    eprintln!("flash_crowd_limit_100: {retries} retries after 429/503, peak in flight {peak}");
    assert!(
        peak >= IN_FLIGHT,
        "the crowd had {peak} requests in flight, wanted {IN_FLIGHT}"
    );
    assert_eq!(answers.len(), USERS as usize + REPEATS);

    let mut winners: HashMap<String, String> = HashMap::new();
    let mut already_redeemed_users = HashSet::new();
    let mut exhausted = 0usize;
    for (user, resp) in &answers {
        match resp.status {
            200 => {
                assert_eq!(resp.json["amount"].as_i64(), Some(AMOUNT), "{}", resp.text);
                assert_eq!(resp.json["code"], "RACE");
                assert_eq!(
                    resp.json["phone_number"].as_str(),
                    Some(phone(*user).as_str())
                );
                assert_eq!(
                    resp.json["balance"].as_i64(),
                    Some(AMOUNT),
                    "I5: a fresh wallet holds exactly the credit right after it"
                );
                let id = resp.str_field("redemption_id").to_string();
                assert!(
                    winners.insert(phone(*user), id).is_none(),
                    "I2 unique: user {} was answered 200 twice",
                    phone(*user)
                );
            }
            409 => {
                resp.expect_error(409, "already_redeemed");
                already_redeemed_users.insert(phone(*user));
            }
            410 => {
                resp.expect_error(410, "voucher_exhausted");
                exhausted += 1;
            }
            other => {
                assert_error_shape(resp);
                panic!(
                    "unexpected answer {other} for {}: {}",
                    phone(*user),
                    resp.text
                );
            }
        }
    }
    assert_eq!(
        winners.len(),
        LIMIT,
        "I1 limit: exactly {LIMIT} of {} answers are 200 (409s: {}, 410s: {exhausted})",
        answers.len(),
        already_redeemed_users.len()
    );
    for user in &already_redeemed_users {
        assert!(
            winners.contains_key(user),
            "I2: {user} was told already_redeemed but never won"
        );
    }

    let client = client();
    let order =
        check_voucher_invariants(&client, server.base_url(), "RACE", LIMIT, AMOUNT, &winners).await;
    assert_eq!(
        order.len(),
        LIMIT,
        "I1: the report lists exactly {LIMIT} redemptions"
    );
    let reported: HashSet<&String> = order.iter().collect();
    let won: HashSet<&String> = winners.keys().collect();
    assert_eq!(
        reported, won,
        "I4: the report lists exactly the users answered 200"
    );

    // Every winner's wallet holds exactly one transaction: the voucher credit (I3, I5).
    let mut total_balance = 0;
    for (user, id) in &winners {
        let (balance, transactions) = server
            .profile_all(user)
            .await
            .unwrap_or_else(|| panic!("I3 credited: winner {user} has no wallet"));
        assert_eq!(
            transactions.len(),
            1,
            "I3: {user} holds exactly one transaction"
        );
        assert_eq!(
            transactions[0]["id"].as_str(),
            Some(id.as_str()),
            "I3: id == redemption_id"
        );
        assert_eq!(
            transactions[0]["amount"].as_i64(),
            Some(AMOUNT),
            "I3: amount"
        );
        assert_eq!(balance, AMOUNT, "I5: {user}'s balance is the one credit");
        total_balance += balance;
    }
    assert_eq!(
        total_balance,
        LIMIT as i64 * AMOUNT,
        "I3/I5: the winners' balances add up to limit x amount"
    );

    // No credit without a redemption: losers have no wallet at all (I3).
    let losers: Vec<String> = (0..USERS)
        .map(phone)
        .filter(|p| !winners.contains_key(p))
        .collect();
    let base_url = server.base_url().to_string();
    let with_wallet = phones_with_wallet(&client, &base_url, losers).await;
    assert!(
        with_wallet.is_empty(),
        "I3 credited: users who never won hold a wallet: {with_wallet:?}"
    );

    let voucher = server.voucher("RACE").await;
    assert_eq!(
        voucher["redeemed"].as_u64(),
        Some(LIMIT as u64),
        "I1: redeemed"
    );
    assert_eq!(voucher["remaining"].as_u64(), Some(0), "I1: remaining");
    assert_no_panic_in_log(&server);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_many_concurrent_attempts() {
    // Goal: 300 concurrent redeems by the same user win once and credit once (I2, I3).
    // The per-phone rate limit would turn most of them away with 429 before they reach
    // the shard; it is off here so that all 300 race for the slot (the limit has its
    // own test in tests/hostile_clients.rs).
    const AMOUNT: i64 = 777;
    let server = TestServer::start_with(
        VOUCHERD,
        StartOptions::args(&["--redeem-rate-per-phone", "0"]),
    )
    .await;
    server.create_voucher("ONCE", AMOUNT, 1_000).await;
    let (answers, _retries, _peak) = crowd(&server, "ONCE", vec![31_337; 300]).await;
    let won: Vec<&Resp> = answers
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.status == 200)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "I2 unique: exactly one of 300 same-user attempts wins"
    );
    for (_, resp) in &answers {
        if resp.status != 200 {
            resp.expect_error(409, "already_redeemed");
        }
    }
    let (balance, transactions) = server.profile_all(&phone(31_337)).await.expect("wallet");
    assert_eq!(
        (balance, transactions.len()),
        (AMOUNT, 1),
        "I3 credited: exactly one credit"
    );
    assert_eq!(transactions[0]["id"], won[0].json["redemption_id"]);
    let voucher = server.voucher("ONCE").await;
    assert_eq!(voucher["redeemed"].as_u64(), Some(1));
}
