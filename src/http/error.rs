//! The one mapping from errors to HTTP: status, stable code, and a JSON body
//! `{"error": code, "message": text}`. 5xx bodies are opaque; their cause goes
//! to the log.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use voucherd_core::error::Error;

/// Everything a request can fail with at the HTTP edge.
#[derive(Debug)]
pub enum ApiError {
    Domain(Error),
    PayloadTooLarge,
    NotFound,
    /// A route's path with a method it does not take; carries the methods it
    /// does take, for the `Allow` header RFC 9110 requires on a 405.
    MethodNotAllowed(String),
    /// No credential, or not one that grants this route.
    Unauthorized,
    /// The body did not arrive within the body timeout.
    BodyTimeout,
    /// The request target is longer than the edge accepts.
    UriTooLong,
    /// Too many header fields, or too many header bytes.
    HeadersTooLarge,
    /// Content-Length and Transfer-Encoding in one request (request smuggling).
    AmbiguousFraming,
    /// The route belongs to the other service of a split deployment.
    NotServedHere(voucherd_service::role::Serves),
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError::Domain(error)
    }
}

/// Every error's body: a stable machine-readable code and a human text.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody<'a> {
    /// Stable code: match on it, never on the message.
    #[schema(value_type = String)]
    error: &'a str,
    /// Human-readable; opaque for 5xx.
    #[schema(value_type = String)]
    message: Cow<'a, str>,
}

impl ApiError {
    pub(super) fn parts(&self) -> (StatusCode, &'static str, Cow<'_, str>) {
        use Error as E;
        let opaque =
            |status, code: &'static str, text: &'static str| (status, code, Cow::Borrowed(text));
        match self {
            ApiError::PayloadTooLarge => opaque(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than 16 KiB",
            ),
            ApiError::NotFound => opaque(StatusCode::NOT_FOUND, "not_found", "no such route"),
            ApiError::Unauthorized => opaque(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs a valid token: Authorization: Bearer <token>",
            ),
            ApiError::BodyTimeout => opaque(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time",
            ),
            ApiError::UriTooLong => opaque(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "the request target is too long",
            ),
            ApiError::HeadersTooLarge => opaque(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request has too many or too large header fields",
            ),
            ApiError::AmbiguousFraming => opaque(
                StatusCode::BAD_REQUEST,
                "ambiguous_framing",
                "Content-Length and Transfer-Encoding must not be sent together",
            ),
            ApiError::NotServedHere(voucherd_service::role::Serves::Wallets) => opaque(
                StatusCode::MISDIRECTED_REQUEST,
                "not_served_here",
                "this is the voucher service; profiles, transactions and credits are served by the wallet service",
            ),
            ApiError::NotServedHere(_) => opaque(
                StatusCode::MISDIRECTED_REQUEST,
                "not_served_here",
                "this is the wallet service; vouchers and redemptions are served by the voucher service",
            ),
            ApiError::MethodNotAllowed(_) => opaque(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept this method",
            ),
            ApiError::Domain(error) => {
                let status = match error {
                    E::Invalid { code, message } => {
                        return (
                            StatusCode::BAD_REQUEST,
                            code,
                            Cow::Borrowed(message.as_str()),
                        )
                    }
                    E::VoucherNotFound => (StatusCode::NOT_FOUND, "voucher_not_found"),
                    E::RedemptionNotFound => (StatusCode::NOT_FOUND, "redemption_not_found"),
                    E::ProfileNotFound => (StatusCode::NOT_FOUND, "profile_not_found"),
                    E::VoucherExists => (StatusCode::CONFLICT, "voucher_exists"),
                    E::ProfileExists => (StatusCode::CONFLICT, "profile_exists"),
                    E::AlreadyRedeemed => (StatusCode::CONFLICT, "already_redeemed"),
                    E::InsufficientFunds => (StatusCode::CONFLICT, "insufficient_funds"),
                    E::IdempotencyKeyReused => (StatusCode::CONFLICT, "idempotency_key_reused"),
                    E::CreditRefused { .. } => (StatusCode::CONFLICT, "credit_refused"),
                    E::VoucherExhausted => (StatusCode::GONE, "voucher_exhausted"),
                    E::VoucherNotActive => (StatusCode::FORBIDDEN, "voucher_not_active"),
                    E::RateLimited { .. } => {
                        return opaque(
                            StatusCode::TOO_MANY_REQUESTS,
                            "rate_limited",
                            "too many redemptions for this phone number; retry after the time in Retry-After",
                        )
                    }
                    E::Overloaded => {
                        return opaque(
                            StatusCode::TOO_MANY_REQUESTS,
                            "overloaded",
                            "too many requests in flight; retry shortly",
                        )
                    }
                    E::SlotTaken | E::Unavailable { .. } | E::NotWritten { .. } => {
                        return opaque(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "unavailable",
                            "temporarily unavailable; retry shortly",
                        )
                    }
                    E::Storage { .. } => {
                        return opaque(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            "internal error",
                        )
                    }
                };
                (status.0, status.1, Cow::Owned(error.to_string()))
            }
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        // 503s are expected under overload and while leases move between
        // instances; they are counted by status in the metrics, not logged each.
        if let ApiError::Domain(cause) = &self {
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(status = status.as_u16(), %cause, "request failed");
            } else if status.is_server_error() {
                tracing::debug!(status = status.as_u16(), %cause, "request not served");
            }
        }
        let body = ErrorBody {
            error: code,
            message,
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), status).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Domain(Error::RateLimited { retry_after_secs }) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ if status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                if let Ok(allow) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, allow);
                }
            }
            _ => {}
        }
        response
    }
}

/// Turns any rejection that slipped past the fallback route into a JSON error,
/// so no request ever gets warp's plain-text answers.
pub async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::NotFound
    } else {
        ApiError::Domain(Error::invalid(
            "invalid_request",
            "the request could not be read",
        ))
    };
    Ok(error.into_response())
}
