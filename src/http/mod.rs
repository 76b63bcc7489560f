//! The HTTP edge: the server loop in [`server`] (connection cap, timeouts, head
//! checks), one module per endpoint in [`endpoints`] (its route row, handler,
//! bodies and contract description; their list is the one route table), the
//! table's lookup in [`routes`] (method, path, [`auth`] rule, body, metrics
//! label), the wiring of a matched route to its endpoint, the bounded body
//! reader, request metrics, and the one error mapping in [`error`].

pub mod auth;
pub mod dto;
pub mod endpoints;
pub mod error;
pub mod openapi;
pub mod routes;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use warp::filters::path::FullPath;
use warp::filters::BoxedFilter;
use warp::http::Method;
use warp::reply::Response;
use warp::{Filter, Reply};

use auth::AccessPolicy;
use endpoints::{Inputs, Query};
use error::ApiError;
use routes::{Lookup, Params, RouteSpec};
use voucherd_core::error::ErrorCode;
use voucherd_core::limits::MAX_BODY_BYTES;
use voucherd_service::role::Role;
use voucherd_service::service::{RequestGuard, Service};

type Body = Result<Bytes, ApiError>;

/// What the routes need besides the service.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    pub access: Arc<AccessPolicy>,
    pub body_read_timeout: Duration,
    /// Which routes this instance serves; the others answer 421 `not_served_here`.
    pub role: Role,
}

/// Every route of the service, with its access rule, request metrics and JSON
/// errors. Which route a request is, and what it may do, comes from the one
/// table ([`endpoints::ALL`]); this only wires its inputs to the endpoint's module.
pub fn routes(service: Arc<Service>, options: RouteOptions) -> BoxedFilter<(Response,)> {
    let observed = service.clone();
    let observe = warp::log::custom(move |info| {
        let route = routes::label_of(info.method(), info.path());
        observed
            .metrics()
            .observe_request(route, info.status().as_u16(), info.elapsed());
    });
    let tracker = service.clone();
    let tracked = warp::any().map(move || tracker.track_request());
    let matched = warp::method().and(warp::path::full()).and_then(
        |method: Method, path: FullPath| async move {
            match routes::lookup(&method, path.as_str()) {
                Lookup::Matched(spec, params) => Ok(Matched { spec, params }),
                Lookup::OtherMethod | Lookup::NotFound => Err(warp::reject::not_found()),
            }
        },
    );
    let request = matched
        .and(warp::query::<Query>())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |matched: Matched,
                  query: Query,
                  authorization: Option<String>,
                  idempotency_key: Option<String>,
                  declared_length: Option<u64>,
                  body| {
                let service = service.clone();
                let options = options.clone();
                async move {
                    if !options.role.serves(matched.spec.serves) {
                        return ApiError::NotServedHere(matched.spec.serves).into_response();
                    }
                    let gate = options
                        .access
                        .check(matched.spec.access, authorization.as_deref());
                    let body = match gate {
                        Err(refused) => return refused.into_response(),
                        Ok(()) if matched.spec.reads_body => {
                            read_body(declared_length, body, options.body_read_timeout).await
                        }
                        Ok(()) => Ok(Bytes::new()),
                    };
                    let inputs = Inputs {
                        params: matched.params,
                        query,
                        idempotency_key,
                        body,
                    };
                    endpoints::dispatch(&service, matched.spec.endpoint, inputs).await
                }
            },
        );
    // The guard lives as long as the request's future: shutdown knows when
    // nothing is in flight any more.
    tracked
        .and(
            request
                .or(fallback())
                .unify()
                .recover(error::recover)
                .unify(),
        )
        .map(|guard: RequestGuard, response: Response| {
            drop(guard);
            response
        })
        .with(observe)
        .map(Reply::into_response)
        .boxed()
}

/// A request the route table matched.
struct Matched {
    spec: &'static RouteSpec,
    params: Params,
}

/// The routes of the separate metrics address: `/metrics` without a token (the
/// address is meant for an internal network), 404 for everything else.
pub fn metrics_routes(service: Arc<Service>) -> BoxedFilter<(Response,)> {
    warp::get()
        .and(warp::path!("metrics"))
        .map(move || endpoints::metrics::text(&service))
        .or(warp::any().map(|| ApiError::NotFound.into_response()))
        .unify()
        .boxed()
}

/// Answers what no route took, from the route table: 404 for an unknown path,
/// 405 for a known path with another method, 400 when a route matched but its
/// query or headers did not parse.
fn fallback() -> BoxedFilter<(Response,)> {
    warp::method()
        .and(warp::path::full())
        .map(|method: Method, path: FullPath| {
            let error = match routes::lookup(&method, path.as_str()) {
                Lookup::Matched(..) => ApiError::Domain(voucherd_core::error::Error::invalid(
                    ErrorCode::InvalidRequest,
                    "the request could not be read",
                )),
                Lookup::OtherMethod => {
                    ApiError::MethodNotAllowed(routes::allowed_methods(path.as_str()))
                }
                Lookup::NotFound => ApiError::NotFound,
            };
            error.into_response()
        })
        .boxed()
}

/// The request body, read up to [`MAX_BODY_BYTES`] within `timeout`: a declared
/// or actual larger body is refused without reading it all, a stalled one gets 408.
async fn read_body<S, B>(declared: Option<u64>, stream: S, timeout: Duration) -> Body
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    tokio::time::timeout(timeout, collect_bounded(stream))
        .await
        .unwrap_or(Err(ApiError::BodyTimeout))
}

async fn collect_bounded<S, B>(stream: S) -> Body
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let unreadable = || {
        ApiError::Domain(voucherd_core::error::Error::invalid(
            ErrorCode::InvalidRequest,
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
