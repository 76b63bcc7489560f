//! The one mapping from errors to HTTP: each error's stable code (whose status
//! it answers with, see [`ErrorCode`]) and a JSON body `{"error": code,
//! "message": text}`. 5xx bodies are opaque; their cause goes to the log.

use std::borrow::Cow;
use std::convert::Infallible;

use serde::Serialize;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Rejection, Reply};

use uuid::Uuid;
use voucherd_core::domain::RedemptionStatus;
use voucherd_core::error::{Error, ErrorCode};

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
    /// A redeem by a phone that holds a redemption of the voucher: 409
    /// `already_redeemed` naming that redemption, so a client whose first answer
    /// was lost learns from its retry that it won (and whether it is credited).
    HoldsRedemption {
        redemption_id: Uuid,
        status: Option<RedemptionStatus>,
    },
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
    /// `already_redeemed` only: the redemption the phone holds (UUIDv5 of code and
    /// phone, the id a successful redeem answered).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    redemption_id: Option<Uuid>,
    /// `already_redeemed` only, when known: that redemption's status (`pending` or
    /// `credited`), as the status lookup would answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    status: Option<&'static str>,
}

impl ApiError {
    /// The stable code this error is answered with; its status is the code's.
    pub(super) fn code(&self) -> ErrorCode {
        match self {
            ApiError::Domain(error) => error.code(),
            ApiError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            ApiError::NotFound => ErrorCode::NotFound,
            ApiError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            ApiError::Unauthorized => ErrorCode::Unauthorized,
            ApiError::BodyTimeout => ErrorCode::RequestTimeout,
            ApiError::UriTooLong => ErrorCode::UriTooLong,
            ApiError::HeadersTooLarge => ErrorCode::HeadersTooLarge,
            ApiError::AmbiguousFraming => ErrorCode::AmbiguousFraming,
            ApiError::NotServedHere(_) => ErrorCode::NotServedHere,
            ApiError::HoldsRedemption { .. } => ErrorCode::AlreadyRedeemed,
        }
    }

    /// The status of [`ApiError::code`].
    pub(super) fn status(&self) -> StatusCode {
        // Every status of the code table is a valid one (a test holds them to
        // it); the fallback only keeps this path free of a panic.
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The body's human text: a validation error's message or a domain error's
    /// own text; a fixed one for the edge's answers, for the admission refusals
    /// (429) and for 5xx, whose cause goes to the log only.
    pub(super) fn message(&self) -> Cow<'_, str> {
        use Error as E;
        let text = match self {
            ApiError::PayloadTooLarge => "the request body is larger than 16 KiB",
            ApiError::NotFound => "no such route",
            ApiError::Unauthorized => "this route needs a valid token: Authorization: Bearer <token>",
            ApiError::BodyTimeout => "the request body did not arrive in time",
            ApiError::UriTooLong => "the request target is too long",
            ApiError::HeadersTooLarge => "the request has too many or too large header fields",
            ApiError::AmbiguousFraming => {
                "Content-Length and Transfer-Encoding must not be sent together"
            }
            ApiError::NotServedHere(voucherd_service::role::Serves::Wallets) => {
                "this is the voucher service; profiles, transactions and credits are served by the wallet service"
            }
            ApiError::NotServedHere(_) => {
                "this is the wallet service; vouchers and redemptions are served by the voucher service"
            }
            ApiError::MethodNotAllowed(_) => "this route does not accept this method",
            ApiError::HoldsRedemption { .. } => return Cow::Owned(Error::AlreadyRedeemed.to_string()),
            ApiError::Domain(error) => match error {
                E::Invalid { message, .. } => return Cow::Borrowed(message.as_str()),
                E::RateLimited { .. } => {
                    "too many redemptions for this phone number; retry after the time in Retry-After"
                }
                E::Overloaded => "too many requests in flight; retry shortly",
                E::SlotTaken | E::Unavailable { .. } | E::NotWritten { .. } => {
                    "temporarily unavailable; retry shortly"
                }
                E::Storage { .. } => "internal error",
                E::VoucherNotFound
                | E::RedemptionNotFound
                | E::ProfileNotFound
                | E::VoucherExists
                | E::ProfileExists
                | E::AlreadyRedeemed
                | E::InsufficientFunds
                | E::IdempotencyKeyReused
                | E::CreditRefused { .. }
                | E::VoucherExhausted
                | E::VoucherNotActive => return Cow::Owned(error.to_string()),
            },
        };
        Cow::Borrowed(text)
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // 503s are expected under overload and while leases move between
        // instances; they are counted by status in the metrics, not logged each.
        if let ApiError::Domain(cause) = &self {
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(status = status.as_u16(), %cause, "request failed");
            } else if status.is_server_error() {
                tracing::debug!(status = status.as_u16(), %cause, "request not served");
            }
        }
        let (redemption_id, redemption_status) = match &self {
            ApiError::HoldsRedemption {
                redemption_id,
                status,
            } => (Some(*redemption_id), status.map(RedemptionStatus::as_str)),
            _ => (None, None),
        };
        let body = ErrorBody {
            error: self.code().as_str(),
            message: self.message(),
            redemption_id,
            status: redemption_status,
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
            ErrorCode::InvalidRequest,
            "the request could not be read",
        ))
    };
    Ok(error.into_response())
}
