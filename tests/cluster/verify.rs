//! The verifier: reads the report and the wallets back from live instances and checks the
//! invariants I1–I5 against what the clients were told; then the final wave.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::crowd::{check_answer, fresh_phone, Seen};
use super::http::{profile_all, redeem, report_all, voucher, ReportItem};

/// What a voucher is and what the clients saw of it.
pub struct Expect<'a> {
    pub code: &'a str,
    pub limit: u32,
    pub amount: i64,
    pub seen: &'a Seen,
}

/// Checks I1–I5 for one voucher over HTTP against the live instances `urls`:
/// - every instance serves the same report, and the voucher's counts agree with it;
/// - I1: at most `limit` redemptions;
/// - I2: phones and redemption ids in the report are distinct;
/// - I3: each winner's wallet holds exactly one credit for the voucher, with the
///   redemption id and the voucher amount; no user that is not in the report holds one;
/// - I4: every user answered 200 is in the report with the id it was told, and so is
///   every user told 409 already_redeemed;
/// - I5: every wallet read has balance = sum of its transactions, and balance >= 0.
///
/// Returns the report.
pub async fn check_invariants(
    client: &reqwest::Client,
    urls: &[String],
    expect: &Expect<'_>,
) -> Vec<ReportItem> {
    assert!(!urls.is_empty(), "no live instance to verify against");
    let code = expect.code;
    let (report, total) = report_all(client, &urls[0], code).await;
    assert!(
        report.len() <= expect.limit as usize,
        "I1 limit: {} redemptions of {code} exceed its limit {}",
        report.len(),
        expect.limit
    );
    assert_eq!(
        total,
        report.len() as u64,
        "I1: the report's total equals its items for {code}"
    );
    for url in &urls[1..] {
        let (other, _) = report_all(client, url, code).await;
        assert_eq!(
            other, report,
            "I4 durable: instance {url} serves a different report of {code} than {} (one shared ledger)",
            urls[0]
        );
    }
    for url in urls {
        let resp = voucher(client, url, code).await;
        resp.expect_status(200, &format!("voucher {code} from {url}"));
        assert_eq!(
            resp.json["redeemed"].as_u64(),
            Some(report.len() as u64),
            "I1: {url} says {code} has as many redemptions as the report: {}",
            resp.text
        );
        assert_eq!(
            resp.json["remaining"].as_u64(),
            Some(u64::from(expect.limit) - report.len() as u64),
            "I1: remaining = limit - redeemed on {url}: {}",
            resp.text
        );
    }

    let mut winners: HashMap<&str, &str> = HashMap::new();
    for (phone, id) in &report {
        assert!(
            winners.insert(phone, id).is_none(),
            "I2 unique: {phone} appears twice in the report of {code}"
        );
    }
    let ids: HashSet<&str> = winners.values().copied().collect();
    assert_eq!(
        ids.len(),
        winners.len(),
        "I2 unique: redemption ids of {code} are distinct"
    );

    for (phone, id) in &expect.seen.acknowledged {
        assert_eq!(
            winners.get(phone.as_str()).copied(),
            Some(id.as_str()),
            "I4 durable: {phone} was answered 200 with redemption {id} but the report of {code} does not hold it"
        );
    }
    for phone in &expect.seen.told_already_redeemed {
        assert!(
            winners.contains_key(phone.as_str()),
            "I4 durable: {phone} was told 409 already_redeemed but the report of {code} does not hold it"
        );
    }

    // Every user that tried, winner or not: winners hold exactly their credit, others none.
    let reference = format!("voucher:{code}");
    let mut users: Vec<&String> = expect.seen.tried.iter().collect();
    users.sort();
    let wallets: Vec<(&String, Option<super::http::Wallet>)> =
        futures::stream::iter(users.into_iter().enumerate())
            .map(|(i, phone)| {
                let url = &urls[i % urls.len()];
                async move { (phone, profile_all(client, url, phone).await) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut credited = 0;
    for (phone, wallet) in wallets {
        let winner_id = winners.get(phone.as_str()).copied();
        let Some((balance, transactions)) = wallet else {
            assert!(
                winner_id.is_none(),
                "I3 credited: winner {phone} of {code} has no wallet"
            );
            continue;
        };
        let credits: Vec<&Value> = transactions
            .iter()
            .filter(|t| {
                t["reference"].as_str() == Some(reference.as_str())
                    || Some(t["id"].as_str().unwrap_or_default()) == winner_id
            })
            .collect();
        match winner_id {
            Some(id) => {
                assert_eq!(
                    credits.len(),
                    1,
                    "I3 credited: winner {phone} must hold exactly one credit for {code}, has {transactions:?}"
                );
                assert_eq!(
                    credits[0]["id"].as_str(),
                    Some(id),
                    "I3 credited: the credit of {phone} carries its redemption id"
                );
                assert_eq!(
                    credits[0]["amount"].as_i64(),
                    Some(expect.amount),
                    "I3 credited: the credit of {phone} is the voucher amount"
                );
                credited += 1;
            }
            None => assert!(
                credits.is_empty(),
                "I3 credited: {phone} is not in the report of {code} but holds a credit for it: {transactions:?}"
            ),
        }
        let sum: i64 = transactions
            .iter()
            .map(|t| {
                t["amount"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("non-integer amount in {t}"))
            })
            .sum();
        assert_eq!(
            balance, sum,
            "I5 balance: the balance of {phone} equals the sum of its transactions"
        );
        assert!(
            balance >= 0,
            "I5 balance: {phone} has a negative balance {balance}"
        );
    }
    // Winners among users no client heard from (transport errors, 503s that committed) are
    // in `tried` too; every winner was someone who tried.
    assert_eq!(
        credited,
        winners.len(),
        "I3 credited: every redemption of {code} belongs to a user who tried and holds its credit"
    );
    report
}

/// How long a final wave may take to fill the voucher (leases of a dead instance expire
/// after 5 s and come back by reconciliation; Redis or the database may be recovering).
pub const FINAL_WAVE_DEADLINE: Duration = Duration::from_secs(60);
/// Requests of a final wave in flight at once.
const WAVE_IN_FLIGHT: usize = 32;

/// Sends fresh users (never seen before) to the live instances until the voucher reports
/// exactly `limit` redeemed and 0 remaining, retrying 503/429 with a short backoff,
/// bounded by [`FINAL_WAVE_DEADLINE`]. Every answer must be an allowed one; transport
/// errors fail the test. Returns what the wave saw.
pub async fn final_wave(
    client: &reqwest::Client,
    urls: &[String],
    code: &str,
    limit: u32,
    amount: i64,
    wave: u64,
) -> Seen {
    let deadline = tokio::time::Instant::now() + FINAL_WAVE_DEADLINE;
    let mut seen = Seen::default();
    let mut next_user = 0u64;
    let mut rounds = 0;
    loop {
        let status = voucher(client, &urls[0], code).await;
        status.expect_status(200, "voucher during the final wave");
        let redeemed = status.json["redeemed"].as_u64().expect("redeemed");
        let remaining = status.json["remaining"].as_u64().expect("remaining");
        assert!(
            redeemed <= u64::from(limit),
            "I1 limit: {code} reports {redeemed} redeemed over its limit {limit}"
        );
        if remaining == 0 {
            assert_eq!(
                redeemed,
                u64::from(limit),
                "the final wave must bring {code} to exactly its limit: {}",
                status.text
            );
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the final wave could not fill {code} within {FINAL_WAVE_DEADLINE:?}: {redeemed} of {limit} redeemed after \
             {rounds} rounds, answers {:?} — slots lost for good?",
            seen.statuses
        );
        rounds += 1;
        // One fresh user per missing slot (at least a few), spread over the instances.
        let batch: Vec<String> = (0..remaining.max(4))
            .map(|_| {
                next_user += 1;
                fresh_phone(wave, next_user)
            })
            .collect();
        let answers: Vec<(String, super::http::Resp)> =
            futures::stream::iter(batch.into_iter().enumerate())
                .map(|(i, phone)| {
                    let url = urls[i % urls.len()].clone();
                    async move {
                        let resp = redeem_with_retry(client, &url, &phone, code, deadline).await;
                        (phone, resp)
                    }
                })
                .buffer_unordered(WAVE_IN_FLIGHT)
                .collect()
                .await;
        for (phone, resp) in &answers {
            check_answer(&mut seen, phone, resp, code, amount, "final wave");
        }
        // Everyone got 410/503 this round: give expired leases time to come back.
        if !answers.iter().any(|(_, r)| r.status == 200) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Redeems, retrying 503/429 with a short growing backoff until `deadline`; transport
/// errors fail the test.
async fn redeem_with_retry(
    client: &reqwest::Client,
    url: &str,
    phone: &str,
    code: &str,
    deadline: tokio::time::Instant,
) -> super::http::Resp {
    let mut retries: u64 = 0;
    loop {
        let resp = redeem(client, url, phone, code).await.unwrap_or_else(|e| {
            panic!("final wave: redeem for {phone} on live instance {url} failed in transport: {e}")
        });
        if !(resp.status == 503 || resp.status == 429) || tokio::time::Instant::now() >= deadline {
            return resp;
        }
        retries += 1;
        tokio::time::sleep(Duration::from_millis(20 * retries.min(10))).await;
    }
}

/// Waits (bounded) until every instance reports the metric `name` == `value`.
pub async fn wait_metric_everywhere(
    client: &reqwest::Client,
    urls: &[String],
    name: &str,
    value: f64,
    limit: Duration,
) {
    super::wait_until(
        &format!("{name} == {value} on every instance {urls:?}"),
        limit,
        Duration::from_millis(100),
        || async move {
            for url in urls {
                if super::http::metric(client, url, name).await != Some(value) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}
