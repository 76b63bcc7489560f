//! The verifier: reads the report and the wallets back from live instances and checks the
//! invariants I1–I5 against what the clients were told; then the final wave.

use std::time::Duration;

use futures::StreamExt;
use stress::verify::ReportEntry;

use super::crowd::{check_answer, fresh_phone, Seen};
use super::http::{redeem, voucher};
use crate::http::report_all;
use crate::invariants;

/// What a voucher is and what the clients saw of it.
pub struct Expect<'a> {
    pub code: &'a str,
    pub limit: u32,
    pub amount: i64,
    pub seen: &'a Seen,
}

/// Checks I1–I5 for one voucher over HTTP against the live instances `urls`, with the
/// one checker (`crate::invariants`, i.e. `stress::verify::check`) over the report of
/// `urls[0]` and the wallet of every user that tried, winner or not (so a winner no client
/// heard from must still be a user who tried); I4 covers the users answered 200 and those
/// told 409 already_redeemed. Then, one shared ledger: every other instance serves the
/// same report and the same counts.
///
/// Returns the report.
pub async fn check_invariants(
    client: &reqwest::Client,
    urls: &[String],
    expect: &Expect<'_>,
) -> Vec<ReportEntry> {
    let code = expect.code;
    let report = invariants::check_invariants(
        client,
        urls,
        &invariants::Expect {
            code,
            limit: u64::from(expect.limit),
            amount: expect.amount,
            acknowledged: &expect.seen.acknowledged,
            told_redeemed: &expect.seen.told_already_redeemed,
            wallets_of: Some(&expect.seen.tried),
        },
    )
    .await;
    for url in &urls[1..] {
        let other: Vec<ReportEntry> = report_all(client, url, code)
            .await
            .items
            .into_iter()
            .map(|item| serde_json::from_value(item).expect("report item"))
            .collect();
        assert_eq!(
            other, report,
            "I4 durable: instance {url} serves a different report of {code} than {} (one shared ledger)",
            urls[0]
        );
    }
    for url in urls {
        let resp = voucher(client, url, code).await;
        resp.expect_status_for(200, &format!("voucher {code} from {url}"));
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
        status.expect_status_for(200, "voucher during the final wave");
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
