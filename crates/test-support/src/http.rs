//! Talking to a live instance: a bounded client, whole answers, and the paged reads of a
//! report and of a wallet (following `next_cursor` until it is null). Every paged read
//! checks the page's own shape on the way; a transport error or an unexpected status
//! fails the test (nothing here retries).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

/// Pages a paged read may take before the test gives up on it (a bound, not an
/// expectation: the tests' reports and wallets are one page of [`PAGE_LIMIT`]).
const MAX_PAGES: usize = 20_000;
/// The `limit` each page asks for.
const PAGE_LIMIT: &str = "1000";

/// A client with many connections allowed, bounded per request so that a hung server
/// fails the test instead of hanging it.
pub fn client(request_timeout: Duration, connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .pool_max_idle_per_host(1024)
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// One HTTP answer, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
    pub is_json: bool,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        self
    }

    /// Like [`Resp::expect_status`], naming `what` was asked in the failure.
    pub fn expect_status_for(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        self
    }

    /// Asserts an error answer: this status, a JSON body with exactly the keys `error` and
    /// `message`, `error` == `code`, and a non-empty message.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status, self.json.get("error").and_then(Value::as_str)),
            (status, Some(code)),
            "expected {status} {code}, got {} with body {}",
            self.status,
            self.text
        );
        assert_error_shape(self);
        self
    }

    /// The `error` field of an error body ("" when absent).
    pub fn error_code(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }

    pub fn str_field(&self, key: &str) -> &str {
        self.json
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("field `{key}` is not a string in {}", self.text))
    }

    pub fn i64_field(&self, key: &str) -> i64 {
        self.json
            .get(key)
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("field `{key}` is not an integer in {}", self.text))
    }
}

/// Every error body is `{"error": "<code>", "message": "<text>"}` and nothing else.
pub fn assert_error_shape(resp: &Resp) {
    let object = resp.json.as_object().unwrap_or_else(|| {
        panic!(
            "error body is not a JSON object (status {}): {:?}",
            resp.status, resp.text
        )
    });
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    // `already_redeemed` also names the redemption the phone holds (and its
    // status when known); every other error has exactly the two keys.
    let allowed = if object.get("error").and_then(Value::as_str) == Some("already_redeemed") {
        BTreeSet::from(["error", "message", "redemption_id", "status"])
    } else {
        BTreeSet::from(["error", "message"])
    };
    assert!(
        keys.contains("error") && keys.contains("message") && keys.is_subset(&allowed),
        "error body must have the keys error and message (and, for already_redeemed, \
         redemption_id and status) only: {}",
        resp.text
    );
    let error = object["error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty() && error.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "error code must be a non-empty snake_case string: {}",
        resp.text
    );
    assert!(
        object["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message must be a non-empty string: {}",
        resp.text
    );
}

/// Sends a request and reads the whole answer; panics on transport errors.
pub async fn send(request: reqwest::RequestBuilder) -> Resp {
    match try_send(request).await {
        Ok(resp) => resp,
        Err(error) => panic!("HTTP request failed: {error:?}"),
    }
}

/// Sends a request and reads the whole answer; transport errors (including the client
/// timeout) are returned.
pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    Ok(Resp {
        status,
        content_type,
        is_json: parsed.is_some(),
        json: parsed.unwrap_or(Value::Null),
        text,
        headers,
    })
}

/// `+` percent-encoded, as a browser would send it.
pub fn encode_phone(phone: &str) -> String {
    phone.replace('+', "%2B")
}

/// A valid E.164 number for user `n`: `+4477` then 9 digits (13 digits in all).
pub fn phone(n: u64) -> String {
    format!("+4477{n:09}")
}

/// A whole report as served.
#[derive(Debug, Clone)]
pub struct Report {
    /// The `total` the first page announced.
    pub total: u64,
    /// Every redemption, in report (winning) order.
    pub items: Vec<Value>,
}

/// All redemptions of a voucher from `base`, following `next_cursor` until it is null.
/// Each page must answer 200 with an integer `total`, a `redemptions` array and a
/// `length` equal to its size.
pub async fn report_all(client: &reqwest::Client, base: &str, code: &str) -> Report {
    let what = format!("report of {code} from {base}");
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = None;
    for _page in 0..MAX_PAGES {
        let mut query = vec![
            ("code", code.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
        ];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let resp = send(
            client
                .get(format!("{base}/api/vouchers/report"))
                .query(&query),
        )
        .await;
        resp.expect_status_for(200, &what);
        total.get_or_insert(
            resp.json["total"]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: no integer total: {}", resp.text)),
        );
        let page = resp.json["redemptions"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no redemptions array: {}", resp.text));
        assert_eq!(
            resp.json["length"].as_u64(),
            Some(page.len() as u64),
            "report `length` must equal the page size: {}",
            resp.text
        );
        items.extend(page.iter().cloned());
        match &resp.json["next_cursor"] {
            Value::Null => {
                return Report {
                    total: total.unwrap_or_default(),
                    items,
                }
            }
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string, got {other}"),
        }
    }
    panic!("{what}: paging did not end");
}

/// A wallet as served: its balance and all its transactions, newest first.
pub type Wallet = (i64, Vec<Value>);

/// A profile's balance and every transaction (newest first), following `next_cursor`.
/// None when the profile does not exist (404 profile_not_found).
pub async fn profile_all(client: &reqwest::Client, base: &str, phone: &str) -> Option<Wallet> {
    let what = format!("wallet of {phone} from {base}");
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut balance = None;
    for _page in 0..MAX_PAGES {
        let mut query = vec![("limit", PAGE_LIMIT.to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let resp = send(
            client
                .get(format!("{base}/api/profiles/{}", encode_phone(phone)))
                .query(&query),
        )
        .await;
        if resp.status == 404 && balance.is_none() {
            resp.expect_error(404, "profile_not_found");
            return None;
        }
        resp.expect_status_for(200, &what);
        balance.get_or_insert(resp.i64_field("balance"));
        items.extend(
            resp.json["transactions"]
                .as_array()
                .unwrap_or_else(|| panic!("{what}: no transactions array: {}", resp.text))
                .iter()
                .cloned(),
        );
        match &resp.json["next_cursor"] {
            Value::Null => return Some((balance.unwrap_or_default(), items)),
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string, got {other}"),
        }
    }
    panic!("{what}: paging did not end");
}

/// Creates the wallet of `phone` on the service at `base` with `balance`; it must not
/// exist yet.
pub async fn create_profile(client: &reqwest::Client, base: &str, phone: &str, balance: i64) {
    let body = serde_json::json!({"phone_number": phone, "balance": balance});
    send(client.post(format!("{base}/api/profiles")).json(&body))
        .await
        .expect_status_for(201, &format!("create the profile of {phone}"));
}

/// `GET /api/vouchers/{code}`.
pub async fn voucher(client: &reqwest::Client, base: &str, code: &str) -> Resp {
    send(client.get(format!("{base}/api/vouchers/{code}"))).await
}
