//! `GET /api/vouchers?code=`: a voucher read by a query parameter, for the codes
//! that are other routes as a path segment (`redeem`, `report`).

use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome, Query};
use crate::http::auth::Access;
use crate::http::dto::{required_code, VoucherResponse};
use crate::http::openapi::{query, schemas, voucher_read, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_core::error::ErrorCode;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::VoucherByQuery,
    label: Route::get_voucher,
    method: Method::GET,
    path: &[L("api"), L("vouchers")],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Vouchers,
};

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(StatusCode::OK, handle(service, &inputs.query).await)
}

/// Reads the voucher of the `code` query parameter.
pub async fn handle(service: &Service, query: &Query) -> Outcome<VoucherResponse> {
    let code = required_code(query.get("code").map(String::as_str))?;
    Ok(service.voucher(code).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "getVoucherByQuery",
        summary: "Read a voucher by a query parameter",
        description: "The same answer as `GET /api/vouchers/{code}`.",
        parameters: vec![query("code", "The voucher code.", true, schemas::code())],
        request_body: None,
        responses: vec![voucher_read(components)],
        errors: &[ErrorCode::InvalidCode, ErrorCode::VoucherNotFound],
        reaches_ledger: true,
    }
}
