//! `GET /api/profiles/{phone}`: a wallet's balance and a page of its
//! transactions, newest first.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome, Query};
use crate::http::auth::ADMIN;
use crate::http::dto::{page_request, phone_in_path};
use crate::http::openapi::{json_response, page_parameters, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::{Literal as L, Param as P};
use voucherd_core::domain::{Wallet, WalletTransaction};
use voucherd_core::error::ErrorCode;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Profile,
    label: Route::get_profile,
    method: Method::GET,
    path: &[L("api"), L("profiles"), P("phone")],
    access: ADMIN,
    reads_body: false,
    serves: Serves::Wallets,
};

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

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(
        StatusCode::OK,
        handle(service, inputs.params.get(0), &inputs.query).await,
    )
}

/// Reads the wallet of the path's phone number and a page of its transactions.
pub async fn handle(service: &Service, phone: &str, query: &Query) -> Outcome<ProfileResponse> {
    let phone = phone_in_path(phone)?;
    let page = page_request(
        query.get("limit").map(String::as_str),
        query.get("offset").map(String::as_str),
        query.get("cursor").map(String::as_str),
    )?;
    let (wallet, transactions) = service.profile(phone, page).await?;
    Ok(ProfileResponse::new(wallet, transactions))
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "getProfile",
        summary: "A wallet's balance and transactions, newest first, paged",
        description: "`+` in the phone number may be percent-encoded (`%2B`).",
        parameters: page_parameters(),
        request_body: None,
        responses: vec![(
            200,
            json_response("The wallet.", components.schema::<ProfileResponse>()).build(),
        )],
        errors: &[
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::InvalidPagination,
            ErrorCode::InvalidCursor,
            ErrorCode::ProfileNotFound,
            ErrorCode::NotFound,
        ],
        reaches_ledger: true,
    }
}
