//! The HTTP edge: the server loop in [`server`] (connection cap, timeouts, head
//! checks), warp filters that only wire routes to [`handlers`] behind their
//! [`auth`] rule, the bounded body reader, request metrics, and the one error
//! mapping in [`error`].

pub mod auth;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::limits::MAX_BODY_BYTES;
use crate::metrics::Route;
use crate::service::{RequestGuard, Service};
use auth::{Access, AccessPolicy, ADMIN};
use dto::StatusResponse;
use error::ApiError;

type Body = Result<Bytes, ApiError>;
type Query = HashMap<String, String>;
/// Whether the request may use its route: checked before its body is read.
type Gate = Result<(), ApiError>;

/// What the routes need besides the service.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub access: Arc<AccessPolicy>,
    pub body_read_timeout: Duration,
}

/// Every route of the service, with its access rule, request metrics and JSON errors.
pub fn routes(service: Arc<Service>, options: RouteOptions) -> BoxedFilter<(Response,)> {
    let metrics_service = service.clone();
    let tracker = service.clone();
    let observe = warp::log::custom(move |info| {
        let route = Route::classify(info.method().as_str(), info.path());
        metrics_service
            .metrics()
            .observe_request(route, info.status().as_u16(), info.elapsed());
    });
    let with = move || {
        let service = service.clone();
        warp::any().map(move || service.clone())
    };
    let policy = options.access.clone();
    let gate = move |access: Access| access_gate(policy.clone(), access);
    let timeout = options.body_read_timeout;
    let body = {
        let gate = gate.clone();
        move |access: Access| bounded_body(gate(access), timeout)
    };

    let create_voucher = warp::post()
        .and(warp::path!("api" / "vouchers"))
        .and(body(ADMIN))
        .and(with())
        .then(|body: Body, s: Arc<Service>| async move {
            respond(
                StatusCode::CREATED,
                async { handlers::create_voucher(&s, &body?).await }.await,
            )
        })
        .boxed();
    let voucher_by_query = warp::get()
        .and(warp::path!("api" / "vouchers"))
        .and(warp::query::<Query>())
        .and(with())
        .then(|query: Query, s: Arc<Service>| async move {
            respond(
                StatusCode::OK,
                handlers::get_voucher_by_query(&s, &query).await,
            )
        })
        .boxed();
    let redeem = warp::post()
        .and(warp::path!("api" / "vouchers" / "redeem"))
        .and(body(Access::Public))
        .and(with())
        .then(|body: Body, s: Arc<Service>| async move {
            respond(
                StatusCode::OK,
                async { handlers::redeem(&s, &body?).await }.await,
            )
        })
        .boxed();
    let report = warp::get()
        .and(warp::path!("api" / "vouchers" / "report"))
        .and(warp::query::<Query>())
        .and(body(ADMIN))
        .and(with())
        .then(|query: Query, body: Body, s: Arc<Service>| async move {
            respond(
                StatusCode::OK,
                async { handlers::report(&s, &query, &body?).await }.await,
            )
        })
        .boxed();
    let voucher_by_path = warp::get()
        .and(warp::path!("api" / "vouchers" / String))
        .and(with())
        .then(|code: String, s: Arc<Service>| async move {
            respond(StatusCode::OK, handlers::get_voucher(&s, &code).await)
        })
        .boxed();
    let redemption = warp::get()
        .and(warp::path!(
            "api" / "vouchers" / String / "redemptions" / String
        ))
        .and(with())
        .then(|code: String, phone: String, s: Arc<Service>| async move {
            respond(
                StatusCode::OK,
                handlers::get_redemption(&s, &code, &phone).await,
            )
        })
        .boxed();
    let create_profile = warp::post()
        .and(warp::path!("api" / "profiles"))
        .and(body(ADMIN))
        .and(with())
        .then(|body: Body, s: Arc<Service>| async move {
            respond(
                StatusCode::CREATED,
                async { handlers::create_profile(&s, &body?).await }.await,
            )
        })
        .boxed();
    let profile = warp::get()
        .and(warp::path!("api" / "profiles" / String))
        .and(warp::query::<Query>())
        .and(gate(ADMIN))
        .and(with())
        .then(
            |phone: String, query: Query, gate: Gate, s: Arc<Service>| async move {
                respond(
                    StatusCode::OK,
                    async {
                        gate?;
                        handlers::get_profile(&s, &phone, &query).await
                    }
                    .await,
                )
            },
        )
        .boxed();
    let transaction = warp::post()
        .and(warp::path!("api" / "transactions"))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(body(ADMIN))
        .and(with())
        .then(
            |key: Option<String>, body: Body, s: Arc<Service>| async move {
                respond(
                    StatusCode::OK,
                    async { handlers::transaction(&s, key, &body?).await }.await,
                )
            },
        )
        .boxed();
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| respond(StatusCode::OK, Ok(StatusResponse { status: "ok" })))
        .boxed();
    let readyz = warp::get()
        .and(warp::path!("readyz"))
        .and(with())
        .map(|s: Arc<Service>| {
            let reasons = s.not_ready_reasons();
            if reasons.is_empty() {
                respond(StatusCode::OK, Ok(StatusResponse { status: "ready" }))
            } else {
                let body = serde_json::json!({"status": "not_ready", "reasons": reasons});
                let mut response = warp::reply::json(&body).into_response();
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
            }
        })
        .boxed();
    let metrics = warp::get()
        .and(warp::path!("metrics"))
        .and(gate(ADMIN))
        .and(with())
        .map(|gate: Gate, s: Arc<Service>| match gate {
            Ok(()) => metrics_text(&s),
            Err(refused) => refused.into_response(),
        })
        .boxed();

    let tracked = {
        let service = tracker.clone();
        warp::any().map(move || service.track_request())
    };
    let routes = create_voucher
        .or(voucher_by_query)
        .unify()
        .or(redeem)
        .unify()
        .or(report)
        .unify()
        .or(redemption)
        .unify()
        .or(voucher_by_path)
        .unify()
        .or(create_profile)
        .unify()
        .or(profile)
        .unify()
        .or(transaction)
        .unify()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(fallback())
        .unify()
        .recover(error::recover)
        .unify();
    // The guard lives as long as the request's future: shutdown knows when
    // nothing is in flight any more.
    tracked
        .and(routes)
        .map(|guard: RequestGuard, response: Response| {
            drop(guard);
            response
        })
        .with(observe)
        .map(Reply::into_response)
        .boxed()
}

/// The routes of the separate metrics address: `/metrics` without a token (the
/// address is meant for an internal network), 404 for everything else.
pub fn metrics_routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::get()
        .and(warp::path!("metrics"))
        .map(move || metrics_text(&service))
        .or(warp::any().map(|| ApiError::NotFound.into_response()))
        .unify()
        .boxed()
}

fn metrics_text(service: &Service) -> Response {
    warp::reply::with_header(
        service.metrics().encode(),
        "content-type",
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
    .into_response()
}

/// Whether the request's `Authorization` grants `access`; never rejects, so the
/// route answers 401 itself instead of falling through to other routes.
fn access_gate(
    policy: Arc<AccessPolicy>,
    access: Access,
) -> impl Filter<Extract = (Gate,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .map(move |authorization: Option<String>| policy.check(access, authorization.as_deref()))
}

/// Answers what no route took: 404 for an unknown path, 405 for a known path
/// with another method, 400 when a route matched but its query or headers did not parse.
fn fallback() -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .map(|method: warp::http::Method, path: warp::path::FullPath| {
            let known_with = |m: &str| Route::classify(m, path.as_str()) != Route::other;
            let error = if known_with(method.as_str()) {
                ApiError::Domain(crate::error::Error::invalid(
                    "invalid_request",
                    "the request could not be read",
                ))
            } else if ["GET", "POST"].into_iter().any(known_with) {
                ApiError::MethodNotAllowed
            } else {
                ApiError::NotFound
            };
            error.into_response()
        })
        .boxed()
}

fn respond<T: Serialize>(status: StatusCode, outcome: Result<T, ApiError>) -> Response {
    match outcome {
        Ok(body) => warp::reply::with_status(warp::reply::json(&body), status).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The request body, once `gate` lets the request through (a refused request's
/// body is never read), read up to [`MAX_BODY_BYTES`] within `timeout`: a
/// declared or actual larger body is refused without reading it all, a stalled
/// one gets 408. Never rejects; errors travel as values.
fn bounded_body(
    gate: impl Filter<Extract = (Gate,), Error = warp::Rejection> + Clone,
    timeout: Duration,
) -> impl Filter<Extract = (Body,), Error = warp::Rejection> + Clone {
    gate.and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |gate: Gate, declared: Option<u64>, stream| async move {
                gate?;
                if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
                    return Err(ApiError::PayloadTooLarge);
                }
                tokio::time::timeout(timeout, collect_bounded(stream))
                    .await
                    .unwrap_or(Err(ApiError::BodyTimeout))
            },
        )
}

async fn collect_bounded<S, B>(stream: S) -> Body
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let unreadable = || {
        ApiError::Domain(crate::error::Error::invalid(
            "invalid_request",
            "the body could not be read",
        ))
    };
    let mut stream = std::pin::pin!(stream);
    // Bodies this small almost always arrive as one chunk: take it without copying.
    let Some(first) = stream.next().await else {
        return Ok(Bytes::new());
    };
    let mut first = first.map_err(|_| unreadable())?;
    if first.remaining() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    let Some(second) = stream.next().await else {
        return Ok(first.copy_to_bytes(first.remaining()));
    };
    let mut body = BytesMut::with_capacity(MAX_BODY_BYTES.min(2 * first.remaining()));
    body.put(&mut first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        let mut chunk = chunk.map_err(|_| unreadable())?;
        if body.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        body.put(&mut chunk);
        next = stream.next().await;
    }
    Ok(body.freeze())
}
