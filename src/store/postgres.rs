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
//! To keep set-based statements equivalent to applying the batch one operation
//! at a time, a batch is cut into waves: an operation waits for a later wave
//! when it competes with an earlier operation of the current wave for a slot or
//! a user's key, or when statement order within a wave (vouchers, then claims,
//! then wallet operations) would otherwise apply it before an earlier operation
//! on the same voucher or wallet. Almost every batch is a single wave.
//!
//! A batch that fails (lost connection, serialization failure, deadlock with
//! another instance) is retried whole with backoff; nothing of it was
//! acknowledged. When the connection breaks while COMMIT is in flight, the
//! outcome is unknown, so before retrying the writer looks for one row the
//! batch wrote: if it is there the batch committed and its answers stand,
//! otherwise it is retried, and if the database cannot be asked the batch is
//! answered `Storage` rather than risk applying a transaction twice.
//!
//! A task asks the database `SELECT 1` every second on a connection of its
//! own; while it gets no answer, the ledger reports itself unreachable and
//! readiness says `database_unreachable`, so load balancers send the traffic
//! elsewhere until the database is back.
//!
//! The SQL sticks to what CockroachDB also accepts: no advisory locks, no
//! PL/pgSQL; `INSERT … ON CONFLICT … RETURNING`, multi-array `unnest` and
//! `SELECT … FOR UPDATE` carry the claim path.
//!
//! Unlike the embedded ledger, a transaction's `sequence` counts the wallet's
//! own transactions: it increases along each wallet's history (which is what
//! cursors need) and is assigned under the wallet's row lock, so it stays
//! ordered when several instances write to one database.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use deadpool_postgres::GenericClient;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, Transaction,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::queue::{stop_process_after_writer_panic, Queued, WriteQueue};
use super::{Claim, Ledger, LedgerFuture, LedgerHealth, NewProfile, NewTransaction, SlotUsage};
use crate::domain::{
    redemption_id, voucher_reference, wallet, Page, PageRequest, PhoneNumber, Redemption,
    ReportEntry, Timestamp, Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction,
    OPENING_BALANCE_REFERENCE,
};
use crate::error::{Error, Result};
use crate::limits::{
    ACTOR_CALL_TIMEOUT_MS, DATABASE_PROBE_INTERVAL_MS, DATABASE_PROBE_TIMEOUT_MS,
    MAX_COMMIT_BATCH_OPS,
};
use crate::metrics::Metrics;

/// The schema, applied in order at every open; each file is idempotent.
const MIGRATIONS: [(&str, &str); 1] = [(
    "0001_initial",
    include_str!("../../migrations/0001_initial.sql"),
)];

/// Connections serving reads. Reads are occasional (a shard loading a voucher,
/// reports, wallet pages) while the hot path is the writer's, so a few suffice
/// and the database keeps its connection slots for other instances.
const READ_POOL_CONNECTIONS: usize = 4;
/// Connections of the writer: one applies batches; the second lets it find out
/// whether a commit landed while the broken connection is still being dropped.
const WRITE_POOL_CONNECTIONS: usize = 2;
/// How long taking a connection from a pool may wait, including opening it.
const POOL_WAIT_TIMEOUT_MS: u64 = 5_000;
/// How long opening a TCP connection to the database may take.
const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long one attempt at a batch may take, from BEGIN to the end of COMMIT.
/// A full batch takes tens of milliseconds; the rest is room for lock waits on
/// rows another instance holds. Shorter than a caller's wait so that a retry
/// can still answer in time.
const BATCH_ATTEMPT_TIMEOUT_MS: u64 = 4_000;
/// Retries of a failed batch after the first attempt.
const MAX_BATCH_RETRIES: usize = 3;
/// First delay before a retry; it doubles (with jitter) up to the maximum.
const RETRY_MIN_DELAY_MS: u64 = 10;
/// Longest delay between two attempts at a batch.
const RETRY_MAX_DELAY_MS: u64 = 400;
/// Attempts to find out whether a batch whose COMMIT reply was lost committed.
/// With the delays above they span about three seconds: long enough to ride out
/// a database restart, short enough to answer within a caller's wait.
const MAX_RESOLVE_ATTEMPTS: usize = 10;
/// Attempts at applying the schema when instances migrate one database at once.
const MAX_MIGRATION_RETRIES: usize = 5;

// A batch's attempts and delays together must fit in a caller's wait, or every
// retry would answer a caller that has already given up.
const _: () = assert!(
    BATCH_ATTEMPT_TIMEOUT_MS * 2 + RETRY_MIN_DELAY_MS < ACTOR_CALL_TIMEOUT_MS,
    "two attempts at a batch must fit in one actor call"
);
const _: () = assert!(RETRY_MIN_DELAY_MS <= RETRY_MAX_DELAY_MS);

// The claim path. Slots come as BIGINT so that parameter types are the same on
// PostgreSQL (INT = 4 bytes) and CockroachDB (INT = 8 bytes).

/// Inserts a wave's claims; a claim on an unknown voucher or outside 1..=limit
/// joins nothing, and one whose slot or user key is taken is skipped, so the
/// returned rows are exactly the winners.
const CLAIM_SLOTS: &str = "\
    INSERT INTO redemptions (code, slot, slot_limit, phone, id, amount, redeemed_at) \
    SELECT c.code, c.slot, v.slot_limit, c.phone, c.id, v.amount, c.redeemed_at \
    FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::uuid[], $5::bigint[]) \
         AS c (code, slot, phone, id, redeemed_at) \
    JOIN vouchers AS v ON v.code = c.code \
    WHERE c.slot BETWEEN 1 AND v.slot_limit \
    ON CONFLICT DO NOTHING \
    RETURNING code, slot, amount";

/// Why the claims of a wave that were not inserted lost: the voucher's limit
/// (NULL when there is no voucher) and the slot of the user's redemption (NULL
/// when the user holds none).
const CLASSIFY_REFUSED_CLAIMS: &str = "\
    SELECT c.position, v.slot_limit, r.slot \
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS c (code, phone, position) \
    LEFT JOIN vouchers AS v ON v.code = c.code \
    LEFT JOIN redemptions AS r ON r.code = c.code AND r.phone = c.phone";

/// Adds each phone's summed credits and their count to its wallet, opening it
/// if needed, and returns the head after the batch's credits.
const CREDIT_WALLETS: &str = "\
    INSERT INTO wallets (phone, balance, last_sequence, created_at) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
    ON CONFLICT (phone) DO UPDATE \
    SET balance = wallets.balance + excluded.balance, \
        last_sequence = wallets.last_sequence + excluded.last_sequence \
    RETURNING phone, balance, last_sequence";

const INSERT_TRANSACTIONS: &str = "\
    INSERT INTO wallet_transactions \
        (phone, sequence, id, replayable, amount, reference, created_at, balance_after) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::bool[], \
                         $5::bigint[], $6::text[], $7::bigint[], $8::bigint[])";

const FIND_REPLAYS: &str = "\
    SELECT id, phone, sequence, amount, reference, created_at, balance_after \
    FROM wallet_transactions WHERE replayable AND id = ANY($1::uuid[])";

/// Locks the heads of the wallets a wave's profiles and transactions touch,
/// in one order so that two instances cannot deadlock on them.
const LOCK_WALLETS: &str = "\
    SELECT phone, balance, last_sequence, created_at FROM wallets \
    WHERE phone = ANY($1::bigint[]) ORDER BY phone FOR UPDATE";

/// Opens wallets the lock found missing; a row not returned was opened by
/// another instance meanwhile, and the batch is retried.
const OPEN_WALLETS: &str = "\
    INSERT INTO wallets (phone, balance, last_sequence, created_at) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
    ON CONFLICT (phone) DO NOTHING RETURNING phone";

const UPDATE_WALLETS: &str = "\
    UPDATE wallets SET balance = u.balance, last_sequence = u.last_sequence \
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u (phone, balance, last_sequence) \
    WHERE wallets.phone = u.phone";

const INSERT_VOUCHER: &str = "\
    INSERT INTO vouchers (code, amount, slot_limit, starts_at, expires_at, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING RETURNING code";

// Rows that tell whether a batch committed (see `Probe`).
const PROBE_VOUCHER: &str = "SELECT 1 FROM vouchers WHERE code = $1 AND created_at = $2";
const PROBE_REDEMPTION: &str = "SELECT 1 FROM redemptions \
    WHERE code = $1 AND slot = $2 AND phone = $3 AND redeemed_at = $4";
const PROBE_TRANSACTION: &str =
    "SELECT 1 FROM wallet_transactions WHERE phone = $1 AND sequence = $2 AND id = $3";
const PROBE_WALLET: &str = "SELECT 1 FROM wallets WHERE phone = $1 AND created_at = $2";

// Reads.
const SELECT_VOUCHER: &str = "\
    SELECT v.code, v.amount, v.slot_limit, v.starts_at, v.expires_at, v.created_at, \
           (SELECT count(*) FROM redemptions AS r WHERE r.code = v.code) \
    FROM vouchers AS v WHERE v.code = $1";
const SELECT_VOUCHERS: &str = "\
    SELECT v.code, v.amount, v.slot_limit, v.starts_at, v.expires_at, v.created_at, \
           (SELECT count(*) FROM redemptions AS r WHERE r.code = v.code) \
    FROM vouchers AS v";
const SELECT_REDEMPTION: &str = "\
    SELECT r.slot, r.amount, r.redeemed_at, t.balance_after \
    FROM redemptions AS r \
    JOIN wallet_transactions AS t ON t.phone = r.phone AND t.id = r.id \
    WHERE r.code = $1 AND r.phone = $2";
const SELECT_REPORT: &str = "\
    SELECT slot, phone, redeemed_at FROM redemptions \
    WHERE code = $1 AND slot > $2 ORDER BY slot LIMIT $3 OFFSET $4";
const SELECT_WINNERS: &str = "SELECT phone FROM redemptions WHERE code = $1 ORDER BY slot";
/// The free ranges below the highest taken slot, and one last row (first = 0)
/// holding that highest slot; one statement, so one consistent snapshot.
const SELECT_SLOT_GAPS: &str = "\
    WITH taken AS ( \
        SELECT slot, lag(slot, 1, 0::BIGINT) OVER (ORDER BY slot) AS previous \
        FROM redemptions WHERE code = $1) \
    SELECT previous + 1, slot - 1 FROM taken WHERE slot > previous + 1 \
    UNION ALL \
    SELECT 0, coalesce(max(slot), 0) FROM taken";
const SELECT_WALLET: &str =
    "SELECT balance, last_sequence, created_at FROM wallets WHERE phone = $1";
const SELECT_WALLET_PAGE: &str = "\
    SELECT id, sequence, amount, reference, created_at, balance_after \
    FROM wallet_transactions WHERE phone = $1 AND sequence < $2 \
    ORDER BY sequence DESC LIMIT $3 OFFSET $4";

type Reply<T> = oneshot::Sender<Result<T>>;

/// A write, as queued for the writer.
enum Request {
    CreateVoucher(Voucher),
    Claim(Claim),
    CreateProfile(NewProfile),
    Transact(NewTransaction),
}

/// Whoever waits for a write's outcome.
enum Waiter {
    Voucher(Reply<VoucherStatus>),
    Redemption(Reply<Redemption>),
    Wallet(Reply<Wallet>),
    Transaction(Reply<WalletTransaction>),
}

/// What a write came to, before the batch commits.
#[derive(Debug, Clone)]
enum Outcome {
    Voucher(Result<VoucherStatus>),
    Redemption(Result<Redemption>),
    Wallet(Result<Wallet>),
    Transaction(Result<WalletTransaction>),
}

impl Outcome {
    /// The outcome of `request` when its batch failed as a whole.
    fn failed(request: &Request, error: Error) -> Self {
        match request {
            Request::CreateVoucher(_) => Outcome::Voucher(Err(error)),
            Request::Claim(_) => Outcome::Redemption(Err(error)),
            Request::CreateProfile(_) => Outcome::Wallet(Err(error)),
            Request::Transact(_) => Outcome::Transaction(Err(error)),
        }
    }
}

impl Waiter {
    /// Sends the outcome. A caller that stopped waiting (its request timed out)
    /// is not an error here.
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (Waiter::Voucher(reply), Outcome::Voucher(result)) => {
                let _ = reply.send(result);
            }
            (Waiter::Redemption(reply), Outcome::Redemption(result)) => {
                let _ = reply.send(result);
            }
            (Waiter::Wallet(reply), Outcome::Wallet(result)) => {
                let _ = reply.send(result);
            }
            (Waiter::Transaction(reply), Outcome::Transaction(result)) => {
                let _ = reply.send(result);
            }
            (waiter, _) => {
                tracing::error!("ledger outcome does not match its operation");
                waiter.fail(Error::storage(
                    "ledger outcome does not match its operation",
                ));
            }
        }
    }

    fn fail(self, error: Error) {
        match self {
            Waiter::Voucher(reply) => drop(reply.send(Err(error))),
            Waiter::Redemption(reply) => drop(reply.send(Err(error))),
            Waiter::Wallet(reply) => drop(reply.send(Err(error))),
            Waiter::Transaction(reply) => drop(reply.send(Err(error))),
        }
    }
}

/// The PostgreSQL/CockroachDB ledger. Cheap to share: a queue sender and a pool.
pub struct PostgresLedger {
    reads: Pool,
    writes: WriteQueue<(Request, Waiter)>,
    /// Whether the database answered its last probe (see [`watch_database`]).
    reachable: Arc<AtomicBool>,
    /// Dropped with the ledger, which ends the probe task.
    _stop_watching: oneshot::Sender<()>,
}

impl PostgresLedger {
    /// Connects to the database `url` names (`postgres://user@host:port/db`),
    /// applies the schema, and starts the writer task. Needs a Tokio runtime.
    pub async fn open(url: &str, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let config = parse_url(url)?;
        migrate_database(&config).await?;
        let reachable = Arc::new(AtomicBool::new(true));
        let (stop_watching, stopped) = oneshot::channel();
        tokio::spawn(watch_database(config.clone(), reachable.clone(), stopped));
        let reads = build_pool(config.clone(), READ_POOL_CONNECTIONS)?;
        let writer = Writer {
            pool: build_pool(config, WRITE_POOL_CONNECTIONS)?,
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
        })
    }

    fn submit<T: Send + 'static>(
        &self,
        request: Request,
        waiter: fn(Reply<T>) -> Waiter,
    ) -> LedgerFuture<T> {
        let (reply, answer) = oneshot::channel();
        self.writes.submit((request, waiter(reply)), answer)
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

/// Checks every [`DATABASE_PROBE_INTERVAL_MS`] that the database answers
/// `SELECT 1` and records the answer in `reachable`, which feeds readiness.
/// The probe has a connection of its own, so a pool busy with writes never makes
/// a healthy database look down; a connection broken by a database restart
/// fails once, so a failed probe is tried again at once on a fresh connection
/// before the database counts as unreachable. Ends when `stopped` resolves (the
/// ledger was dropped).
async fn watch_database(
    config: tokio_postgres::Config,
    reachable: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut client = None;
    let mut down_since: Option<Instant> = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(DATABASE_PROBE_INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        let mut answer = select_one(&config, &mut client).await;
        if answer.is_err() {
            answer = select_one(&config, &mut client).await;
        }
        match (answer, down_since) {
            (Ok(()), Some(since)) => {
                tracing::info!(
                    unreachable_ms = since.elapsed().as_millis() as u64,
                    "the ledger database answers again"
                );
                reachable.store(true, Ordering::Release);
                down_since = None;
            }
            (Err(error), None) => {
                tracing::warn!(%error, "the ledger database does not answer");
                reachable.store(false, Ordering::Release);
                down_since = Some(Instant::now());
            }
            _ => {}
        }
    }
}

/// One bounded `SELECT 1` on the probe's connection, connecting first if it
/// has none or it closed; a failed probe drops the connection.
async fn select_one(
    config: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<(), String> {
    let open = client.take().filter(|current| !current.is_closed());
    let attempt = async move {
        let current = match open {
            Some(current) => current,
            None => {
                let (fresh, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
                tokio::spawn(connection);
                fresh
            }
        };
        current
            .simple_query("SELECT 1")
            .await
            .map_err(|e| describe(&e))?;
        Ok::<_, String>(current)
    };
    let limit = Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS);
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(current)) => {
            *client = Some(current);
            Ok(())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {DATABASE_PROBE_TIMEOUT_MS} ms")),
    }
}

/// Applies the schema to the database `url` names: what `voucherd migrate` runs.
/// Safe to run any number of times, also from several instances at once.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    migrate_database(&parse_url(url)?).await
}

fn parse_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    // The URL may hold a password: the error says what is wrong, not the URL.
    let mut config = tokio_postgres::Config::from_str(url).map_err(|error| {
        anyhow::anyhow!("the PostgreSQL store URL is invalid: {}", describe(&error))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS));
    }
    if config.get_application_name().is_none() {
        config.application_name("voucherd");
    }
    Ok(config)
}

fn build_pool(config: tokio_postgres::Config, connections: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Checking that the connection is open is enough: a statement that
            // finds it broken fails its batch, which is retried on a new one.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let wait = Some(Duration::from_millis(POOL_WAIT_TIMEOUT_MS));
    Ok(Pool::builder(manager)
        .max_size(connections)
        .runtime(Runtime::Tokio1)
        .wait_timeout(wait)
        .create_timeout(wait)
        .recycle_timeout(wait)
        .build()?)
}

async fn migrate_database(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let (client, connection) = config.connect(NoTls).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot connect to the PostgreSQL store: {}",
            describe(&error)
        )
    })?;
    let connection = tokio::spawn(connection);
    for (name, sql) in MIGRATIONS {
        // Instances starting together may race on CREATE … IF NOT EXISTS, which
        // PostgreSQL reports as a unique violation in its catalog: try again.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_times(MAX_MIGRATION_RETRIES)
            .with_jitter();
        (|| client.batch_execute(sql))
            .retry(backoff)
            .when(|error| Failure::from(error).is_transient())
            .await
            .map_err(|error| {
                anyhow::anyhow!("applying migration {name} failed: {}", describe(&error))
            })?;
        tracing::debug!(migration = name, "schema applied");
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Why an attempt at a batch (or a read) failed, in the terms the retry needs.
#[derive(Debug)]
enum Failure {
    /// Nothing was committed and another attempt may succeed: the connection
    /// broke (`connection`) or the transaction lost against another writer.
    Transient { cause: String, connection: bool },
    /// Nothing was committed and another attempt would fail the same way.
    Permanent { cause: String },
    /// The connection broke during COMMIT and whether it committed could not be
    /// found out.
    Unresolved { cause: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { cause, .. }
            | Failure::Permanent { cause }
            | Failure::Unresolved { cause } => f.write_str(cause),
        }
    }
}

impl Failure {
    fn connection(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            connection: true,
        }
    }

    fn conflict(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            connection: false,
        }
    }

    fn permanent(cause: impl Into<String>) -> Self {
        Failure::Permanent {
            cause: cause.into(),
        }
    }

    fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient { .. })
    }

    /// True when a failure during COMMIT leaves the outcome unknown: the reply
    /// to COMMIT was lost, not a refusal of it.
    fn leaves_commit_unknown(&self) -> bool {
        matches!(
            self,
            Failure::Transient {
                connection: true,
                ..
            }
        )
    }

    /// The domain error callers see once no attempt is left.
    fn into_error(self) -> Error {
        match self {
            // Nothing was written: the caller may try again later.
            Failure::Transient { cause, .. } => Error::unavailable(cause),
            // Whether it was written is unknown, but every write of the ledger is
            // safe to repeat: a redemption has a stable id and key (a retry is
            // answered `AlreadyRedeemed` if it did commit), and so does a
            // transaction sent with an Idempotency-Key. So: retry later (503).
            Failure::Unresolved { cause } => Error::unavailable(cause),
            Failure::Permanent { cause } => Error::storage(cause),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::from(&error)
    }
}

/// The error and its causes on one line: the driver's own message is only its
/// kind ("db error"), the server's message is in the source.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<&tokio_postgres::Error> for Failure {
    fn from(error: &tokio_postgres::Error) -> Self {
        let cause = describe(error);
        let Some(state) = error.code() else {
            // Without a SQLSTATE the driver reports a closed or broken
            // connection, a timeout, or a protocol error, which a new connection
            // may cure; the remaining kinds (a column type mismatch) fail again,
            // and the retry is bounded.
            return Failure::connection(cause);
        };
        let connection_lost = state.code().starts_with("08")
            || *state == SqlState::ADMIN_SHUTDOWN
            || *state == SqlState::CRASH_SHUTDOWN
            || *state == SqlState::CANNOT_CONNECT_NOW
            || *state == SqlState::TOO_MANY_CONNECTIONS
            // CockroachDB: "result is ambiguous", the commit may have happened.
            || *state == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN;
        // Conflicts with a concurrent writer: a retry reads the winner's rows
        // and turns the clash into the right business answer (a unique
        // violation here means another instance inserted the same key first;
        // the set-based statements never raise one on their own).
        let conflict = *state == SqlState::T_R_SERIALIZATION_FAILURE
            || *state == SqlState::T_R_DEADLOCK_DETECTED
            || *state == SqlState::LOCK_NOT_AVAILABLE
            || *state == SqlState::UNIQUE_VIOLATION
            || *state == SqlState::CHECK_VIOLATION;
        if connection_lost {
            Failure::connection(cause)
        } else if conflict {
            Failure::conflict(cause)
        } else {
            Failure::permanent(cause)
        }
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => Failure::from(error),
            PoolError::Timeout(_) => Failure::connection(format!("database connection: {error}")),
            other => Failure::permanent(format!("database connection pool: {other}")),
        }
    }
}

fn read_error(error: tokio_postgres::Error) -> Error {
    Failure::from(error).into_error()
}

/// Runs a read statement (prepared once per connection) and returns its rows.
async fn read_rows(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(read_error)?;
    client.query(&statement, params).await.map_err(read_error)
}

/// Runs a read statement that finds at most one row.
async fn read_row(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(read_error)?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(read_error)
}

/// A column of a row, without the panic of `Row::get` on a type mismatch.
fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(read_error)
}

fn stored_phone(value: i64) -> Result<PhoneNumber> {
    u64::try_from(value)
        .map(PhoneNumber::from_stored)
        .map_err(|_| Error::storage(format!("stored phone {value} is negative")))
}

fn stored_u32(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::storage(format!("stored {what} {value} out of range")))
}

fn stored_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::storage(format!("stored {what} {value} out of range")))
}

/// Every phone is at most 15 digits (checked at the edge), so it fits an i64.
fn phone_column(phone: PhoneNumber) -> i64 {
    phone.stored() as i64
}

impl Ledger for PostgresLedger {
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus> {
        self.submit(Request::CreateVoucher(voucher), Waiter::Voucher)
    }

    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption> {
        self.submit(Request::Claim(claim), Waiter::Redemption)
    }

    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet> {
        self.submit(Request::CreateProfile(profile), Waiter::Wallet)
    }

    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction> {
        self.submit(Request::Transact(transaction), Waiter::Transaction)
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
        self.read(move |client| async move {
            let row = read_row(
                &client,
                SELECT_REDEMPTION,
                &[&code.as_str(), &phone_column(phone)],
            )
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some(Redemption {
                id: redemption_id(&code, phone),
                slot: stored_u32(column(&row, 0)?, "slot")?,
                amount: column(&row, 1)?,
                redeemed_at: Timestamp(column(&row, 2)?),
                balance: column(&row, 3)?,
                code,
                phone,
            }))
        })
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
                .map(|row| {
                    Ok(ReportEntry {
                        slot: stored_u32(column(row, 0)?, "slot")?,
                        phone: stored_phone(column(row, 1)?)?,
                        redeemed_at: Timestamp(column(row, 2)?),
                    })
                })
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

    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>> {
        self.read(move |mut client| async move {
            // The head and the page come from one snapshot, so the balance
            // matches the newest transaction shown.
            let transaction = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(read_error)?;
            let head = transaction
                .prepare_cached(SELECT_WALLET)
                .await
                .map_err(read_error)?;
            let Some(head) = transaction
                .query_opt(&head, &[&phone_column(phone)])
                .await
                .map_err(read_error)?
            else {
                return Ok(None);
            };
            let wallet = Wallet {
                phone,
                balance: column(&head, 0)?,
                created_at: Timestamp(column(&head, 2)?),
            };
            let last_sequence: i64 = column(&head, 1)?;
            let before = match page.cursor {
                None => i64::MAX,
                // A cursor is the sequence of one of this wallet's transactions.
                Some(cursor) => match i64::try_from(cursor) {
                    Ok(cursor) if (1..=last_sequence).contains(&cursor) => cursor,
                    _ => {
                        return Err(Error::invalid(
                            "invalid_cursor",
                            "cursor must be a next_cursor this service returned",
                        ))
                    }
                },
            };
            let statement = transaction
                .prepare_cached(SELECT_WALLET_PAGE)
                .await
                .map_err(read_error)?;
            let rows = transaction
                .query(
                    &statement,
                    &[
                        &phone_column(phone),
                        &before,
                        &(i64::from(page.limit) + 1),
                        &i64::from(page.offset),
                    ],
                )
                .await
                .map_err(read_error)?;
            transaction.commit().await.map_err(read_error)?;
            let more = rows.len() > page.limit as usize;
            let items = rows
                .iter()
                .take(page.limit as usize)
                .map(|row| {
                    Ok(WalletTransaction {
                        id: column(row, 0)?,
                        phone,
                        sequence: stored_u64(column(row, 1)?, "sequence")?,
                        amount: column(row, 2)?,
                        reference: column(row, 3)?,
                        created_at: Timestamp(column(row, 4)?),
                        balance_after: column(row, 5)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let next_cursor = more.then(|| items.last().map(|t| t.sequence)).flatten();
            Ok(Some((wallet, Page { items, next_cursor })))
        })
    }

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

fn voucher_status(row: &Row) -> Result<VoucherStatus> {
    let code: String = column(row, 0)?;
    let starts_at: Option<i64> = column(row, 3)?;
    let expires_at: Option<i64> = column(row, 4)?;
    Ok(VoucherStatus {
        voucher: Voucher {
            code: VoucherCode::parse(&code).map_err(Error::storage)?,
            amount: column(row, 1)?,
            limit: stored_u32(column(row, 2)?, "limit")?,
            starts_at: starts_at.map(Timestamp),
            expires_at: expires_at.map(Timestamp),
            created_at: Timestamp(column(row, 5)?),
        },
        redeemed: stored_u32(column(row, 6)?, "redemption count")?,
    })
}

/// The single task that writes: it owns the group commit.
struct Writer {
    pool: Pool,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn run(self, mut queue: mpsc::Receiver<Queued<(Request, Waiter)>>) {
        let mut requests = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut waiters = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut shutdowns = Vec::new();
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Queued::Write((request, waiter)) => {
                        requests.push(request);
                        waiters.push(waiter);
                    }
                    Queued::Shutdown(done) => {
                        // Refuse new writes; those already queued are still
                        // applied, since recv drains a closed queue.
                        shutdowns.push(done);
                        queue.close();
                    }
                }
                if requests.len() < MAX_COMMIT_BATCH_OPS {
                    next = queue.try_recv().ok();
                }
            }
            if requests.is_empty() {
                continue;
            }
            let outcomes = self.commit(&requests).await;
            requests.clear();
            for (waiter, outcome) in waiters.drain(..).zip(outcomes) {
                waiter.answer(outcome);
            }
        }
        tracing::info!("ledger writer stopped");
        for done in shutdowns {
            let _ = done.send(());
        }
    }

    /// Applies one batch, retrying it whole on transient failures; returns one
    /// outcome per request.
    async fn commit(&self, requests: &[Request]) -> Vec<Outcome> {
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_delay(Duration::from_millis(RETRY_MAX_DELAY_MS))
            .with_max_times(MAX_BATCH_RETRIES)
            .with_jitter();
        let result = (|| self.attempt(requests))
            .retry(backoff)
            .when(Failure::is_transient)
            .notify(|failure, delay| {
                tracing::warn!(
                    error = %failure,
                    operations = requests.len(),
                    delay_ms = delay.as_millis() as u64,
                    "ledger batch not committed; retrying"
                );
            })
            .await;
        match result {
            Ok(outcomes) => {
                self.metrics
                    .observe_ledger_commit(requests.len(), started.elapsed());
                outcomes
            }
            Err(failure) => {
                tracing::error!(error = %failure, operations = requests.len(), "ledger batch failed");
                let error = failure.into_error();
                requests
                    .iter()
                    .map(|request| Outcome::failed(request, error.clone()))
                    .collect()
            }
        }
    }

    async fn attempt(&self, requests: &[Request]) -> Result<Vec<Outcome>, Failure> {
        let mut client = self.pool.get().await?;
        let mut progress = Progress::new(requests.len());
        let limit = Duration::from_millis(BATCH_ATTEMPT_TIMEOUT_MS);
        let run = apply_batch(&mut client, requests, &mut progress);
        let failure = match tokio::time::timeout(limit, run).await {
            Ok(Ok(())) => return progress.into_outcomes(),
            Ok(Err(failure)) => {
                drop(client);
                failure
            }
            Err(_) => {
                // The connection is somewhere inside the protocol: never hand
                // it out again. Closing it rolls back whatever was not committed.
                drop(Object::take(client));
                Failure::connection("a ledger batch did not finish in time")
            }
        };
        if progress.committing && failure.leaves_commit_unknown() {
            return self.resolve(progress, failure).await;
        }
        Err(failure)
    }

    /// After COMMIT's reply was lost: answers the batch if it committed, asks
    /// for a retry if it did not, and gives up if that cannot be told.
    async fn resolve(&self, progress: Progress, failure: Failure) -> Result<Vec<Outcome>, Failure> {
        let Some(probe) = progress.probe.clone() else {
            // The batch wrote nothing: its answers hold either way.
            return progress.into_outcomes();
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_delay(Duration::from_millis(RETRY_MAX_DELAY_MS))
            .with_max_times(MAX_RESOLVE_ATTEMPTS);
        let committed = (|| self.probe(&probe))
            .retry(backoff)
            .when(Failure::is_transient)
            .await;
        match committed {
            Ok(true) => {
                tracing::warn!(error = %failure, "ledger commit reply lost; the batch committed");
                progress.into_outcomes()
            }
            Ok(false) => Err(failure),
            Err(unknown) => Err(Failure::Unresolved {
                cause: format!("commit outcome unknown ({failure}); checking failed: {unknown}"),
            }),
        }
    }

    async fn probe(&self, probe: &Probe) -> Result<bool, Failure> {
        let client = self.pool.get().await?;
        let row = match probe {
            Probe::Voucher { code, created_at } => {
                client.query_opt(PROBE_VOUCHER, &[code, created_at]).await?
            }
            Probe::Redemption {
                code,
                slot,
                phone,
                redeemed_at,
            } => {
                client
                    .query_opt(PROBE_REDEMPTION, &[code, slot, phone, redeemed_at])
                    .await?
            }
            Probe::Transaction {
                phone,
                sequence,
                id,
            } => {
                client
                    .query_opt(PROBE_TRANSACTION, &[phone, sequence, id])
                    .await?
            }
            Probe::Wallet { phone, created_at } => {
                client.query_opt(PROBE_WALLET, &[phone, created_at]).await?
            }
        };
        Ok(row.is_some())
    }
}

/// One row a batch wrote, exact enough that finding it proves the batch
/// committed (a batch commits whole or not at all).
#[derive(Debug, Clone)]
enum Probe {
    Voucher {
        code: String,
        created_at: i64,
    },
    Redemption {
        code: String,
        slot: i64,
        phone: i64,
        redeemed_at: i64,
    },
    Transaction {
        phone: i64,
        sequence: i64,
        id: Uuid,
    },
    Wallet {
        phone: i64,
        created_at: i64,
    },
}

/// What an attempt has decided so far. It lives outside the attempt's future
/// so that it survives a timeout during COMMIT.
struct Progress {
    outcomes: Vec<Option<Outcome>>,
    probe: Option<Probe>,
    committing: bool,
}

impl Progress {
    fn new(operations: usize) -> Self {
        Self {
            outcomes: vec![None; operations],
            probe: None,
            committing: false,
        }
    }

    fn decide(&mut self, index: usize, outcome: Outcome) {
        self.outcomes[index] = Some(outcome);
    }

    fn wrote(&mut self, probe: impl FnOnce() -> Probe) {
        if self.probe.is_none() {
            self.probe = Some(probe());
        }
    }

    fn into_outcomes(self) -> Result<Vec<Outcome>, Failure> {
        self.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Failure::permanent("a ledger operation was left undecided"))
            })
            .collect()
    }
}

/// Applies every request in one transaction, wave by wave, and commits.
async fn apply_batch(
    client: &mut Object,
    requests: &[Request],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let transaction = client.transaction().await?;
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    while !pending.is_empty() {
        let (wave, deferred) = plan_wave(requests, &pending);
        apply_wave(&transaction, requests, &wave, progress).await?;
        pending = deferred;
    }
    progress.committing = true;
    transaction.commit().await?;
    Ok(())
}

/// What two operations of one batch may compete for, besides a voucher's
/// code (which only orders claims against the voucher's creation).
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    /// A user's key for a voucher (I2).
    User(&'a str, u64),
    /// A slot of a voucher (I1).
    Slot(&'a str, u32),
    /// A wallet's head (I5).
    Wallet(u64),
    /// A transaction's id, an idempotency key when replayable.
    TransactionId(Uuid),
}

fn keys(request: &Request) -> Vec<Key<'_>> {
    match request {
        Request::CreateVoucher(_) => Vec::new(),
        Request::Claim(claim) => {
            let code = claim.code.as_str();
            vec![
                Key::User(code, claim.phone.stored()),
                Key::Slot(code, claim.slot),
                Key::Wallet(claim.phone.stored()),
            ]
        }
        Request::CreateProfile(profile) => vec![Key::Wallet(profile.phone.stored())],
        Request::Transact(transaction) => vec![
            Key::Wallet(transaction.phone.stored()),
            Key::TransactionId(transaction.id),
        ],
    }
}

/// Splits `pending` (in submission order) into the next wave and the rest.
///
/// Within a wave, vouchers are created first, then claims are applied, then
/// wallet operations in order, so the wave gives the same answers as applying
/// its operations one by one exactly when no claim competes with another for a
/// slot or a user's key, no claim follows a wallet operation on its wallet, and
/// no voucher creation follows a claim of its code. An operation breaking that
/// rule waits, and so does every later operation that must stay behind a
/// waiting one: one sharing a key with it, a claim of a voucher whose creation
/// waits, a creation of a voucher one of whose claims waits.
fn plan_wave(requests: &[Request], pending: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut wave = Vec::with_capacity(pending.len());
    let mut deferred = Vec::new();
    // What the waiting operations hold.
    let mut deferred_keys = HashSet::new();
    let mut deferred_creations = HashSet::new();
    let mut deferred_claim_codes = HashSet::new();
    // What the wave holds.
    let mut claimed = HashSet::new();
    let mut claimed_codes = HashSet::new();
    let mut wallet_phones = HashSet::new();
    for &index in pending {
        let request = &requests[index];
        let request_keys = keys(request);
        let behind_waiting = request_keys.iter().any(|key| deferred_keys.contains(key));
        let waits = match request {
            Request::CreateVoucher(voucher) => {
                let code = voucher.code.as_str();
                claimed_codes.contains(code)
                    || deferred_claim_codes.contains(code)
                    || deferred_creations.contains(code)
            }
            Request::Claim(claim) => {
                let code = claim.code.as_str();
                behind_waiting
                    || deferred_creations.contains(code)
                    || claimed.contains(&Key::User(code, claim.phone.stored()))
                    || claimed.contains(&Key::Slot(code, claim.slot))
                    || wallet_phones.contains(&claim.phone.stored())
            }
            Request::CreateProfile(_) | Request::Transact(_) => behind_waiting,
        };
        if waits {
            deferred.push(index);
            deferred_keys.extend(request_keys);
            match request {
                Request::CreateVoucher(voucher) => {
                    deferred_creations.insert(voucher.code.as_str());
                }
                Request::Claim(claim) => {
                    deferred_claim_codes.insert(claim.code.as_str());
                }
                Request::CreateProfile(_) | Request::Transact(_) => {}
            }
            continue;
        }
        wave.push(index);
        match request {
            Request::CreateVoucher(_) => {}
            Request::Claim(claim) => {
                let code = claim.code.as_str();
                claimed.insert(Key::User(code, claim.phone.stored()));
                claimed.insert(Key::Slot(code, claim.slot));
                claimed_codes.insert(code);
            }
            Request::CreateProfile(profile) => {
                wallet_phones.insert(profile.phone.stored());
            }
            Request::Transact(transaction) => {
                wallet_phones.insert(transaction.phone.stored());
            }
        }
    }
    (wave, deferred)
}

async fn apply_wave(
    transaction: &Transaction<'_>,
    requests: &[Request],
    wave: &[usize],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut vouchers = Vec::new();
    let mut claims = Vec::new();
    let mut wallet_ops = Vec::new();
    for &index in wave {
        match &requests[index] {
            Request::CreateVoucher(voucher) => vouchers.push((index, voucher)),
            Request::Claim(claim) => claims.push((index, claim)),
            Request::CreateProfile(_) | Request::Transact(_) => wallet_ops.push(index),
        }
    }
    create_vouchers(transaction, &vouchers, progress).await?;
    claim_slots(transaction, &claims, progress).await?;
    apply_wallet_ops(transaction, requests, &wallet_ops, progress).await
}

async fn create_vouchers(
    transaction: &Transaction<'_>,
    vouchers: &[(usize, &Voucher)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if vouchers.is_empty() {
        return Ok(());
    }
    // Vouchers are created by hand, rarely: one statement each is fine.
    let statement = transaction.prepare_cached(INSERT_VOUCHER).await?;
    for &(index, voucher) in vouchers {
        let inserted = transaction
            .query_opt(
                &statement,
                &[
                    &voucher.code.as_str(),
                    &voucher.amount,
                    &i64::from(voucher.limit),
                    &voucher.starts_at.map(|t| t.0),
                    &voucher.expires_at.map(|t| t.0),
                    &voucher.created_at.0,
                ],
            )
            .await?;
        let outcome = if inserted.is_some() {
            progress.wrote(|| Probe::Voucher {
                code: voucher.code.as_str().to_owned(),
                created_at: voucher.created_at.0,
            });
            Ok(VoucherStatus {
                voucher: voucher.clone(),
                redeemed: 0,
            })
        } else {
            Err(Error::VoucherExists)
        };
        progress.decide(index, Outcome::Voucher(outcome));
    }
    Ok(())
}

/// A wallet transaction about to be inserted.
struct NewRow {
    phone: i64,
    sequence: i64,
    id: Uuid,
    replayable: bool,
    amount: i64,
    reference: String,
    created_at: i64,
    balance_after: i64,
}

impl NewRow {
    fn to_transaction(&self, phone: PhoneNumber) -> WalletTransaction {
        WalletTransaction {
            id: self.id,
            phone,
            // Sequences start at 1 and only grow, so they are never negative.
            sequence: self.sequence as u64,
            amount: self.amount,
            reference: self.reference.clone(),
            created_at: Timestamp(self.created_at),
            balance_after: self.balance_after,
        }
    }
}

async fn insert_transactions(
    transaction: &Transaction<'_>,
    rows: &[NewRow],
) -> Result<(), Failure> {
    if rows.is_empty() {
        return Ok(());
    }
    let phones: Vec<i64> = rows.iter().map(|r| r.phone).collect();
    let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let replayable: Vec<bool> = rows.iter().map(|r| r.replayable).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount).collect();
    let references: Vec<&str> = rows.iter().map(|r| r.reference.as_str()).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
    let balances: Vec<i64> = rows.iter().map(|r| r.balance_after).collect();
    let statement = transaction.prepare_cached(INSERT_TRANSACTIONS).await?;
    transaction
        .execute(
            &statement,
            &[
                &phones,
                &sequences,
                &ids,
                &replayable,
                &amounts,
                &references,
                &created,
                &balances,
            ],
        )
        .await?;
    Ok(())
}

/// The claim path: claims the wave's slots, classifies the refused claims,
/// credits the winners' wallets and records their transactions.
async fn claim_slots(
    transaction: &Transaction<'_>,
    claims: &[(usize, &Claim)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if claims.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = claims.iter().map(|(_, c)| c.code.as_str()).collect();
    let slots: Vec<i64> = claims.iter().map(|(_, c)| i64::from(c.slot)).collect();
    let phones: Vec<i64> = claims.iter().map(|(_, c)| phone_column(c.phone)).collect();
    let ids: Vec<Uuid> = claims
        .iter()
        .map(|(_, c)| redemption_id(&c.code, c.phone))
        .collect();
    let ats: Vec<i64> = claims.iter().map(|(_, c)| c.at.0).collect();
    let statement = transaction.prepare_cached(CLAIM_SLOTS).await?;
    let inserted = transaction
        .query(&statement, &[&codes, &slots, &phones, &ids, &ats])
        .await?;
    // Slots are distinct within a wave, so (code, slot) names the winner.
    let position_of: HashMap<(&str, i64), usize> = codes
        .iter()
        .zip(&slots)
        .enumerate()
        .map(|(position, (&code, &slot))| ((code, slot), position))
        .collect();
    let mut amount_won: Vec<Option<i64>> = vec![None; claims.len()];
    for row in &inserted {
        let code: &str = row.try_get(0)?;
        let slot: i64 = row.try_get(1)?;
        let Some(&position) = position_of.get(&(code, slot)) else {
            return Err(Failure::permanent("a claimed slot matches no claim"));
        };
        amount_won[position] = Some(row.try_get(2)?);
    }

    let mut winners = Vec::with_capacity(inserted.len());
    let mut refused = Vec::new();
    for (&(index, claim), amount) in claims.iter().zip(amount_won) {
        match amount {
            Some(amount) => winners.push((index, claim, amount)),
            None => refused.push((index, claim)),
        }
    }
    classify_refused(transaction, &refused, progress).await?;
    credit_winners(transaction, &winners, progress).await
}

/// Answers each refused claim as the embedded ledger would: the voucher is
/// checked first, then the user's key, then the slot.
async fn classify_refused(
    transaction: &Transaction<'_>,
    refused: &[(usize, &Claim)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if refused.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = refused.iter().map(|(_, c)| c.code.as_str()).collect();
    let phones: Vec<i64> = refused.iter().map(|(_, c)| phone_column(c.phone)).collect();
    let positions: Vec<i64> = (0..refused.len() as i64).collect();
    let statement = transaction.prepare_cached(CLASSIFY_REFUSED_CLAIMS).await?;
    let rows = transaction
        .query(&statement, &[&codes, &phones, &positions])
        .await?;
    for row in &rows {
        let position: i64 = row.try_get(0)?;
        let limit: Option<i64> = row.try_get(1)?;
        let held_slot: Option<i64> = row.try_get(2)?;
        let Some(&(index, claim)) = usize::try_from(position)
            .ok()
            .and_then(|position| refused.get(position))
        else {
            return Err(Failure::permanent("a refused claim came back unknown"));
        };
        let error = match (limit, held_slot) {
            (None, _) => Error::VoucherNotFound,
            (Some(_), Some(_)) => Error::AlreadyRedeemed,
            (Some(limit), None) => {
                // A slot outside 1..=limit does not exist; the slot source never hands one out.
                if claim.slot == 0 || i64::from(claim.slot) > limit {
                    tracing::error!(
                        code = claim.code.as_str(),
                        slot = claim.slot,
                        limit,
                        "slot outside the voucher's range"
                    );
                }
                Error::SlotTaken
            }
        };
        progress.decide(index, Outcome::Redemption(Err(error)));
    }
    Ok(())
}

/// Adds the winners' credits to their wallets in one upsert and records one
/// transaction per credit (I3), in submission order per wallet.
async fn credit_winners(
    transaction: &Transaction<'_>,
    winners: &[(usize, &Claim, i64)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if winners.is_empty() {
        return Ok(());
    }
    // (sum of credits, number of credits, time of the first) per wallet.
    let mut totals: HashMap<i64, (i64, i64, i64)> = HashMap::new();
    for &(_, claim, amount) in winners {
        let total = totals
            .entry(phone_column(claim.phone))
            .or_insert((0, 0, claim.at.0));
        total.0 = total
            .0
            .checked_add(amount)
            .ok_or_else(|| Failure::permanent("a wallet's credits overflow"))?;
        total.1 += 1;
    }
    let phones: Vec<i64> = totals.keys().copied().collect();
    let sums: Vec<i64> = phones.iter().map(|p| totals[p].0).collect();
    let counts: Vec<i64> = phones.iter().map(|p| totals[p].1).collect();
    let opened: Vec<i64> = phones.iter().map(|p| totals[p].2).collect();
    let statement = transaction.prepare_cached(CREDIT_WALLETS).await?;
    let heads = transaction
        .query(&statement, &[&phones, &sums, &counts, &opened])
        .await?;
    // Each wallet's (balance, sequence) before this wave's credits.
    let mut before: HashMap<i64, (i64, i64)> = HashMap::with_capacity(heads.len());
    for row in &heads {
        let phone: i64 = row.try_get(0)?;
        let balance: i64 = row.try_get(1)?;
        let last_sequence: i64 = row.try_get(2)?;
        let Some(&(sum, count, _)) = totals.get(&phone) else {
            return Err(Failure::permanent("a credited wallet matches no claim"));
        };
        before.insert(phone, (balance - sum, last_sequence - count));
    }
    let mut rows = Vec::with_capacity(winners.len());
    for &(index, claim, amount) in winners {
        let phone = phone_column(claim.phone);
        let Some(head) = before.get_mut(&phone) else {
            return Err(Failure::permanent("a winner's wallet was not credited"));
        };
        head.0 += amount;
        head.1 += 1;
        let row = NewRow {
            phone,
            sequence: head.1,
            id: redemption_id(&claim.code, claim.phone),
            replayable: false,
            amount,
            reference: voucher_reference(&claim.code),
            created_at: claim.at.0,
            balance_after: head.0,
        };
        progress.wrote(|| Probe::Redemption {
            code: claim.code.as_str().to_owned(),
            slot: i64::from(claim.slot),
            phone,
            redeemed_at: claim.at.0,
        });
        progress.decide(
            index,
            Outcome::Redemption(Ok(Redemption {
                id: row.id,
                code: claim.code.clone(),
                phone: claim.phone,
                amount,
                slot: claim.slot,
                redeemed_at: claim.at,
                balance: row.balance_after,
            })),
        );
        rows.push(row);
    }
    insert_transactions(transaction, &rows).await
}

/// A wallet's head as a wave of wallet operations sees it.
struct Head {
    /// Whether the row exists in the database (locked) or is opened by this wave.
    stored: bool,
    changed: bool,
    balance: i64,
    last_sequence: i64,
    created_at: i64,
}

/// Profiles and client transactions: the wallets are locked and read, every
/// operation is decided in submission order in Rust, then the heads and the
/// new transactions are written set-based.
async fn apply_wallet_ops(
    transaction: &Transaction<'_>,
    requests: &[Request],
    indices: &[usize],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if indices.is_empty() {
        return Ok(());
    }
    // The first transaction of each replayable id already stored.
    let replay_ids: Vec<Uuid> = indices
        .iter()
        .filter_map(|&i| match &requests[i] {
            Request::Transact(t) if t.replayable => Some(t.id),
            _ => None,
        })
        .collect();
    let mut replays: HashMap<Uuid, WalletTransaction> = HashMap::new();
    if !replay_ids.is_empty() {
        let statement = transaction.prepare_cached(FIND_REPLAYS).await?;
        for row in transaction.query(&statement, &[&replay_ids]).await? {
            let first = WalletTransaction {
                id: row.try_get(0)?,
                phone: stored_phone(row.try_get(1)?).map_err(storage_failure)?,
                sequence: stored_u64(row.try_get(2)?, "sequence").map_err(storage_failure)?,
                amount: row.try_get(3)?,
                reference: row.try_get(4)?,
                created_at: Timestamp(row.try_get(5)?),
                balance_after: row.try_get(6)?,
            };
            replays.insert(first.id, first);
        }
    }

    let mut phones: Vec<i64> = indices
        .iter()
        .filter_map(|&i| match &requests[i] {
            Request::CreateProfile(p) => Some(phone_column(p.phone)),
            Request::Transact(t) => Some(phone_column(t.phone)),
            _ => None,
        })
        .collect();
    phones.sort_unstable();
    phones.dedup();
    let statement = transaction.prepare_cached(LOCK_WALLETS).await?;
    let mut heads: HashMap<i64, Head> = HashMap::with_capacity(phones.len());
    for row in transaction.query(&statement, &[&phones]).await? {
        let balance: i64 = row.try_get(1)?;
        // I5: a stored balance is never negative (and the CHECK agrees).
        assert!(balance >= 0, "I5: a stored wallet balance is negative");
        heads.insert(
            row.try_get(0)?,
            Head {
                stored: true,
                changed: false,
                balance,
                last_sequence: row.try_get(2)?,
                created_at: row.try_get(3)?,
            },
        );
    }

    let mut rows: Vec<NewRow> = Vec::new();
    for &index in indices {
        let outcome = match &requests[index] {
            Request::CreateProfile(profile) => {
                Outcome::Wallet(open_profile(profile, &mut heads, &mut rows))
            }
            Request::Transact(new) => {
                Outcome::Transaction(apply_transaction(new, &mut heads, &mut replays, &mut rows))
            }
            Request::CreateVoucher(_) | Request::Claim(_) => {
                return Err(Failure::permanent("a wave mixed up its operations"));
            }
        };
        progress.decide(index, outcome);
    }

    let mut opened = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut updated = (Vec::new(), Vec::new(), Vec::new());
    for (&phone, head) in &heads {
        assert!(head.balance >= 0, "I5: wallet {phone} would go negative");
        if !head.stored {
            opened.0.push(phone);
            opened.1.push(head.balance);
            opened.2.push(head.last_sequence);
            opened.3.push(head.created_at);
        } else if head.changed {
            updated.0.push(phone);
            updated.1.push(head.balance);
            updated.2.push(head.last_sequence);
        }
    }
    if !opened.0.is_empty() {
        let statement = transaction.prepare_cached(OPEN_WALLETS).await?;
        let inserted = transaction
            .query(&statement, &[&opened.0, &opened.1, &opened.2, &opened.3])
            .await?;
        if inserted.len() != opened.0.len() {
            return Err(Failure::conflict("a wallet was opened by another writer"));
        }
        if rows.is_empty() {
            let (phone, created_at) = (opened.0[0], opened.3[0]);
            progress.wrote(|| Probe::Wallet { phone, created_at });
        }
    }
    if !updated.0.is_empty() {
        let statement = transaction.prepare_cached(UPDATE_WALLETS).await?;
        transaction
            .execute(&statement, &[&updated.0, &updated.1, &updated.2])
            .await?;
    }
    if let Some(first) = rows.first() {
        let (phone, sequence, id) = (first.phone, first.sequence, first.id);
        progress.wrote(|| Probe::Transaction {
            phone,
            sequence,
            id,
        });
    }
    insert_transactions(transaction, &rows).await
}

fn storage_failure(error: Error) -> Failure {
    Failure::permanent(error.to_string())
}

/// Appends one transaction to a wallet's head as the wave sees it.
fn append(head: &mut Head, row: NewRow, rows: &mut Vec<NewRow>) {
    head.changed = true;
    head.balance = row.balance_after;
    head.last_sequence = row.sequence;
    rows.push(row);
}

fn open_profile(
    profile: &NewProfile,
    heads: &mut HashMap<i64, Head>,
    rows: &mut Vec<NewRow>,
) -> Result<Wallet> {
    let phone = phone_column(profile.phone);
    if heads.contains_key(&phone) {
        return Err(Error::ProfileExists);
    }
    let head = heads.entry(phone).or_insert(Head {
        stored: false,
        changed: true,
        balance: 0,
        last_sequence: 0,
        created_at: profile.at.0,
    });
    if profile.opening_balance > 0 {
        append(
            head,
            NewRow {
                phone,
                sequence: 1,
                id: Uuid::new_v4(),
                replayable: false,
                amount: profile.opening_balance,
                reference: OPENING_BALANCE_REFERENCE.to_owned(),
                created_at: profile.at.0,
                balance_after: profile.opening_balance,
            },
            rows,
        );
    }
    Ok(Wallet {
        phone: profile.phone,
        balance: head.balance,
        created_at: profile.at,
    })
}

fn apply_transaction(
    new: &NewTransaction,
    heads: &mut HashMap<i64, Head>,
    replays: &mut HashMap<Uuid, WalletTransaction>,
    rows: &mut Vec<NewRow>,
) -> Result<WalletTransaction> {
    if new.replayable {
        if let Some(first) = replays.get(&new.id) {
            return wallet::replay(first.clone(), new.phone, new.amount, &new.reference);
        }
    }
    let phone = phone_column(new.phone);
    let (balance, last_sequence) = heads
        .get(&phone)
        .map_or((0, 0), |head| (head.balance, head.last_sequence));
    let new_balance = wallet::balance_after(balance, new.amount)?;
    // A credit opens the wallet if needed, as the embedded ledger does.
    let head = heads.entry(phone).or_insert(Head {
        stored: false,
        changed: true,
        balance: 0,
        last_sequence: 0,
        created_at: new.at.0,
    });
    let row = NewRow {
        phone,
        sequence: last_sequence + 1,
        id: new.id,
        replayable: new.replayable,
        amount: new.amount,
        reference: new.reference.clone(),
        created_at: new.at.0,
        balance_after: new_balance,
    };
    let applied = row.to_transaction(new.phone);
    append(head, row, rows);
    if new.replayable {
        replays.insert(new.id, applied.clone());
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code() -> VoucherCode {
        VoucherCode::parse("GOAL").expect("valid code")
    }

    fn phone(n: u64) -> PhoneNumber {
        PhoneNumber::from_stored(989_120_000_000 + n)
    }

    fn claim(n: u64, slot: u32) -> Request {
        Request::Claim(Claim {
            code: code(),
            phone: phone(n),
            slot,
            at: Timestamp(1),
        })
    }

    fn transact(n: u64) -> Request {
        Request::Transact(NewTransaction {
            id: Uuid::new_v4(),
            replayable: false,
            phone: phone(n),
            amount: 1,
            reference: String::new(),
            at: Timestamp(1),
        })
    }

    fn waves(requests: &[Request]) -> Vec<Vec<usize>> {
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        let mut waves = Vec::new();
        while !pending.is_empty() {
            let (wave, deferred) = plan_wave(requests, &pending);
            assert!(!wave.is_empty(), "every wave makes progress");
            waves.push(wave);
            pending = deferred;
        }
        waves
    }

    #[test]
    fn independent_claims_form_one_wave() {
        let requests: Vec<Request> = (0..100).map(|n| claim(n, n as u32 + 1)).collect();
        assert_eq!(waves(&requests), vec![(0..100).collect::<Vec<_>>()]);
    }

    #[test]
    fn competing_claims_wait_and_keep_their_order() {
        // 1 competes with 0 for slot 1, 2 with 0 for the user's key, and 3
        // shares its wallet with the waiting 1, so it waits behind it.
        let requests = [
            claim(1, 1),
            claim(2, 1),
            claim(1, 2),
            transact(2),
            claim(3, 3),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 4], vec![1, 2, 3]]);
    }

    #[test]
    fn a_claim_after_a_wallet_operation_on_its_wallet_waits() {
        // Within a wave claims apply before wallet operations, so a claim may
        // join only if no wallet operation on its wallet came before it.
        let requests = [claim(1, 1), transact(1), claim(2, 2), transact(2)];
        assert_eq!(waves(&requests), vec![vec![0, 1, 2, 3]]);
        let requests = [transact(1), claim(1, 1), transact(1)];
        assert_eq!(waves(&requests), vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn a_waiting_claim_holds_back_only_what_shares_its_keys() {
        // Claims of other slots and users of the same voucher still join.
        let requests = [claim(1, 1), claim(2, 1), claim(3, 2), claim(2, 3)];
        assert_eq!(waves(&requests), vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn a_voucher_created_after_a_claim_of_it_waits() {
        let voucher = Voucher::new(code(), 1, 10, None, None, Timestamp(1)).expect("valid");
        let requests = [
            Request::CreateVoucher(voucher.clone()),
            claim(1, 1),
            Request::CreateVoucher(voucher),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 1], vec![2]]);
        // A claim submitted after a creation that waits waits for it too.
        let voucher = Voucher::new(code(), 1, 10, None, None, Timestamp(1)).expect("valid");
        let requests = [claim(1, 1), Request::CreateVoucher(voucher), claim(2, 2)];
        assert_eq!(waves(&requests), vec![vec![0], vec![1, 2]]);
    }
}
