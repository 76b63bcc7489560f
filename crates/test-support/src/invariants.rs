//! I1–I5 for one voucher of a live service: reads the voucher, its whole report and the
//! wallets involved over HTTP, hands them to the one checker (`stress::verify::check`,
//! a pure function that the load harness runs too) with what the clients were told, and
//! fails the test naming every violation.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use serde_json::Value;
use stress::verify::{
    check, Fetched, ReportEntry, Seen, ToldRedeemed, Violation, VoucherReport, Wallet, WalletTx,
};

use crate::http::{profile_all, report_all, voucher};

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
    check_invariants_at(client, &urls[0], urls, expect).await
}

/// Like [`check_invariants`] with the halves apart (split mode): the report and the
/// voucher's counts from the voucher service at `vouchers`, the wallets spread over the
/// wallet service(s) at `wallets`. Returns the report.
pub async fn check_invariants_at(
    client: &reqwest::Client,
    vouchers: &str,
    wallets: &[String],
    expect: &Expect<'_>,
) -> Vec<ReportEntry> {
    assert!(!wallets.is_empty(), "no wallet service to verify against");
    let voucher = read_voucher(client, vouchers, expect).await;
    let mut phones: Vec<String> = match expect.wallets_of {
        Some(phones) => phones.iter().cloned().collect(),
        None => voucher
            .entries
            .iter()
            .map(|e| e.phone_number.clone())
            .collect(),
    };
    phones.sort();
    let code = expect.code.to_owned();
    let fetched = Fetched {
        vouchers: vec![voucher],
        wallets: read_wallets(client, wallets, phones).await,
        seen: expect
            .acknowledged
            .iter()
            .map(|(phone, id)| Seen {
                code: code.clone(),
                phone: phone.clone(),
                redemption_id: id.clone(),
            })
            .collect(),
        told_redeemed: expect
            .told_redeemed
            .iter()
            .map(|phone| ToldRedeemed {
                code: code.clone(),
                phone: phone.clone(),
            })
            .collect(),
    };
    assert_no_violations(&check(&fetched), &code);
    fetched
        .vouchers
        .into_iter()
        .next()
        .map(|v| v.entries)
        .unwrap_or_default()
}

/// The voucher `expect.code` as the service at `base` serves it: its whole report and
/// its counts.
async fn read_voucher(client: &reqwest::Client, base: &str, expect: &Expect<'_>) -> VoucherReport {
    let code = expect.code;
    let report = report_all(client, base, code).await;
    let entries: Vec<ReportEntry> = report
        .items
        .iter()
        .map(|item| {
            serde_json::from_value(item.clone())
                .unwrap_or_else(|e| panic!("report item of {code} is malformed ({e}): {item}"))
        })
        .collect();
    let counts = voucher(client, base, code).await;
    counts.expect_status_for(200, &format!("voucher {code} from {base}"));
    let count =
        |key: &str| {
            Some(counts.json[key].as_u64().unwrap_or_else(|| {
                panic!("voucher {code}: `{key}` is not a count: {}", counts.text)
            }))
        };
    VoucherReport {
        code: code.to_owned(),
        amount: expect.amount,
        limit: expect.limit,
        total: report.total,
        entries,
        redeemed: count("redeemed"),
        remaining: count("remaining"),
    }
}

/// I5 over the wallets of `phones` (read from `wallets`, spread over them), with the one
/// checker and no voucher: each balance is the sum of its transactions, never below zero.
pub async fn check_wallets(client: &reqwest::Client, wallets: &[String], phones: Vec<String>) {
    let fetched = Fetched {
        wallets: read_wallets(client, wallets, phones).await,
        ..Fetched::default()
    };
    assert_no_violations(&check(&fetched), "the wallets");
}

/// The wallets of `phones`, spread over the services at `urls`, [`WALLETS_IN_FLIGHT`]
/// at once; None for a phone without a profile.
async fn read_wallets(
    client: &reqwest::Client,
    urls: &[String],
    phones: Vec<String>,
) -> HashMap<String, Option<Wallet>> {
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
        .await
}

/// Fails the test naming every violation of I1–I5 found in `what`.
fn assert_no_violations(violations: &[Violation], what: &str) {
    assert!(
        violations.is_empty(),
        "{} violations of I1-I5 for {what}:\n{}",
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
