//! One plain async function per route: parse, call one service function, map the
//! result. None of them knows about warp, so each is testable without HTTP.

use std::collections::HashMap;

use percent_encoding::percent_decode_str;

use super::dto::{
    integer_of, page_request, parse_json, CreateProfileBody, CreateVoucherBody, CreditBatch,
    CreditItem, CreditResultItem, CreditResults, ProfileCreatedResponse, ProfileResponse,
    RedeemBody, RedemptionResponse, ReportBody, ReportResponse, TransactionBody,
    TransactionResponse, VoucherResponse,
};
use super::error::ApiError;
use voucherd_core::domain::{parse_reference, PhoneNumber, VoucherCode, VOUCHER_REFERENCE_PREFIX};
use voucherd_core::error::{Error, ErrorCode};
use voucherd_core::limits::MAX_CREDITS_PER_CALL;
use voucherd_core::limits::MAX_IDEMPOTENCY_KEY_BYTES;
use voucherd_core::redemption::Credit;
use voucherd_service::service::{Service, TransactionRequest};

type Query = HashMap<String, String>;
type Outcome<T> = Result<T, ApiError>;

/// A path segment, percent-decoded (clients may send `+` as `%2B`).
fn segment(raw: &str, code: ErrorCode) -> Result<String, Error> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::invalid(code, "the path segment is not valid UTF-8"))
}

fn code_in_path(raw: &str) -> Result<VoucherCode, Error> {
    VoucherCode::parse(&segment(raw, ErrorCode::InvalidCode)?)
}

fn phone_in_path(raw: &str) -> Result<PhoneNumber, Error> {
    PhoneNumber::parse(&segment(raw, ErrorCode::InvalidPhoneNumber)?)
}

fn required_code(code: Option<&str>) -> Result<VoucherCode, Error> {
    let code = code.ok_or_else(|| Error::invalid(ErrorCode::InvalidCode, "code is required"))?;
    VoucherCode::parse(code)
}

pub async fn create_voucher(service: &Service, body: &[u8]) -> Outcome<VoucherResponse> {
    let body: CreateVoucherBody = parse_json(body)?;
    let voucher = body.into_voucher(service.now())?;
    Ok(service.create_voucher(voucher).await?.into())
}

pub async fn get_voucher(service: &Service, code: &str) -> Outcome<VoucherResponse> {
    Ok(service.voucher(code_in_path(code)?).await?.into())
}

pub async fn get_voucher_by_query(service: &Service, query: &Query) -> Outcome<VoucherResponse> {
    let code = required_code(query.get("code").map(String::as_str))?;
    Ok(service.voucher(code).await?.into())
}

pub async fn redeem(service: &Service, body: &[u8]) -> Outcome<RedemptionResponse> {
    let body: RedeemBody = parse_json(body)?;
    let code = VoucherCode::parse(&body.code)?;
    let phone = PhoneNumber::parse(&body.phone_number)?;
    Ok(service.redeem(code, phone).await?.into())
}

pub async fn get_redemption(
    service: &Service,
    code: &str,
    phone: &str,
) -> Outcome<RedemptionResponse> {
    let code = code_in_path(code)?;
    let phone = phone_in_path(phone)?;
    Ok(service.redemption(code, phone).await?.into())
}

/// The report reads its fields from the query string, or (as the seed's client
/// does) from a JSON body on the GET; query fields win.
pub async fn report(service: &Service, query: &Query, body: &[u8]) -> Outcome<ReportResponse> {
    let from_body: ReportBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReportBody::default()
    } else {
        parse_json(body)?
    };
    // `5.0` is 5; anything else is read as written, and refused if not a page bound.
    let number = |n: &Option<serde_json::Number>| {
        n.as_ref()
            .map(|n| integer_of(n).map_or_else(|| n.to_string(), |i| i.to_string()))
    };
    let (body_limit, body_offset) = (number(&from_body.limit), number(&from_body.offset));
    let field = |name: &str, fallback: Option<String>| query.get(name).cloned().or(fallback);
    let code = required_code(field("code", from_body.code).as_deref())?;
    let page = page_request(
        field("limit", body_limit).as_deref(),
        field("offset", body_offset).as_deref(),
        field("cursor", from_body.cursor).as_deref(),
    )?;
    Ok(service.report(code, page).await?.into())
}

pub async fn create_profile(service: &Service, body: &[u8]) -> Outcome<ProfileCreatedResponse> {
    let body: CreateProfileBody = parse_json(body)?;
    let phone = PhoneNumber::parse(&body.phone_number)?;
    let opening_balance = match body.balance {
        None => 0,
        Some(balance) => integer_of(&balance).filter(|b| *b >= 0).ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidAmount,
                "balance must be a non-negative integer of minor units",
            )
        })?,
    };
    Ok(service.create_profile(phone, opening_balance).await?.into())
}

pub async fn get_profile(
    service: &Service,
    phone: &str,
    query: &Query,
) -> Outcome<ProfileResponse> {
    let phone = phone_in_path(phone)?;
    let page = page_request(
        query.get("limit").map(String::as_str),
        query.get("offset").map(String::as_str),
        query.get("cursor").map(String::as_str),
    )?;
    let (wallet, transactions) = service.profile(phone, page).await?;
    Ok(ProfileResponse::new(wallet, transactions))
}

pub async fn transaction(
    service: &Service,
    idempotency_key: Option<String>,
    body: &[u8],
) -> Outcome<TransactionResponse> {
    if let Some(key) = &idempotency_key {
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES || !printable {
            return Err(Error::invalid(
                ErrorCode::InvalidIdempotencyKey,
                format!(
                    "Idempotency-Key must be 1..={MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII bytes"
                ),
            )
            .into());
        }
    }
    let body: TransactionBody = parse_json(body)?;
    let phone = PhoneNumber::parse(&body.phone_number)?;
    let amount = integer_of(&body.amount)
        .filter(|a| *a != 0)
        .ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidAmount,
                "amount must be a non-zero integer of minor units",
            )
        })?;
    let reference = parse_reference(body.reference.as_deref().unwrap_or(""))?;
    let request = TransactionRequest {
        phone,
        amount,
        reference,
        idempotency_key,
    };
    Ok(service.transact(request).await?.into())
}

/// The wallet service's credit endpoint, called by the voucher service with
/// its service token: 1 to [`MAX_CREDITS_PER_CALL`] credits, each answered
/// `applied`, `refused` (for good) or `unknown` (ask again).
pub async fn credits(service: &Service, body: &[u8]) -> Outcome<CreditResults> {
    let batch: CreditBatch = parse_json(body)?;
    if batch.credits.is_empty() || batch.credits.len() > MAX_CREDITS_PER_CALL {
        return Err(Error::invalid(
            ErrorCode::InvalidBody,
            format!("credits must hold 1 to {MAX_CREDITS_PER_CALL} credits"),
        )
        .into());
    }
    let now = service.now();
    let credits = batch
        .credits
        .into_iter()
        .map(|item| credit_of(item, now))
        .collect::<Result<Vec<_>, Error>>()?;
    let ids: Vec<_> = credits.iter().map(|credit| credit.id).collect();
    let answers = service.apply_credits(credits).await;
    let results = ids.into_iter().zip(answers);
    let results = results.map(|(id, answer)| CreditResultItem::of(id, answer));
    Ok(CreditResults {
        results: results.collect(),
    })
}

/// A credit as the voucher service sent it: a positive amount under the
/// reserved reference `voucher:<code>`, which only this endpoint accepts.
fn credit_of(item: CreditItem, now: voucherd_core::domain::Timestamp) -> Result<Credit, Error> {
    let phone = PhoneNumber::parse(&item.phone_number)?;
    if item.amount <= 0 {
        return Err(Error::invalid(
            ErrorCode::InvalidAmount,
            "a credit's amount must be positive",
        ));
    }
    let code = item
        .reference
        .strip_prefix(VOUCHER_REFERENCE_PREFIX)
        .ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidReference,
                format!("a credit's reference is {VOUCHER_REFERENCE_PREFIX}<code>"),
            )
        })?;
    VoucherCode::parse(code)?;
    Ok(Credit {
        id: item.id,
        phone,
        amount: item.amount,
        reference: item.reference,
        at: now,
    })
}
