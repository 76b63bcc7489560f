//! The wallet rules a client cannot get around, over HTTP against the real binary:
//! references the service writes itself are reserved, and an Idempotency-Key binds
//! the whole request (phone, amount and reference).

use serde_json::{json, Value};
use voucherd_test_support::binary::Binary;
use voucherd_test_support::http::phone;
use voucherd_test_support::server::TestServer;

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

#[tokio::test(flavor = "multi_thread")]
async fn references_the_service_writes_are_reserved() {
    // Goal: a client cannot forge a voucher credit or an opening balance (I3: no
    // credit without its redemption); the service's own references still appear.
    let server = TestServer::start(VOUCHERD).await;
    let user = phone(1);
    server.create_profile(&user, 500).await;
    server.create_voucher("V1", 1_000, 10).await;

    for reference in [
        "voucher:V1",
        "voucher:NOSUCH",
        "opening_balance",
        "VOUCHER:V1",
    ] {
        let forged = json!({"phone_number": user, "amount": 1_000, "reference": reference});
        server
            .transaction(forged.clone(), None)
            .await
            .expect_error(400, "reserved_reference");
        server
            .transaction(forged, Some(&format!("forged-{reference}")))
            .await
            .expect_error(400, "reserved_reference");
    }
    // Nothing changed, and no wallet was opened for another user either.
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!((balance, transactions.len()), (500, 1), "I5: nothing moved");
    let stranger = phone(2);
    server
        .transaction(
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
    server
        .transaction(
            json!({"phone_number": user, "amount": -100, "reference": "refund of voucher:V1"}),
            None,
        )
        .await
        .expect_status(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_binds_phone_amount_and_reference() {
    // Goal: the same Idempotency-Key with another phone, amount or reference is
    // 409 and moves no money; the same request replays the first answer (I5).
    let server = TestServer::start(VOUCHERD).await;
    let (user, other) = (phone(10), phone(11));
    let body = json!({"phone_number": user, "amount": 250, "reference": "order-1"});
    let first = server.transaction(body.clone(), Some("key-1")).await;
    first.expect_status(200);
    let first_id = first.str_field("id").to_owned();

    for reused in [
        json!({"phone_number": other, "amount": 250, "reference": "order-1"}),
        json!({"phone_number": user, "amount": 251, "reference": "order-1"}),
        json!({"phone_number": user, "amount": 250, "reference": "order-2"}),
        json!({"phone_number": user, "amount": 250}),
    ] {
        server
            .transaction(reused, Some("key-1"))
            .await
            .expect_error(409, "idempotency_key_reused");
    }
    assert!(
        server.profile_all(&other).await.is_none(),
        "the other phone got no wallet and no money"
    );

    for _ in 0..3 {
        let replay = server.transaction(body.clone(), Some("key-1")).await;
        replay.expect_status(200);
        assert_eq!(replay.str_field("id"), first_id, "the same transaction id");
        assert_eq!(replay.json, first.json, "the first answer, unchanged");
    }
    let (balance, transactions) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(
        (balance, transactions.len()),
        (250, 1),
        "the balance moved once"
    );
    assert_eq!(transactions[0]["id"], Value::String(first_id));

    // A key first used by another phone is taken for this one too.
    server
        .transaction(
            json!({"phone_number": other, "amount": 40, "reference": "x"}),
            Some("key-2"),
        )
        .await
        .expect_status(200);
    server
        .transaction(
            json!({"phone_number": user, "amount": 40, "reference": "x"}),
            Some("key-2"),
        )
        .await
        .expect_error(409, "idempotency_key_reused");
    let (balance, _) = server.profile_all(&user).await.expect("wallet");
    assert_eq!(balance, 250);
    let (balance, _) = server.profile_all(&other).await.expect("wallet");
    assert_eq!(balance, 40);
}
