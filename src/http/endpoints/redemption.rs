//! `GET /api/vouchers/{code}/redemptions/{phone}`: the status of one
//! redemption, for a client whose redeem timed out or answered 202.

use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::Access;
use crate::http::dto::{code_in_path, phone_in_path, RedemptionResponse};
use crate::http::openapi::{json_response, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::{Literal as L, Param as P};
use voucherd_core::error::ErrorCode;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Redemption,
    label: Route::get_redemption,
    method: Method::GET,
    path: &[
        L("api"),
        L("vouchers"),
        P("code"),
        L("redemptions"),
        P("phone"),
    ],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Vouchers,
};

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    let params = &inputs.params;
    respond(
        StatusCode::OK,
        handle(service, params.get(0), params.get(1)).await,
    )
}

/// Reads the redemption of the path's code and phone number.
pub async fn handle(service: &Service, code: &str, phone: &str) -> Outcome<RedemptionResponse> {
    let code = code_in_path(code)?;
    let phone = phone_in_path(phone)?;
    Ok(service.redemption(code, phone).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "getRedemption",
        summary: "The status of one redemption",
        description:
            "For a client whose redeem timed out or answered 202: did it go through, and is it \
            credited? `void`: the wallet refused the credit for good and the slot was released.",
        parameters: vec![],
        request_body: None,
        responses: vec![(
            200,
            json_response("The redemption.", components.schema::<RedemptionResponse>()).build(),
        )],
        errors: &[
            ErrorCode::InvalidCode,
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::RedemptionNotFound,
            ErrorCode::NotFound,
        ],
        reaches_ledger: true,
    }
}
