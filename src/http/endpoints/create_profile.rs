//! `POST /api/profiles`: the operator opens a wallet, with an optional opening
//! balance (201).

use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::ADMIN;
use crate::http::dto::{integer_of, parse_json};
use crate::http::openapi::{body_link, json_response, phone_link, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::domain::{PhoneNumber, Wallet};
use voucherd_core::error::{Error, ErrorCode};
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::CreateProfile,
    label: Route::create_profile,
    method: Method::POST,
    path: &[L("api"), L("profiles")],
    access: ADMIN,
    reads_body: true,
    serves: Serves::Wallets,
};

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

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(
        StatusCode::CREATED,
        async { handle(service, &inputs.body?).await }.await,
    )
}

/// Parses the body and opens the wallet with its opening balance.
pub async fn handle(service: &Service, body: &[u8]) -> Outcome<ProfileCreatedResponse> {
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

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "createProfile",
        summary: "Open a wallet",
        description: "A non-zero opening balance is recorded as a transaction with reference \
            `opening_balance`.",
        parameters: vec![],
        request_body: Some(components.schema::<CreateProfileBody>()),
        responses: vec![(
            201,
            json_response("Opened.", components.schema::<ProfileCreatedResponse>())
                .link("getProfile", phone_link())
                .link(
                    "createTransaction",
                    body_link("createTransaction", "phone_number"),
                )
                .build(),
        )],
        errors: &[
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::InvalidAmount,
            ErrorCode::ProfileExists,
            ErrorCode::Overloaded,
        ],
        reaches_ledger: true,
    }
}
