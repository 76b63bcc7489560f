//! The routes as specifications, without a socket: `warp::test` drives the route
//! table and its handlers in-process, on a real embedded ledger, with an injected
//! clock so that time-dependent rules are checked without waiting.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use voucherd::config::Token;
use voucherd::http::auth::{AccessPolicy, Principal};
use voucherd::http::{routes, RouteOptions};
use voucherd::{App, Settings};
use voucherd_core::clock::ManualClock;
use voucherd_core::domain::Timestamp;
use warp::filters::BoxedFilter;
use warp::reply::Response;

const TOKEN: &str = "handler-test-token-0123456789";
/// 2026-11-27T00:00:00Z in microseconds.
const START_MICROS: i64 = 1_795_737_600_000_000;

struct Routes {
    filter: BoxedFilter<(Response,)>,
    clock: Arc<ManualClock>,
    _app: App,
    _store: tempfile::TempDir,
}

async fn routes_with(access: AccessPolicy) -> Routes {
    let store = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(Timestamp(START_MICROS)));
    let mut settings = Settings::embedded(store.path());
    settings.clock = clock.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = App::build(settings, listener).await.unwrap();
    let options = RouteOptions {
        access: Arc::new(access),
        body_read_timeout: Duration::from_secs(10),
        role: voucherd_service::role::Role::All,
    };
    Routes {
        filter: routes(app.service(), options),
        clock,
        _app: app,
        _store: store,
    }
}

async fn call(routes: &Routes, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = warp::test::request()
        .method(method)
        .path(path)
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.reply(&routes.filter).await;
    let value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    (response.status().as_u16(), value)
}

async fn redeem_window(routes: &Routes, phone: &str) -> (u16, Value) {
    let body = json!({"phone_number": phone, "code": "WINDOW"});
    call(routes, "POST", "/api/vouchers/redeem", Some(body)).await
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A voucher with a window is redeemable only inside it: 403 before `starts_at`,
/// 200 once the clock passes it, 403 again after `expires_at`.
#[tokio::test]
async fn a_voucher_is_redeemable_only_inside_its_window() {
    let routes = routes_with(AccessPolicy::open()).await;
    let hour = 3_600_000_000;
    let voucher = json!({
        "code": "WINDOW", "amount": 100, "limit": 10,
        "starts_at": rfc3339(START_MICROS + hour),
        "expires_at": rfc3339(START_MICROS + 2 * hour),
    });
    assert_eq!(
        call(&routes, "POST", "/api/vouchers", Some(voucher))
            .await
            .0,
        201
    );

    let (status, body) = redeem_window(&routes, "+989120000001").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("voucher_not_active"))
    );

    routes.clock.advance_secs(3_601);
    let (status, body) = redeem_window(&routes, "+989120000001").await;
    assert_eq!(status, 200, "{body}");

    routes.clock.advance_secs(3_600);
    let (status, body) = redeem_window(&routes, "+989120000002").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("voucher_not_active"))
    );
}

/// The route table answers what no route takes: 405 for a known path with another
/// method, 404 for an unknown path, 400 when a route's headers cannot be read.
#[tokio::test]
async fn the_table_answers_unknown_paths_and_methods() {
    let routes = routes_with(AccessPolicy::open()).await;
    let (status, body) = call(&routes, "DELETE", "/api/vouchers/redeem", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    // RFC 9110: a 405 lists the methods the resource takes. A concrete path is
    // its own resource (OpenAPI matches it before `/api/vouchers/{code}`).
    for (method, path, allow) in [
        ("DELETE", "/api/vouchers/redeem", "POST"),
        ("GET", "/api/vouchers/redeem", "POST"),
        ("POST", "/api/vouchers/report", "GET"),
        ("PUT", "/api/vouchers", "POST, GET"),
        ("OPTIONS", "/healthz", "GET"),
    ] {
        let response = warp::test::request()
            .method(method)
            .path(path)
            .reply(&routes.filter)
            .await;
        assert_eq!(response.status().as_u16(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
    }
    let (status, body) = call(&routes, "GET", "/api/nothing", None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let unreadable = warp::test::request()
        .method("POST")
        .path("/api/transactions")
        .header(
            "idempotency-key",
            warp::http::HeaderValue::from_bytes(b"\xff").unwrap(),
        )
        .json(&json!({"phone_number": "+989120000001", "amount": 5}))
        .reply(&routes.filter)
        .await;
    let body: Value = serde_json::from_slice(unreadable.body()).unwrap();
    assert_eq!(
        (unreadable.status().as_u16(), body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

/// With a token configured, an admin route refuses a request that lacks it before
/// reading its body, and a public route needs none.
#[tokio::test]
async fn admin_routes_need_the_token_public_ones_do_not() {
    let policy = AccessPolicy::open().with_token(Principal::Admin, Token::new(TOKEN).unwrap());
    let routes = routes_with(policy).await;
    let refused = warp::test::request()
        .method("POST")
        .path("/api/vouchers")
        .json(&json!({"code": "NOPE", "amount": 1, "limit": 1}))
        .reply(&routes.filter)
        .await;
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let (status, _) = call(&routes, "GET", "/api/vouchers/NOPE", None).await;
    assert_eq!(status, 404, "a refused create must not create the voucher");
    let public = warp::test::request()
        .method("GET")
        .path("/api/vouchers/NOPE")
        .reply(&routes.filter)
        .await;
    assert_eq!(public.status().as_u16(), 404);
}

/// The contract is served at `GET /openapi.json`, public, exactly as generated
/// (and so as committed in docs/openapi.json, which a unit test compares).
#[tokio::test]
async fn the_contract_is_served_as_generated() {
    let policy = AccessPolicy::open().with_token(Principal::Admin, Token::new(TOKEN).unwrap());
    let routes = routes_with(policy).await;
    let response = warp::test::request()
        .method("GET")
        .path("/openapi.json")
        .reply(&routes.filter)
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        std::str::from_utf8(response.body()).unwrap(),
        voucherd::http::openapi::to_json()
    );
}

/// JSON has one number type: `5.0` is the integer 5, as JSON Schema's `integer`
/// says; `5.5` is refused, and so is an integral float too large to be exact.
#[tokio::test]
async fn integral_numbers_written_as_floats_are_integers() {
    let routes = routes_with(AccessPolicy::open()).await;
    let voucher = json!({"code": "FLOAT", "amount": 250.0, "limit": 3.0});
    let (status, body) = call(&routes, "POST", "/api/vouchers", Some(voucher)).await;
    assert_eq!(
        (status, &body["amount"], &body["limit"]),
        (201, &json!(250), &json!(3))
    );
    let profile = json!({"phone_number": "+989120000009", "balance": 10.0});
    let (status, body) = call(&routes, "POST", "/api/profiles", Some(profile)).await;
    assert_eq!((status, &body["balance"]), (201, &json!(10)));
    // Many digits: parsed exactly, not off by a unit in the last place.
    let raw = r#"{"phone_number": "+989120000010", "balance": 2251799813685247.0}"#;
    let response = warp::test::request()
        .method("POST")
        .path("/api/profiles")
        .body(raw)
        .reply(&routes.filter)
        .await;
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        (response.status().as_u16(), &body["balance"]),
        (201, &json!(2_251_799_813_685_247_i64))
    );
    let debit = json!({"phone_number": "+989120000009", "amount": -4.0});
    let (status, body) = call(&routes, "POST", "/api/transactions", Some(debit)).await;
    assert_eq!((status, &body["balance"]), (200, &json!(6)));
    for amount in [json!(2.5), json!(9007199254740993.0), json!(-1e300)] {
        let credit = json!({"phone_number": "+989120000009", "amount": amount});
        let (status, body) = call(&routes, "POST", "/api/transactions", Some(credit)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_amount")),
            "{amount}"
        );
    }
}

/// A window bound whose instant falls outside the years 0000-9999 in UTC cannot
/// be written back in RFC 3339: it is refused, and nothing is created.
#[tokio::test]
async fn a_window_outside_what_rfc3339_can_write_is_refused() {
    let routes = routes_with(AccessPolicy::open()).await;
    let voucher = json!({
        "code": "FAR", "amount": 1, "limit": 1, "expires_at": "9999-12-31T23:59:59-01:00"
    });
    let (status, body) = call(&routes, "POST", "/api/vouchers", Some(voucher)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_window"))
    );
    let (status, _) = call(&routes, "GET", "/api/vouchers/FAR", None).await;
    assert_eq!(status, 404);
}

/// In one process the credit is part of the claim: a wallet whose balance the
/// credit would overflow refuses the redemption as the wallet service does in
/// split mode, 409 `credit_refused`, and nothing changes (the slot stays free,
/// the balance as it was). Found by schemathesis: it was 400 `invalid_amount`,
/// about a field the redeem request does not have.
#[tokio::test]
async fn a_credit_the_wallet_cannot_take_refuses_the_redemption_and_changes_nothing() {
    let routes = routes_with(AccessPolicy::open()).await;
    let full = "+989120000011";
    let voucher = json!({"code": "FULL", "amount": 100, "limit": 1});
    let (status, _) = call(&routes, "POST", "/api/vouchers", Some(voucher)).await;
    assert_eq!(status, 201);
    let profile = json!({"phone_number": full, "balance": i64::MAX - 10});
    let (status, _) = call(&routes, "POST", "/api/profiles", Some(profile)).await;
    assert_eq!(status, 201);
    let redeem = json!({"phone_number": full, "code": "FULL"});
    let (status, body) = call(&routes, "POST", "/api/vouchers/redeem", Some(redeem)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("credit_refused")),
        "{body}"
    );
    let path = format!("/api/profiles/{}", full.replace('+', "%2B"));
    let (_, wallet) = call(&routes, "GET", &path, None).await;
    assert_eq!(wallet["balance"], json!(i64::MAX - 10));
    let (_, voucher) = call(&routes, "GET", "/api/vouchers/FULL", None).await;
    assert_eq!(
        (&voucher["redeemed"], &voucher["remaining"]),
        (&json!(0), &json!(1))
    );
    // I1: the slot is still there for someone else.
    let other = json!({"phone_number": "+989120000012", "code": "FULL"});
    let (status, _) = call(&routes, "POST", "/api/vouchers/redeem", Some(other)).await;
    assert_eq!(status, 200);
}
