//! Every endpoint of the HTTP API, one module each (as mini-redis keeps one file
//! per command): its route row, its handler, the request and response bodies
//! only it uses, and its operation in the contract.
//!
//! The list at the bottom (the `endpoints!` call) names each module once. The
//! route table ([`ALL`]), the [`Endpoint`] names, the dispatcher (`dispatch`)
//! and the contract's operations (`describe`) are all generated from it, so
//! adding an endpoint is writing its module, declaring it (`pub mod`, outside
//! the macro so that rustfmt sees the file) and adding it to the list. Each
//! module provides:
//!
//! - `pub static ROUTE: RouteSpec`: method, path, access rule, body, metrics
//!   label and serving role; its `endpoint` is the module's own [`Endpoint`]
//!   (a test holds each row to its place in the list);
//! - `serve(&Service, Inputs) -> Response`, async: takes what it needs from the
//!   request and answers it, usually by calling the module's `handle` (a plain
//!   async function of the body, path and query, which knows nothing of warp);
//! - `describe(&mut Components) -> Described`: what the contract says of it
//!   beyond its route row (bodies, query and header parameters, success
//!   responses, its own error codes).
//!
//! Dispatching is a `match` on [`Endpoint`] that awaits the module's `serve`:
//! static calls, with no boxed future and no allocation of its own.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use super::error::ApiError;
use super::openapi::{Components, Described};
use super::routes::{Params, RouteSpec};
use voucherd_service::service::Service;

/// A request's query string, by name.
pub type Query = HashMap<String, String>;

/// What a handler answers: its body, or the error the one mapping turns into
/// a response.
pub type Outcome<T> = Result<T, ApiError>;

/// What an endpoint may take from its request, once access is granted.
pub struct Inputs {
    /// The raw path parameters, in path order.
    pub params: Params,
    pub query: Query,
    pub idempotency_key: Option<String>,
    /// Empty for routes that read no body.
    pub body: Result<Bytes, ApiError>,
}

/// `status` with the JSON body, or the error's response.
fn respond<T: Serialize>(status: StatusCode, outcome: Outcome<T>) -> Response {
    match outcome {
        Ok(body) => warp::reply::with_status(warp::reply::json(&body), status).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Generates, from the list of endpoint modules, the [`Endpoint`] names, the
/// table [`ALL`] (in list order), `dispatch` and `describe`.
macro_rules! endpoints {
    ($($module:ident => $endpoint:ident,)*) => {
        /// Which endpoint serves a route: the name the dispatcher matches on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Endpoint {
            $($endpoint,)*
        }

        /// Every route, one row per endpoint module, in list order. A request's
        /// path is the route path with the most literal segments that fits it
        /// (`report` before `{code}`, whatever the order here), and its method
        /// picks the route of that path.
        pub static ALL: &[&RouteSpec] = &[$(&$module::ROUTE,)*];

        /// Calls the endpoint's module and answers with what it returns.
        pub(super) async fn dispatch(
            service: &Service,
            endpoint: Endpoint,
            inputs: Inputs,
        ) -> Response {
            match endpoint {
                $(Endpoint::$endpoint => $module::serve(service, inputs).await,)*
            }
        }

        /// What the endpoint's module says of it in the contract. Exhaustive: an
        /// endpoint in the list does not compile until its module describes it.
        pub(crate) fn describe(endpoint: Endpoint, components: &mut Components) -> Described {
            match endpoint {
                $(Endpoint::$endpoint => $module::describe(components),)*
            }
        }
    };
}

pub mod create_profile;
pub mod create_voucher;
pub mod credits;
pub mod healthz;
pub mod metrics;
pub mod openapi;
pub mod profile;
pub mod readyz;
pub mod redeem;
pub mod redemption;
pub mod report;
pub mod transaction;
pub mod voucher_by_path;
pub mod voucher_by_query;

// The list. A module left out of it does not compile (its `ROUTE` names an
// `Endpoint` only the list creates). Redeem comes first because it carries the
// crowd; the order is the table's, so the order of the methods in a 405's `Allow`.
endpoints! {
    redeem => Redeem,
    create_voucher => CreateVoucher,
    voucher_by_query => VoucherByQuery,
    report => Report,
    voucher_by_path => VoucherByPath,
    redemption => Redemption,
    create_profile => CreateProfile,
    profile => Profile,
    transaction => Transaction,
    credits => Credits,
    healthz => Healthz,
    readyz => Readyz,
    metrics => Metrics,
    openapi => OpenApi,
}

#[cfg(test)]
mod tests {
    use super::{Endpoint, ALL};

    #[test]
    fn each_route_row_names_the_endpoint_of_its_module() {
        for (index, spec) in ALL.iter().enumerate() {
            assert_eq!(
                spec.endpoint as usize, index,
                "{:?} is the row of another module",
                spec.endpoint
            );
        }
        assert_eq!(ALL.len(), Endpoint::OpenApi as usize + 1);
    }
}
