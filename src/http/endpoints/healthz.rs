//! `GET /healthz`: liveness, 200 while the process runs, on every role.

use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs};
use crate::http::auth::Access;
use crate::http::dto::StatusResponse;
use crate::http::openapi::{json_response, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Healthz,
    label: Route::healthz,
    method: Method::GET,
    path: &[L("healthz")],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Any,
};

/// Answers a request of this route.
pub(super) async fn serve(_service: &Service, _inputs: Inputs) -> Response {
    respond(StatusCode::OK, Ok(StatusResponse { status: "ok" }))
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "healthz",
        summary: "Liveness",
        description: "200 `{\"status\": \"ok\"}` while the process runs.",
        parameters: vec![],
        request_body: None,
        responses: vec![(
            200,
            json_response("Alive.", components.schema::<StatusResponse>()).build(),
        )],
        errors: &[],
        reaches_ledger: false,
    }
}
