//! The HTTP contract of docs/API.md, endpoint by endpoint and error code by error code,
//! against the real binary on a free port with a fresh store.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use voucherd_test_support::binary::Binary;
use voucherd_test_support::http::{assert_error_shape, encode_phone, phone, send, Resp};
use voucherd_test_support::rng::Rng;
use voucherd_test_support::server::{assert_no_panic_in_log, TestServer};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

const VOUCHER_KEYS: &[&str] = &[
    "code",
    "amount",
    "limit",
    "redeemed",
    "remaining",
    "starts_at",
    "expires_at",
    "created_at",
];
const REDEEM_KEYS: &[&str] = &["redemption_id", "code", "phone_number", "amount", "balance"];
const TRANSACTION_KEYS: &[&str] = &[
    "id",
    "phone_number",
    "amount",
    "balance",
    "reference",
    "created_at",
];

fn parse_time(value: &Value) -> OffsetDateTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    OffsetDateTime::parse(text, &Rfc3339)
        .unwrap_or_else(|e| panic!("timestamp {text:?} is not RFC 3339: {e}"))
}

fn parse_uuid(value: &Value) -> uuid::Uuid {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("id is not a string: {value}"));
    uuid::Uuid::parse_str(text).unwrap_or_else(|e| panic!("{text:?} is not a UUID: {e}"))
}

async fn create_voucher_with(server: &TestServer, body: Value) -> Resp {
    server.post_json("/api/vouchers", &body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn create_and_get_voucher_in_both_forms() {
    // Goal: POST /api/vouchers answers 201 with the voucher object, and both GET forms serve it.
    let server = TestServer::start(VOUCHERD).await;
    let created = create_voucher_with(
        &server,
        json!({"code": "GOAL2026", "amount": 50000, "limit": 1000}),
    )
    .await;
    created.expect_status(201);
    assert_has_keys(&created.json, VOUCHER_KEYS);
    assert_eq!(created.json["code"], "GOAL2026");
    assert_eq!(created.json["amount"], 50000);
    assert_eq!(created.json["limit"], 1000);
    assert_eq!(created.json["redeemed"], 0);
    assert_eq!(created.json["remaining"], 1000);
    assert_eq!(created.json["starts_at"], Value::Null);
    assert_eq!(created.json["expires_at"], Value::Null);
    parse_time(&created.json["created_at"]);

    let by_path = server.get("/api/vouchers/GOAL2026").await;
    by_path.expect_status(200);
    let by_query = server.get("/api/vouchers?code=GOAL2026").await;
    by_query.expect_status(200);
    assert_eq!(
        by_path.json, by_query.json,
        "both GET forms serve the same voucher"
    );
    assert_eq!(by_path.json, created.json, "GET serves what POST created");
    assert!(
        by_path.content_type.starts_with("application/json"),
        "JSON content type, got {:?}",
        by_path.content_type
    );

    // Edge values that are valid: a 64-character code, the maximum limit.
    let code_64 = "a".repeat(64);
    create_voucher_with(
        &server,
        json!({"code": code_64, "amount": 1, "limit": 10_000_000}),
    )
    .await
    .expect_status(201);
    server
        .get(&format!("/api/vouchers/{code_64}"))
        .await
        .expect_status(200);
    create_voucher_with(&server, json!({"code": "A-z_09", "amount": 1, "limit": 1}))
        .await
        .expect_status(201);
}

#[tokio::test(flavor = "multi_thread")]
async fn voucher_not_found_and_duplicates() {
    // Goal: unknown vouchers are 404 voucher_not_found and a second create is 409 voucher_exists.
    let server = TestServer::start(VOUCHERD).await;
    server
        .get("/api/vouchers/NOPE")
        .await
        .expect_error(404, "voucher_not_found");
    server
        .get("/api/vouchers?code=NOPE")
        .await
        .expect_error(404, "voucher_not_found");
    server.create_voucher("DUP", 100, 5).await;
    create_voucher_with(&server, json!({"code": "DUP", "amount": 999, "limit": 1}))
        .await
        .expect_error(409, "voucher_exists");
    // The first definition stands.
    let voucher = server.voucher("DUP").await;
    assert_eq!(
        (voucher["amount"].clone(), voucher["limit"].clone()),
        (json!(100), json!(5))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn voucher_validation_errors() {
    // Goal: every documented 400 on voucher creation, with exactly {error, message}.
    let server = TestServer::start(VOUCHERD).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"code": "V", "amount": 2000.5, "limit": 10}),
            "invalid_amount",
        ),
        (
            json!({"code": "V", "amount": 0, "limit": 10}),
            "invalid_amount",
        ),
        (
            json!({"code": "V", "amount": -5, "limit": 10}),
            "invalid_amount",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": 0}),
            "invalid_limit",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": -1}),
            "invalid_limit",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": 10_000_001}),
            "invalid_limit",
        ),
        (
            json!({"code": "bad code!", "amount": 10, "limit": 10}),
            "invalid_code",
        ),
        (
            json!({"code": "", "amount": 10, "limit": 10}),
            "invalid_code",
        ),
        (
            json!({"code": "é", "amount": 10, "limit": 10}),
            "invalid_code",
        ),
        (
            json!({"code": "a".repeat(65), "amount": 10, "limit": 10}),
            "invalid_code",
        ),
        (
            json!({"code": "V", "amount": "abc", "limit": 10}),
            "invalid_body",
        ),
        (
            json!({"code": 7, "amount": 10, "limit": 10}),
            "invalid_body",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": "ten"}),
            "invalid_body",
        ),
        (json!({"code": "V", "limit": 10}), "invalid_body"),
        (
            json!({"code": "V", "amount": 10, "limit": 10, "extra": 1}),
            "invalid_body",
        ),
        (json!(["V", 10, 10]), "invalid_body"),
        (
            json!({"code": "V", "amount": 10, "limit": 10, "starts_at": "yesterday"}),
            "invalid_window",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": 10, "expires_at": "2026-13-45T00:00:00Z"}),
            "invalid_window",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": 10,
                   "starts_at": "2030-01-02T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            "invalid_window",
        ),
        (
            json!({"code": "V", "amount": 10, "limit": 10,
                   "starts_at": "2030-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"}),
            "invalid_window",
        ),
    ];
    for (body, code) in cases {
        let resp = create_voucher_with(&server, body.clone()).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (400, Some(code)),
            "POST /api/vouchers {body} should be 400 {code}, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
    }
    // None of them created anything.
    server
        .get("/api/vouchers/V")
        .await
        .expect_error(404, "voucher_not_found");

    for raw in [
        "{\"code\": \"V\", \"amount\": ",
        "{\"code\": 5",
        "[1, 2",
        "not json",
        "{'code': 'V'}",
        "",
    ] {
        let resp = server.post_raw("/api/vouchers", raw).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (400, Some("malformed_json")),
            "broken JSON {raw:?} should be 400 malformed_json, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn body_limit_media_type_method_and_unknown_path() {
    // Goal: 413 over 16 KiB, any Content-Type with a JSON body accepted, 405 for wrong methods, 404 not_found as JSON.
    let server = TestServer::start(VOUCHERD).await;
    let padding = "x".repeat(17 * 1024);
    let big = json!({"code": "BIG", "amount": 1, "limit": 1, "pad": padding}).to_string();
    assert!(big.len() > 16 * 1024);
    server
        .post_raw("/api/vouchers", big.clone())
        .await
        .expect_error(413, "payload_too_large");
    server
        .post_raw("/api/transactions", big.clone())
        .await
        .expect_error(413, "payload_too_large");
    server
        .post_raw("/api/vouchers/redeem", big)
        .await
        .expect_error(413, "payload_too_large");

    let resp = send(
        server
            .request(Method::POST, "/api/vouchers")
            .header("content-type", "text/plain")
            .body(r#"{"code": "TXT", "amount": 1, "limit": 1}"#),
    )
    .await;
    // The Content-Type is not checked (docs/API.md): `curl -d` sends a form
    // type, and a JSON body is what counts.
    resp.expect_status(201);

    for (method, path) in [
        (Method::DELETE, "/api/vouchers"),
        (Method::PUT, "/api/vouchers/redeem"),
        (Method::DELETE, "/api/profiles"),
        (Method::PATCH, "/api/transactions"),
    ] {
        let resp = send(server.request(method.clone(), path)).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path} should be 405 method_not_allowed, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
    }

    for path in [
        "/nope",
        "/api",
        "/api/unknown/thing",
        "/api/vouchers/a/b/c/d",
    ] {
        let resp = server.get(path).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (404, Some("not_found")),
            "GET {path} should be 404 not_found, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redeem_success_retry_exhaustion_and_lookup() {
    // Goal: redeem credits once (I2, I3); then 409, 410, 404; redemption lookups 200/404.
    let server = TestServer::start(VOUCHERD).await;
    server.create_voucher("REDEEM", 2000, 2).await;
    let alice = "+989371209055";
    server.create_profile(alice, 1000).await;

    let first = server.redeem(alice, "REDEEM").await;
    first.expect_status(200);
    assert_has_keys(&first.json, REDEEM_KEYS);
    assert_eq!(first.json["code"], "REDEEM");
    assert_eq!(first.json["phone_number"], alice);
    assert_eq!(first.json["amount"], 2000);
    assert_eq!(
        first.json["balance"], 3000,
        "I5: balance right after the credit = opening 1000 + 2000"
    );
    let redemption_id = parse_uuid(&first.json["redemption_id"]);
    assert_eq!(
        redemption_id.get_version_num(),
        5,
        "redemption_id is a UUIDv5 of (code, phone)"
    );

    // I2: a retry is refused and changes nothing; it names the redemption the
    // phone holds, so a client whose first answer was lost learns it won.
    let retry = server.redeem(alice, "REDEEM").await;
    retry.expect_error(409, "already_redeemed");
    assert_eq!(
        parse_uuid(&retry.json["redemption_id"]),
        redemption_id,
        "the retry names the first redemption: {}",
        retry.text
    );
    assert_eq!(retry.json["status"], "credited", "{}", retry.text);
    let (balance, transactions) = server.profile_all(alice).await.expect("alice has a wallet");
    assert_eq!(balance, 3000, "I3: the retry did not credit twice");
    let voucher_credits: Vec<&Value> = transactions
        .iter()
        .filter(|t| t["reference"] == "voucher:REDEEM")
        .collect();
    assert_eq!(voucher_credits.len(), 1, "I3: exactly one voucher credit");
    assert_eq!(voucher_credits[0]["id"], first.json["redemption_id"]);
    assert_eq!(voucher_credits[0]["amount"], 2000);

    // The redemption is served by both phone spellings.
    for path in [
        format!("/api/vouchers/REDEEM/redemptions/{alice}"),
        format!("/api/vouchers/REDEEM/redemptions/{}", encode_phone(alice)),
    ] {
        let resp = server.get(&path).await;
        resp.expect_status(200);
        assert_has_keys(
            &resp.json,
            &[
                "redemption_id",
                "code",
                "phone_number",
                "amount",
                "redeemed_at",
            ],
        );
        assert_eq!(resp.json["redemption_id"], first.json["redemption_id"]);
        assert_eq!(resp.json["code"], "REDEEM");
        assert_eq!(resp.json["phone_number"], alice);
        assert_eq!(resp.json["amount"], 2000);
        parse_time(&resp.json["redeemed_at"]);
    }
    server
        .get(&format!("/api/vouchers/REDEEM/redemptions/{}", phone(1)))
        .await
        .expect_error(404, "redemption_not_found");

    // A user without a wallet gets one from the redemption.
    let bob = phone(2);
    let second = server.redeem(&bob, "REDEEM").await;
    second.expect_status(200);
    assert_eq!(second.json["balance"], 2000);
    assert_ne!(second.json["redemption_id"], first.json["redemption_id"]);

    // I1: the limit is 2.
    server
        .redeem(&phone(3), "REDEEM")
        .await
        .expect_error(410, "voucher_exhausted");
    assert!(
        server.profile_all(&phone(3)).await.is_none(),
        "I3: a refused redemption must not create a wallet credit"
    );
    let voucher = server.voucher("REDEEM").await;
    assert_eq!(
        (voucher["redeemed"].clone(), voucher["remaining"].clone()),
        (json!(2), json!(0))
    );

    server
        .redeem(alice, "NOSUCH")
        .await
        .expect_error(404, "voucher_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn redemption_id_is_deterministic_across_retries_and_instances() {
    // Goal: redemption_id = UUIDv5(code, phone): same on retries, in wallet, on other instances.
    let first_server = TestServer::start(VOUCHERD).await;
    first_server.create_voucher("SAME", 10, 10).await;
    let user = phone(42);
    let won = first_server.redeem(&user, "SAME").await;
    won.expect_status(200);
    let id = won.json["redemption_id"].clone();
    for _ in 0..3 {
        first_server
            .redeem(&user, "SAME")
            .await
            .expect_error(409, "already_redeemed");
        let lookup = first_server
            .get(&format!("/api/vouchers/SAME/redemptions/{user}"))
            .await;
        lookup.expect_status(200);
        assert_eq!(lookup.json["redemption_id"], id);
    }
    let (_, transactions) = first_server.profile_all(&user).await.expect("wallet");
    assert_eq!(transactions.len(), 1);
    assert_eq!(
        transactions[0]["id"], id,
        "I3: the wallet transaction id is the redemption id"
    );

    let second_server = TestServer::start(VOUCHERD).await;
    second_server.create_voucher("SAME", 10, 10).await;
    let again = second_server.redeem(&user, "SAME").await;
    again.expect_status(200);
    assert_eq!(
        again.json["redemption_id"], id,
        "the same (code, phone) gives the same redemption_id on any instance"
    );
    let other = second_server.redeem(&phone(43), "SAME").await;
    other.expect_status(200);
    assert_ne!(other.json["redemption_id"], id);
}

#[tokio::test(flavor = "multi_thread")]
async fn redeem_outside_window_is_forbidden() {
    // Goal: 403 voucher_not_active before starts_at and after expires_at; 200 inside the window.
    let server = TestServer::start(VOUCHERD).await;
    let future = create_voucher_with(
        &server,
        json!({"code": "FUTURE", "amount": 5, "limit": 5,
               "starts_at": "2099-01-01T00:00:00Z", "expires_at": "2099-12-31T00:00:00Z"}),
    )
    .await;
    future.expect_status(201);
    assert_eq!(
        parse_time(&future.json["starts_at"]),
        parse_time(&json!("2099-01-01T00:00:00Z"))
    );
    assert_eq!(
        parse_time(&future.json["expires_at"]),
        parse_time(&json!("2099-12-31T00:00:00Z"))
    );
    create_voucher_with(
        &server,
        json!({"code": "PAST", "amount": 5, "limit": 5,
               "starts_at": "2000-01-01T00:00:00Z", "expires_at": "2000-12-31T00:00:00Z"}),
    )
    .await
    .expect_status(201);
    create_voucher_with(
        &server,
        json!({"code": "ENDED", "amount": 5, "limit": 5, "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await
    .expect_status(201);
    create_voucher_with(
        &server,
        json!({"code": "NOW", "amount": 5, "limit": 5,
               "starts_at": "2000-01-01T00:00:00Z", "expires_at": "2099-12-31T00:00:00Z"}),
    )
    .await
    .expect_status(201);

    let user = phone(7);
    for code in ["FUTURE", "PAST", "ENDED"] {
        let resp = server.redeem(&user, code).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (403, Some("voucher_not_active")),
            "redeem {code} should be 403 voucher_not_active, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
        assert_eq!(server.voucher(code).await["redeemed"], 0);
    }
    assert!(
        server.profile_all(&user).await.is_none(),
        "I3: no credit without a redemption"
    );
    server.redeem(&user, "NOW").await.expect_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn phone_number_validation() {
    // Goal: E.164 is `+` then 8-15 digits, first non-zero; everything else is invalid_phone_number.
    let server = TestServer::start(VOUCHERD).await;
    server.create_voucher("PHONES", 1, 100).await;
    let bad = [
        "989371209055",
        "+1234567",
        "+1234567890123456",
        "+98abc1234567",
        "+0123456789",
        "++989371209055",
        "+98 937 120 9055",
        "",
        "+",
        "+٩٨٩٣٧١٢٠٩٠٥٥",
    ];
    for phone_number in bad {
        for (path, body) in [
            (
                "/api/vouchers/redeem",
                json!({"phone_number": phone_number, "code": "PHONES"}),
            ),
            (
                "/api/profiles",
                json!({"phone_number": phone_number, "balance": 0}),
            ),
            (
                "/api/transactions",
                json!({"phone_number": phone_number, "amount": 5}),
            ),
        ] {
            let resp = server.post_json(path, &body).await;
            assert_eq!(
                (resp.status, resp.json["error"].as_str()),
                (400, Some("invalid_phone_number")),
                "POST {path} with phone {phone_number:?} should be 400 invalid_phone_number, got {} {}",
                resp.status,
                resp.text
            );
            assert_error_shape(&resp);
        }
    }
    server
        .post_json(
            "/api/vouchers/redeem",
            &json!({"phone_number": 989371209055u64, "code": "PHONES"}),
        )
        .await
        .expect_error(400, "invalid_body");
    server
        .post_json(
            "/api/vouchers/redeem",
            &json!({"phone_number": "+12345678"}),
        )
        .await
        .expect_error(400, "invalid_body");
    server
        .post_json(
            "/api/vouchers/redeem",
            &json!({"phone_number": "+12345678", "code": "PHONES", "x": 1}),
        )
        .await
        .expect_error(400, "invalid_body");
    server
        .post_json(
            "/api/vouchers/redeem",
            &json!({"phone_number": "+12345678", "code": "bad code"}),
        )
        .await
        .expect_error(400, "invalid_code");
    server
        .post_raw("/api/vouchers/redeem", "{\"phone_number\":")
        .await
        .expect_error(400, "malformed_json");
    assert_eq!(server.voucher("PHONES").await["redeemed"], 0);

    // The edges that are valid: 8 and 15 digits.
    for phone_number in ["+12345678", "+123456789012345"] {
        server.create_profile(phone_number, 0).await;
        server
            .redeem(phone_number, "PHONES")
            .await
            .expect_status(200);
    }
    server
        .get("/api/profiles/notaphone")
        .await
        .expect_error(400, "invalid_phone_number");
}

#[tokio::test(flavor = "multi_thread")]
async fn report_paging_by_offset_and_cursor() {
    // Goal: the report pages in winning order by limit/offset, next_cursor and a JSON body.
    let server = TestServer::start(VOUCHERD).await;
    server.create_voucher("REPORT", 10, 25).await;
    let mut expected = Vec::new();
    for n in 0..25 {
        let user = phone(1000 + n);
        let resp = server.redeem(&user, "REPORT").await;
        resp.expect_status(200);
        expected.push((user, resp.json["redemption_id"].clone()));
    }
    let phones_of = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["phone_number"].as_str().expect("phone").to_string())
            .collect()
    };
    let expected_phones: Vec<String> = expected.iter().map(|(p, _)| p.clone()).collect();

    // limit/offset paging.
    let mut by_offset = Vec::new();
    for offset in [0, 10, 20, 25] {
        let resp = server
            .get(&format!(
                "/api/vouchers/report?code=REPORT&limit=10&offset={offset}"
            ))
            .await;
        resp.expect_status(200);
        assert_has_keys(
            &resp.json,
            &["code", "total", "length", "redemptions", "next_cursor"],
        );
        assert_eq!(resp.json["code"], "REPORT");
        assert_eq!(resp.json["total"], 25);
        let page = resp.json["redemptions"].as_array().expect("array").clone();
        let expected_len = (25 - offset).min(10);
        assert_eq!(page.len(), expected_len as usize, "page at offset {offset}");
        assert_eq!(resp.json["length"], expected_len);
        for item in &page {
            assert_has_keys(item, &["redemption_id", "phone_number", "redeemed_at"]);
            parse_time(&item["redeemed_at"]);
        }
        by_offset.extend(page);
    }
    assert_eq!(
        phones_of(&by_offset),
        expected_phones,
        "ordered by winning order"
    );
    for (item, (_, id)) in by_offset.iter().zip(&expected) {
        assert_eq!(&item["redemption_id"], id);
    }

    // Default limit (100) returns everything in one page with next_cursor null.
    let all = server.get("/api/vouchers/report?code=REPORT").await;
    all.expect_status(200);
    assert_eq!(all.json["length"], 25);
    assert_eq!(all.json["next_cursor"], Value::Null);

    // Cursor paging until null.
    let mut by_cursor = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_cursor = None;
    for _ in 0..10 {
        let mut request = server
            .request(Method::GET, "/api/vouchers/report")
            .query(&[("code", "REPORT"), ("limit", "10")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let resp = send(request).await;
        resp.expect_status(200);
        by_cursor.extend(resp.json["redemptions"].as_array().expect("array").clone());
        match &resp.json["next_cursor"] {
            Value::Null => {
                cursor = None;
                break;
            }
            Value::String(next) => {
                first_cursor.get_or_insert(next.clone());
                cursor = Some(next.clone());
            }
            other => panic!("next_cursor must be null or a string: {other}"),
        }
    }
    assert!(
        cursor.is_none(),
        "cursor paging must end with next_cursor null"
    );
    assert_eq!(phones_of(&by_cursor), expected_phones);
    assert_eq!(
        phones_of(&server.report_all("REPORT").await),
        expected_phones
    );

    // offset skips within what follows the cursor.
    let first_cursor = first_cursor.expect("a 10-item page of 25 has a next_cursor");
    let resp = send(
        server
            .request(Method::GET, "/api/vouchers/report")
            .query(&[("code", "REPORT"), ("limit", "10"), ("offset", "5")])
            .query(&[("cursor", &first_cursor)]),
    )
    .await;
    resp.expect_status(200);
    assert_eq!(
        phones_of(resp.json["redemptions"].as_array().expect("array")),
        expected_phones[15..25].to_vec()
    );

    // The seed's form: the same fields as a JSON body on the GET.
    let resp = send(
        server
            .request(Method::GET, "/api/vouchers/report")
            .json(&json!({"code": "REPORT", "limit": 10, "offset": 10})),
    )
    .await;
    resp.expect_status(200);
    assert_eq!(resp.json["total"], 25);
    assert_eq!(
        phones_of(resp.json["redemptions"].as_array().expect("array")),
        expected_phones[10..20].to_vec()
    );

    // Errors.
    for query in [
        "code=REPORT&limit=0",
        "code=REPORT&limit=1001",
        "code=REPORT&limit=-1",
        "code=REPORT&offset=-1",
        "code=REPORT&offset=abc",
    ] {
        let resp = server.get(&format!("/api/vouchers/report?{query}")).await;
        assert_eq!(
            (resp.status, resp.json["error"].as_str()),
            (400, Some("invalid_pagination")),
            "report ?{query} should be 400 invalid_pagination, got {} {}",
            resp.status,
            resp.text
        );
        assert_error_shape(&resp);
    }
    server
        .get("/api/vouchers/report?code=REPORT&cursor=not-a-cursor")
        .await
        .expect_error(400, "invalid_cursor");
    server
        .get("/api/vouchers/report?code=NOSUCH")
        .await
        .expect_error(404, "voucher_not_found");
    server
        .get("/api/vouchers/report?code=bad%20code")
        .await
        .expect_error(400, "invalid_code");
    let empty = server.get("/api/vouchers/report?code=EMPTY").await;
    empty.expect_error(404, "voucher_not_found");
    server.create_voucher("EMPTY", 1, 1).await;
    let empty = server.get("/api/vouchers/report?code=EMPTY").await;
    empty.expect_status(200);
    assert_eq!(
        (empty.json["total"].clone(), empty.json["length"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(empty.json["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_create_duplicate_and_opening_balance() {
    // Goal: profile 201 then 409 profile_exists; an opening balance is a transaction (I5).
    let server = TestServer::start(VOUCHERD).await;
    let user = phone(500);
    let created = server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": user, "balance": 700}),
        )
        .await;
    created.expect_status(201);
    assert_has_keys(&created.json, &["phone_number", "balance", "created_at"]);
    assert_eq!(created.json["phone_number"], user.as_str());
    assert_eq!(created.json["balance"], 700);
    parse_time(&created.json["created_at"]);

    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": user, "balance": 0}),
        )
        .await
        .expect_error(409, "profile_exists");

    for path in [
        format!("/api/profiles/{user}"),
        format!("/api/profiles/{}", encode_phone(&user)),
    ] {
        let resp = server.get(&path).await;
        resp.expect_status(200);
        assert_has_keys(
            &resp.json,
            &["phone_number", "balance", "transactions", "next_cursor"],
        );
        assert_eq!(
            resp.json["balance"], 700,
            "the duplicate create changed nothing"
        );
        let transactions = resp.json["transactions"].as_array().expect("array");
        assert_eq!(
            transactions.len(),
            1,
            "I5: the opening balance is a transaction"
        );
        assert_has_keys(
            &transactions[0],
            &["id", "amount", "reference", "created_at"],
        );
        assert_eq!(transactions[0]["amount"], 700);
        assert_eq!(transactions[0]["reference"], "opening_balance");
        assert_eq!(resp.json["next_cursor"], Value::Null);
    }

    let zero = phone(501);
    server.create_profile(&zero, 0).await;
    let (balance, transactions) = server.profile_all(&zero).await.expect("exists");
    assert_eq!((balance, transactions.len()), (0, 0));

    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": phone(502), "balance": -1}),
        )
        .await
        .expect_error(400, "invalid_amount");
    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": phone(502), "balance": "x"}),
        )
        .await
        .expect_error(400, "invalid_body");
    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": phone(502), "balance": 0, "name": "x"}),
        )
        .await
        .expect_error(400, "invalid_body");
    server
        .post_raw("/api/profiles", "{\"phone_number\": \"+12345678\",")
        .await
        .expect_error(400, "malformed_json");
    server
        .get(&format!("/api/profiles/{}", phone(502)))
        .await
        .expect_error(404, "profile_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_transactions_page_newest_first() {
    // Goal: GET /api/profiles/{phone} pages transactions newest first (limit/offset/cursor).
    let server = TestServer::start(VOUCHERD).await;
    let user = phone(600);
    server.create_profile(&user, 500).await;
    let mut ids = Vec::new();
    for amount in 1..=5 {
        let resp = server
            .transaction(
                json!({"phone_number": user, "amount": amount, "reference": format!("r{amount}")}),
                None,
            )
            .await;
        resp.expect_status(200);
        ids.push(resp.json["id"].clone());
    }
    let newest_first = vec![5, 4, 3, 2, 1, 500];
    let amounts = |items: &[Value]| -> Vec<i64> {
        items
            .iter()
            .map(|t| t["amount"].as_i64().expect("amount"))
            .collect()
    };

    let all = server.get(&format!("/api/profiles/{user}")).await;
    all.expect_status(200);
    assert_eq!(all.json["balance"], 515);
    let items = all.json["transactions"].as_array().expect("array").clone();
    assert_eq!(amounts(&items), newest_first);
    assert_eq!(items[0]["id"], ids[4]);
    assert_eq!(items[0]["reference"], "r5");
    let sum: i64 = amounts(&items).iter().sum();
    assert_eq!(sum, 515, "I5: balance equals the sum of transactions");

    let resp = server
        .get(&format!(
            "/api/profiles/{}?limit=2&offset=1",
            encode_phone(&user)
        ))
        .await;
    resp.expect_status(200);
    assert_eq!(
        amounts(resp.json["transactions"].as_array().expect("array")),
        vec![4, 3]
    );

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut ended = false;
    for _ in 0..10 {
        let mut request = server
            .request(
                Method::GET,
                &format!("/api/profiles/{}", encode_phone(&user)),
            )
            .query(&[("limit", "2")]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let resp = send(request).await;
        resp.expect_status(200);
        let page = resp.json["transactions"].as_array().expect("array").clone();
        assert!(page.len() <= 2);
        paged.extend(page);
        match &resp.json["next_cursor"] {
            Value::Null => {
                ended = true;
                break;
            }
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string: {other}"),
        }
    }
    assert!(ended, "profile paging must end with next_cursor null");
    assert_eq!(amounts(&paged), newest_first);

    for query in ["limit=0", "limit=1001", "offset=-3"] {
        server
            .get(&format!("/api/profiles/{user}?{query}"))
            .await
            .expect_error(400, "invalid_pagination");
    }
    server
        .get(&format!("/api/profiles/{user}?cursor=zzz"))
        .await
        .expect_error(400, "invalid_cursor");
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_credit_debit_and_insufficient_funds() {
    // Goal: a credit creates the wallet; a debit below zero is 409 and changes nothing (I5).
    let server = TestServer::start(VOUCHERD).await;
    let user = phone(700);
    let credit = server
        .transaction(
            json!({"phone_number": user, "amount": 700, "reference": "top-up"}),
            None,
        )
        .await;
    credit.expect_status(200);
    assert_has_keys(&credit.json, TRANSACTION_KEYS);
    assert_eq!(credit.json["phone_number"], user.as_str());
    assert_eq!(credit.json["amount"], 700);
    assert_eq!(credit.json["balance"], 700);
    assert_eq!(credit.json["reference"], "top-up");
    parse_uuid(&credit.json["id"]);
    parse_time(&credit.json["created_at"]);

    let (balance, transactions) = server
        .profile_all(&user)
        .await
        .expect("credit created the wallet");
    assert_eq!(balance, 700);
    assert_eq!(transactions.len(), 1);
    assert_eq!(transactions[0]["id"], credit.json["id"]);

    server
        .transaction(json!({"phone_number": user, "amount": -701}), None)
        .await
        .expect_error(409, "insufficient_funds");
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(
        (balance, transactions.len()),
        (700, 1),
        "I5: a refused debit changes nothing"
    );

    let debit = server
        .transaction(json!({"phone_number": user, "amount": -700}), None)
        .await;
    debit.expect_status(200);
    assert_eq!(debit.json["amount"], -700);
    assert_eq!(
        debit.json["balance"], 0,
        "I5: a debit may reach exactly zero"
    );
    server
        .transaction(json!({"phone_number": user, "amount": -1}), None)
        .await
        .expect_error(409, "insufficient_funds");

    for body in [
        json!({"phone_number": user, "amount": 0}),
        json!({"phone_number": user, "amount": 1.5}),
        json!({"phone_number": user, "amount": -0.25}),
    ] {
        server
            .transaction(body, None)
            .await
            .expect_error(400, "invalid_amount");
    }
    for body in [
        json!({"phone_number": user, "amount": "10"}),
        json!({"phone_number": user}),
        json!({"amount": 10}),
        json!({"phone_number": user, "amount": 10, "reference": 5}),
        json!({"phone_number": user, "amount": 10, "memo": "x"}),
    ] {
        server
            .transaction(body, None)
            .await
            .expect_error(400, "invalid_body");
    }
    server
        .post_raw("/api/transactions", "[1, 2")
        .await
        .expect_error(400, "malformed_json");

    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    let sum: i64 = transactions
        .iter()
        .map(|t| t["amount"].as_i64().expect("amount"))
        .sum();
    assert_eq!(
        (balance, sum),
        (0, 0),
        "I5: balance equals the sum of transactions"
    );
    assert_eq!(transactions.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_idempotency_key() {
    // Goal: an Idempotency-Key replay returns the first answer once; reuse is 409.
    let server = TestServer::start(VOUCHERD).await;
    let user = phone(800);
    let body = json!({"phone_number": user, "amount": 100, "reference": "order-1"});
    let first = server.transaction(body.clone(), Some("key-1")).await;
    first.expect_status(200);
    for _ in 0..3 {
        let replay = server.transaction(body.clone(), Some("key-1")).await;
        replay.expect_status(200);
        assert_eq!(replay.json, first.json, "a replay returns the first answer");
    }
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(
        (balance, transactions.len()),
        (100, 1),
        "the replays moved no money"
    );

    server
        .transaction(
            json!({"phone_number": user, "amount": 200, "reference": "order-1"}),
            Some("key-1"),
        )
        .await
        .expect_error(409, "idempotency_key_reused");
    let (balance, _) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(balance, 100);

    // A debit replay is also applied once.
    let debit = json!({"phone_number": user, "amount": -60});
    let first_debit = server.transaction(debit.clone(), Some("key-2")).await;
    first_debit.expect_status(200);
    let replay = server.transaction(debit, Some("key-2")).await;
    assert_eq!(replay.json, first_debit.json);
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!((balance, transactions.len()), (40, 2));

    // Without a key every call is a new transaction.
    let plain = json!({"phone_number": user, "amount": 1});
    server
        .transaction(plain.clone(), None)
        .await
        .expect_status(200);
    server.transaction(plain, None).await.expect_status(200);
    let (balance, _) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(balance, 42);

    server
        .transaction(body.clone(), Some(""))
        .await
        .expect_error(400, "invalid_idempotency_key");
    server
        .transaction(body.clone(), Some(&"k".repeat(256)))
        .await
        .expect_error(400, "invalid_idempotency_key");
    server
        .transaction(body, Some(&"k".repeat(255)))
        .await
        .expect_status(200);
    let (balance, _) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(balance, 142);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_ready_and_metrics() {
    // Goal: /healthz, /readyz answer JSON; /metrics counts requests by route and outcome.
    let server = TestServer::start(VOUCHERD).await;
    let health = server.get("/healthz").await;
    health.expect_status(200);
    assert_eq!(health.json, json!({"status": "ok"}));
    server.wait_ready().await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.json, json!({"status": "ready"}));

    server.create_voucher("METRICS", 3, 1).await;
    server.redeem(&phone(1), "METRICS").await.expect_status(200);
    server
        .redeem(&phone(1), "METRICS")
        .await
        .expect_error(409, "already_redeemed");
    server
        .redeem(&phone(2), "METRICS")
        .await
        .expect_error(410, "voucher_exhausted");
    server.get("/nope").await.expect_error(404, "not_found");

    let metrics = server.get("/metrics").await;
    metrics.expect_status(200);
    assert!(
        metrics.content_type.starts_with("text/plain")
            || metrics
                .content_type
                .starts_with("application/openmetrics-text"),
        "Prometheus content type, got {:?}",
        metrics.content_type
    );
    let text = &metrics.text;
    assert!(
        text.contains("# TYPE voucherd_"),
        "typed voucherd_ metrics:\n{text}"
    );
    let samples: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("voucherd_"))
        .collect();
    assert!(!samples.is_empty(), "voucherd_ samples:\n{text}");
    for line in &samples {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok(),
            "sample value must be a number: {line}"
        );
    }
    // Request counters by route and status, redemption counters by outcome.
    let expectations = [
        (
            "voucherd_http_requests_total",
            &["route=\"create_voucher\"", "status=\"201\""][..],
            1.0,
        ),
        (
            "voucherd_http_requests_total",
            &["route=\"redeem\"", "status=\"200\""][..],
            1.0,
        ),
        (
            "voucherd_http_requests_total",
            &["route=\"redeem\"", "status=\"409\""][..],
            1.0,
        ),
        (
            "voucherd_http_requests_total",
            &["route=\"redeem\"", "status=\"410\""][..],
            1.0,
        ),
        (
            "voucherd_http_requests_total",
            &["route=\"other\"", "status=\"404\""][..],
            1.0,
        ),
        (
            "voucherd_redemptions_total",
            &["outcome=\"redeemed\""][..],
            1.0,
        ),
        (
            "voucherd_redemptions_total",
            &["outcome=\"already_redeemed\""][..],
            1.0,
        ),
        (
            "voucherd_redemptions_total",
            &["outcome=\"exhausted\""][..],
            1.0,
        ),
    ];
    for (name, labels, expected) in expectations {
        let value = metric_value(text, name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{text}"));
        assert_eq!(value, expected, "{name}{labels:?}");
    }
}

/// The value of the sample `name{...}` whose labels include all of `labels`.
fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (label_text, value) = rest.split_once("} ")?;
        let present: BTreeSet<&str> = label_text.split(',').collect();
        labels
            .iter()
            .all(|l| present.contains(l))
            .then(|| value.split(' ').next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn no_panic_on_garbage() {
    // Goal: hundreds of garbage inputs get JSON answers < 500; the server survives unpanicked.
    let mut server = TestServer::start(VOUCHERD).await;
    server.create_voucher("FUZZ", 1, 5).await;
    let mut rng = Rng::seeded(0x5eed_f022);

    let json_bodies: Vec<String> = vec![
        "null".into(),
        "true".into(),
        "0".into(),
        "\"string\"".into(),
        "[]".into(),
        "{}".into(),
        "[[[[[[[[[[]]]]]]]]]]".into(),
        "[".repeat(5000) + &"]".repeat(5000),
        "{\"a\":".repeat(2000) + "1" + &"}".repeat(2000),
        r#"{"code": null, "amount": null, "limit": null}"#.into(),
        r#"{"code": "FUZZ", "amount": 1e400, "limit": 1}"#.into(),
        r#"{"code": "FUZZ2", "amount": 99999999999999999999999999, "limit": 1}"#.into(),
        r#"{"code": "FUZZ3", "amount": 9223372036854775807, "limit": 10000000}"#.into(),
        r#"{"code": "FUZZ4", "amount": -9223372036854775808, "limit": 1}"#.into(),
        r#"{"code": "FUZZ5", "amount": 1, "limit": 18446744073709551616}"#.into(),
        r#"{"code": "FUZZ6", "amount": 1, "limit": 1, "starts_at": "9999-12-31T23:59:59Z", "expires_at": "+999999-01-01T00:00:00Z"}"#.into(),
        r#"{"code": "FUZZ7", "amount": 1, "limit": 1, "starts_at": "1970-01-01T00:00:00+99:99"}"#.into(),
        r#"{"code": "😀", "amount": 1, "limit": 1}"#.into(),
        r#"{"code": "FUZZ\u0000", "amount": 1, "limit": 1}"#.into(),
        r#"{"phone_number": "+989371209055", "code": "FUZZ", "code": "FUZZ"}"#.into(),
        r#"{"phone_number": "+98937120905５", "code": "FUZZ"}"#.into(),
        r#"{"phone_number": "\ud800", "code": "FUZZ"}"#.into(),
        r#"{"phone_number": ["+989371209055"], "code": {"x": 1}}"#.into(),
        r#"{"phone_number": "+989371209055", "amount": 9223372036854775807}"#.into(),
        r#"{"phone_number": "+989371209055", "amount": -9223372036854775808}"#.into(),
        r#"{"phone_number": "+989371209055", "amount": 1e-7}"#.into(),
        r#"{"phone_number": "+989371209055", "balance": 9223372036854775807}"#.into(),
        r#"{"phone_number": "+989371209055", "amount": 1, "reference": "Ω≈ç√∫˜µ≤≥÷ 𝕿𝖍𝖊 \u202e"}"#.into(),
        r#"{"code": "FUZZ", "limit": 1000000000000, "offset": -99999999999999999999}"#.into(),
        r#"{"code": "FUZZ", "cursor": "\u0000\u0001"}"#.into(),
        "\u{feff}{\"code\": \"FUZZ\"}".into(),
        "{\"code\": \"FUZZ\"} trailing".into(),
        "{\"code\": \"FUZZ\"}{\"code\": \"FUZZ\"}".into(),
    ];
    let post_paths = [
        "/api/vouchers",
        "/api/vouchers/redeem",
        "/api/profiles",
        "/api/transactions",
    ];
    let get_paths = [
        "/api/vouchers?code=%00",
        "/api/vouchers?code=%ZZ",
        "/api/vouchers?code=",
        "/api/vouchers?code=FUZZ&code=FUZZ",
        "/api/vouchers/%FF%FE",
        "/api/vouchers/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/vouchers/..%2F..%2F",
        "/api/vouchers/%F0%9F%98%80",
        "/api/vouchers/FUZZ/redemptions/%2B%2B",
        "/api/vouchers/FUZZ/redemptions/%00",
        "/api/vouchers/FUZZ/redemptions/+98937120905%E2%82%AC",
        "/api/vouchers/FUZZ/redemptions/",
        "/api/vouchers//redemptions/+989371209055",
        "/api/vouchers/report",
        "/api/vouchers/report?code=FUZZ&limit=99999999999999999999",
        "/api/vouchers/report?code=FUZZ&offset=99999999999999999999",
        "/api/vouchers/report?code=FUZZ&offset=18446744073709551615&limit=1000",
        "/api/vouchers/report?code=FUZZ&limit=1e3",
        "/api/vouchers/report?code=FUZZ&cursor=%00%01%02",
        "/api/vouchers/report?code=FUZZ&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/api/vouchers/report?code=FUZZ&cursor=%FF",
        "/api/vouchers/report?code[]=FUZZ",
        "/api/profiles/",
        "/api/profiles/%2B",
        "/api/profiles/%2B989371209055?limit=-0",
        "/api/profiles/+989371209055?cursor=../../",
        "/api/profiles/%E2%80%AE%2B989371209055",
        "/api/profiles/+989371209055/extra",
        "/healthz?x=%00",
        "/readyz/..",
        "/%",
        "/api/%00",
        "/api/vouchers;code=FUZZ",
        "//api//vouchers//FUZZ",
    ];

    let mut answers: Vec<(String, Resp)> = Vec::new();
    for path in post_paths {
        for body in &json_bodies {
            let resp = server.post_raw(path, body.clone()).await;
            answers.push((format!("POST {path} {:.80}", body), resp));
        }
        for len in [1usize, 7, 64, 512, 4096] {
            for _ in 0..4 {
                let bytes = rng.bytes(len);
                let resp = server.post_raw(path, bytes).await;
                answers.push((format!("POST {path} <{len} random bytes>"), resp));
            }
        }
        // No content type at all, and a wrong one.
        let resp = send(server.request(Method::POST, path).body("{}")).await;
        answers.push((format!("POST {path} without content-type"), resp));
        let resp = send(
            server
                .request(Method::POST, path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("code=FUZZ&amount=1"),
        )
        .await;
        answers.push((format!("POST {path} form-encoded"), resp));
        // Garbage idempotency keys.
        for key in ["\t", " ", "ключ", "a\u{7f}b"] {
            if let Ok(value) = reqwest::header::HeaderValue::from_bytes(key.as_bytes()) {
                let resp = send(
                    server
                        .request(Method::POST, path)
                        .header("Idempotency-Key", value)
                        .json(&json!({"phone_number": "+989371209055", "amount": 1})),
                )
                .await;
                answers.push((format!("POST {path} with Idempotency-Key {key:?}"), resp));
            }
        }
    }
    for path in get_paths {
        let resp = server.get(path).await;
        answers.push((format!("GET {path}"), resp));
        for body in json_bodies.iter().take(12) {
            let resp = send(
                server
                    .request(Method::GET, path)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            answers.push((format!("GET {path} with body {:.60}", body), resp));
        }
    }
    let long_path = format!("/api/vouchers/{}", "A".repeat(4000));
    answers.push((
        format!("GET {:.40}", long_path),
        server.get(&long_path).await,
    ));
    let long_phone = format!("/api/profiles/+{}", "9".repeat(3000));
    answers.push((
        format!("GET {:.40}", long_phone),
        server.get(&long_phone).await,
    ));
    for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        for path in post_paths.iter().chain(["/healthz", "/metrics"].iter()) {
            let resp = send(server.request(method.clone(), path).body("{}")).await;
            answers.push((format!("{method} {path}"), resp));
        }
    }

    assert!(
        answers.len() >= 300,
        "a few hundred inputs, got {}",
        answers.len()
    );
    for (what, resp) in &answers {
        assert!(
            resp.status < 500,
            "{what}: server error {} {}",
            resp.status,
            resp.text
        );
        assert!(resp.is_json, "{what}: body is not JSON: {:?}", resp.text);
        if resp.status >= 400 {
            assert_error_shape(resp);
        }
    }

    assert!(server.is_alive(), "the server process is still running");
    let health = server.get("/healthz").await;
    health.expect_status(200);
    server.redeem(&phone(9), "FUZZ").await.expect_status(200);
    assert_no_panic_in_log(&server);
    let distinct: BTreeSet<u16> = answers.iter().map(|(_, r)| r.status).collect();
    eprintln!(
        "no_panic_on_garbage: {} inputs, statuses {distinct:?}",
        answers.len()
    );
}

/// Asserts that `value` is an object holding at least `keys`.
fn assert_has_keys(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"));
    for key in keys {
        assert!(object.contains_key(*key), "missing key `{key}` in {value}");
    }
}
