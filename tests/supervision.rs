//! A voucher shard or wallet actor that panics is restarted by its supervisor,
//! rebuilds its state from the ledger, and no request hangs because of it.
//! These run the app in-process: the panic is injected through the library API,
//! which HTTP does not expose.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use voucherd::Settings;
use voucherd_service::actors::voucher::VoucherShardMsg;
use voucherd_service::actors::wallet::WalletMsg;
use voucherd_test_support::in_process::InProcess;

/// The app on a fresh embedded store (the store lives as long as the returned guard).
async fn start_app() -> (InProcess, tempfile::TempDir) {
    let store = tempfile::tempdir().expect("temporary store");
    let app = InProcess::start(Settings::embedded(store.path())).await;
    (app, store)
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn phone(i: u32) -> String {
    format!("+4915{:08}", i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_voucher_shard_is_restarted_and_no_request_hangs() {
    // Goal: panic the shard that owns a voucher in the middle of a race; every
    // request still gets an answer, the shard comes back, and I1/I2 hold.
    let (app, _store) = start_app().await;
    let client = reqwest::Client::new();
    let (status, _) = post(
        &client,
        format!("{}/api/vouchers", app.base),
        json!({"code": "PANIC", "amount": 700, "limit": 50}),
    )
    .await;
    assert_eq!(status, 201);

    let shard = app.service.directory().voucher_shard("PANIC");
    let race = futures::stream::iter(0..400u32)
        .map(|i| {
            let client = client.clone();
            let url = format!("{}/api/vouchers/redeem", app.base);
            let shard = shard.clone();
            async move {
                if i == 20 {
                    shard
                        .cast(VoucherShardMsg::InjectPanic)
                        .expect("shard reachable");
                }
                let request = client
                    .post(url)
                    .json(&json!({"code": "PANIC", "phone_number": phone(i % 300)}))
                    .timeout(Duration::from_secs(30))
                    .send();
                let response = request
                    .await
                    .expect("no request hangs or fails at the transport");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("JSON body");
                (i % 300, status, body)
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;

    for (_, status, body) in &race {
        assert!(
            [200, 409, 410, 503].contains(status),
            "unexpected answer {status} {body} during a shard restart"
        );
    }
    let winners: Vec<u32> = race
        .iter()
        .filter(|(_, s, _)| *s == 200)
        .map(|(p, _, _)| *p)
        .collect();
    let distinct: HashSet<u32> = winners.iter().copied().collect();
    assert_eq!(winners.len(), distinct.len(), "I2: a user won twice");
    assert!(
        winners.len() <= 50,
        "I1: {} winners for limit 50",
        winners.len()
    );

    // The restarted shard serves again: fresh users fill the voucher to its limit exactly.
    let mut fresh = 10_000;
    loop {
        let voucher: Value = app.voucher(&client, "PANIC").await;
        if voucher["remaining"] == 0 {
            assert_eq!(
                voucher["redeemed"], 50,
                "I1: redeemed must equal the limit exactly"
            );
            break;
        }
        let (status, body) = post(
            &client,
            format!("{}/api/vouchers/redeem", app.base),
            json!({"code": "PANIC", "phone_number": phone(fresh)}),
        )
        .await;
        assert!(
            status == 200 || status == 503,
            "fresh user got {status} {body}"
        );
        fresh += 1;
        assert!(
            fresh < 10_200,
            "the restarted shard never filled the voucher"
        );
    }
    let metrics = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("voucherd_actor_restarts_total 1"),
        "the supervisor must count exactly one restart"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_wallet_actor_is_restarted() {
    // Goal: a wallet actor that panics comes back and keeps crediting exactly once.
    let (app, _store) = start_app().await;
    let client = reqwest::Client::new();
    for wallet in app.service.directory().wallets() {
        wallet
            .cast(WalletMsg::InjectPanic)
            .expect("wallet reachable");
    }
    let mut credited = 0;
    for attempt in 0..100 {
        let response = client
            .post(format!("{}/api/transactions", app.base))
            .header("Idempotency-Key", "once")
            .json(&json!({"phone_number": phone(1), "amount": 250}))
            .send()
            .await
            .expect("request sent");
        match response.status().as_u16() {
            200 => credited += 1,
            503 => tokio::time::sleep(Duration::from_millis(10 * attempt)).await,
            other => panic!("unexpected status {other}"),
        }
        if credited == 3 {
            break;
        }
    }
    assert_eq!(credited, 3, "the restarted wallet actor must answer");
    let profile: Value = client
        .get(format!("{}/api/profiles/%2B{}", app.base, &phone(1)[1..]))
        .send()
        .await
        .expect("profile")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        profile["balance"], 250,
        "I3/I5: an idempotent credit applies once"
    );
    assert_eq!(profile["transactions"].as_array().map(Vec::len), Some(1));
    app.shutdown().await;
}
