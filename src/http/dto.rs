//! Request and response bodies, and their conversion to and from domain values.
//!
//! Numbers arrive as raw JSON numbers so that a fractional amount or an
//! out-of-range limit gets its own error code instead of a generic type error.
//!
//! Each body derives its OpenAPI schema ([`ToSchema`]) next to the serde shape
//! it describes; the rules serde cannot see (patterns, ranges) are the
//! [`schemas`] of the contract, checked against the validators by its tests.

use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::ToSchema;

use super::openapi::schemas;

use voucherd_core::domain::{
    redemption_id, PageRequest, Redemption, ReportEntry, Timestamp, Voucher, VoucherCode,
    VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, ErrorCode, Result};
use voucherd_core::limits::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_PAGE_OFFSET};
use voucherd_core::redemption::CreditAnswer;
use voucherd_service::service::Report;

/// Parses a JSON body, telling broken JSON apart from well-formed JSON of the wrong shape.
///
/// serde stops at the first problem, which may be a type error before a syntax
/// error further on; only on failure is the body re-read for syntax alone, so the
/// common path parses once.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|error| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Err(broken) => Error::invalid(
                ErrorCode::MalformedJson,
                format!("the body is not valid JSON: {broken}"),
            ),
            Ok(_) => Error::invalid(ErrorCode::InvalidBody, error.to_string()),
        }
    })
}

/// Below this magnitude every integral float is exact (2^53): a JSON number
/// written `5.0` beyond it may already have been rounded by the parser. (Below
/// it the parse is exact because serde_json's `float_roundtrip` is on; its
/// default fast path can land a unit off and make `2251799813685247.0` look
/// fractional.)
const EXACT_FLOAT_INTEGER_BOUND: f64 = 9_007_199_254_740_992.0;

/// The integer a JSON number holds: `5`, or `5.0` (JSON has one number type,
/// and JSON Schema's `integer` takes both), as long as it fits an i64 and, when
/// written as a float, is below 2^53 in magnitude and so exact. Fractional
/// numbers and numbers out of range are `None`.
pub fn integer_of(number: &Number) -> Option<i64> {
    if let Some(integer) = number.as_i64() {
        return Some(integer);
    }
    let float = number.as_f64()?;
    let exact = float.fract() == 0.0 && float.abs() < EXACT_FLOAT_INTEGER_BOUND;
    // In range and integral, so the cast is exact.
    exact.then_some(float as i64)
}

/// Deserialises an i64 as [`integer_of`] reads it (for bodies typed `i64`).
pub fn deserialize_integer<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<i64, D::Error> {
    let number = Number::deserialize(deserializer)?;
    integer_of(&number).ok_or_else(|| {
        serde::de::Error::invalid_value(
            serde::de::Unexpected::Other(&number.to_string()),
            &"an integer",
        )
    })
}

/// A new voucher: its `code`, the `amount` (minor units) each redemption
/// credits, the `limit` of phone numbers that may redeem it, and an optional
/// window: redemptions from `starts_at` and before `expires_at` (`starts_at`
/// must be before `expires_at`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVoucherBody {
    #[schema(schema_with = schemas::code)]
    pub code: String,
    /// Credit per redemption, in minor units.
    #[schema(schema_with = schemas::positive_amount)]
    pub amount: Number,
    /// How many users may redeem it.
    #[schema(schema_with = schemas::voucher_limit)]
    pub limit: Number,
    /// Redemptions before this instant are refused (403 `voucher_not_active`).
    /// Must be before `expires_at` when both are given (400 `invalid_window`).
    #[schema(schema_with = schemas::optional_timestamp)]
    pub starts_at: Option<String>,
    /// Redemptions from this instant on are refused (403 `voucher_not_active`).
    #[schema(schema_with = schemas::optional_timestamp)]
    pub expires_at: Option<String>,
}

impl CreateVoucherBody {
    pub fn into_voucher(self, now: Timestamp) -> Result<Voucher> {
        let code = VoucherCode::parse(&self.code)?;
        let amount = integer_of(&self.amount).ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidAmount,
                "amount must be a positive integer of minor units",
            )
        })?;
        let limit = integer_of(&self.limit)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or_else(|| {
                Error::invalid(
                    ErrorCode::InvalidLimit,
                    "limit must be an integer between 1 and 10000000",
                )
            })?;
        let starts_at = self
            .starts_at
            .as_deref()
            .map(|t| Timestamp::parse_rfc3339(t, ErrorCode::InvalidWindow))
            .transpose()?;
        let expires_at = self
            .expires_at
            .as_deref()
            .map(|t| Timestamp::parse_rfc3339(t, ErrorCode::InvalidWindow))
            .transpose()?;
        Voucher::new(code, amount, limit, starts_at, expires_at, now)
    }
}

/// Borrows from the request body: the redeem path is the hottest, and these
/// strings need no copy (they are copied only if they contain escapes).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A redemption request: which phone number redeems which voucher.")]
pub struct RedeemBody<'a> {
    #[serde(borrow)]
    #[schema(schema_with = schemas::phone)]
    pub phone_number: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    #[schema(schema_with = schemas::code)]
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

/// A new wallet, with an optional opening `balance` in minor units (0 when
/// absent or null; when not 0 it is recorded as a transaction with reference
/// `opening_balance`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProfileBody {
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    /// The opening balance in minor units (0 when absent or null); recorded as a
    /// transaction with reference `opening_balance` when not 0.
    #[serde(default)]
    #[schema(schema_with = schemas::optional_opening_balance)]
    pub balance: Option<Number>,
}

/// A credit (`amount` > 0, opening the wallet if missing) or a debit
/// (`amount` < 0) of a wallet, in minor units, with the client's own optional
/// `reference` (empty when absent; `voucher:…` and `opening_balance`, in any
/// letter case, are the service's own).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionBody {
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    /// Minor units: > 0 credits (opening the wallet if missing), < 0 debits.
    #[schema(schema_with = schemas::non_zero_amount)]
    pub amount: Number,
    /// The client's own reference (empty when absent). `voucher:…` and
    /// `opening_balance`, in any letter case, are the service's own (400
    /// `reserved_reference`).
    #[schema(schema_with = schemas::optional_client_reference)]
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
            ErrorCode::InvalidPagination,
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
                    ErrorCode::InvalidCursor,
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

/// A voucher with its live counts: `redeemed` (pending or credited
/// redemptions) and `remaining` (`limit - redeemed`); `amount` is the credit
/// per redemption in minor units.
#[derive(Debug, Serialize, ToSchema)]
pub struct VoucherResponse {
    #[schema(schema_with = schemas::code)]
    pub code: String,
    /// Credit per redemption, in minor units.
    #[schema(schema_with = schemas::positive_amount)]
    pub amount: i64,
    #[schema(schema_with = schemas::voucher_limit)]
    pub limit: u32,
    /// Redemptions so far (pending or credited).
    #[schema(minimum = 0)]
    pub redeemed: u32,
    /// `limit - redeemed`.
    #[schema(minimum = 0)]
    pub remaining: u32,
    #[schema(schema_with = schemas::optional_timestamp, required = true)]
    pub starts_at: Option<String>,
    #[schema(schema_with = schemas::optional_timestamp, required = true)]
    pub expires_at: Option<String>,
    #[schema(schema_with = schemas::timestamp)]
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

#[derive(Debug, Serialize, ToSchema)]
/// A redemption: the redeem's answer (200 `credited`, or 202 `pending`: the
/// credit has not been confirmed yet and the status lookup tells when it is)
/// and the status lookup's (`pending`, `credited` or `void`).
pub struct RedemptionResponse {
    /// UUIDv5 of (code, phone): the same on every retry, and the id of the
    /// wallet credit.
    #[schema(schema_with = schemas::uuid)]
    pub redemption_id: String,
    #[schema(schema_with = schemas::redemption_status)]
    pub status: &'static str,
    #[schema(schema_with = schemas::code)]
    pub code: String,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    /// The credit, in minor units.
    #[schema(schema_with = schemas::positive_amount)]
    pub amount: i64,
    #[schema(schema_with = schemas::timestamp)]
    pub redeemed_at: String,
    /// The wallet's balance right after the credit: always in the redeem's
    /// 200; in the status lookup once credited, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schemas::balance)]
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

/// One winner in a report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportItem {
    #[schema(schema_with = schemas::uuid)]
    pub redemption_id: String,
    /// `pending` or `credited` (a void redemption left the report).
    #[schema(schema_with = schemas::reported_status)]
    pub status: &'static str,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::timestamp)]
    pub redeemed_at: String,
}

/// A page of a voucher's winners, in winning order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReportResponse {
    #[schema(schema_with = schemas::code)]
    pub code: String,
    /// The voucher's redemption count.
    #[schema(minimum = 0)]
    pub total: u32,
    /// The number of items in this page.
    #[schema(minimum = 0)]
    pub length: usize,
    pub redemptions: Vec<ReportItem>,
    /// Pass it back as `cursor` for the next page; null on the last page.
    #[schema(schema_with = schemas::next_cursor, required = true)]
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

/// A wallet as opened.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileCreatedResponse {
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::balance)]
    pub balance: i64,
    #[schema(schema_with = schemas::timestamp)]
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

/// One transaction of a wallet.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionItem {
    /// A voucher credit's id is its redemption id.
    #[schema(schema_with = schemas::uuid)]
    pub id: String,
    /// Minor units: > 0 a credit, < 0 a debit.
    #[schema(schema_with = schemas::non_zero_amount)]
    pub amount: i64,
    /// `voucher:<code>`, `opening_balance`, or the client's reference.
    pub reference: String,
    #[schema(schema_with = schemas::timestamp)]
    pub created_at: String,
}

/// A wallet's balance and a page of its transactions, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileResponse {
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::balance)]
    pub balance: i64,
    #[schema(schema_with = schemas::timestamp)]
    pub created_at: String,
    pub transactions: Vec<TransactionItem>,
    /// Pass it back as `cursor` for the next page; null on the last page.
    #[schema(schema_with = schemas::next_cursor, required = true)]
    pub next_cursor: Option<String>,
}

impl ProfileResponse {
    pub fn new(wallet: Wallet, page: voucherd_core::domain::Page<WalletTransaction>) -> Self {
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

/// A transaction as applied (or, for a repeated Idempotency-Key, as first applied).
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct TransactionResponse {
    /// Derived from the Idempotency-Key when one was sent, random otherwise.
    #[schema(schema_with = schemas::uuid)]
    pub id: String,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::non_zero_amount)]
    pub amount: i64,
    /// The wallet's balance right after this transaction.
    #[schema(schema_with = schemas::balance)]
    pub balance: i64,
    pub reference: String,
    #[schema(schema_with = schemas::timestamp)]
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

/// Liveness (`ok`) or readiness (`ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    #[schema(value_type = String)]
    pub status: &'static str,
}

/// Why this instance should get no traffic now.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReadyResponse {
    /// Always `not_ready`.
    #[schema(schema_with = schemas::not_ready)]
    pub status: &'static str,
    /// Every reason that holds.
    #[schema(min_items = 1)]
    pub reasons: Vec<voucherd_service::readiness::NotReadyReason>,
}

/// One credit on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditItem {
    /// The redemption id: a credit is applied at most once by its id.
    pub id: uuid::Uuid,
    #[schema(schema_with = schemas::phone)]
    pub phone_number: String,
    #[schema(schema_with = schemas::positive_amount)]
    #[serde(deserialize_with = "deserialize_integer")]
    pub amount: i64,
    /// `voucher:<code>`.
    #[schema(schema_with = schemas::voucher_reference)]
    pub reference: String,
}

/// The body of `POST /internal/credits`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditBatch {
    #[schema(min_items = 1, max_items = 64)]
    pub credits: Vec<CreditItem>,
}

/// The wallet's answer to one credit, in the order of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CreditResultItem {
    /// Applied now or before; the wallet's balance right after it.
    Applied {
        id: uuid::Uuid,
        #[schema(schema_with = schemas::balance)]
        balance: i64,
    },
    /// Refused for good: the same id is refused again.
    Refused { id: uuid::Uuid, reason: String },
    /// Not decided now (overload, the store unavailable): ask again.
    Unknown { id: uuid::Uuid },
}

impl CreditResultItem {
    /// The wallet's answer to credit `id`, on the wire.
    pub fn of(id: uuid::Uuid, answer: CreditAnswer) -> Self {
        match answer {
            CreditAnswer::Applied { balance } => CreditResultItem::Applied { id, balance },
            CreditAnswer::Refused { reason } => CreditResultItem::Refused { id, reason },
            CreditAnswer::Unknown => CreditResultItem::Unknown { id },
        }
    }

    pub fn id(&self) -> uuid::Uuid {
        match self {
            CreditResultItem::Applied { id, .. }
            | CreditResultItem::Refused { id, .. }
            | CreditResultItem::Unknown { id } => *id,
        }
    }

    pub fn into_answer(self) -> CreditAnswer {
        match self {
            CreditResultItem::Applied { balance, .. } => CreditAnswer::Applied { balance },
            CreditResultItem::Refused { reason, .. } => CreditAnswer::Refused { reason },
            CreditResultItem::Unknown { .. } => CreditAnswer::Unknown,
        }
    }
}

/// The response body of `POST /internal/credits`: one result per credit, in
/// request order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreditResults {
    pub results: Vec<CreditResultItem>,
}
