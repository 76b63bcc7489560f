//! `GET /openapi.json`: the contract ([`crate::http::openapi`]), byte for byte
//! `docs/openapi.json`, generated once and served by every role.

use std::sync::OnceLock;

use utoipa::openapi::schema::{ObjectBuilder, Type};
use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::{Endpoint, Inputs};
use crate::http::auth::Access;
use crate::http::openapi::{json_response, to_json, Components, Described};
use crate::http::routes::RouteSpec;
use crate::http::routes::Segment::Literal as L;
use voucherd_metrics::Route;
use voucherd_service::role::Serves;
use voucherd_service::service::Service;

/// Its row of the route table.
pub static ROUTE: RouteSpec = RouteSpec {
    endpoint: Endpoint::OpenApi,
    label: Route::openapi,
    method: Method::GET,
    path: &[L("openapi.json")],
    access: Access::Public,
    reads_body: false,
    serves: Serves::Any,
};

/// The contract, generated once.
pub(super) async fn serve(_service: &Service, _inputs: Inputs) -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let json: &'static str = JSON.get_or_init(to_json);
    let mut response = json.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

/// Its operation in the contract, beyond what its route row says.
pub(crate) fn describe(_components: &mut Components) -> Described {
    Described {
        operation_id: "openapi",
        summary: "This contract (OpenAPI 3.1)",
        description: "The same document as `docs/openapi.json`, on every role.",
        parameters: vec![],
        request_body: None,
        responses: vec![(
            200,
            json_response(
                "The OpenAPI document.",
                ObjectBuilder::new().schema_type(Type::Object).into(),
            )
            .build(),
        )],
        errors: &[],
        reaches_ledger: false,
    }
}
