//! `GET /readyz`: readiness, 503 with every reason that holds while the
//! instance should get no traffic, on every role.

use serde::Serialize;
use utoipa::ToSchema;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{respond, Endpoint, Inputs};
use crate::http::auth::Access;
use crate::http::dto::StatusResponse;
use crate::http::openapi::{json_response, schemas, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Readyz,
    label: Route::readyz,
    method: Method::GET,
    path: &[L("readyz")],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Any,
};

/// Why this instance should get no traffic now.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReadyResponse {
    /// Always `not_ready`.
    #[schema(schema_with = schemas::not_ready)]
    pub status: &'static str,
    /// Every reason that holds.
    #[schema(min_items = 1)]
    pub reasons: Vec<voucherd_service::readiness::NotReadyReason>,
}

/// 200 when ready, else 503 with every reason that holds.
pub(super) async fn serve(service: &Service, _inputs: Inputs) -> Response {
    let reasons = service.not_ready_reasons();
    if reasons.is_empty() {
        return respond(StatusCode::OK, Ok(StatusResponse { status: "ready" }));
    }
    let body = NotReadyResponse {
        status: "not_ready",
        reasons,
    };
    respond(StatusCode::SERVICE_UNAVAILABLE, Ok(body))
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(components: &mut Components) -> Described {
    Described {
        operation_id: "readyz",
        summary: "Readiness",
        description: "503 while the instance should get no traffic, with every reason that holds.",
        parameters: vec![],
        request_body: None,
        responses: vec![
            (
                200,
                json_response("Ready.", components.schema::<StatusResponse>()).build(),
            ),
            (
                503,
                json_response("Not ready.", components.schema::<NotReadyResponse>()).build(),
            ),
        ],
        errors: &[],
        reaches_ledger: false,
    }
}
