//! The route table's row and its lookup. Each endpoint declares its row
//! ([`RouteSpec`]: method, path, access rule, body, metrics label, serving role)
//! once, in its own module; the table is their list, [`ALL`]. Routing, the
//! metrics label of a request, and the 404/405/400 fallback all derive from it,
//! so a new route cannot be answered wrongly by a second list that forgot it.

use warp::http::Method;

use super::auth::Access;
use super::endpoints::{Endpoint, ALL};
use voucherd_metrics::Route;
use voucherd_service::role::Serves;

/// One segment of a route's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// This exact text.
    Literal(&'static str),
    /// Any non-empty segment, handed to the handler raw (handlers percent-decode).
    /// The name is the parameter's in the OpenAPI contract (`{code}`).
    Param(&'static str),
}

/// A route as the table declares it.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub endpoint: Endpoint,
    /// The metrics label (two routes of one resource may share it).
    pub label: Route,
    pub method: Method,
    pub path: &'static [Segment],
    pub access: Access,
    /// Whether the route reads a request body (read only once access is granted).
    pub reads_body: bool,
    /// Which service answers it (see `--role`).
    pub serves: Serves,
}

/// Most parameters a route has.
const MAX_PARAMS: usize = 2;
/// Most segments a route has.
const MAX_SEGMENTS: usize = 5;

/// The raw path parameters of a matched route, in path order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    values: [String; MAX_PARAMS],
}

impl Params {
    /// Parameter `index` (0-based); empty for a route with fewer.
    pub fn get(&self, index: usize) -> &str {
        self.values.get(index).map_or("", String::as_str)
    }
}

/// What the table says of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Matched(&'static RouteSpec, Params),
    /// The path is a route's, the method is not.
    OtherMethod,
    NotFound,
}

/// Finds the route of `method` and `path` (without the query).
///
/// A path belongs to one resource: the matching route path with the most
/// literal segments, as OpenAPI matches a concrete path before a templated one.
/// So `GET /api/vouchers/redeem` is the redeem resource with a method it does
/// not take (405), never the voucher `redeem`; a voucher with such a code is
/// read with `GET /api/vouchers?code=`.
pub fn lookup(method: &Method, path: &str) -> Lookup {
    let Some(segments) = split(path) else {
        return Lookup::NotFound;
    };
    let segments = &segments.0[..segments.1];
    let Some(resource) = resource_of(segments) else {
        return Lookup::NotFound;
    };
    ALL.iter()
        .find(|spec| spec.path == resource && spec.method == *method)
        .map_or(Lookup::OtherMethod, |spec| {
            Lookup::Matched(spec, params_of(resource, segments))
        })
}

/// The methods the resource of `path` takes, as an `Allow` header lists them
/// (`GET, POST`); empty when no route has this path.
pub fn allowed_methods(path: &str) -> String {
    let Some(segments) = split(path) else {
        return String::new();
    };
    let segments = &segments.0[..segments.1];
    let Some(resource) = resource_of(segments) else {
        return String::new();
    };
    let methods: Vec<&str> = ALL
        .iter()
        .filter(|spec| spec.path == resource)
        .map(|spec| spec.method.as_str())
        .collect();
    methods.join(", ")
}

/// The route path that `segments` are: among those that fit, the one with the
/// most literal segments.
fn resource_of(segments: &[&str]) -> Option<&'static [Segment]> {
    let literals = |pattern: &[Segment]| {
        pattern
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count()
    };
    let mut resource: Option<&'static [Segment]> = None;
    for spec in ALL {
        let more_specific = resource.is_none_or(|best| literals(spec.path) > literals(best));
        if more_specific && fits(spec.path, segments) {
            resource = Some(spec.path);
        }
    }
    resource
}

/// The metrics label of a request: its route's, or `other` (so scanners cannot
/// grow the label set).
pub fn label_of(method: &Method, path: &str) -> Route {
    match lookup(method, path) {
        Lookup::Matched(spec, _) => spec.label,
        Lookup::OtherMethod | Lookup::NotFound => Route::other,
    }
}

/// The path's segments without the leading slash and one trailing slash; `None`
/// when it has more segments than any route. No allocation: this runs on every
/// request.
fn split(path: &str) -> Option<([&str; MAX_SEGMENTS], usize)> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let mut segments = [""; MAX_SEGMENTS];
    let mut count = 0;
    for segment in trimmed.split('/') {
        if count == MAX_SEGMENTS {
            return None;
        }
        segments[count] = segment;
        count += 1;
    }
    Some((segments, count))
}

fn fits(pattern: &[Segment], segments: &[&str]) -> bool {
    pattern.len() == segments.len()
        && pattern
            .iter()
            .zip(segments)
            .all(|(expected, actual)| match expected {
                Segment::Literal(text) => text == actual,
                Segment::Param(_) => !actual.is_empty(),
            })
}

/// The parameters of `segments`, which fit `pattern`.
fn params_of(pattern: &[Segment], segments: &[&str]) -> Params {
    let mut params = Params::default();
    let values = pattern
        .iter()
        .zip(segments)
        .filter(|(expected, _)| matches!(expected, Segment::Param(_)))
        .map(|(_, actual)| *actual);
    for (slot, value) in params.values.iter_mut().zip(values) {
        value.clone_into(slot);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(method: Method, path: &str) -> Route {
        label_of(&method, path)
    }

    #[test]
    fn every_route_is_found_by_its_method_and_path() {
        assert_eq!(label(Method::GET, "/api/vouchers/report"), Route::report);
        assert_eq!(label(Method::GET, "/api/vouchers/ABC"), Route::get_voucher);
        assert_eq!(label(Method::GET, "/api/vouchers"), Route::get_voucher);
        assert_eq!(label(Method::GET, "/api/vouchers/"), Route::get_voucher);
        assert_eq!(label(Method::POST, "/api/vouchers"), Route::create_voucher);
        assert_eq!(label(Method::POST, "/api/vouchers/redeem"), Route::redeem);
        assert_eq!(
            label(Method::GET, "/api/vouchers/A/redemptions/+1"),
            Route::get_redemption
        );
        assert_eq!(label(Method::GET, "/wp-admin"), Route::other);
        assert_eq!(label(Method::GET, "/a/b/c/d/e/f/g"), Route::other);
        assert_eq!(
            label(Method::GET, "/api/vouchers//redemptions/x"),
            Route::other
        );
    }

    #[test]
    fn params_come_raw_in_path_order() {
        let Lookup::Matched(spec, params) =
            lookup(&Method::GET, "/api/vouchers/GOAL/redemptions/%2B98912")
        else {
            panic!("no match");
        };
        assert_eq!(spec.endpoint, Endpoint::Redemption);
        assert_eq!(params.get(0), "GOAL");
        assert_eq!(params.get(1), "%2B98912");
    }

    #[test]
    fn a_known_path_with_another_method_is_not_a_missing_route() {
        assert_eq!(
            lookup(&Method::DELETE, "/api/vouchers/redeem"),
            Lookup::OtherMethod
        );
        assert_eq!(lookup(&Method::PUT, "/healthz"), Lookup::OtherMethod);
        assert_eq!(lookup(&Method::GET, "/nothing"), Lookup::NotFound);
    }

    #[test]
    fn a_concrete_path_is_its_own_resource_whatever_the_method() {
        // Not the voucher `redeem`: OpenAPI matches concrete paths first.
        assert_eq!(
            lookup(&Method::GET, "/api/vouchers/redeem"),
            Lookup::OtherMethod
        );
        assert_eq!(
            lookup(&Method::POST, "/api/vouchers/report"),
            Lookup::OtherMethod
        );
        let Lookup::Matched(spec, params) = lookup(&Method::GET, "/api/vouchers/redeemed") else {
            panic!("no match");
        };
        assert_eq!(spec.endpoint, Endpoint::VoucherByPath);
        assert_eq!(params.get(0), "redeemed");
    }

    #[test]
    fn allowed_methods_are_those_of_every_route_of_the_path() {
        assert_eq!(allowed_methods("/api/vouchers"), "POST, GET");
        assert_eq!(allowed_methods("/api/vouchers/redeem"), "POST");
        assert_eq!(allowed_methods("/api/vouchers/report"), "GET");
        assert_eq!(allowed_methods("/healthz"), "GET");
        assert_eq!(allowed_methods("/nothing"), "");
    }

    #[test]
    fn no_request_path_fits_two_route_paths_equally_well() {
        let literals = |path: &[Segment]| {
            path.iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count()
        };
        for a in ALL {
            for b in ALL {
                if a.path == b.path || a.path.len() != b.path.len() {
                    continue;
                }
                let overlap = a.path.iter().zip(b.path).all(|pair| match pair {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                });
                assert!(
                    !overlap || literals(a.path) != literals(b.path),
                    "{:?} and {:?} are ambiguous",
                    a.endpoint,
                    b.endpoint
                );
            }
        }
    }

    #[test]
    fn every_endpoint_has_exactly_one_route() {
        for spec in ALL {
            let same = ALL.iter().filter(|s| s.endpoint == spec.endpoint).count();
            assert_eq!(same, 1, "{:?} is declared {same} times", spec.endpoint);
            assert_ne!(spec.label, Route::other);
            assert!(spec.path.len() <= MAX_SEGMENTS);
            let params = spec
                .path
                .iter()
                .filter(|s| matches!(s, Segment::Param(_)))
                .count();
            assert!(params <= MAX_PARAMS);
        }
    }
}
