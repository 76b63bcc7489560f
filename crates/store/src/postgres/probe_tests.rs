//! Commit-outcome probes against a real database: for each kind of batch, the
//! probe its writes leave misses the batch when it was rolled back and finds
//! it once committed, which is what `Writer::resolve` relies on after a lost
//! COMMIT reply. Like the conformance suite, these tests need PostgreSQL
//! (`VOUCHERD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `scripts/services.sh up` starts one)
//! and create a database each; an unreachable server fails them, never skips them.

use super::fixtures::{claim, code, phone};
use super::writer::{apply_batch, apply_waves};
use std::marker::PhantomData;
use std::sync::Arc;

use tokio_postgres::NoTls;
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, voucher_reference, RedemptionStatus, Timestamp, Voucher,
};
use voucherd_core::error::Error;
use voucherd_core::ledger::{
    HalfKind, NewProfile, NewTransaction, Resolution, VoucherHalf, WalletHalf,
};
use voucherd_metrics::Metrics;

use super::outcome::{Probe, Progress};
use super::schema::migrate_database;
use super::writer::Writer;
use super::{build_pool, parse_url, WRITE_POOL_CONNECTIONS};
use crate::queue::{Request, WriteAnswer};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test, dropped when the test ends.
pub(super) struct TestDatabase {
    admin: tokio_postgres::Config,
    name: String,
}

impl TestDatabase {
    /// Creates and migrates the database; answers it and its config.
    pub(super) async fn create() -> (Self, tokio_postgres::Config) {
        let url = server_url();
        let admin = parse_url(&url).expect("a valid PostgreSQL URL");
        let name = format!("voucherd_probe_{}", Uuid::new_v4().simple());
        execute(&admin, &format!("CREATE DATABASE {name}")).await;
        let mut config = admin.clone();
        config.dbname(&name);
        migrate_database(&config).await.expect("migrate");
        (Self { admin, name }, config)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot block on a future.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            runtime.block_on(execute(&admin, &sql));
        })
        .join();
    }
}

/// The server the tests use: `VOUCHERD_TEST_POSTGRES`, else the default.
fn server_url() -> String {
    std::env::var("VOUCHERD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

async fn execute(config: &tokio_postgres::Config, sql: &str) {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|error| {
        let cause = std::error::Error::source(&error)
            .map_or_else(|| error.to_string(), |source| format!("{error}: {source}"));
        panic!(
            "PostgreSQL is unreachable at {}: {cause}. This test needs a PostgreSQL server: \
             start it with `scripts/services.sh up` (or run everything with \
             `scripts/test.sh`), or set VOUCHERD_TEST_POSTGRES to a server's URL.",
            server_url()
        )
    });
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

/// A writer of half `H` (`writer::<VoucherHalf>(config)`).
pub(super) fn writer<H: HalfKind>(config: tokio_postgres::Config) -> Writer<H> {
    Writer {
        pool: build_pool(config, WRITE_POOL_CONNECTIONS).expect("a pool"),
        half: PhantomData,
        metrics: Arc::new(Metrics::new()),
    }
}

/// Applies `requests` as one batch and commits it or rolls it back; answers
/// the batch's probe and outcomes.
async fn run<H: HalfKind>(
    writer: &Writer<H>,
    requests: &[Request],
    commit: bool,
) -> (Option<Probe>, Vec<WriteAnswer>) {
    let mut client = writer.pool.get().await.expect("a connection");
    let mut progress = Progress::new(requests.len());
    if commit {
        let applied = apply_batch::<H>(&mut client, requests, &mut progress).await;
        applied.expect("apply and commit");
    } else {
        let transaction = client.transaction().await.expect("begin");
        let applied = apply_waves::<H>(&transaction, requests, &mut progress).await;
        applied.expect("apply");
        transaction.rollback().await.expect("roll back");
    }
    let probe = progress.probe.clone();
    (
        probe,
        progress.into_outcomes().expect("every request answered"),
    )
}

/// Runs the batch rolled back, then committed, probing after each.
async fn assert_probe_tells<H: HalfKind>(
    writer: &Writer<H>,
    requests: &[Request],
    what: &str,
) -> Vec<WriteAnswer> {
    let (probe, _) = run(writer, requests, false).await;
    let probe = probe.unwrap_or_else(|| panic!("{what}: the batch writes, so it has a probe"));
    let found = writer.probe(&probe).await.expect("probe");
    assert!(!found, "{what}: rolled back, yet {probe:?} found it");
    let (probe, outcomes) = run(writer, requests, true).await;
    let probe = probe.unwrap_or_else(|| panic!("{what}: the batch writes, so it has a probe"));
    let found = writer.probe(&probe).await.expect("probe");
    assert!(found, "{what}: committed, yet {probe:?} missed it");
    outcomes
}

fn settle(n: u64, resolution: Resolution) -> Request {
    Request::Settle(redemption_id(&code(), phone(n)), resolution)
}

fn void() -> Resolution {
    Resolution::Void {
        reason: "refused".to_owned(),
    }
}

fn status_of(outcome: &WriteAnswer) -> Option<RedemptionStatus> {
    match outcome {
        WriteAnswer::Redemption(Ok(redemption)) => Some(redemption.status),
        _ => None,
    }
}

#[tokio::test]
async fn probes_tell_whether_a_voucher_half_batch_committed() {
    let (_database, config) = TestDatabase::create().await;
    let writer = writer::<VoucherHalf>(config);
    let voucher = Voucher::new(code(), 100, 10, None, None, Timestamp(1)).expect("valid");
    run(&writer, &[Request::CreateVoucher(voucher)], true).await;

    let outcomes = assert_probe_tells(&writer, &[claim(1, 1), claim(2, 2)], "pending claims").await;
    assert_eq!(status_of(&outcomes[0]), Some(RedemptionStatus::Pending));
    let credit = Resolution::Credited { balance: 100 };
    let outcomes = assert_probe_tells(&writer, &[settle(1, credit)], "a credit").await;
    assert_eq!(status_of(&outcomes[0]), Some(RedemptionStatus::Credited));
    let outcomes = assert_probe_tells(&writer, &[settle(2, void())], "a void").await;
    assert_eq!(status_of(&outcomes[0]), Some(RedemptionStatus::Void));
    // The void moves the claim's row away: the probe must follow it.
    let batch = [claim(3, 3), settle(3, void())];
    let outcomes = assert_probe_tells(&writer, &batch, "a claim voided in its batch").await;
    assert_eq!(status_of(&outcomes[1]), Some(RedemptionStatus::Void));
    // Claimed and voided again: the void row of slot 3 is rewritten.
    let batch = [claim(3, 4), settle(3, void())];
    let outcomes = assert_probe_tells(&writer, &batch, "a void voided again").await;
    assert_eq!(status_of(&outcomes[1]), Some(RedemptionStatus::Void));
}

#[tokio::test]
async fn a_probe_tells_whether_a_final_refusal_committed() {
    let (_database, config) = TestDatabase::create().await;
    let writer = writer::<WalletHalf>(config);
    let profile = NewProfile {
        phone: phone(1),
        opening_balance: i64::MAX,
        at: Timestamp(1),
    };
    run(&writer, &[Request::CreateProfile(profile)], true).await;
    let refused = NewTransaction {
        id: redemption_id(&code(), phone(1)),
        replayable: true,
        phone: phone(1),
        amount: 1,
        reference: voucher_reference(&code()),
        at: Timestamp(2),
        refusal_is_final: true,
    };
    let outcomes = assert_probe_tells(
        &writer,
        &[Request::Transact(refused.clone())],
        "a final refusal",
    )
    .await;
    assert!(matches!(
        &outcomes[0],
        WriteAnswer::Transaction(Err(Error::Invalid { .. }))
    ));
    let (_, outcomes) = run(&writer, &[Request::Transact(refused)], true).await;
    let again = &outcomes[0];
    assert!(
        matches!(
            again,
            WriteAnswer::Transaction(Err(Error::CreditRefused { .. }))
        ),
        "{again:?}"
    );
}

/// Pool connections plan every execution (see `plan_each_execution`).
#[tokio::test]
async fn pool_connections_plan_each_execution() {
    let (_database, config) = TestDatabase::create().await;
    let pool = build_pool(config, 2).expect("pool");
    let client = pool.get().await.expect("connection");
    let row = client
        .query_one("SHOW plan_cache_mode", &[])
        .await
        .expect("show");
    assert_eq!(row.get::<_, String>(0), "force_custom_plan");
}
