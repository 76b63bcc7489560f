//! `POST /api/vouchers/redeem`: a phone number redeems a voucher. The route
//! that carries the crowd: its body borrows from the request, and it answers
//! 200 when the credit landed, 202 while it is pending (split mode).

use serde::Deserialize;
use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::Access;
use crate::http::dto::{parse_json, RedemptionResponse};
use crate::http::error::ApiError;
use crate::http::openapi::{json_response, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{PhoneNumber, VoucherCode};
use voucherd_core::error::{Error, ErrorCode};
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Redeem,
    label: Route::redeem,
    method: Method::POST,
    path: &[L("api"), L("vouchers"), L("redeem")],
    access: Access::Public,
    reads_body: true,
    serves: Serves::Vouchers,
};

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

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    redeemed(async { handle(service, &inputs.body?).await }.await)
}

/// Parses the body and redeems the voucher for the phone number.
pub async fn handle(service: &Service, body: &[u8]) -> Outcome<RedemptionResponse> {
    let body: RedeemBody = parse_json(body)?;
    let code = VoucherCode::parse(&body.code)?;
    let phone = PhoneNumber::parse(&body.phone_number)?;
    match service.redeem(code, phone).await {
        Ok(redemption) => Ok(redemption.into()),
        Err(Error::AlreadyRedeemed) => {
            // The code was valid a moment ago; parsing it again keeps the
            // winning path free of a copy.
            let code = VoucherCode::parse(&body.code)?;
            let (redemption_id, status) = service.held_redemption(&code, phone).await;
            Err(ApiError::HoldsRedemption {
                redemption_id,
                status,
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// 200 with the balance when the credit landed, 202 while it is pending.
fn redeemed(outcome: Outcome<RedemptionResponse>) -> Response {
    let status = match &outcome {
        Ok(redemption) if redemption.status == "pending" => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    respond(status, outcome)
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "redeemVoucher",
        summary: "Redeem a voucher: credit the phone number's wallet",
        description: "Claims one of the voucher's slots for this phone number and credits its wallet \
            with the voucher's amount, exactly once. 200: the credit landed (`status: credited`, with the \
            balance). 202 (split mode only): the slot is the user's but the credit was not confirmed within \
            the credit deadline (`status: pending`); it lands exactly once, and the status lookup tells \
            when. Either way the redemption id is UUIDv5 of (code, phone), the same on every retry. \
            Redeeming again answers 409 `already_redeemed` with the `redemption_id` the phone holds and, \
            when known, its `status`: a client whose answer was lost learns from its retry that it won.",
        parameters: vec![],
        request_body: Some(components.schema::<RedeemBody>()),
        responses: vec![
            (
                200,
                json_response(
                    "Redeemed and credited.",
                    redemption_with_status(components, "credited", true),
                )
                .link("getRedemption", redemption_link()),
            ),
            (
                202,
                json_response(
                    "Split mode: redeemed, the credit is on its way (poll the status lookup).",
                    redemption_with_status(components, "pending", false),
                )
                .link("getRedemption", redemption_link()),
            ),
        ]
        .into_iter()
        .map(|(status, builder)| (status, builder.build()))
        .collect(),
        errors: &[
            ErrorCode::InvalidCode,
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::VoucherNotActive,
            ErrorCode::VoucherNotFound,
            ErrorCode::AlreadyRedeemed,
            ErrorCode::CreditRefused,
            ErrorCode::VoucherExhausted,
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
        ],
        reaches_ledger: true,
    }
}

/// The redemption schema with its `status` fixed, and `balance` required when
/// the credit landed.
fn redemption_with_status(
    components: &mut Components,
    status: &str,
    with_balance: bool,
) -> RefOr<Schema> {
    let mut fixed = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([status])),
        )
        .required("status");
    if with_balance {
        fixed = fixed.required("balance");
    }
    let fixed_status = AllOfBuilder::new()
        .item(components.schema::<RedemptionResponse>())
        .item(fixed)
        .build();
    RefOr::T(Schema::AllOf(fixed_status))
}

fn redemption_link() -> Link {
    LinkBuilder::new()
        .operation_id("getRedemption")
        .parameter("code", "$response.body#/code")
        .parameter("phone", "$response.body#/phone_number")
        .description("This redemption's status.")
        .build()
}
