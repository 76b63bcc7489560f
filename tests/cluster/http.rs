//! HTTP helpers: a bounded client, whole answers, paged reads of reports and wallets.

use std::time::Duration;

use serde_json::Value;

/// Upper bound on one HTTP request: a request to a live instance that takes longer is a
/// hang, and fails the test as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A client with many connections allowed, bounded per request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(1024)
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// One HTTP answer, read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Resp {
    /// The `error` field of an error body ("" when absent).
    pub fn error_code(&self) -> &str {
        self.json["error"].as_str().unwrap_or_default()
    }

    pub fn expect_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        self
    }
}

/// Sends a request and reads the whole answer; transport errors (including the client
/// timeout) come back as Err with their description.
pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Resp, String> {
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("{e:?}"))?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Resp { status, text, json })
}

/// Sends a request; a transport error fails the test.
pub async fn send(request: reqwest::RequestBuilder, what: &str) -> Resp {
    try_send(request)
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"))
}

/// `+` percent-encoded, as a browser would send it.
pub fn encode_phone(phone: &str) -> String {
    phone.replace('+', "%2B")
}

pub async fn redeem(
    client: &reqwest::Client,
    base: &str,
    phone: &str,
    code: &str,
) -> Result<Resp, String> {
    try_send(
        client
            .post(format!("{base}/api/vouchers/redeem"))
            .json(&serde_json::json!({"phone_number": phone, "code": code})),
    )
    .await
}

pub async fn create_voucher(
    client: &reqwest::Client,
    base: &str,
    code: &str,
    amount: i64,
    limit: u32,
) {
    let resp = send(
        client
            .post(format!("{base}/api/vouchers"))
            .json(&serde_json::json!({"code": code, "amount": amount, "limit": limit})),
        "create voucher",
    )
    .await;
    resp.expect_status(201, &format!("create voucher {code}"));
}

/// `GET /api/vouchers/{code}`.
pub async fn voucher(client: &reqwest::Client, base: &str, code: &str) -> Resp {
    send(
        client.get(format!("{base}/api/vouchers/{code}")),
        &format!("GET voucher {code} from {base}"),
    )
    .await
}

/// One report item: (phone, redemption id), in report order.
pub type ReportItem = (String, String);

/// All redemptions of a voucher from `base`, following `next_cursor` until it is null.
/// Returns the items and the `total` the first page announced.
pub async fn report_all(
    client: &reqwest::Client,
    base: &str,
    code: &str,
) -> (Vec<ReportItem>, u64) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut total = None;
    // Bounded: a report of a limit-500 voucher is one page of 1000; allow many more.
    for _page in 0..100 {
        let mut query = vec![("code", code.to_string()), ("limit", "1000".to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let resp = send(
            client
                .get(format!("{base}/api/vouchers/report"))
                .query(&query),
            &format!("report of {code} from {base}"),
        )
        .await;
        resp.expect_status(200, &format!("report of {code} from {base}"));
        total.get_or_insert(
            resp.json["total"]
                .as_u64()
                .unwrap_or_else(|| panic!("report without an integer total: {}", resp.text)),
        );
        let page = resp.json["redemptions"]
            .as_array()
            .unwrap_or_else(|| panic!("report without a redemptions array: {}", resp.text));
        assert_eq!(
            resp.json["length"].as_u64(),
            Some(page.len() as u64),
            "report `length` must equal the page size: {}",
            resp.text
        );
        for item in page {
            let field = |key: &str| {
                item[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("report item without {key}: {item}"))
                    .to_owned()
            };
            items.push((field("phone_number"), field("redemption_id")));
        }
        match &resp.json["next_cursor"] {
            Value::Null => return (items, total.unwrap_or_default()),
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor must be null or a string, got {other}"),
        }
    }
    panic!("report paging of {code} from {base} did not end");
}

/// A wallet as served: its balance and all its transactions, newest first.
pub type Wallet = (i64, Vec<Value>);

/// A profile's balance and every transaction (following `next_cursor`); None on 404.
pub async fn profile_all(client: &reqwest::Client, base: &str, phone: &str) -> Option<Wallet> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut balance = None;
    for _page in 0..100 {
        let mut query = vec![("limit", "1000".to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let what = format!("wallet of {phone} from {base}");
        let resp = send(
            client
                .get(format!("{base}/api/profiles/{}", encode_phone(phone)))
                .query(&query),
            &what,
        )
        .await;
        if resp.status == 404 && balance.is_none() {
            assert_eq!(
                resp.error_code(),
                "profile_not_found",
                "{what}: {}",
                resp.text
            );
            return None;
        }
        resp.expect_status(200, &what);
        balance.get_or_insert(
            resp.json["balance"]
                .as_i64()
                .unwrap_or_else(|| panic!("{what}: balance is not an integer: {}", resp.text)),
        );
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
    panic!("wallet paging of {phone} from {base} did not end");
}

/// The value of an unlabelled metric in `/metrics` (None when the instance does not
/// answer or has no such line).
pub async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let resp = try_send(
        client
            .get(format!("{base}/metrics"))
            .timeout(Duration::from_secs(2)),
    )
    .await
    .ok()?;
    if resp.status != 200 {
        return None;
    }
    resp.text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}
