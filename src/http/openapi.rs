//! The OpenAPI 3.1 contract of the HTTP API, generated from the code.
//!
//! Every operation is built from a row of the one route table
//! ([`routes::ROUTES`]): its method, its path (with the table's parameter
//! names), its tag (the service that answers it), its security (the route's
//! access rule) and the error responses the edge gives every route of its kind
//! (401 for a token-guarded route, 408 and 413 for one that reads a body, 421
//! for a route of one service). What only the endpoint knows (its bodies, its
//! query and header parameters, its own error codes) comes from an exhaustive
//! `match` on [`Endpoint`], so a new route cannot be served without being
//! described. Request and response bodies are the DTOs' derived schemas; the
//! rules serde cannot see (patterns, ranges) are in [`schemas`], checked
//! against the validators by the tests.
//!
//! The contract is committed as `docs/openapi.json` (a test fails when it
//! differs from what the code generates; `voucherd openapi > docs/openapi.json`
//! regenerates it) and served at `GET /openapi.json`, byte for byte the same.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, Parameter, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder,
    PathItem, Paths, Ref, RefOr, Required, Response, ResponseBuilder,
};
use utoipa::ToSchema;
use warp::http::{header, HeaderValue, Method, StatusCode};
use warp::Reply;

use super::auth::{Access, Principal};
use super::dto;
use super::error::ErrorBody;
use super::routes::{Endpoint, RouteSpec, Segment, ROUTES};
use voucherd_core::error::ErrorCode;
use voucherd_service::role::Serves;

mod errors;

pub use errors::error_codes_of;
use errors::error_response;

/// The security scheme of the admin token.
pub const ADMIN_SCHEME: &str = "admin_token";
/// The security scheme of the service token.
pub const SERVICE_SCHEME: &str = "service_token";

/// What only an endpoint knows about itself.
struct Described {
    operation_id: &'static str,
    summary: &'static str,
    description: &'static str,
    /// Query and header parameters (path parameters come from the route table).
    parameters: Vec<Parameter>,
    request_body: Option<RefOr<Schema>>,
    /// Success responses by status.
    responses: Vec<(u16, Response)>,
    /// The endpoint's own error codes; the route table adds the edge's.
    errors: &'static [ErrorCode],
    /// Whether it reaches the ledger or an actor, and so may answer 503 and 500.
    reaches_ledger: bool,
}

/// Describes an endpoint. Exhaustive: a new endpoint does not compile until it
/// is described.
fn describe(endpoint: Endpoint) -> Described {
    use Endpoint as E;
    let none: &'static [ErrorCode] = &[];
    match endpoint {
        E::Redeem => Described {
            operation_id: "redeemVoucher",
            summary: "Redeem a voucher: credit the phone number's wallet",
            description: "Claims one of the voucher's slots for this phone number and credits its wallet \
                with the voucher's amount, exactly once. 200: the credit landed (`status: credited`, with the \
                balance). 202 (split mode only): the slot is the user's but the credit was not confirmed within \
                the credit deadline (`status: pending`); it lands exactly once, and the status lookup tells \
                when. Either way the redemption id is UUIDv5 of (code, phone), the same on every retry. \
                Redeeming again answers 409 `already_redeemed`.",
            parameters: vec![],
            request_body: Some(schema_ref::<dto::RedeemBody>()),
            responses: vec![
                (
                    200,
                    json_response(
                        "Redeemed and credited.",
                        redemption_with_status("credited", true),
                    )
                    .link("getRedemption", redemption_link()),
                ),
                (
                    202,
                    json_response(
                        "Split mode: redeemed, the credit is on its way (poll the status lookup).",
                        redemption_with_status("pending", false),
                    )
                    .link("getRedemption", redemption_link()),
                ),
            ]
            .into_iter()
            .map(|(status, builder)| (status, builder.build()))
            .collect(),
            errors: &[
                ErrorCode::InvalidCode,
                ErrorCode::InvalidPhoneNumber,
                ErrorCode::VoucherNotActive,
                ErrorCode::VoucherNotFound,
                ErrorCode::AlreadyRedeemed,
                ErrorCode::CreditRefused,
                ErrorCode::VoucherExhausted,
                ErrorCode::RateLimited,
                ErrorCode::Overloaded,
            ],
            reaches_ledger: true,
        },
        E::CreateVoucher => Described {
            operation_id: "createVoucher",
            summary: "Create a voucher",
            description: "A voucher credits `amount` to each of the first `limit` phone numbers that redeem \
                it, within its optional window.",
            parameters: vec![],
            request_body: Some(schema_ref::<dto::CreateVoucherBody>()),
            responses: vec![(
                201,
                json_response("Created.", schema_ref::<dto::VoucherResponse>())
                    .link("getVoucher", code_link("getVoucher"))
                    .link("getVoucherByQuery", code_link("getVoucherByQuery"))
                    .link("getReport", code_link("getReport"))
                    .link("redeemVoucher", body_link("redeemVoucher", "code"))
                    .build(),
            )],
            errors: &[
                ErrorCode::InvalidCode,
                ErrorCode::InvalidAmount,
                ErrorCode::InvalidLimit,
                ErrorCode::InvalidWindow,
                ErrorCode::VoucherExists,
            ],
            reaches_ledger: true,
        },
        E::VoucherByQuery => Described {
            operation_id: "getVoucherByQuery",
            summary: "Read a voucher by a query parameter",
            description: "The same answer as `GET /api/vouchers/{code}`.",
            parameters: vec![query("code", "The voucher code.", true, schemas::code())],
            request_body: None,
            responses: vec![voucher_read()],
            errors: &[ErrorCode::InvalidCode, ErrorCode::VoucherNotFound],
            reaches_ledger: true,
        },
        E::Report => Described {
            operation_id: "getReport",
            summary: "Who redeemed a voucher, in winning order, paged",
            description: "Ordered by slot (winning order). `next_cursor` is null on the last page; pass it \
                back as `cursor` for the next page (`offset` then skips within what follows it). For the \
                seed's client the same fields (`code`, `limit`, `offset`, `cursor`) may instead come as a \
                JSON body on this GET (query fields win; an unknown field is 400 `invalid_body`).",
            parameters: [
                vec![query("code", "The voucher code.", true, schemas::code())],
                page_parameters(),
            ]
            .concat(),
            request_body: None,
            responses: vec![(
                200,
                json_response("A page of winners.", schema_ref::<dto::ReportResponse>()).build(),
            )],
            errors: &[
                ErrorCode::InvalidCode,
                ErrorCode::InvalidPagination,
                ErrorCode::InvalidCursor,
                ErrorCode::MalformedJson,
                ErrorCode::InvalidBody,
                ErrorCode::VoucherNotFound,
            ],
            reaches_ledger: true,
        },
        E::VoucherByPath => Described {
            operation_id: "getVoucher",
            summary: "Read a voucher",
            description: "The voucher with its live counts. The codes `redeem` and `report` are other routes \
                here: read such a voucher with `GET /api/vouchers?code=`.",
            parameters: vec![],
            request_body: None,
            responses: vec![voucher_read()],
            errors: &[ErrorCode::InvalidCode, ErrorCode::VoucherNotFound, ErrorCode::NotFound],
            reaches_ledger: true,
        },
        E::Redemption => Described {
            operation_id: "getRedemption",
            summary: "The status of one redemption",
            description: "For a client whose redeem timed out or answered 202: did it go through, and is it \
                credited? `void`: the wallet refused the credit for good and the slot was released.",
            parameters: vec![],
            request_body: None,
            responses: vec![(
                200,
                json_response("The redemption.", schema_ref::<dto::RedemptionResponse>()).build(),
            )],
            errors: &[
                ErrorCode::InvalidCode,
                ErrorCode::InvalidPhoneNumber,
                ErrorCode::RedemptionNotFound,
                ErrorCode::NotFound,
            ],
            reaches_ledger: true,
        },
        E::CreateProfile => Described {
            operation_id: "createProfile",
            summary: "Open a wallet",
            description: "A non-zero opening balance is recorded as a transaction with reference \
                `opening_balance`.",
            parameters: vec![],
            request_body: Some(schema_ref::<dto::CreateProfileBody>()),
            responses: vec![(
                201,
                json_response("Opened.", schema_ref::<dto::ProfileCreatedResponse>())
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
        },
        E::Profile => Described {
            operation_id: "getProfile",
            summary: "A wallet's balance and transactions, newest first, paged",
            description: "`+` in the phone number may be percent-encoded (`%2B`).",
            parameters: page_parameters(),
            request_body: None,
            responses: vec![(
                200,
                json_response("The wallet.", schema_ref::<dto::ProfileResponse>()).build(),
            )],
            errors: &[
                ErrorCode::InvalidPhoneNumber,
                ErrorCode::InvalidPagination,
                ErrorCode::InvalidCursor,
                ErrorCode::ProfileNotFound,
                ErrorCode::NotFound,
            ],
            reaches_ledger: true,
        },
        E::Transaction => Described {
            operation_id: "createTransaction",
            summary: "Credit or debit a wallet",
            description: "A positive amount credits (opening the wallet if missing), a negative one debits; \
                a debit below zero is 409 `insufficient_funds` and changes nothing. An Idempotency-Key binds \
                the whole request, whatever the phone: the same key with the same phone, amount and \
                reference answers the first transaction again (same `id`) and changes nothing; with another \
                phone, amount or reference it is 409 `idempotency_key_reused`.",
            parameters: vec![ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes a retry safe: one key names one request, for the whole service.",
                ))
                .schema(Some(schemas::idempotency_key()))
                .build()],
            request_body: Some(schema_ref::<dto::TransactionBody>()),
            responses: vec![(
                200,
                json_response(
                    "Applied (or, for a repeated Idempotency-Key, applied before).",
                    schema_ref::<dto::TransactionResponse>(),
                )
                .link("getProfile", phone_link())
                .build(),
            )],
            errors: &[
                ErrorCode::InvalidPhoneNumber,
                ErrorCode::InvalidAmount,
                ErrorCode::InvalidIdempotencyKey,
                ErrorCode::ReservedReference,
                ErrorCode::InsufficientFunds,
                ErrorCode::IdempotencyKeyReused,
                ErrorCode::Overloaded,
            ],
            reaches_ledger: true,
        },
        E::Credits => Described {
            operation_id: "applyCredits",
            summary: "Split mode: the voucher service's credits (service token only)",
            description: "1 to 64 credits, each applied at most once by its id (a replay answers the first \
                outcome); a refusal is final; `unknown` (overload, the store unavailable) means ask again. \
                Credits open the wallet if needed. Results come in request order.",
            parameters: vec![],
            request_body: Some(schema_ref::<dto::CreditBatch>()),
            responses: vec![(
                200,
                json_response("One result per credit.", schema_ref::<dto::CreditResults>()).build(),
            )],
            errors: &[
                ErrorCode::InvalidPhoneNumber,
                ErrorCode::InvalidAmount,
                ErrorCode::InvalidReference,
                ErrorCode::InvalidCode,
            ],
            reaches_ledger: false,
        },
        E::Healthz => Described {
            operation_id: "healthz",
            summary: "Liveness",
            description: "200 `{\"status\": \"ok\"}` while the process runs.",
            parameters: vec![],
            request_body: None,
            responses: vec![(
                200,
                json_response("Alive.", schema_ref::<dto::StatusResponse>()).build(),
            )],
            errors: none,
            reaches_ledger: false,
        },
        E::Readyz => Described {
            operation_id: "readyz",
            summary: "Readiness",
            description: "503 while the instance should get no traffic, with every reason that holds.",
            parameters: vec![],
            request_body: None,
            responses: vec![
                (
                    200,
                    json_response("Ready.", schema_ref::<dto::StatusResponse>()).build(),
                ),
                (
                    503,
                    json_response("Not ready.", schema_ref::<dto::NotReadyResponse>()).build(),
                ),
            ],
            errors: none,
            reaches_ledger: false,
        },
        E::Metrics => Described {
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
            errors: none,
            reaches_ledger: false,
        },
        E::OpenApi => Described {
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
            errors: none,
            reaches_ledger: false,
        },
    }
}

fn voucher_read() -> (u16, Response) {
    (
        200,
        json_response("The voucher.", schema_ref::<dto::VoucherResponse>()).build(),
    )
}

/// The redemption schema with its `status` fixed, and `balance` required when
/// the credit landed.
fn redemption_with_status(status: &str, with_balance: bool) -> RefOr<Schema> {
    let mut fixed = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([status])),
        )
        .required("status");
    if with_balance {
        fixed = fixed.required("balance");
    }
    let fixed_status = AllOfBuilder::new()
        .item(schema_ref::<dto::RedemptionResponse>())
        .item(fixed)
        .build();
    RefOr::T(Schema::AllOf(fixed_status))
}

fn code_link(operation_id: &str) -> utoipa::openapi::link::Link {
    LinkBuilder::new()
        .operation_id(operation_id)
        .parameter("code", "$response.body#/code")
        .description("The voucher just created.")
        .build()
}

/// A link whose request body takes `field` from this response (the rest of the
/// body is the client's).
fn body_link(operation_id: &str, field: &str) -> utoipa::openapi::link::Link {
    LinkBuilder::new()
        .operation_id(operation_id)
        .request_body(Some(
            serde_json::json!({ field: format!("$response.body#/{field}") }),
        ))
        .description(format!("`{field}` from this response."))
        .build()
}

fn redemption_link() -> utoipa::openapi::link::Link {
    LinkBuilder::new()
        .operation_id("getRedemption")
        .parameter("code", "$response.body#/code")
        .parameter("phone", "$response.body#/phone_number")
        .description("This redemption's status.")
        .build()
}

fn phone_link() -> utoipa::openapi::link::Link {
    LinkBuilder::new()
        .operation_id("getProfile")
        .parameter("phone", "$response.body#/phone_number")
        .description("This wallet.")
        .build()
}

fn schema_ref<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn json_response(description: &str, schema: RefOr<Schema>) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new().schema(Some(schema)).build(),
    )
}

/// The paging parameters of the report and the wallet (`limit`, `offset`, `cursor`).
fn page_parameters() -> Vec<Parameter> {
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

fn query(name: &str, description: &str, required: bool, schema: Schema) -> Parameter {
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

fn operation(spec: &RouteSpec, components: &mut BTreeMap<String, Response>) -> Operation {
    let described = describe(spec.endpoint);
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
    for code in error_codes_of(spec) {
        by_status.entry(code.status()).or_default().push(code);
    }
    for (status, codes) in by_status {
        let response = error_response(status, &codes);
        let response: RefOr<Response> = match codes.as_slice() {
            [single] => {
                components.insert(single.as_str().to_owned(), response);
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
    let mut responses = BTreeMap::new();
    for spec in &ROUTES {
        let item = PathItem::new(http_method(&spec.method), operation(spec, &mut responses));
        let template = path_template(spec.path);
        match paths.paths.get_mut(&template) {
            Some(existing) => existing.merge_operations(item),
            None => {
                paths.paths.insert(template, item);
            }
        }
    }
    let mut schemas = Vec::new();
    register::<ErrorBody>(&mut schemas);
    register::<dto::CreateVoucherBody>(&mut schemas);
    register::<dto::VoucherResponse>(&mut schemas);
    register::<dto::RedeemBody>(&mut schemas);
    register::<dto::RedemptionResponse>(&mut schemas);
    register::<dto::ReportResponse>(&mut schemas);
    register::<dto::CreateProfileBody>(&mut schemas);
    register::<dto::ProfileCreatedResponse>(&mut schemas);
    register::<dto::ProfileResponse>(&mut schemas);
    register::<dto::TransactionBody>(&mut schemas);
    register::<dto::TransactionResponse>(&mut schemas);
    register::<dto::CreditBatch>(&mut schemas);
    register::<dto::CreditResults>(&mut schemas);
    register::<dto::StatusResponse>(&mut schemas);
    register::<dto::NotReadyResponse>(&mut schemas);
    let bearer = |description: &str| {
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build(),
        )
    };
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .responses_from_iter(responses)
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

/// `GET /openapi.json`: the contract, generated once.
pub fn response() -> warp::reply::Response {
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

pub mod schemas;

#[cfg(test)]
mod tests;
