//! I1–I5 for one voucher of a live service: reads the voucher, its whole report and the
//! wallets involved over HTTP, hands them to the one checker (`stress::verify::check`,
//! a pure function that the load harness runs too) with what the clients were told, and
//! fails the test naming every violation.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use serde_json::Value;
use stress::verify::{
    check, Fetched, ReportEntry, Seen, ToldRedeemed, VoucherReport, Wallet, WalletTx,
};

use super::http::{profile_all, report_all, voucher};

/// Wallets read at once.
const WALLETS_IN_FLIGHT: usize = 32;

/// A voucher and what its clients were told.
pub struct Expect<'a> {
    pub code: &'a str,
    pub limit: u64,
    pub amount: i64,
    /// Users answered 200, with the redemption id each was told.
    pub acknowledged: &'a HashMap<String, String>,
    /// Users answered 409 already_redeemed.
    pub told_redeemed: &'a HashSet<String>,
    /// Whose wallets to read; None reads the report's winners. A winner left out of a
    /// given set has, as far as the check knows, no wallet (an I3 violation).
    pub wallets_of: Option<&'a HashSet<String>>,
}

/// Checks I1–I5 (see `stress::verify::check`) for `expect.code`: the report and the
/// voucher's counts from `urls[0]`, the wallets spread over `urls`. Returns the report.
pub async fn check_invariants(
    client: &reqwest::Client,
    urls: &[String],
    expect: &Expect<'_>,
) -> Vec<ReportEntry> {
    assert!(!urls.is_empty(), "no live instance to verify against");
    let code = expect.code;
    let report = report_all(client, &urls[0], code).await;
    let entries: Vec<ReportEntry> = report
        .items
        .iter()
        .map(|item| {
            serde_json::from_value(item.clone())
                .unwrap_or_else(|e| panic!("report item of {code} is malformed ({e}): {item}"))
        })
        .collect();
    let counts = voucher(client, &urls[0], code).await;
    counts.expect_status_for(200, &format!("voucher {code} from {}", urls[0]));
    let count =
        |key: &str| {
            Some(counts.json[key].as_u64().unwrap_or_else(|| {
                panic!("voucher {code}: `{key}` is not a count: {}", counts.text)
            }))
        };

    let mut phones: Vec<String> = match expect.wallets_of {
        Some(phones) => phones.iter().cloned().collect(),
        None => entries.iter().map(|e| e.phone_number.clone()).collect(),
    };
    phones.sort();
    let wallets: HashMap<String, Option<Wallet>> =
        futures::stream::iter(phones.into_iter().enumerate())
            .map(|(i, phone)| {
                let url = &urls[i % urls.len()];
                async move {
                    let wallet = profile_all(client, url, &phone).await.map(typed_wallet);
                    (phone, wallet)
                }
            })
            .buffer_unordered(WALLETS_IN_FLIGHT)
            .collect()
            .await;

    let fetched = Fetched {
        vouchers: vec![VoucherReport {
            code: code.to_owned(),
            amount: expect.amount,
            limit: expect.limit,
            total: report.total,
            entries,
            redeemed: count("redeemed"),
            remaining: count("remaining"),
        }],
        wallets,
        seen: expect
            .acknowledged
            .iter()
            .map(|(phone, id)| Seen {
                code: code.to_owned(),
                phone: phone.clone(),
                redemption_id: id.clone(),
            })
            .collect(),
        told_redeemed: expect
            .told_redeemed
            .iter()
            .map(|phone| ToldRedeemed {
                code: code.to_owned(),
                phone: phone.clone(),
            })
            .collect(),
    };
    let violations = check(&fetched);
    assert!(
        violations.is_empty(),
        "{} violations of I1-I5 for {code}:\n{}",
        violations.len(),
        violations
            .iter()
            .map(|v| format!(
                "{} {} phone {:?} ids {:?}",
                v.invariant, v.detail, v.phone, v.ids
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    fetched
        .vouchers
        .into_iter()
        .next()
        .map(|v| v.entries)
        .unwrap_or_default()
}

/// A served wallet as the checker reads it; a transaction without a string id or an
/// integer amount fails the test.
fn typed_wallet((balance, transactions): (i64, Vec<Value>)) -> Wallet {
    Wallet {
        balance,
        transactions: transactions
            .into_iter()
            .map(|t| {
                serde_json::from_value::<WalletTx>(t.clone())
                    .unwrap_or_else(|e| panic!("malformed transaction ({e}): {t}"))
            })
            .collect(),
    }
}
