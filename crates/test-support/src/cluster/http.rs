//! HTTP for the cluster tests: the shared helpers of [`crate::http`] with the
//! cluster's bounds, the redeem a crowd sends, and metric reads.

use std::time::Duration;

pub use crate::http::{send, try_send, voucher, Resp};

/// Upper bound on one HTTP request: a request to a live instance that takes longer is a
/// hang, and fails the test as a transport error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A client with many connections allowed, bounded per request.
pub fn client() -> reqwest::Client {
    crate::http::client(REQUEST_TIMEOUT, Duration::from_secs(5))
}

/// One redeem; transport errors (including the client timeout) come back as Err with
/// their description.
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
    .map_err(|e| format!("{e:?}"))
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
    )
    .await;
    resp.expect_status_for(201, &format!("create voucher {code}"));
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
