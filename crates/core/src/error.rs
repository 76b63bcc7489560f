//! The service's closed error enum, and the closed set of stable codes a client
//! can be answered with.
//!
//! Backends and actors turn whatever went wrong into one of the [`Error`]
//! variants; each has its [`ErrorCode`] ([`Error::code`]), and each code its
//! HTTP status and meaning. The edge (`http::error`) builds the response from
//! them, and the OpenAPI contract lists [`ErrorCode::ALL`]. Variants that carry
//! a `cause` keep it for the log only: it never reaches a client.

/// Declares [`ErrorCode`] from one table: a row per code with its variant, its
/// wire code, its HTTP status and its meaning, so nothing is kept in step by
/// hand.
macro_rules! error_codes {
    ($($variant:ident => $code:literal, $status:literal, $when:literal;)+) => {
        /// Every stable error code the API can answer, in the contract's order:
        /// by status, then as the table lists them. Clients match on the wire
        /// code ([`ErrorCode::as_str`]), never on the message.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $code, "` (", stringify!($status), "): ", $when, ".")]
                $variant,
            )+
        }

        impl ErrorCode {
            /// Every code, in the table's order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The stable snake_case code of the JSON body's `error` field.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The HTTP status this code is answered with.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)+
                }
            }

            /// When a client gets this code, as the contract describes it.
            pub const fn when(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $when,)+
                }
            }
        }
    };
}

error_codes! {
    MalformedJson => "malformed_json", 400, "the body is not valid JSON";
    InvalidBody => "invalid_body", 400,
        "a field has the wrong type, is missing or is unknown (or a reference is too long)";
    InvalidCode => "invalid_code", 400,
        "a voucher code outside `[A-Za-z0-9_-]{1,64}`, or none given";
    InvalidPhoneNumber => "invalid_phone_number", 400,
        "not E.164: `+` then 8 to 15 digits, the first not 0";
    InvalidAmount => "invalid_amount", 400,
        "an amount that is fractional, out of range or 0, or a balance that would overflow";
    InvalidLimit => "invalid_limit", 400, "a voucher limit outside 1..=10000000";
    InvalidWindow => "invalid_window", 400,
        "`starts_at`/`expires_at` not RFC 3339 (years 0000 to 9999), or `starts_at` not before `expires_at`";
    InvalidPagination => "invalid_pagination", 400,
        "`limit` outside 1..=1000 or `offset` outside 0..=1000000";
    InvalidCursor => "invalid_cursor", 400,
        "a cursor that is not a `next_cursor` this service returned";
    InvalidIdempotencyKey => "invalid_idempotency_key", 400,
        "an Idempotency-Key that is empty, over 255 bytes or not printable ASCII";
    InvalidReference => "invalid_reference", 400,
        "a credit whose reference is not `voucher:<code>`";
    ReservedReference => "reserved_reference", 400,
        "a transaction reference `voucher:…` or `opening_balance` (any letter case): the service writes those";
    InvalidRequest => "invalid_request", 400,
        "the query string, a header or the body could not be read";
    AmbiguousFraming => "ambiguous_framing", 400,
        "both `Content-Length` and `Transfer-Encoding` (a request-smuggling vector); the connection is closed";
    Unauthorized => "unauthorized", 401,
        "no valid `Authorization: Bearer <token>` for this route; nothing the request carries is read or applied";
    VoucherNotActive => "voucher_not_active", 403,
        "redeem before `starts_at` or from `expires_at` on";
    VoucherNotFound => "voucher_not_found", 404, "no voucher with this code";
    RedemptionNotFound => "redemption_not_found", 404,
        "this phone number holds no redemption of this voucher";
    ProfileNotFound => "profile_not_found", 404, "no wallet for this phone number";
    NotFound => "not_found", 404,
        "no route has this path (an empty path parameter is no path parameter)";
    MethodNotAllowed => "method_not_allowed", 405,
        "the path is a route's, the method is not (`Allow` lists those it takes)";
    RequestTimeout => "request_timeout", 408,
        "the body did not arrive within the body timeout (10 s by default)";
    VoucherExists => "voucher_exists", 409, "a voucher with this code exists";
    ProfileExists => "profile_exists", 409, "a wallet for this phone number exists";
    AlreadyRedeemed => "already_redeemed", 409,
        "this phone number already redeemed this voucher (a 202 pending included)";
    InsufficientFunds => "insufficient_funds", 409,
        "the debit would take the balance below zero; nothing changed";
    IdempotencyKeyReused => "idempotency_key_reused", 409,
        "this Idempotency-Key was used for another request (another phone, amount or reference)";
    CreditRefused => "credit_refused", 409,
        "the wallet refused this redemption's credit for good (e.g. the balance would overflow): in split mode the redemption is void and its slot free again; in one process nothing was redeemed";
    VoucherExhausted => "voucher_exhausted", 410, "every slot of this voucher is taken";
    PayloadTooLarge => "payload_too_large", 413, "a body over 16 KiB";
    UriTooLong => "uri_too_long", 414, "path and query over 2 KiB";
    NotServedHere => "not_served_here", 421,
        "the route belongs to the other service of a split deployment (`--role voucher` or `--role wallet`)";
    RateLimited => "rate_limited", 429,
        "this phone number redeemed more often than its rate (5/s, burst 10 by default); `Retry-After` says when to try again";
    Overloaded => "overloaded", 429,
        "the instance's admission limit is reached; retry after `Retry-After`";
    HeadersTooLarge => "headers_too_large", 431,
        "more than 64 header fields or over 8 KiB of headers";
    Internal => "internal", 500,
        "the ledger failed and the outcome is unknown (opaque; the cause is logged)";
    Unavailable => "unavailable", 503,
        "a bounded internal wait ran out, a component is restarting, or the ledger cannot write now; nothing refused was applied; retry after `Retry-After`";
}

/// Everything an operation of voucherd can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Input failed validation; `code` is a stable machine-readable reason.
    #[error("{message}")]
    Invalid {
        /// Stable error code, whose status the answer takes (every validation
        /// code is a 400), e.g. [`ErrorCode::InvalidPhoneNumber`].
        code: ErrorCode,
        /// Human-readable explanation, safe to show.
        message: String,
    },
    #[error("voucher not found")]
    VoucherNotFound,
    #[error("a voucher with this code already exists")]
    VoucherExists,
    #[error("this user already redeemed this voucher")]
    AlreadyRedeemed,
    #[error("all of this voucher's redemptions are taken")]
    VoucherExhausted,
    #[error("this voucher is not active now")]
    VoucherNotActive,
    #[error("redemption not found")]
    RedemptionNotFound,
    #[error("profile not found")]
    ProfileNotFound,
    #[error("a profile with this phone number already exists")]
    ProfileExists,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("this idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The wallet refused this credit before, for good: a credit's answer is
    /// final, so the same id is refused again.
    #[error("this credit was refused: {reason}")]
    CreditRefused { reason: String },
    /// The ledger refused a slot another claim already holds. Internal: a voucher
    /// shard retries with another slot and never shows this to a client.
    #[error("slot already taken")]
    SlotTaken,
    /// The phone number made more redemption attempts than its rate allows.
    #[error("rate limited")]
    RateLimited {
        /// Whole seconds until the next attempt is allowed (at least 1).
        retry_after_secs: u64,
    },
    /// An admission limit was reached; the client should retry later.
    #[error("overloaded")]
    Overloaded,
    /// A bounded wait ran out or a component is restarting; retry later.
    #[error("temporarily unavailable: {cause}")]
    Unavailable { cause: String },
    /// The ledger cannot write now (a full disk, an I/O error) and applied
    /// nothing of this write; it recovers by itself, so retry later.
    #[error("not written: {cause}")]
    NotWritten { cause: String },
    /// The ledger failed; the outcome of a write is unknown to the caller.
    #[error("storage failure: {cause}")]
    Storage { cause: String },
}

impl Error {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            cause: cause.to_string(),
        }
    }

    pub fn not_written(cause: impl std::fmt::Display) -> Self {
        Error::NotWritten {
            cause: cause.to_string(),
        }
    }

    pub fn storage(cause: impl std::fmt::Display) -> Self {
        Error::Storage {
            cause: cause.to_string(),
        }
    }

    /// The code a client is answered with. A slot taken never reaches one (a
    /// voucher shard retries); should it, it is a retryable `unavailable`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Invalid { code, .. } => *code,
            Error::VoucherNotFound => ErrorCode::VoucherNotFound,
            Error::VoucherExists => ErrorCode::VoucherExists,
            Error::AlreadyRedeemed => ErrorCode::AlreadyRedeemed,
            Error::VoucherExhausted => ErrorCode::VoucherExhausted,
            Error::VoucherNotActive => ErrorCode::VoucherNotActive,
            Error::RedemptionNotFound => ErrorCode::RedemptionNotFound,
            Error::ProfileNotFound => ErrorCode::ProfileNotFound,
            Error::ProfileExists => ErrorCode::ProfileExists,
            Error::InsufficientFunds => ErrorCode::InsufficientFunds,
            Error::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Error::CreditRefused { .. } => ErrorCode::CreditRefused,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::Overloaded => ErrorCode::Overloaded,
            Error::SlotTaken | Error::Unavailable { .. } | Error::NotWritten { .. } => {
                ErrorCode::Unavailable
            }
            Error::Storage { .. } => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::ErrorCode;

    /// Names every variant without a wildcard: a new code does not compile
    /// until it is here, and the test below then insists it is in `ALL`.
    fn every_variant() -> Vec<ErrorCode> {
        let variants = [
            ErrorCode::MalformedJson,
            ErrorCode::InvalidBody,
            ErrorCode::InvalidCode,
            ErrorCode::InvalidPhoneNumber,
            ErrorCode::InvalidAmount,
            ErrorCode::InvalidLimit,
            ErrorCode::InvalidWindow,
            ErrorCode::InvalidPagination,
            ErrorCode::InvalidCursor,
            ErrorCode::InvalidIdempotencyKey,
            ErrorCode::InvalidReference,
            ErrorCode::ReservedReference,
            ErrorCode::InvalidRequest,
            ErrorCode::AmbiguousFraming,
            ErrorCode::Unauthorized,
            ErrorCode::VoucherNotActive,
            ErrorCode::VoucherNotFound,
            ErrorCode::RedemptionNotFound,
            ErrorCode::ProfileNotFound,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::RequestTimeout,
            ErrorCode::VoucherExists,
            ErrorCode::ProfileExists,
            ErrorCode::AlreadyRedeemed,
            ErrorCode::InsufficientFunds,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::CreditRefused,
            ErrorCode::VoucherExhausted,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UriTooLong,
            ErrorCode::NotServedHere,
            ErrorCode::RateLimited,
            ErrorCode::Overloaded,
            ErrorCode::HeadersTooLarge,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
        ];
        for variant in variants {
            match variant {
                ErrorCode::MalformedJson
                | ErrorCode::InvalidBody
                | ErrorCode::InvalidCode
                | ErrorCode::InvalidPhoneNumber
                | ErrorCode::InvalidAmount
                | ErrorCode::InvalidLimit
                | ErrorCode::InvalidWindow
                | ErrorCode::InvalidPagination
                | ErrorCode::InvalidCursor
                | ErrorCode::InvalidIdempotencyKey
                | ErrorCode::InvalidReference
                | ErrorCode::ReservedReference
                | ErrorCode::InvalidRequest
                | ErrorCode::AmbiguousFraming
                | ErrorCode::Unauthorized
                | ErrorCode::VoucherNotActive
                | ErrorCode::VoucherNotFound
                | ErrorCode::RedemptionNotFound
                | ErrorCode::ProfileNotFound
                | ErrorCode::NotFound
                | ErrorCode::MethodNotAllowed
                | ErrorCode::RequestTimeout
                | ErrorCode::VoucherExists
                | ErrorCode::ProfileExists
                | ErrorCode::AlreadyRedeemed
                | ErrorCode::InsufficientFunds
                | ErrorCode::IdempotencyKeyReused
                | ErrorCode::CreditRefused
                | ErrorCode::VoucherExhausted
                | ErrorCode::PayloadTooLarge
                | ErrorCode::UriTooLong
                | ErrorCode::NotServedHere
                | ErrorCode::RateLimited
                | ErrorCode::Overloaded
                | ErrorCode::HeadersTooLarge
                | ErrorCode::Internal
                | ErrorCode::Unavailable => {}
            }
        }
        variants.to_vec()
    }

    #[test]
    fn all_lists_every_variant_once() {
        let variants = every_variant();
        for variant in &variants {
            assert_eq!(
                ErrorCode::ALL
                    .iter()
                    .filter(|listed| *listed == variant)
                    .count(),
                1,
                "{variant:?} is in ALL once"
            );
        }
        assert_eq!(ErrorCode::ALL.len(), variants.len());
    }

    #[test]
    fn every_code_has_a_distinct_snake_case_wire_code() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let wire = code.as_str();
            assert!(seen.insert(wire), "{wire} is given twice");
            assert!(
                !wire.is_empty() && wire.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{wire} is snake_case"
            );
            assert!(!code.when().is_empty(), "{wire} says when");
        }
    }

    #[test]
    fn all_is_ordered_by_status_and_every_status_is_an_error() {
        let statuses: Vec<u16> = ErrorCode::ALL.iter().map(|code| code.status()).collect();
        assert!(
            statuses.windows(2).all(|pair| pair[0] <= pair[1]),
            "{statuses:?}"
        );
        assert!(statuses.iter().all(|status| (400..600).contains(status)));
    }
}
