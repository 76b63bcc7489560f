//! `GET /metrics`: the Prometheus metrics as OpenMetrics text, with the admin
//! token on the main address (the separate metrics address serves the same
//! `text` without one).

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use warp::http::Method;
use warp::reply::Response;
use warp::Reply;

use super::{Endpoint, Inputs};
use crate::http::auth::ADMIN;
use crate::http::openapi::{Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::Metrics,
    label: Route::metrics,
    method: Method::GET,
    path: &[L("metrics")],
    access: ADMIN,
    reads_body: false,
    serves: Serves::Any,
};

/// Answers a request of this route.
pub(super) async fn serve(service: &Service, _inputs: Inputs) -> Response {
    text(service)
}

/// The metrics, OpenMetrics text.
pub(crate) fn text(service: &Service) -> Response {
    warp::reply::with_header(
        service.metrics_text(),
        "content-type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .into_response()
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(_components: &mut Components) -> Described {
    Described {
        operation_id: "metrics",
        summary: "Prometheus metrics (OpenMetrics text)",
        description: "On the main address with the admin token; `--metrics-listen` serves it on a \
            second address without one.",
        parameters: vec![],
        request_body: None,
        responses: vec![(
            200,
            ResponseBuilder::new()
                .description("The metrics.")
                .content(
                    "application/openmetrics-text",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                        .build(),
                )
                .build(),
        )],
        errors: &[],
        reaches_ledger: false,
    }
}
