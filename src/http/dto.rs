//! Request and response bodies, and their conversion to and from domain values.
//!
//! Numbers arrive as raw JSON numbers so that a fractional amount or an
//! out-of-range limit gets its own error code instead of a generic type error.

use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::domain::{
    redemption_id, PageRequest, Redemption, ReportEntry, Timestamp, Voucher, VoucherCode,
    VoucherStatus, Wallet, WalletTransaction,
};
use crate::error::{Error, Result};
use crate::limits::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_PAGE_OFFSET};
use crate::service::Report;

/// Parses a JSON body, telling broken JSON apart from well-formed JSON of the wrong shape.
///
/// serde stops at the first problem, which may be a type error before a syntax
/// error further on; only on failure is the body re-read for syntax alone, so the
/// common path parses once.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|error| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(broken) => Error::invalid(
                "malformed_json",
                format!("the body is not valid JSON: {broken}"),
            ),
            Ok(_) => Error::invalid("invalid_body", error.to_string()),
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVoucherBody {
    pub code: String,
    pub amount: Number,
    pub limit: Number,
    pub starts_at: Option<String>,
    pub expires_at: Option<String>,
}

impl CreateVoucherBody {
    pub fn into_voucher(self, now: Timestamp) -> Result<Voucher> {
        let code = VoucherCode::parse(&self.code)?;
        let amount = self.amount.as_i64().ok_or_else(|| {
            Error::invalid(
                "invalid_amount",
                "amount must be a positive integer of minor units",
            )
        })?;
        let limit = self
            .limit
            .as_u64()
            .and_then(|l| u32::try_from(l).ok())
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_limit",
                    "limit must be an integer between 1 and 10000000",
                )
            })?;
        let starts_at = self
            .starts_at
            .as_deref()
            .map(|t| Timestamp::parse_rfc3339(t, "invalid_window"))
            .transpose()?;
        let expires_at = self
            .expires_at
            .as_deref()
            .map(|t| Timestamp::parse_rfc3339(t, "invalid_window"))
            .transpose()?;
        Voucher::new(code, amount, limit, starts_at, expires_at, now)
    }
}

/// Borrows from the request body: the redeem path is the hottest, and these
/// strings need no copy (they are copied only if they contain escapes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemBody<'a> {
    #[serde(borrow)]
    pub phone_number: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub code: std::borrow::Cow<'a, str>,
}

/// The seed's report request, sent as a JSON body on GET.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    pub code: Option<String>,
    pub limit: Option<Number>,
    pub offset: Option<Number>,
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProfileBody {
    pub phone_number: String,
    #[serde(default)]
    pub balance: Option<Number>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    pub phone_number: String,
    pub amount: Number,
    pub reference: Option<String>,
}

/// Reads `limit`, `offset` and `cursor` as the query string or a body gave them.
pub fn page_request(
    limit: Option<&str>,
    offset: Option<&str>,
    cursor: Option<&str>,
) -> Result<PageRequest> {
    let invalid = || {
        Error::invalid(
            "invalid_pagination",
            format!("limit must be 1..={MAX_PAGE_LIMIT} and offset 0..={MAX_PAGE_OFFSET}"),
        )
    };
    let limit = match limit {
        None => DEFAULT_PAGE_LIMIT,
        Some(raw) => raw.parse::<u32>().map_err(|_| invalid())?,
    };
    let offset = match offset {
        None => 0,
        Some(raw) => raw.parse::<u32>().map_err(|_| invalid())?,
    };
    if !(1..=MAX_PAGE_LIMIT).contains(&limit) || offset > MAX_PAGE_OFFSET {
        return Err(invalid());
    }
    let cursor = cursor
        .filter(|c| !c.is_empty())
        .map(|raw| {
            raw.parse::<u64>().map_err(|_| {
                Error::invalid(
                    "invalid_cursor",
                    "cursor must be a next_cursor this service returned",
                )
            })
        })
        .transpose()?;
    Ok(PageRequest {
        limit,
        offset,
        cursor,
    })
}

fn rfc3339(t: Option<Timestamp>) -> Option<String> {
    t.map(Timestamp::to_rfc3339)
}

#[derive(Debug, Serialize)]
pub struct VoucherResponse {
    pub code: String,
    pub amount: i64,
    pub limit: u32,
    pub redeemed: u32,
    pub remaining: u32,
    pub starts_at: Option<String>,
    pub expires_at: Option<String>,
    pub created_at: String,
}

impl From<VoucherStatus> for VoucherResponse {
    fn from(status: VoucherStatus) -> Self {
        let v = status.voucher;
        Self {
            code: v.code.to_string(),
            amount: v.amount,
            limit: v.limit,
            redeemed: status.redeemed,
            remaining: v.limit.saturating_sub(status.redeemed),
            starts_at: rfc3339(v.starts_at),
            expires_at: rfc3339(v.expires_at),
            created_at: v.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize)]
/// A redemption: the redeem's answer (200 `credited`, or 202 `pending`: the
/// credit has not been confirmed yet and the status lookup tells when it is)
/// and the status lookup's (`pending`, `credited` or `void`).
pub struct RedemptionResponse {
    pub redemption_id: String,
    pub status: &'static str,
    pub code: String,
    pub phone_number: String,
    pub amount: i64,
    pub redeemed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balance: Option<i64>,
}

impl From<Redemption> for RedemptionResponse {
    fn from(r: Redemption) -> Self {
        Self {
            redemption_id: r.id.to_string(),
            status: r.status.as_str(),
            code: r.code.to_string(),
            phone_number: r.phone.to_string(),
            amount: r.amount,
            redeemed_at: r.redeemed_at.to_rfc3339(),
            balance: r.balance,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReportItem {
    pub redemption_id: String,
    /// `pending` or `credited` (a void redemption left the report).
    pub status: &'static str,
    pub phone_number: String,
    pub redeemed_at: String,
}

#[derive(Debug, Serialize)]
pub struct ReportResponse {
    pub code: String,
    pub total: u32,
    pub length: usize,
    pub redemptions: Vec<ReportItem>,
    pub next_cursor: Option<String>,
}

impl From<Report> for ReportResponse {
    fn from(report: Report) -> Self {
        let redemptions: Vec<ReportItem> = report
            .page
            .items
            .into_iter()
            .map(
                |ReportEntry {
                     phone,
                     redeemed_at,
                     status,
                     ..
                 }| ReportItem {
                    redemption_id: redemption_id(&report.code, phone).to_string(),
                    status: status.as_str(),
                    phone_number: phone.to_string(),
                    redeemed_at: redeemed_at.to_rfc3339(),
                },
            )
            .collect();
        Self {
            code: report.code.to_string(),
            total: report.total,
            length: redemptions.len(),
            redemptions,
            next_cursor: report.page.next_cursor.map(|c| c.to_string()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ProfileCreatedResponse {
    pub phone_number: String,
    pub balance: i64,
    pub created_at: String,
}

impl From<Wallet> for ProfileCreatedResponse {
    fn from(w: Wallet) -> Self {
        Self {
            phone_number: w.phone.to_string(),
            balance: w.balance,
            created_at: w.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TransactionItem {
    pub id: String,
    pub amount: i64,
    pub reference: String,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct ProfileResponse {
    pub phone_number: String,
    pub balance: i64,
    pub created_at: String,
    pub transactions: Vec<TransactionItem>,
    pub next_cursor: Option<String>,
}

impl ProfileResponse {
    pub fn new(wallet: Wallet, page: crate::domain::Page<WalletTransaction>) -> Self {
        Self {
            phone_number: wallet.phone.to_string(),
            balance: wallet.balance,
            created_at: wallet.created_at.to_rfc3339(),
            transactions: page
                .items
                .into_iter()
                .map(|t| TransactionItem {
                    id: t.id.to_string(),
                    amount: t.amount,
                    reference: t.reference,
                    created_at: t.created_at.to_rfc3339(),
                })
                .collect(),
            next_cursor: page.next_cursor.map(|c| c.to_string()),
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TransactionResponse {
    pub id: String,
    pub phone_number: String,
    pub amount: i64,
    pub balance: i64,
    pub reference: String,
    pub created_at: String,
}

impl From<WalletTransaction> for TransactionResponse {
    fn from(t: WalletTransaction) -> Self {
        Self {
            id: t.id.to_string(),
            phone_number: t.phone.to_string(),
            amount: t.amount,
            balance: t.balance_after,
            reference: t.reference,
            created_at: t.created_at.to_rfc3339(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StatusResponse {
    pub status: &'static str,
}
