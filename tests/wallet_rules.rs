//! The wallet rules a client cannot get around, over HTTP against the real binary:
//! references the service writes itself are reserved.

mod common;

use common::{phone, send, Resp, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

async fn transaction(server: &TestServer, body: Value, key: Option<&str>) -> Resp {
    let mut request = server
        .request(Method::POST, "/api/transactions")
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    send(request).await
}

#[tokio::test(flavor = "multi_thread")]
async fn references_the_service_writes_are_reserved() {
    // Goal: a client cannot forge a voucher credit or an opening balance (I3: no
    // credit without its redemption); the service's own references still appear.
    let server = TestServer::start().await;
    let user = phone(1);
    server
        .post_json(
            "/api/profiles",
            &json!({"phone_number": user, "balance": 500}),
        )
        .await
        .expect_status(201);
    server.create_voucher("V1", 1_000, 10).await;

    for reference in [
        "voucher:V1",
        "voucher:NOSUCH",
        "opening_balance",
        "VOUCHER:V1",
    ] {
        let forged = json!({"phone_number": user, "amount": 1_000, "reference": reference});
        transaction(&server, forged.clone(), None)
            .await
            .expect_error(400, "reserved_reference");
        transaction(&server, forged, Some(&format!("forged-{reference}")))
            .await
            .expect_error(400, "reserved_reference");
    }
    // Nothing changed, and no wallet was opened for another user either.
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!((balance, transactions.len()), (500, 1), "I5: nothing moved");
    let stranger = phone(2);
    transaction(
        &server,
        json!({"phone_number": stranger, "amount": 5, "reference": "voucher:V1"}),
        None,
    )
    .await
    .expect_error(400, "reserved_reference");
    assert!(
        server.profile_all(&stranger).await.is_none(),
        "no wallet opened"
    );

    // The service still writes its own references.
    server.redeem(&user, "V1").await.expect_status(200);
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(balance, 1_500);
    let references: Vec<&str> = transactions
        .iter()
        .filter_map(|t| t["reference"].as_str())
        .collect();
    assert_eq!(references, vec!["voucher:V1", "opening_balance"]);
    // Other references that merely mention a voucher stay free.
    transaction(
        &server,
        json!({"phone_number": user, "amount": -100, "reference": "refund of voucher:V1"}),
        None,
    )
    .await
    .expect_status(200);
}
