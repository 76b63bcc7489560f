//! The SQL ledger on PostgreSQL or CockroachDB: the store several voucherd
//! instances can share.
//!
//! Its job is the same atomic redemption as the embedded ledger's, written so
//! that the database itself protects the invariants even against a buggy or
//! racing instance: the primary key (code, slot) and the CHECK of the slot
//! against the voucher's limit enforce I1, UNIQUE (code, phone) enforces I2, a
//! redemption and its wallet credit commit in one transaction (I3), nobody is
//! answered before that commit (I4), and CHECK (balance >= 0) backs the balance
//! check made under the wallet row's lock (I5). The schema lives in
//! `migrations/`, embedded in the binary and applied at open.
//!
//! Writes are group-committed like the embedded ledger's: write methods queue
//! their operation synchronously (submission order is apply order) and one
//! writer task applies whatever is queued, up to [`MAX_COMMIT_BATCH_OPS`], in
//! ONE database transaction made of a few set-based statements. Claims never
//! update a per-voucher row: a batch inserts its redemptions with
//! `ON CONFLICT DO NOTHING` and tells the refused ones apart with one lookup,
//! adds each winner's credits to its wallet with one upsert (a phone may win
//! several vouchers in one batch), and appends the wallet transactions with one
//! insert. Profiles and client transactions read the wallets they touch with
//! `FOR UPDATE`, decide in Rust in submission order, then write the same way.
//!
//! A store may hold one half of the ledger (its type parameter, a
//! [`HalfKind`]; see `--role`). In a
//! voucher half a claim inserts its redemption as pending (status 0) and
//! credits nobody; a settle credits it (status 1 and the wallet's balance) or
//! voids it, moving the row to `void_redemptions`, which frees its slot and
//! user key while the same constraints keep guarding every live redemption.
//! In the wallet half a credit whose refusal is final leaves its id in
//! `refused_transactions`, which refuses the id again.
//!
//! The SQL sticks to what CockroachDB also accepts: no advisory locks, no
//! PL/pgSQL; `INSERT … ON CONFLICT … RETURNING`, multi-array `unnest` and
//! `SELECT … FOR UPDATE` carry the claim path.
//!
//! Unlike the embedded ledger, a transaction's `sequence` counts the wallet's
//! own transactions: it increases along each wallet's history (which is what
//! cursors need) and is assigned under the wallet's row lock, so it stays
//! ordered when several instances write to one database.
//!
//! One file per concern: `schema` (migrations), `writer` (the batch writer and
//! its retries), `waves` (wave planning), `claims` (vouchers and the claim
//! path), `settles` (settling a voucher half's pending redemptions),
//! `wallet_writes` (profiles and client transactions, refusal marks), `outcome`
//! (whether a lost commit landed), `reads`, `health` (the probe behind
//! readiness) and `errors` (failure classification).

use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Hook, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::sync::oneshot;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::queue::{stop_process_after_writer_panic, Request, Waiter, WriteQueue};
use voucherd_core::domain::{
    Page, PageRequest, PhoneNumber, Redemption, ReportEntry, Timestamp, Voucher, VoucherCode,
    VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::Resolution;
use voucherd_core::ledger::{
    AllInOne, Claim, Durable, HalfKind, HoldsVouchers, HoldsWallets, LedgerFuture, LedgerHealth,
    NewProfile, NewTransaction, PendingLedger, SlotUsage, VoucherLedger, WalletLedger,
};
use voucherd_metrics::Metrics;

mod claims;
mod errors;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod fixtures;
mod health;
mod outcome;
#[cfg(test)]
mod probe_tests;
mod reads;
mod schema;
mod settles;
mod wallet_writes;
mod waves;
mod writer;

pub use schema::migrate;

use errors::{describe, Failure};
use health::watch_database;
use reads::{
    column, read_error, read_pending, read_redemption, read_row, read_rows, read_wallet,
    report_entry, stored_phone, stored_u32, voucher_status, SELECT_REPORT, SELECT_SLOT_GAPS,
    SELECT_VOUCHER, SELECT_VOUCHERS, SELECT_WINNERS,
};
use schema::migrate_database;
use writer::Writer;

/// Connections serving reads. Reads are occasional (a shard loading a voucher,
/// reports, wallet pages) while the hot path is the writer's, so a few suffice
/// and the database keeps its connection slots for other instances.
const READ_POOL_CONNECTIONS: usize = 4;
/// Connections of the writer: one applies batches; the second lets it find out
/// whether a commit landed while the broken connection is still being dropped.
const WRITE_POOL_CONNECTIONS: usize = 2;
/// How long taking a connection from a pool may wait, including opening it.
const POOL_WAIT_TIMEOUT_MS: u64 = 5_000;
/// How long opening TCP connections to the database may take, shared among the
/// URL's hosts (tokio-postgres applies `connect_timeout` to each host it
/// tries): when a lost primary's address swallows packets instead of refusing
/// them, the next host is still tried within the pool's wait.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
const _: () = assert!(CONNECT_TIMEOUT_MS <= POOL_WAIT_TIMEOUT_MS);

/// The PostgreSQL/CockroachDB ledger holding half `H` (see [`HalfKind`]; the
/// default is both halves, role `all`). Cheap to share: a queue sender and a pool.
pub struct PostgresLedger<H: HalfKind = AllInOne> {
    reads: Pool,
    writes: WriteQueue,
    /// Whether the database answered its last probe (see [`watch_database`]).
    reachable: Arc<AtomicBool>,
    /// Dropped with the ledger, which ends the probe task.
    _stop_watching: oneshot::Sender<()>,
    half: PhantomData<H>,
}

impl PostgresLedger {
    /// Connects to the database `url` names (`postgres://user@host:port/db`),
    /// applies the schema, and starts the writer task of an all-in-one ledger.
    /// Needs a Tokio runtime.
    pub async fn open(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Self::open_half(url, metrics).await
    }
}

impl<H: HalfKind> PostgresLedger<H> {
    /// Like [`PostgresLedger::open`], for a store holding half `H`
    /// (`PostgresLedger::<VoucherHalf>::open_half(..)`): in a voucher half
    /// claims are born pending and settled later.
    pub async fn open_half(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let config = parse_url(url)?;
        migrate_database(&config).await?;
        let reachable = Arc::new(AtomicBool::new(true));
        let (stop_watching, stopped) = oneshot::channel();
        tokio::spawn(watch_database(config.clone(), reachable.clone(), stopped));
        let reads = build_pool(config.clone(), READ_POOL_CONNECTIONS)?;
        let writer = Writer::<H> {
            pool: build_pool(config, WRITE_POOL_CONNECTIONS)?,
            half: PhantomData,
            metrics,
        };
        let (writes, queue) = WriteQueue::bounded();
        tokio::spawn(async move {
            let run = std::panic::AssertUnwindSafe(writer.run(queue));
            if futures::FutureExt::catch_unwind(run).await.is_err() {
                stop_process_after_writer_panic();
            }
        });
        Ok(Self {
            reads,
            writes,
            reachable,
            _stop_watching: stop_watching,
            half: PhantomData,
        })
    }

    /// Runs `work` on a pooled connection.
    fn read<T, F>(&self, work: impl FnOnce(Object) -> F + Send + 'static) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let pool = self.reads.clone();
        Box::pin(async move {
            let client = pool
                .get()
                .await
                .map_err(|e| Failure::from(e).into_error())?;
            work(client).await
        })
    }
}

/// The connection settings of `url`: `postgres://user:pass@host:port/db`, or
/// with several hosts, `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`
/// (a primary and its standbys, e.g. under Patroni): each connection tries the
/// hosts in order and keeps the first that accepts writes, so after a failover
/// new connections find the new primary. A URL naming several hosts without
/// `target_session_attrs` gets `read-write`: the ledger writes, and a standby
/// would refuse every write.
fn parse_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    // The URL may hold a password: the error says what is wrong, not the URL.
    let mut config = tokio_postgres::Config::from_str(url).map_err(|error| {
        anyhow::anyhow!("the PostgreSQL store URL is invalid: {}", describe(&error))
    })?;
    let hosts = host_count(&config);
    if hosts > 1 && !url.contains("target_session_attrs") {
        config.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(per_host(Duration::from_millis(CONNECT_TIMEOUT_MS), hosts));
    }
    if config.get_application_name().is_none() {
        config.application_name("voucherd");
    }
    Ok(config)
}

/// How many hosts a connection may try.
fn host_count(config: &tokio_postgres::Config) -> usize {
    config
        .get_hosts()
        .len()
        .max(config.get_hostaddrs().len())
        .max(1)
}

/// `budget` shared among `hosts` connection attempts.
fn per_host(budget: Duration, hosts: usize) -> Duration {
    budget / u32::try_from(hosts.max(1)).unwrap_or(u32::MAX)
}

/// Every ledger statement takes arrays of a batch's rows, from one element to
/// thousands, against tables that start empty and grow by thousands of rows a
/// second. A generic plan, cached after a few executions, is costed for ten
/// elements and for the table as its statistics last saw it: on a fresh
/// database that is a sequential scan, kept until autovacuum analyzes the
/// table, so each batch reads the whole table (seen in the split-mode
/// benchmark: the wallet's replay lookup scanning every transaction). So each
/// connection plans every execution for its parameters. A server without the
/// setting (older CockroachDB) keeps its default, which is logged.
async fn plan_each_execution(client: &tokio_postgres::Client) {
    if let Err(error) = client
        .batch_execute("SET plan_cache_mode = force_custom_plan")
        .await
    {
        tracing::warn!(error = %describe(&error), "the database keeps its plan cache mode");
    }
}

fn build_pool(config: tokio_postgres::Config, connections: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Checking that the connection is open is enough: a statement that
            // finds it broken fails its batch, which is retried on a new one.
            // An open connection never turns into a standby's (PostgreSQL
            // restarts to demote a primary, which closes its connections); one
            // whose writes are refused as read-only is dropped by the writer
            // rather than recycled (see `Failure::discards_connection`).
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Some(Duration::from_millis(POOL_WAIT_TIMEOUT_MS));
    Ok(Pool::builder(manager)
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                plan_each_execution(client).await;
                Ok(())
            })
        }))
        .max_size(connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .recycle_timeout(wait)
        .build()?)
}

impl<H: HalfKind> Durable for PostgresLedger<H> {
    fn shutdown(&self) -> LedgerFuture<()> {
        self.writes.shutdown()
    }

    fn health(&self) -> LedgerHealth {
        if self.reachable.load(Ordering::Acquire) {
            LedgerHealth::Healthy
        } else {
            LedgerHealth::Unreachable
        }
    }
}

impl<H: HoldsWallets> WalletLedger for PostgresLedger<H> {
    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet> {
        self.writes
            .submit(Request::CreateProfile(profile), Waiter::Wallet)
    }

    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction> {
        self.writes
            .submit(Request::Transact(transaction), Waiter::Transaction)
    }

    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>> {
        self.read(move |client| read_wallet(client, phone, page))
    }
}

impl<H: HoldsVouchers> PendingLedger for PostgresLedger<H> {
    fn settle(&self, id: Uuid, resolution: Resolution) -> LedgerFuture<Redemption> {
        self.writes
            .submit(Request::Settle(id, resolution), Waiter::Redemption)
    }

    fn pending(&self, claimed_before: Timestamp, limit: usize) -> LedgerFuture<Vec<Redemption>> {
        self.read(move |client| read_pending(client, claimed_before, limit))
    }
}

impl<H: HoldsVouchers> VoucherLedger for PostgresLedger<H> {
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus> {
        self.writes
            .submit(Request::CreateVoucher(voucher), Waiter::Voucher)
    }

    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption> {
        self.writes
            .submit(Request::Claim(claim), Waiter::Redemption)
    }

    fn voucher(&self, code: VoucherCode) -> LedgerFuture<Option<VoucherStatus>> {
        self.read(move |client| async move {
            let row = read_row(&client, SELECT_VOUCHER, &[&code.as_str()]).await?;
            row.as_ref().map(voucher_status).transpose()
        })
    }

    fn vouchers(&self) -> LedgerFuture<Vec<VoucherStatus>> {
        self.read(move |client| async move {
            let rows = read_rows(&client, SELECT_VOUCHERS, &[]).await?;
            let mut all = rows
                .iter()
                .map(voucher_status)
                .collect::<Result<Vec<_>>>()?;
            // Byte order of the codes, like the embedded ledger, whatever the
            // database's collation.
            all.sort_by(|a, b| a.voucher.code.cmp(&b.voucher.code));
            Ok(all)
        })
    }

    fn redemption(
        &self,
        code: VoucherCode,
        phone: PhoneNumber,
    ) -> LedgerFuture<Option<Redemption>> {
        self.read(move |client| read_redemption(client, code, phone))
    }

    fn report(&self, code: VoucherCode, page: PageRequest) -> LedgerFuture<Page<ReportEntry>> {
        self.read(move |client| async move {
            let statement = client
                .prepare_cached(SELECT_REPORT)
                .await
                .map_err(read_error)?;
            // A cursor past every slot reads as an empty page.
            let after = i64::try_from(page.cursor.unwrap_or(0)).unwrap_or(i64::MAX);
            // One row more than asked tells whether there is a next page.
            let rows = client
                .query(
                    &statement,
                    &[
                        &code.as_str(),
                        &after,
                        &(i64::from(page.limit) + 1),
                        &i64::from(page.offset),
                    ],
                )
                .await
                .map_err(read_error)?;
            let more = rows.len() > page.limit as usize;
            let items = rows
                .iter()
                .take(page.limit as usize)
                .map(report_entry)
                .collect::<Result<Vec<_>>>()?;
            let next_cursor = more
                .then(|| items.last().map(|e| u64::from(e.slot)))
                .flatten();
            Ok(Page { items, next_cursor })
        })
    }

    fn winners(&self, code: VoucherCode) -> LedgerFuture<Vec<PhoneNumber>> {
        self.read(move |client| async move {
            let rows = read_rows(&client, SELECT_WINNERS, &[&code.as_str()]).await?;
            rows.iter()
                .map(|row| stored_phone(column(row, 0)?))
                .collect()
        })
    }

    fn slot_usage(&self, code: VoucherCode) -> LedgerFuture<SlotUsage> {
        self.read(move |client| async move {
            let rows = read_rows(&client, SELECT_SLOT_GAPS, &[&code.as_str()]).await?;
            let mut usage = SlotUsage::default();
            for row in &rows {
                let first = stored_u32(column(row, 0)?, "slot")?;
                let last = stored_u32(column(row, 1)?, "slot")?;
                if first == 0 {
                    usage.highest_taken = last;
                } else {
                    usage.gaps.extend(first..=last);
                }
            }
            usage.gaps.sort_unstable();
            let gap_count = u32::try_from(usage.gaps.len())
                .map_err(|_| Error::storage("more gaps than slots"))?;
            usage.taken = usage
                .highest_taken
                .checked_sub(gap_count)
                .ok_or_else(|| Error::storage("more gaps than slots below the highest"))?;
            Ok(usage)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_host_url_tries_each_host_for_a_primary() {
        let url = "postgres://app:s3cret@h1:5432,h2:5433/ledger?target_session_attrs=read-write";
        let config = parse_url(url).expect("a multi-host URL is valid");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|host| format!("{host:?}"))
            .collect();
        assert_eq!(hosts, [r#"Tcp("h1")"#, r#"Tcp("h2")"#]);
        assert_eq!(config.get_ports(), [5432, 5433]);
        assert_eq!(config.get_dbname(), Some("ledger"));
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(
            config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // Both hosts' TCP connects fit in the pool's wait.
        assert_eq!(
            config.get_connect_timeout(),
            Some(&Duration::from_millis(CONNECT_TIMEOUT_MS / 2))
        );
        assert_eq!(config.get_application_name(), Some("voucherd"));
    }

    #[test]
    fn several_hosts_without_session_attrs_ask_for_a_primary() {
        let config = parse_url("postgres://app@h1,h2/ledger").expect("valid");
        assert_eq!(
            config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // Said explicitly (CockroachDB nodes all write), it is kept.
        let any = parse_url("postgres://app@h1,h2/ledger?target_session_attrs=any").expect("valid");
        assert_eq!(any.get_target_session_attrs(), TargetSessionAttrs::Any);
        // One host: as before.
        let single = parse_url("postgres://app@h1/ledger").expect("valid");
        assert_eq!(single.get_target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(
            single.get_connect_timeout(),
            Some(&Duration::from_millis(CONNECT_TIMEOUT_MS))
        );
        // The URL's own timeout is kept.
        let own = parse_url("postgres://app@h1,h2/ledger?connect_timeout=1").expect("valid");
        assert_eq!(own.get_connect_timeout(), Some(&Duration::from_secs(1)));
    }

    #[test]
    fn an_invalid_url_is_refused_without_its_password() {
        let error = parse_url("postgres://app:s3cret@h1:5432,h2:x/ledger")
            .expect_err("a port must be a number")
            .to_string();
        assert!(error.contains("invalid"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
