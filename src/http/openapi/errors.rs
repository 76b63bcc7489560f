//! The error side of the contract: every stable error code with its status
//! and meaning, which codes a route can answer, and their responses.

use super::*;

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

pub(super) fn error_code(code: &str) -> Option<&'static ErrorCode> {
    ERROR_CODES.iter().find(|known| known.code == code)
}

/// The response of one error status with its codes. A status with one code is
/// a shared component named after it.
pub(super) fn error_response(status: u16, codes: &[&'static str]) -> Response {
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
