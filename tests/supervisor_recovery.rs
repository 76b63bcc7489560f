//! A voucher shard whose restart fails (its start reads the ledger, and the
//! PostgreSQL database is down) does not take the supervisor with it: the restart
//! is retried with backoff while `/readyz` says why and requests for that shard get
//! 503 at once; it comes back with the database. When an actor stays down past the
//! restart budget, the app stops with an error (the process would exit 1 and be
//! restarted). The app runs in-process, on a private PostgreSQL server the test
//! stops and starts; the panic is injected through the library API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use voucherd::config::StoreLocation;
use voucherd::Settings;
use voucherd_service::actors::voucher::VoucherShardMsg;
use voucherd_service::readiness::NotReadyReason;
use voucherd_test_support::cluster::pg::PgServer;
use voucherd_test_support::in_process::InProcess;

/// Generous bound on every state change the test waits for.
const WAIT: Duration = Duration::from_secs(60);
/// Bound on one HTTP request: a request for a down shard must not hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn start_app(database: &PgServer, restart_budget_ms: u64) -> InProcess {
    let mut settings = Settings::embedded("unused: the store is PostgreSQL");
    settings.store = StoreLocation::Postgres(database.url());
    settings.actor_restart_budget_ms = restart_budget_ms;
    InProcess::start(settings).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .no_proxy()
        .build()
        .expect("client")
}

fn phone(i: u32) -> String {
    format!("+4916{:08}", i)
}

async fn redeem(client: &reqwest::Client, base: &str, code: &str, user: u32) -> (u16, Value) {
    let response = client
        .post(format!("{base}/api/vouchers/redeem"))
        .json(&json!({"code": code, "phone_number": phone(user)}))
        .send()
        .await
        .expect("a request for a down shard is answered, not left hanging");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The body of `/readyz` once `accept` holds for it (bounded wait).
async fn wait_for_readyz(
    client: &reqwest::Client,
    base: &str,
    what: &str,
    accept: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let response = client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("/readyz answers");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON body");
        if accept(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never showed {what} within {WAIT:?}; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn names(body: &Value, reason: &str) -> bool {
    body["reasons"]
        .as_array()
        .is_some_and(|reasons| reasons.contains(&json!(reason)))
}

async fn create_voucher(client: &reqwest::Client, base: &str, code: &str, limit: u32) {
    let response = client
        .post(format!("{base}/api/vouchers"))
        .json(&json!({"code": code, "amount": 500, "limit": limit}))
        .send()
        .await
        .expect("create voucher");
    assert_eq!(response.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_restart_fails_while_postgres_is_down_comes_back_with_it() {
    // Goal: with PostgreSQL down, a panicked shard cannot restart; the app keeps
    // running, /readyz is 503 (database_unreachable, actor_restarting), its requests
    // get 503 at once; with PostgreSQL back, /readyz is 200 and the shard redeems.
    let mut database = PgServer::start().await;
    let app = start_app(&database, voucherd_core::limits::ACTOR_RESTART_BUDGET_MS).await;
    let client = client();
    create_voucher(&client, &app.base, "PGDOWN", 20).await;
    let (status, body) = redeem(&client, &app.base, "PGDOWN", 1).await;
    assert_eq!(status, 200, "{body}");

    database.stop().await;
    wait_for_readyz(
        &client,
        &app.base,
        "database_unreachable",
        |status, body| status == 503 && names(body, "database_unreachable"),
    )
    .await;
    app.service
        .directory()
        .voucher_shard("PGDOWN")
        .cast(VoucherShardMsg::InjectPanic)
        .expect("shard reachable");
    let readyz = wait_for_readyz(&client, &app.base, "actor_restarting", |status, body| {
        status == 503 && names(body, "actor_restarting")
    })
    .await;
    assert_eq!(readyz["status"], "not_ready");

    // Requests for the down shard are refused at once; others are unaffected
    // by the shard (they may still fail on the database).
    let (status, body) = redeem(&client, &app.base, "PGDOWN", 2).await;
    assert_eq!(
        (status, &body["error"]),
        (503, &json!("unavailable")),
        "a request for a shard that cannot restart: {body}"
    );
    // Several restart attempts fail meanwhile; the supervisor survives them all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !app.has_stopped(),
        "the app must keep running while a restart fails within its budget"
    );
    assert!(app
        .service
        .not_ready_reasons()
        .contains(&NotReadyReason::ActorRestarting));
    // The metrics say the same (alerts watch them).
    let text = app.service.metrics_text();
    for sample in [
        "voucherd_ready 0",
        "voucherd_not_ready{reason=\"actor_restarting\"} 1",
        "voucherd_not_ready{reason=\"draining\"} 0",
    ] {
        assert!(text.contains(sample), "no `{sample}` in:\n{text}");
    }

    database.start_again().await;
    let readyz = wait_for_readyz(&client, &app.base, "ready", |status, _| status == 200).await;
    assert_eq!(readyz, json!({"status": "ready"}));
    let text = app.service.metrics_text();
    assert!(text.contains("voucherd_ready 1"), "{text}");
    assert!(
        !text.contains("voucherd_not_ready{reason=\"actor_restarting\"} 1"),
        "{text}"
    );

    // The restarted shard serves again: fresh users redeem, and the counts agree (I1, I2).
    let mut won = 1;
    for user in 10..15 {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = redeem(&client, &app.base, "PGDOWN", user).await;
            if status == 200 {
                won += 1;
                break;
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "user {user} after recovery: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (status, body) = redeem(&client, &app.base, "PGDOWN", 10).await;
    assert_eq!((status, &body["error"]), (409, &json!("already_redeemed")));
    let voucher: Value = app.voucher(&client, "PGDOWN").await;
    assert_eq!(
        voucher["redeemed"], won,
        "I1/I2: one redemption per winner: {voucher}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_down_past_its_restart_budget_stops_the_app_with_an_error() {
    // Goal: when a shard cannot be restarted within the (here shortened) budget,
    // run_until_stopped returns Err, so the binary exits non-zero (crash-only),
    // and readiness said so.
    let mut database = PgServer::start().await;
    let mut app = start_app(&database, 1_500).await;
    let client = client();
    create_voucher(&client, &app.base, "DOOMED", 5).await;

    database.stop().await;
    app.service
        .directory()
        .voucher_shard("DOOMED")
        .cast(VoucherShardMsg::InjectPanic)
        .expect("shard reachable");
    let ended = app
        .stopped_by_itself(WAIT)
        .await
        .expect("the app stops once the restart budget is spent");
    let error = ended.expect_err("run_until_stopped must return an error");
    assert!(
        error.to_string().contains("could not be restored"),
        "the error says why: {error:#}"
    );
    let reasons = app.service.not_ready_reasons();
    assert!(
        reasons.contains(&NotReadyReason::SupervisorFailed),
        "readiness names the failure: {reasons:?}"
    );
}
