//! `GET /api/vouchers/{code}`: a voucher with its live counts.

use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs, Outcome};
use crate::http::auth::Access;
use crate::http::dto::{code_in_path, VoucherResponse};
use crate::http::openapi::{voucher_read, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::{Literal as L, Param as P};
use voucherd_core::error::ErrorCode;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::VoucherByPath,
    label: Route::get_voucher,
    method: Method::GET,
    path: &[L("api"), L("vouchers"), P("code")],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Vouchers,
};

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, inputs: Inputs) -> Response {
    respond(StatusCode::OK, handle(service, inputs.params.get(0)).await)
}

/// Reads the voucher of the path's code.
pub async fn handle(service: &Service, code: &str) -> Outcome<VoucherResponse> {
    Ok(service.voucher(code_in_path(code)?).await?.into())
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "getVoucher",
        summary: "Read a voucher",
        description:
            "The voucher with its live counts. The codes `redeem` and `report` are other routes \
            here: read such a voucher with `GET /api/vouchers?code=`.",
        parameters: vec![],
        request_body: None,
        responses: vec![voucher_read(components)],
        errors: &[
            ErrorCode::InvalidCode,
            ErrorCode::VoucherNotFound,
            ErrorCode::NotFound,
        ],
        reaches_ledger: true,
    }
}
