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
//! rules serde cannot see (patterns, ranges) are the [`schemas`] below, checked
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
use crate::role::Serves;
use crate::wallet_client::{CreditBatch, CreditResults};

/// The security scheme of the admin token.
pub const ADMIN_SCHEME: &str = "admin_token";
/// The security scheme of the service token.
pub const SERVICE_SCHEME: &str = "service_token";

/// What a client can be told went wrong: every stable error code, the status it
/// comes with, and when. The one error mapping (`http::error`) decides; this
/// table describes, and the tests hold the two together.
pub struct ErrorCode {
    pub code: &'static str,
    pub status: u16,
    pub when: &'static str,
}

const fn entry(code: &'static str, status: u16, when: &'static str) -> ErrorCode {
    ErrorCode { code, status, when }
}

pub static ERROR_CODES: &[ErrorCode] = &[
    entry("malformed_json", 400, "the body is not valid JSON"),
    entry(
        "invalid_body",
        400,
        "a field has the wrong type, is missing or is unknown (or a reference is too long)",
    ),
    entry(
        "invalid_code",
        400,
        "a voucher code outside `[A-Za-z0-9_-]{1,64}`, or none given",
    ),
    entry(
        "invalid_phone_number",
        400,
        "not E.164: `+` then 8 to 15 digits, the first not 0",
    ),
    entry(
        "invalid_amount",
        400,
        "an amount that is fractional, out of range or 0, or a balance that would overflow",
    ),
    entry("invalid_limit", 400, "a voucher limit outside 1..=10000000"),
    entry(
        "invalid_window",
        400,
        "`starts_at`/`expires_at` not RFC 3339 (years 0000 to 9999), or `starts_at` not before `expires_at`",
    ),
    entry(
        "invalid_pagination",
        400,
        "`limit` outside 1..=1000 or `offset` outside 0..=1000000",
    ),
    entry(
        "invalid_cursor",
        400,
        "a cursor that is not a `next_cursor` this service returned",
    ),
    entry(
        "invalid_idempotency_key",
        400,
        "an Idempotency-Key that is empty, over 255 bytes or not printable ASCII",
    ),
    entry(
        "invalid_reference",
        400,
        "a credit whose reference is not `voucher:<code>`",
    ),
    entry(
        "reserved_reference",
        400,
        "a transaction reference `voucher:…` or `opening_balance` (any letter case): the service writes those",
    ),
    entry(
        "invalid_request",
        400,
        "the query string, a header or the body could not be read",
    ),
    entry(
        "ambiguous_framing",
        400,
        "both `Content-Length` and `Transfer-Encoding` (a request-smuggling vector); the connection is closed",
    ),
    entry(
        "unauthorized",
        401,
        "no valid `Authorization: Bearer <token>` for this route; nothing the request carries is read or applied",
    ),
    entry(
        "voucher_not_active",
        403,
        "redeem before `starts_at` or from `expires_at` on",
    ),
    entry("voucher_not_found", 404, "no voucher with this code"),
    entry(
        "redemption_not_found",
        404,
        "this phone number holds no redemption of this voucher",
    ),
    entry("profile_not_found", 404, "no wallet for this phone number"),
    entry(
        "not_found",
        404,
        "no route has this path (an empty path parameter is no path parameter)",
    ),
    entry(
        "method_not_allowed",
        405,
        "the path is a route's, the method is not (`Allow` lists those it takes)",
    ),
    entry(
        "request_timeout",
        408,
        "the body did not arrive within the body timeout (10 s by default)",
    ),
    entry("voucher_exists", 409, "a voucher with this code exists"),
    entry("profile_exists", 409, "a wallet for this phone number exists"),
    entry("already_redeemed", 409, "this phone number already redeemed this voucher (a 202 pending included)"),
    entry(
        "insufficient_funds",
        409,
        "the debit would take the balance below zero; nothing changed",
    ),
    entry(
        "idempotency_key_reused",
        409,
        "this Idempotency-Key was used for another request (another phone, amount or reference)",
    ),
    entry(
        "credit_refused",
        409,
        "the wallet refused this redemption's credit for good (e.g. the balance would overflow): in split mode the redemption is void and its slot free again; in one process nothing was redeemed",
    ),
    entry("voucher_exhausted", 410, "every slot of this voucher is taken"),
    entry("payload_too_large", 413, "a body over 16 KiB"),
    entry("uri_too_long", 414, "path and query over 2 KiB"),
    entry(
        "not_served_here",
        421,
        "the route belongs to the other service of a split deployment (`--role voucher` or `--role wallet`)",
    ),
    entry(
        "rate_limited",
        429,
        "this phone number redeemed more often than its rate (5/s, burst 10 by default); `Retry-After` says when to try again",
    ),
    entry(
        "overloaded",
        429,
        "the instance's admission limit is reached; retry after `Retry-After`",
    ),
    entry(
        "headers_too_large",
        431,
        "more than 64 header fields or over 8 KiB of headers",
    ),
    entry(
        "internal",
        500,
        "the ledger failed and the outcome is unknown (opaque; the cause is logged)",
    ),
    entry(
        "unavailable",
        503,
        "a bounded internal wait ran out, a component is restarting, or the ledger cannot write now; nothing refused was applied; retry after `Retry-After`",
    ),
];

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
    errors: &'static [&'static str],
    /// Whether it reaches the ledger or an actor, and so may answer 503 and 500.
    reaches_ledger: bool,
}

/// Describes an endpoint. Exhaustive: a new endpoint does not compile until it
/// is described.
fn describe(endpoint: Endpoint) -> Described {
    use Endpoint as E;
    let none: &'static [&'static str] = &[];
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
                "invalid_code",
                "invalid_phone_number",
                "voucher_not_active",
                "voucher_not_found",
                "already_redeemed",
                "credit_refused",
                "voucher_exhausted",
                "rate_limited",
                "overloaded",
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
                "invalid_code",
                "invalid_amount",
                "invalid_limit",
                "invalid_window",
                "voucher_exists",
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
            errors: &["invalid_code", "voucher_not_found"],
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
                "invalid_code",
                "invalid_pagination",
                "invalid_cursor",
                "malformed_json",
                "invalid_body",
                "voucher_not_found",
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
            errors: &["invalid_code", "voucher_not_found", "not_found"],
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
                "invalid_code",
                "invalid_phone_number",
                "redemption_not_found",
                "not_found",
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
                "invalid_phone_number",
                "invalid_amount",
                "profile_exists",
                "overloaded",
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
                "invalid_phone_number",
                "invalid_pagination",
                "invalid_cursor",
                "profile_not_found",
                "not_found",
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
                "invalid_phone_number",
                "invalid_amount",
                "invalid_idempotency_key",
                "reserved_reference",
                "insufficient_funds",
                "idempotency_key_reused",
                "overloaded",
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
            request_body: Some(schema_ref::<CreditBatch>()),
            responses: vec![(
                200,
                json_response("One result per credit.", schema_ref::<CreditResults>()).build(),
            )],
            errors: &[
                "invalid_phone_number",
                "invalid_amount",
                "invalid_reference",
                "invalid_code",
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

/// Every error code a route can answer: the endpoint's own, and what the edge
/// answers every route of its kind.
pub fn error_codes_of(spec: &RouteSpec) -> Vec<&'static str> {
    let described = describe(spec.endpoint);
    let mut codes: Vec<&'static str> = described.errors.to_vec();
    // The query string or a header did not parse; the framing was ambiguous;
    // the target or the head was too large: any route.
    codes.extend(["invalid_request", "ambiguous_framing"]);
    codes.extend(["uri_too_long", "headers_too_large"]);
    if spec.reads_body {
        codes.extend([
            "malformed_json",
            "invalid_body",
            "request_timeout",
            "payload_too_large",
        ]);
    }
    if spec.access != Access::Public {
        codes.push("unauthorized");
    }
    if spec.serves != Serves::Any {
        codes.push("not_served_here");
    }
    if described.reaches_ledger {
        codes.extend(["unavailable", "internal"]);
    }
    let mut unique = Vec::with_capacity(codes.len());
    for code in codes {
        if !unique.contains(&code) {
            unique.push(code);
        }
    }
    unique
}

fn error_code(code: &str) -> Option<&'static ErrorCode> {
    ERROR_CODES.iter().find(|known| known.code == code)
}

/// The response of one error status with its codes. A status with one code is
/// a shared component named after it.
fn error_response(status: u16, codes: &[&'static str]) -> Response {
    let mut description = String::new();
    for code in codes {
        if !description.is_empty() {
            description.push_str("; ");
        }
        let when = error_code(code).map_or("", |known| known.when);
        description.push_str(&format!("`{code}`: {when}"));
    }
    let schema = AllOfBuilder::new()
        .item(schema_ref::<ErrorBody>())
        .item(
            ObjectBuilder::new().schema_type(Type::Object).property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().copied())),
            ),
        )
        .build();
    let mut response = json_response(&description, RefOr::T(Schema::AllOf(schema)));
    let seconds = || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
    };
    match status {
        401 => {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(["Bearer"])),
                    ))
                    .description(Some("Always `Bearer`."))
                    .build(),
            )
        }
        429 | 503 => {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(seconds()))
                    .description(Some("Seconds to wait before trying again."))
                    .build(),
            )
        }
        _ => {}
    }
    response.build()
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
    let mut by_status: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for code in error_codes_of(spec) {
        let status = error_code(code).map_or(500, |known| known.status);
        by_status.entry(status).or_default().push(code);
    }
    for (status, codes) in by_status {
        let response = error_response(status, &codes);
        let response: RefOr<Response> = match codes.as_slice() {
            [single] => {
                components.insert((*single).to_owned(), response);
                RefOr::Ref(Ref::from_response_name(*single))
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
    register::<CreditBatch>(&mut schemas);
    register::<CreditResults>(&mut schemas);
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

/// The rules of values that serde cannot see, as JSON Schema: the DTOs use them
/// through `#[schema(schema_with = ...)]`, the operations for their parameters.
/// Each mirrors a validator in [`crate::domain`] or [`super::dto`]; the tests
/// check the two agree.
pub mod schemas {
    use utoipa::openapi::schema::{
        KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, SchemaType, Type,
    };
    use utoipa::Number;

    use crate::limits::{MAX_PAGE_LIMIT, MAX_PAGE_OFFSET, MAX_VOUCHER_LIMIT};

    /// `VoucherCode::parse`.
    pub const CODE_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
    /// `PhoneNumber::parse`.
    pub const PHONE_PATTERN: &str = "^\\+[1-9][0-9]{7,14}$";
    /// The Idempotency-Key check in `handlers::transaction`.
    pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";
    /// `parse_reference`: at most 128 characters, none a control character, and
    /// not one the service reserves (`voucher:…`, `opening_balance`, any case,
    /// surrounding whitespace ignored).
    pub const CLIENT_REFERENCE_PATTERN: &str = "^(?!\\s*[Vv][Oo][Uu][Cc][Hh][Ee][Rr]:)(?!\\s*[Oo][Pp][Ee][Nn][Ii][Nn][Gg]_[Bb][Aa][Ll][Aa][Nn][Cc][Ee]\\s*$)[^\\u0000-\\u001F\\u007F-\\u009F]{0,128}$";
    /// A credit's reference, `voucher:<code>`.
    pub const VOUCHER_REFERENCE_PATTERN: &str = "^voucher:[A-Za-z0-9_-]{1,64}$";
    /// A page cursor as `page_request` reads it (empty: none).
    pub const CURSOR_PATTERN: &str = "^[0-9]{0,19}$";

    fn string() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String)
    }

    fn nullable(kind: Type) -> SchemaType {
        SchemaType::from_iter([kind, Type::Null])
    }

    fn int64() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
    }

    pub fn code() -> Schema {
        string()
            .pattern(Some(CODE_PATTERN))
            .max_length(Some(64))
            .min_length(Some(1))
            .examples(["GOAL2026"])
            .into()
    }

    pub fn phone() -> Schema {
        string()
            .pattern(Some(PHONE_PATTERN))
            .examples(["+989371209055"])
            .into()
    }

    pub fn uuid() -> Schema {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .into()
    }

    pub fn timestamp() -> Schema {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }

    pub fn optional_timestamp() -> Schema {
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }

    /// A credit: 1..=i64::MAX minor units.
    pub fn positive_amount() -> Schema {
        int64()
            .minimum(Some(Number::Int(1)))
            .maximum(Some(Number::Int(isize::MAX)))
            .into()
    }

    /// A transaction: a credit (> 0) or a debit (< 0), never 0.
    pub fn non_zero_amount() -> Schema {
        OneOfBuilder::new()
            .item(
                int64()
                    .minimum(Some(Number::Int(isize::MIN)))
                    .maximum(Some(Number::Int(-1))),
            )
            .item(positive_amount())
            .into()
    }

    /// A balance: never below zero (I5).
    pub fn balance() -> Schema {
        int64()
            .minimum(Some(Number::Int(0)))
            .maximum(Some(Number::Int(isize::MAX)))
            .into()
    }

    pub fn optional_opening_balance() -> Schema {
        ObjectBuilder::new()
            .schema_type(nullable(Type::Integer))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(Number::Int(0)))
            .maximum(Some(Number::Int(isize::MAX)))
            .into()
    }

    pub fn voucher_limit() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(Number::Int(1)))
            .maximum(Some(Number::UInt(MAX_VOUCHER_LIMIT as usize)))
            .into()
    }

    pub fn page_limit() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(Number::Int(1)))
            .maximum(Some(Number::UInt(MAX_PAGE_LIMIT as usize)))
            .into()
    }

    pub fn page_offset() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(Number::Int(0)))
            .maximum(Some(Number::UInt(MAX_PAGE_OFFSET as usize)))
            .into()
    }

    pub fn cursor() -> Schema {
        string().pattern(Some(CURSOR_PATTERN)).into()
    }

    pub fn next_cursor() -> Schema {
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .pattern(Some("^[0-9]+$"))
            .into()
    }

    pub fn idempotency_key() -> Schema {
        string()
            .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
            .min_length(Some(1))
            .max_length(Some(255))
            .into()
    }

    pub fn optional_client_reference() -> Schema {
        ObjectBuilder::new()
            .schema_type(nullable(Type::String))
            .pattern(Some(CLIENT_REFERENCE_PATTERN))
            .max_length(Some(128))
            .into()
    }

    pub fn voucher_reference() -> Schema {
        string().pattern(Some(VOUCHER_REFERENCE_PATTERN)).into()
    }

    pub fn redemption_status() -> Schema {
        string()
            .enum_values(Some(["pending", "credited", "void"]))
            .into()
    }

    pub fn reported_status() -> Schema {
        string().enum_values(Some(["pending", "credited"])).into()
    }

    pub fn not_ready() -> Schema {
        string().enum_values(Some(["not_ready"])).into()
    }
}

#[cfg(test)]
mod tests;
