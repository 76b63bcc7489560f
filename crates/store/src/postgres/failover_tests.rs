//! What the ledger does with a server that refuses to write, as a standby
//! does after a failover, against a real database: the write is answered
//! `Unavailable` (503, retry later) and never a final refusal, the writer's
//! pool drops the connection instead of recycling it, a read-write session
//! is refused at connect, and readiness counts such a server unreachable.
//! A session made read-only (`default_transaction_read_only`) stands in for
//! the standby. Like `probe_tests`, these need PostgreSQL
//! (`VOUCHERD_TEST_POSTGRES`; a multi-host URL such as `scripts/patroni.sh
//! url`'s works too).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::NoTls;
use voucherd_core::domain::{Timestamp, Voucher};
use voucherd_core::error::Error;
use voucherd_core::ledger::AllInOne;

use super::errors::{Failure, Retry};
use super::fixtures::code;
use super::health::watch_database;
use super::probe_tests::{writer, TestDatabase};
use crate::queue::{Request, WriteAnswer};

/// `config` with every session read-only, as on a standby.
fn read_only(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    config.options("-c default_transaction_read_only=on");
    config.target_session_attrs(TargetSessionAttrs::Any);
    config
}

fn create_voucher() -> Request {
    let voucher = Voucher::new(code(), 100, 10, None, None, Timestamp(1)).expect("valid");
    Request::CreateVoucher(voucher)
}

#[tokio::test]
async fn a_write_a_read_only_server_refuses_is_unavailable_and_drops_its_connection() {
    let (_database, config) = TestDatabase::create().await;

    // The server's own error classifies as not written, retry elsewhere.
    let (client, connection) = read_only(config.clone())
        .connect(NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let error = client
        .batch_execute("INSERT INTO vouchers SELECT * FROM vouchers")
        .await
        .expect_err("a read-only session refuses to write");
    let failure = Failure::from(&error);
    assert!(
        matches!(
            failure,
            Failure::Transient {
                retry: Retry::ReadOnly,
                ..
            }
        ),
        "{failure:?}"
    );

    let refused = writer::<AllInOne>(read_only(config.clone()));
    let answers = refused.commit(&[create_voucher()]).await;
    assert!(
        matches!(
            &answers[0],
            WriteAnswer::Voucher(Err(Error::Unavailable { .. }))
        ),
        "{:?}",
        answers[0]
    );
    // Every attempt's connection was dropped, none went back to the pool.
    assert_eq!(refused.pool.status().size, 0, "{:?}", refused.pool.status());

    // The same write on a writable server succeeds.
    let writer = writer::<AllInOne>(config);
    let answers = writer.commit(&[create_voucher()]).await;
    assert!(
        matches!(&answers[0], WriteAnswer::Voucher(Ok(_))),
        "{:?}",
        answers[0]
    );
}

#[tokio::test]
async fn a_read_write_session_is_refused_by_a_read_only_server() {
    let (_database, config) = TestDatabase::create().await;
    let mut standby = read_only(config);
    standby.target_session_attrs(TargetSessionAttrs::ReadWrite);
    let error = standby
        .connect(NoTls)
        .await
        .err()
        .expect("target_session_attrs=read-write refuses a read-only server");
    // No SQLSTATE: a connection failure, which a retry on a new connection
    // (the next host, once promoted) may cure.
    assert!(error.code().is_none(), "{error:?}");
    assert!(Failure::from(&error).discards_connection());
}

/// Waits up to three probe intervals for `reachable` to read `expected`.
async fn settles_to(reachable: &AtomicBool, expected: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if reachable.load(Ordering::Acquire) == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn readiness_counts_a_read_only_server_unreachable() {
    let (_database, config) = TestDatabase::create().await;
    let mut standby = read_only(config.clone());
    standby.target_session_attrs(TargetSessionAttrs::ReadWrite);
    let reachable = Arc::new(AtomicBool::new(true));
    let (_stop, stopped) = oneshot::channel();
    tokio::spawn(watch_database(standby, reachable.clone(), stopped));
    assert!(
        settles_to(&reachable, false).await,
        "a server refusing writes must not look ready"
    );

    let mut primary = config;
    primary.target_session_attrs(TargetSessionAttrs::ReadWrite);
    let reachable = Arc::new(AtomicBool::new(true));
    let (_stop, stopped) = oneshot::channel();
    tokio::spawn(watch_database(primary, reachable.clone(), stopped));
    assert!(
        !settles_to(&reachable, false).await,
        "a server that writes stays ready"
    );
}
