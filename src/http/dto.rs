//! What several endpoints share on the wire: reading a JSON body, JSON
//! numbers, paging and path parameters, and the views of a voucher and of a
//! redemption. The bodies only one endpoint uses live in its module
//! (`http::endpoints`).
//!
//! Numbers arrive as raw JSON numbers so that a fractional amount or an
//! out-of-range limit gets its own error code instead of a generic type error.
//!
//! Each body derives its OpenAPI schema ([`ToSchema`]) next to the serde shape
//! it describes; the rules serde cannot see (patterns, ranges) are the
//! [`schemas`] of the contract, checked against the validators by its tests.

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::ToSchema;

use super::openapi::schemas;

use voucherd_core::domain::{
    PageRequest, PhoneNumber, Redemption, Timestamp, VoucherCode, VoucherStatus,
};
use voucherd_core::error::{Error, ErrorCode, Result};
use voucherd_core::limits::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MAX_PAGE_OFFSET};

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

/// A path segment, percent-decoded (clients may send `+` as `%2B`).
fn segment(raw: &str, code: ErrorCode) -> Result<String> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::invalid(code, "the path segment is not valid UTF-8"))
}

/// The voucher code of a path segment.
pub fn code_in_path(raw: &str) -> Result<VoucherCode> {
    VoucherCode::parse(&segment(raw, ErrorCode::InvalidCode)?)
}

/// The phone number of a path segment.
pub fn phone_in_path(raw: &str) -> Result<PhoneNumber> {
    PhoneNumber::parse(&segment(raw, ErrorCode::InvalidPhoneNumber)?)
}

/// The voucher code of a query or body field that must be there.
pub fn required_code(code: Option<&str>) -> Result<VoucherCode> {
    let code = code.ok_or_else(|| Error::invalid(ErrorCode::InvalidCode, "code is required"))?;
    VoucherCode::parse(code)
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

/// Liveness (`ok`) or readiness (`ready`).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    #[schema(value_type = String)]
    pub status: &'static str,
}
