//! The error side of the contract: which codes a route can answer, and their
//! responses. Every code with its status and meaning is [`ErrorCode`]'s table;
//! the one error mapping (`http::error`) decides which a failure gets, and the
//! tests hold the two together.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{RefOr, Response};

use super::{json_response, schema_ref, Components, Described};
use crate::http::auth::Access;
use crate::http::endpoints;
use crate::http::error::ErrorBody;
use crate::http::routes::RouteSpec;
use voucherd_core::error::ErrorCode;
use voucherd_service::role::Serves;

/// Every error code a route can answer: the endpoint's own, and what the edge
/// answers every route of its kind.
pub fn error_codes_of(spec: &RouteSpec) -> Vec<ErrorCode> {
    let described = endpoints::describe(spec.endpoint, &mut Components::default());
    error_codes(spec, &described)
}

/// [`error_codes_of`] the route `described` describes.
pub(super) fn error_codes(spec: &RouteSpec, described: &Described) -> Vec<ErrorCode> {
    use ErrorCode as C;
    let mut codes: Vec<ErrorCode> = described.errors.to_vec();
    // The query string or a header did not parse; the framing was ambiguous;
    // the target or the head was too large: any route.
    codes.extend([C::InvalidRequest, C::AmbiguousFraming]);
    codes.extend([C::UriTooLong, C::HeadersTooLarge]);
    if spec.reads_body {
        codes.extend([
            C::MalformedJson,
            C::InvalidBody,
            C::RequestTimeout,
            C::PayloadTooLarge,
        ]);
    }
    if spec.access != Access::Public {
        codes.push(C::Unauthorized);
    }
    if spec.serves != Serves::Any {
        codes.push(C::NotServedHere);
    }
    if described.reaches_ledger {
        codes.extend([C::Unavailable, C::Internal]);
    }
    let mut unique = Vec::with_capacity(codes.len());
    for code in codes {
        if !unique.contains(&code) {
            unique.push(code);
        }
    }
    unique
}

/// The response of one error status with its codes. A status with one code is
/// a shared component named after it.
pub(super) fn error_response(status: u16, codes: &[ErrorCode]) -> Response {
    let mut description = String::new();
    for code in codes {
        if !description.is_empty() {
            description.push_str("; ");
        }
        description.push_str(&format!("`{}`: {}", code.as_str(), code.when()));
    }
    let schema = AllOfBuilder::new()
        .item(schema_ref::<ErrorBody>())
        .item(
            ObjectBuilder::new().schema_type(Type::Object).property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().map(|code| code.as_str()))),
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
