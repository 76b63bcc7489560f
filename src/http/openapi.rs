//! The OpenAPI 3.1 contract of the HTTP API, generated from the code.
//!
//! Every operation is built from a row of the one route table
//! ([`endpoints::ALL`]): its method, its path (with the table's parameter
//! names), its tag (the service that answers it), its security (the route's
//! access rule) and the error responses the edge gives every route of its kind
//! (401 for a token-guarded route, 408 and 413 for one that reads a body, 421
//! for a route of one service). What only the endpoint knows (its bodies, its
//! query and header parameters, its own error codes) is the `Described` its
//! module returns (`endpoints::describe`, exhaustive), so a new route cannot
//! be served without being described. Request and response bodies are the
//! DTOs' derived schemas, held in the components as the operations name them;
//! the rules serde cannot see (patterns, ranges) are in [`schemas`], checked
//! against the validators by the tests. This module holds what the
//! descriptions share: the response, parameter and link builders.
//!
//! The contract is committed as `docs/openapi.json` (a test fails when it
//! differs from what the code generates; `voucherd openapi > docs/openapi.json`
//! regenerates it) and served at `GET /openapi.json`, byte for byte the same.

use std::collections::BTreeMap;

use utoipa::openapi::link::{Link, LinkBuilder};
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder,
    PathItem, Paths, Ref, RefOr, Required, Response, ResponseBuilder,
};
use utoipa::ToSchema;
use warp::http::Method;

use super::auth::{Access, Principal};
use super::dto::VoucherResponse;
use super::endpoints::{self, ALL};
use super::error::ErrorBody;
use super::routes::{RouteSpec, Segment};
use voucherd_core::error::ErrorCode;
use voucherd_service::role::Serves;

mod errors;

pub use errors::error_codes_of;
use errors::{error_codes, error_response};

/// The security scheme of the admin token.
pub const ADMIN_SCHEME: &str = "admin_token";
/// The security scheme of the service token.
pub const SERVICE_SCHEME: &str = "service_token";

/// What only an endpoint knows about itself (its module's `describe`).
pub(crate) struct Described {
    pub(crate) operation_id: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) description: &'static str,
    /// Query and header parameters (path parameters come from the route table).
    pub(crate) parameters: Vec<Parameter>,
    pub(crate) request_body: Option<RefOr<Schema>>,
    /// Success responses by status.
    pub(crate) responses: Vec<(u16, Response)>,
    /// The endpoint's own error codes; the route table adds the edge's.
    pub(crate) errors: &'static [ErrorCode],
    /// Whether it reaches the ledger or an actor, and so may answer 503 and 500.
    pub(crate) reaches_ledger: bool,
}

/// The document's shared components, collected as the operations are built:
/// the schemas the descriptions name (with those they refer to), and the
/// responses of error statuses that carry one code.
#[derive(Default)]
pub(crate) struct Components {
    schemas: Vec<(String, RefOr<Schema>)>,
    responses: BTreeMap<String, Response>,
}

impl Components {
    /// A reference to `T`'s schema, which the components then hold.
    pub(crate) fn schema<T: ToSchema>(&mut self) -> RefOr<Schema> {
        register::<T>(&mut self.schemas);
        schema_ref::<T>()
    }
}

/// The 200 of a voucher read.
pub(crate) fn voucher_read(components: &mut Components) -> (u16, Response) {
    (
        200,
        json_response("The voucher.", components.schema::<VoucherResponse>()).build(),
    )
}

/// A link whose request body takes `field` from this response (the rest of the
/// body is the client's).
pub(crate) fn body_link(operation_id: &str, field: &str) -> Link {
    LinkBuilder::new()
        .operation_id(operation_id)
        .request_body(Some(
            serde_json::json!({ field: format!("$response.body#/{field}") }),
        ))
        .description(format!("`{field}` from this response."))
        .build()
}

pub(crate) fn phone_link() -> Link {
    LinkBuilder::new()
        .operation_id("getProfile")
        .parameter("phone", "$response.body#/phone_number")
        .description("This wallet.")
        .build()
}

fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

pub(crate) fn json_response(description: &str, schema: RefOr<Schema>) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new().schema(Some(schema)).build(),
    )
}

/// The paging parameters of the report and the wallet (`limit`, `offset`, `cursor`).
pub(crate) fn page_parameters() -> Vec<Parameter> {
    vec![
        query(
            "limit",
            "Items per page (default 100).",
            false,
            schemas::page_limit(),
        ),
        query(
            "offset",
            "Items to skip (after the cursor, if one is given).",
            false,
            schemas::page_offset(),
        ),
        query(
            "cursor",
            "A `next_cursor` from the previous page; empty means the first page.",
            false,
            schemas::cursor(),
        ),
    ]
}

pub(crate) fn query(name: &str, description: &str, required: bool, schema: Schema) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// The route's path as OpenAPI writes it: `/api/vouchers/{code}`.
pub fn path_template(segments: &[Segment]) -> String {
    let mut path = String::new();
    for segment in segments {
        path.push('/');
        match segment {
            Segment::Literal(text) => path.push_str(text),
            Segment::Param(name) => {
                path.push('{');
                path.push_str(name);
                path.push('}');
            }
        }
    }
    path
}

fn path_parameter(name: &str) -> Parameter {
    let (description, schema) = match name {
        "code" => ("The voucher code.", schemas::code()),
        "phone" => (
            "The phone number, E.164 (`+` may be sent as `%2B`).",
            schemas::phone(),
        ),
        // A parameter the contract has no rule for: a test insists there is none.
        _ => ("", ObjectBuilder::new().schema_type(Type::String).into()),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// The tag of a route: the service that answers it.
pub fn tag_of(serves: Serves) -> &'static str {
    match serves {
        Serves::Vouchers => "voucher",
        Serves::Wallets => "wallet",
        Serves::Any => "operations",
    }
}

/// The security requirements of an access rule: none for a public route, one
/// alternative per principal otherwise.
pub fn security_of(access: Access) -> Vec<SecurityRequirement> {
    match access {
        Access::Public => Vec::new(),
        Access::Only(principals) => principals
            .iter()
            .map(|principal| {
                let scheme = match principal {
                    Principal::Admin => ADMIN_SCHEME,
                    Principal::Service => SERVICE_SCHEME,
                };
                SecurityRequirement::new(scheme, Vec::<String>::new())
            })
            .collect(),
    }
}

fn operation(spec: &RouteSpec, components: &mut Components) -> Operation {
    let described = endpoints::describe(spec.endpoint, components);
    let codes = error_codes(spec, &described);
    let mut builder = OperationBuilder::new()
        .operation_id(Some(described.operation_id))
        .summary(Some(described.summary))
        .description(Some(described.description))
        .tag(tag_of(spec.serves));
    for segment in spec.path {
        if let Segment::Param(name) = segment {
            builder = builder.parameter(path_parameter(name));
        }
    }
    for parameter in described.parameters {
        builder = builder.parameter(parameter);
    }
    if let Some(body) = described.request_body {
        builder = builder.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(body)).build(),
                )
                .build(),
        ));
    }
    let security = security_of(spec.access);
    if !security.is_empty() {
        builder = builder.securities(Some(security));
    }
    for (status, response) in described.responses {
        builder = builder.response(status.to_string(), response);
    }
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        by_status.entry(code.status()).or_default().push(code);
    }
    for (status, codes) in by_status {
        let response = error_response(status, &codes);
        let response: RefOr<Response> = match codes.as_slice() {
            [single] => {
                components
                    .responses
                    .insert(single.as_str().to_owned(), response);
                RefOr::Ref(Ref::from_response_name(single.as_str()))
            }
            _ => RefOr::T(response),
        };
        builder = builder.response(status.to_string(), response);
    }
    builder.build()
}

fn http_method(method: &Method) -> HttpMethod {
    match *method {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        Method::HEAD => HttpMethod::Head,
        Method::OPTIONS => HttpMethod::Options,
        Method::TRACE => HttpMethod::Trace,
        _ => HttpMethod::Get,
    }
}

/// Adds `T`'s schema and those it refers to.
fn register<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

const DESCRIPTION: &str = "Flash-crowd voucher redemption with an exactly-once wallet credit. \
Errors are always JSON `{\"error\": \"<stable_code>\", \"message\": \"...\"}`; each response lists the codes \
it can carry. Money is integer minor units; phone numbers are E.164; timestamps RFC 3339 UTC. Bodies are JSON \
(the Content-Type header is not checked), at most 16 KiB, and unknown fields are refused. A path that is a \
route's with another method answers 405 `method_not_allowed` with `Allow`. One binary serves three roles \
(`--role all|voucher|wallet`): `all` serves every route; in a split deployment a route of the other service \
answers 421 `not_served_here` (tags: `voucher`, `wallet`; `operations` on every role). Without a configured \
admin token every route is open (the service then listens on loopback only).";

/// The contract, from the route table.
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    let mut collected = Components::default();
    register::<ErrorBody>(&mut collected.schemas);
    for spec in ALL {
        let item = PathItem::new(http_method(&spec.method), operation(spec, &mut collected));
        let template = path_template(spec.path);
        match paths.paths.get_mut(&template) {
            Some(existing) => existing.merge_operations(item),
            None => {
                paths.paths.insert(template, item);
            }
        }
    }
    let bearer = |description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build(),
        )
    };
    let components = ComponentsBuilder::new()
        .schemas_from_iter(collected.schemas)
        .responses_from_iter(collected.responses)
        .security_scheme(
            ADMIN_SCHEME,
            bearer(
                "The operator's admin token (`--admin-token-file` or `VOUCHERD_ADMIN_TOKEN`). Without a \
                 configured token these routes are open.",
            ),
        )
        .security_scheme(
            SERVICE_SCHEME,
            bearer(
                "The service token between the two services of a split deployment \
                 (`--service-token-file` or `VOUCHERD_SERVICE_TOKEN`): the only key to `/internal/credits`.",
            ),
        )
        .build();
    let tag = |name: &str, description: &str| {
        TagBuilder::new()
            .name(name)
            .description(Some(description))
            .build()
    };
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("voucherd")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(
                    LicenseBuilder::new()
                        .name("Apache-2.0")
                        .identifier(Some("Apache-2.0"))
                        .build(),
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .tags(Some([
            tag(
                "voucher",
                "The voucher service: vouchers, redemptions, reports (`--role all` or `voucher`).",
            ),
            tag(
                "wallet",
                "The wallet service: profiles, transactions, credits (`--role all` or `wallet`).",
            ),
            tag(
                "operations",
                "Health, readiness, metrics and this contract, on every role.",
            ),
        ]))
        .build()
}

/// The contract as committed in `docs/openapi.json` and served: pretty JSON
/// and a final newline.
pub fn to_json() -> String {
    // Serialising a tree of plain values cannot fail; an empty document would
    // fail the committed-file test at once.
    let mut json = document().to_pretty_json().unwrap_or_default();
    json.push('\n');
    json
}

pub mod schemas;

#[cfg(test)]
mod tests;
