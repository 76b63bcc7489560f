//! `POST /api/vouchers`: the operator creates a voucher (201 with its view).

use serde::Deserialize;
use serde_json::Number;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::ADMIN;
use crate::http::dto::{integer_of, parse_json, VoucherResponse};
use crate::http::openapi::{body_link, json_response, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{Timestamp, Voucher, VoucherCode};
use voucherd_core::error::{Error, ErrorCode, Result};
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::CreateVoucher,
    label: Route::create_voucher,
    method: Method::POST,
    path: &[L("api"), L("vouchers")],
    access: ADMIN,
    reads_body: true,
    serves: Serves::Vouchers,
};

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

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(
        StatusCode::CREATED,
        async { handle(service, &inputs.body?).await }.await,
    )
}

/// Parses the body and creates the voucher.
pub async fn handle(service: &Service, body: &[u8]) -> Outcome<VoucherResponse> {
    let body: CreateVoucherBody = parse_json(body)?;
    let voucher = body.into_voucher(service.now())?;
    Ok(service.create_voucher(voucher).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "createVoucher",
        summary: "Create a voucher",
        description:
            "A voucher credits `amount` to each of the first `limit` phone numbers that redeem \
            it, within its optional window.",
        parameters: vec![],
        request_body: Some(components.schema::<CreateVoucherBody>()),
        responses: vec![(
            201,
            json_response("Created.", components.schema::<VoucherResponse>())
                .link("getVoucher", code_link("getVoucher"))
                .link("getVoucherByQuery", code_link("getVoucherByQuery"))
                .link("getReport", code_link("getReport"))
                .link("redeemVoucher", body_link("redeemVoucher", "code"))
                .build(),
        )],
        errors: &[
            ErrorCode::InvalidCode,
            ErrorCode::InvalidAmount,
            ErrorCode::InvalidLimit,
            ErrorCode::InvalidWindow,
            ErrorCode::VoucherExists,
        ],
        reaches_ledger: true,
    }
}

fn code_link(operation_id: &str) -> Link {
    LinkBuilder::new()
        .operation_id(operation_id)
        .parameter("code", "$response.body#/code")
        .description("The voucher just created.")
        .build()
}
