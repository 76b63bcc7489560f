//! The embedded ledger on redb: the default store, needing no other server.
//!
//! All writes go through one writer thread that groups whatever is queued (up to
//! [`MAX_COMMIT_BATCH_OPS`]) into a single write transaction and one durable commit,
//! so throughput is not bounded by one fsync per request. Each operation inside a
//! batch checks its conditions before it writes anything, so a rejected operation
//! leaves no trace; a storage failure aborts the whole batch and every operation in
//! it is answered as failed (nothing of it was acknowledged, nothing is kept).
//! Reads use redb's MVCC read transactions on the blocking pool and never wait
//! for the writer.
//!
//! A write that fails with an I/O error (a full disk) poisons redb's handle: it
//! refuses every later write ("Previous I/O error occurred") until the database
//! is closed and opened again. The writer then turns the ledger unwritable
//! (writes get `NotWritten`, readiness says `ledger_unwritable`), opens a fresh
//! handle (redb's repair falls back to the last durable commit), and probes it
//! with a small write, with backoff, until one succeeds; no restart is needed.
//! A batch whose commit failed is answered only once the fresh handle says
//! whether it reached the disk: its own answers if it did, `NotWritten` if not,
//! `Unavailable` if that cannot be told. So no write is acknowledged that is not
//! durable, and none refused as `NotWritten` was applied.
//!
//! The layout keeps the pages one claim dirties few, because page writes bound a
//! B-tree's commit rate: a user's wallet head and redemption markers share one
//! key prefix (one leaf), transactions are appended to a log keyed by a global
//! sequence, slots are handed out lowest first (appends too), and only ids that
//! can be replayed (client idempotency keys) get an index. A claim thus touches
//! one randomly placed page instead of four.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use parking_lot::RwLock;
use redb::{AccessGuard, Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
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
    LEDGER_ERROR_LOG_INTERVAL_MS, LEDGER_RECOVERY_MAX_DELAY_MS, LEDGER_RECOVERY_MIN_DELAY_MS,
    LEDGER_RECOVERY_POLL_MS, LEDGER_SPACE_PROBE_BYTES, MAX_COMMIT_BATCH_OPS,
};
use crate::metrics::Metrics;

/// (amount, limit, starts_at, expires_at, created_at), times in µs.
type VoucherRow = (i64, u32, Option<i64>, Option<i64>, i64);
/// (phone, id, amount, reference, created_at, balance_after, previous sequence
/// of the same wallet or 0).
type TransactionRow<'a> = (u64, u128, i64, &'a str, i64, i64, u64);
/// Account rows, by (phone, WALLET_HEAD): (balance, last sequence, created_at);
/// by (phone, code): the redemption, (slot, credit sequence, redeemed_at).
type AccountRow = (i64, u64, i64);

/// code → voucher.
const VOUCHERS: TableDefinition<&str, VoucherRow> = TableDefinition::new("vouchers");
/// code → number of redemptions (equals the number of its taken slots).
const REDEEMED: TableDefinition<&str, u32> = TableDefinition::new("redeemed");
/// (code, slot) → (phone, redeemed_at): the slot claim (I1) and the report index.
const SLOTS: TableDefinition<(&str, u32), (u64, i64)> = TableDefinition::new("slots");
/// (phone, "" | code) → wallet head | redemption: the user's key (I2) beside the
/// balance it changes (I5).
const ACCOUNTS: TableDefinition<(u64, &str), AccountRow> = TableDefinition::new("accounts");
/// sequence → transaction: the append-only wallet log (I3, I5).
const TRANSACTIONS: TableDefinition<u64, TransactionRow> = TableDefinition::new("transactions");
/// replayable transaction id → sequence: idempotency of client transactions.
const TRANSACTION_IDS: TableDefinition<u128, u64> = TableDefinition::new("transaction_ids");

/// "last" → when the recovering writer last wrote a probe (µs): the small write
/// that tells it the database takes writes again.
const PROBES: TableDefinition<&str, i64> = TableDefinition::new("probes");

/// The account row key of a wallet's head. Voucher codes are never empty, so it
/// cannot collide with a redemption, and it sorts first among a phone's rows.
const WALLET_HEAD: &str = "";

const DATABASE_FILE: &str = "voucherd.redb";
/// A scratch file the recovering writer writes (and removes) to see whether the
/// disk has room again before it risks a probe write on the database.
const SPACE_PROBE_FILE: &str = "voucherd.space-probe";

type Reply<T> = oneshot::Sender<Result<T>>;

enum WriteOp {
    CreateVoucher(Voucher, Reply<VoucherStatus>),
    Claim(Claim, Reply<Redemption>),
    CreateProfile(NewProfile, Reply<Wallet>),
    Transact(NewTransaction, Reply<WalletTransaction>),
}

/// The redb-backed ledger. Cheap to share: it is a queue sender and a database handle.
pub struct EmbeddedLedger {
    database: Arc<SharedDatabase>,
    writes: WriteQueue<WriteOp>,
}

/// The database handle readers share with the writer, which replaces it after
/// an I/O error. redb locks the file per handle, so the poisoned handle must be
/// gone (no reader holds it) before a fresh one can be opened.
struct SharedDatabase {
    directory: PathBuf,
    /// None while the writer reopens the file; readers then get `Unavailable`.
    current: RwLock<Option<Arc<Database>>>,
    /// False from a failed write until a probe write succeeds again.
    writable: AtomicBool,
}

impl SharedDatabase {
    fn file(&self) -> PathBuf {
        self.directory.join(DATABASE_FILE)
    }

    fn handle(&self) -> Option<Arc<Database>> {
        self.current.read().clone()
    }

    fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }
}

impl EmbeddedLedger {
    /// Opens (or creates) the store in directory `path` and starts its writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let db = Arc::new(Database::create(path.join(DATABASE_FILE))?);
        let last_sequence = create_tables(&db)?;
        let database = Arc::new(SharedDatabase {
            directory: path.to_owned(),
            current: RwLock::new(Some(db.clone())),
            writable: AtomicBool::new(true),
        });
        let (writes, queue) = WriteQueue::bounded();
        let writer = Writer {
            database: database.clone(),
            db: Some(db),
            last_sequence,
            metrics,
            errors: ErrorLog::default(),
        };
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let run = || writer.run(queue);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                    stop_process_after_writer_panic();
                }
            })?;
        Ok(Self { database, writes })
    }

    fn submit<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> LedgerFuture<T> {
        // While the writer recovers, refuse at once rather than queue writes it
        // could only refuse later.
        if !self.database.is_writable() {
            return Box::pin(async { Err(Error::not_written(RECOVERING)) });
        }
        let (reply, answer) = oneshot::channel();
        self.writes.submit(make(reply), answer)
    }

    fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> LedgerFuture<T> {
        let database = self.database.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let Some(db) = database.handle() else {
                    return Err(Error::unavailable("the ledger is reopening its database"));
                };
                let txn = db.begin_read().map_err(db_error)?;
                work(&txn)
            })
            .await
            .map_err(Error::storage)?
        })
    }
}

/// Why writes are refused while the writer recovers.
const RECOVERING: &str = "the ledger is recovering from a write failure";

/// A redb error as the domain sees it: an I/O error (also one redb remembers
/// from earlier) is transient, `Unavailable`; anything else means the stored
/// data or the code is wrong, `Storage`.
fn db_error(error: impl Into<redb::Error>) -> Error {
    match error.into() {
        error @ (redb::Error::Io(_) | redb::Error::PreviousIo) => {
            Error::unavailable(format!("ledger I/O error: {error}"))
        }
        error => Error::storage(error),
    }
}

/// True for the errors [`db_error`] makes of I/O errors: the write failed
/// because the disk did, not because of what it wrote.
fn is_io_failure(error: &Error) -> bool {
    matches!(error, Error::Unavailable { .. })
}

/// Creates missing tables; returns the last transaction sequence in use.
fn create_tables(db: &Database) -> anyhow::Result<u64> {
    let txn = db.begin_write()?;
    txn.open_table(VOUCHERS)?;
    txn.open_table(REDEEMED)?;
    txn.open_table(SLOTS)?;
    txn.open_table(ACCOUNTS)?;
    txn.open_table(TRANSACTION_IDS)?;
    let last_sequence = {
        let transactions = txn.open_table(TRANSACTIONS)?;
        let last = transactions.last()?.map(|(key, _)| key.value());
        last.unwrap_or(0)
    };
    txn.commit()?;
    Ok(last_sequence)
}

impl Ledger for EmbeddedLedger {
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus> {
        self.submit(|reply| WriteOp::CreateVoucher(voucher, reply))
    }

    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption> {
        self.submit(|reply| WriteOp::Claim(claim, reply))
    }

    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet> {
        self.submit(|reply| WriteOp::CreateProfile(profile, reply))
    }

    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction> {
        self.submit(|reply| WriteOp::Transact(transaction, reply))
    }

    fn voucher(&self, code: VoucherCode) -> LedgerFuture<Option<VoucherStatus>> {
        self.read(move |txn| {
            let vouchers = txn.open_table(VOUCHERS).map_err(db_error)?;
            let redeemed = txn.open_table(REDEEMED).map_err(db_error)?;
            read_voucher(&vouchers, &redeemed, code)
        })
    }

    fn vouchers(&self) -> LedgerFuture<Vec<VoucherStatus>> {
        self.read(move |txn| {
            let vouchers = txn.open_table(VOUCHERS).map_err(db_error)?;
            let redeemed = txn.open_table(REDEEMED).map_err(db_error)?;
            let mut all = Vec::new();
            for entry in vouchers.iter().map_err(db_error)? {
                let (key, _) = entry.map_err(db_error)?;
                let code = VoucherCode::parse(key.value()).map_err(Error::storage)?;
                all.extend(read_voucher(&vouchers, &redeemed, code)?);
            }
            Ok(all)
        })
    }

    fn redemption(
        &self,
        code: VoucherCode,
        phone: PhoneNumber,
    ) -> LedgerFuture<Option<Redemption>> {
        self.read(move |txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
            let Some(row) = accounts
                .get((phone.stored(), code.as_str()))
                .map_err(db_error)?
            else {
                return Ok(None);
            };
            let (slot, credit_sequence, redeemed_at) = row.value();
            let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
            let credit = read_transaction(&transactions, credit_sequence)?;
            Ok(Some(Redemption {
                id: redemption_id(&code, phone),
                code,
                phone,
                amount: credit.amount,
                slot: slot as u32,
                redeemed_at: Timestamp(redeemed_at),
                balance: credit.balance_after,
            }))
        })
    }

    fn report(&self, code: VoucherCode, page: PageRequest) -> LedgerFuture<Page<ReportEntry>> {
        self.read(move |txn| {
            let slots = txn.open_table(SLOTS).map_err(db_error)?;
            let first_slot = match page.cursor {
                // A cursor past the largest slot reads as an empty page.
                Some(after) => u32::try_from(after.saturating_add(1)).unwrap_or(u32::MAX),
                None => 1,
            };
            let range = slots
                .range((code.as_str(), first_slot)..=(code.as_str(), u32::MAX))
                .map_err(db_error)?;
            let mut items = Vec::new();
            let mut more = false;
            for entry in range.skip(page.offset as usize) {
                let (key, value) = entry.map_err(db_error)?;
                if items.len() == page.limit as usize {
                    more = true;
                    break;
                }
                let (phone, redeemed_at) = value.value();
                items.push(ReportEntry {
                    slot: key.value().1,
                    phone: PhoneNumber::from_stored(phone),
                    redeemed_at: Timestamp(redeemed_at),
                });
            }
            let next_cursor = more
                .then(|| items.last().map(|e| u64::from(e.slot)))
                .flatten();
            Ok(Page { items, next_cursor })
        })
    }

    fn winners(&self, code: VoucherCode) -> LedgerFuture<Vec<PhoneNumber>> {
        self.read(move |txn| {
            let slots = txn.open_table(SLOTS).map_err(db_error)?;
            let range = slots
                .range((code.as_str(), 1u32)..=(code.as_str(), u32::MAX))
                .map_err(db_error)?;
            range
                .map(|entry| {
                    let (_, value) = entry.map_err(db_error)?;
                    Ok(PhoneNumber::from_stored(value.value().0))
                })
                .collect()
        })
    }

    fn slot_usage(&self, code: VoucherCode) -> LedgerFuture<SlotUsage> {
        self.read(move |txn| {
            let slots = txn.open_table(SLOTS).map_err(db_error)?;
            let range = slots
                .range((code.as_str(), 1u32)..=(code.as_str(), u32::MAX))
                .map_err(db_error)?;
            let mut usage = SlotUsage::default();
            let mut next_expected = 1u32;
            for entry in range {
                let (key, _) = entry.map_err(db_error)?;
                let slot = key.value().1;
                usage.gaps.extend(next_expected..slot);
                next_expected = slot + 1;
                usage.taken += 1;
            }
            usage.highest_taken = next_expected - 1;
            Ok(usage)
        })
    }

    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>> {
        self.read(move |txn| {
            let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
            let Some(head) = accounts
                .get((phone.stored(), WALLET_HEAD))
                .map_err(db_error)?
            else {
                return Ok(None);
            };
            let (balance, last_sequence, created_at) = head.value();
            let wallet = Wallet {
                phone,
                balance,
                created_at: Timestamp(created_at),
            };
            let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
            // Newest first: follow the wallet's back-chain from the head, or from
            // the transaction before the cursor.
            let mut next = match page.cursor {
                None => last_sequence,
                Some(cursor) => {
                    let (_, previous) = read_transaction_and_previous(&transactions, cursor)
                        .ok()
                        .filter(|(after, _)| after.phone == phone)
                        .ok_or_else(|| {
                            Error::invalid(
                                "invalid_cursor",
                                "cursor must be a next_cursor this service returned",
                            )
                        })?;
                    previous
                }
            };
            for _ in 0..page.offset {
                if next == 0 {
                    break;
                }
                next = previous_of(&transactions, next)?;
            }
            let mut items = Vec::new();
            while next != 0 && items.len() < page.limit as usize {
                let (transaction, previous) = read_transaction_and_previous(&transactions, next)?;
                next = previous;
                items.push(transaction);
            }
            let next_cursor = (next != 0)
                .then(|| items.last().map(|t| t.sequence))
                .flatten();
            Ok(Some((wallet, Page { items, next_cursor })))
        })
    }

    fn shutdown(&self) -> LedgerFuture<()> {
        self.writes.shutdown()
    }

    fn health(&self) -> LedgerHealth {
        if self.database.is_writable() {
            LedgerHealth::Healthy
        } else {
            LedgerHealth::Unwritable
        }
    }
}

fn read_voucher(
    vouchers: &impl ReadableTable<&'static str, VoucherRow>,
    redeemed: &impl ReadableTable<&'static str, u32>,
    code: VoucherCode,
) -> Result<Option<VoucherStatus>> {
    let Some(row) = vouchers.get(code.as_str()).map_err(db_error)? else {
        return Ok(None);
    };
    let (amount, limit, starts_at, expires_at, created_at) = row.value();
    let count = redeemed
        .get(code.as_str())
        .map_err(db_error)?
        .map_or(0, |c| c.value());
    Ok(Some(VoucherStatus {
        voucher: Voucher {
            code,
            amount,
            limit,
            starts_at: starts_at.map(Timestamp),
            expires_at: expires_at.map(Timestamp),
            created_at: Timestamp(created_at),
        },
        redeemed: count,
    }))
}

/// The stored row of transaction `sequence`, which something in the ledger
/// refers to (a wallet head, a redemption, an idempotency key, a back-link).
fn transaction_row<'a>(
    transactions: &'a impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<AccessGuard<'a, TransactionRow<'static>>> {
    transactions
        .get(sequence)
        .map_err(db_error)?
        .ok_or_else(|| Error::storage(format!("transaction {sequence} is referenced but missing")))
}

/// Transaction `sequence` and the sequence of its wallet's previous transaction
/// (0 if it is the first).
fn read_transaction_and_previous(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<(WalletTransaction, u64)> {
    let row = transaction_row(transactions, sequence)?;
    let (phone, id, amount, reference, created_at, balance_after, previous) = row.value();
    let transaction = WalletTransaction {
        id: Uuid::from_u128(id),
        phone: PhoneNumber::from_stored(phone),
        sequence,
        amount,
        reference: reference.to_owned(),
        created_at: Timestamp(created_at),
        balance_after,
    };
    Ok((transaction, previous))
}

fn read_transaction(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<WalletTransaction> {
    Ok(read_transaction_and_previous(transactions, sequence)?.0)
}

/// The sequence of the wallet's transaction before `sequence`, or 0.
fn previous_of(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<u64> {
    Ok(transaction_row(transactions, sequence)?.value().6)
}

/// The tables of one write transaction, opened once per batch, and the sequence
/// the next transaction gets.
struct Tables<'txn> {
    vouchers: Table<'txn, &'static str, VoucherRow>,
    redeemed: Table<'txn, &'static str, u32>,
    slots: Table<'txn, (&'static str, u32), (u64, i64)>,
    accounts: Table<'txn, (u64, &'static str), AccountRow>,
    transactions: Table<'txn, u64, TransactionRow<'static>>,
    transaction_ids: Table<'txn, u128, u64>,
    last_sequence: u64,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction, last_sequence: u64) -> Result<Self> {
        Ok(Self {
            vouchers: txn.open_table(VOUCHERS).map_err(db_error)?,
            redeemed: txn.open_table(REDEEMED).map_err(db_error)?,
            slots: txn.open_table(SLOTS).map_err(db_error)?,
            accounts: txn.open_table(ACCOUNTS).map_err(db_error)?,
            transactions: txn.open_table(TRANSACTIONS).map_err(db_error)?,
            transaction_ids: txn.open_table(TRANSACTION_IDS).map_err(db_error)?,
            last_sequence,
        })
    }

    fn create_voucher(&mut self, voucher: Voucher) -> Result<VoucherStatus> {
        let code = voucher.code.as_str();
        if self.vouchers.get(code).map_err(db_error)?.is_some() {
            return Err(Error::VoucherExists);
        }
        let row = (
            voucher.amount,
            voucher.limit,
            voucher.starts_at.map(|t| t.0),
            voucher.expires_at.map(|t| t.0),
            voucher.created_at.0,
        );
        self.vouchers.insert(code, row).map_err(db_error)?;
        self.redeemed.insert(code, 0).map_err(db_error)?;
        Ok(VoucherStatus {
            voucher,
            redeemed: 0,
        })
    }

    fn claim(&mut self, claim: Claim) -> Result<Redemption> {
        let code = claim.code.as_str();
        let phone = claim.phone.stored();
        let (amount, limit) = match self.vouchers.get(code).map_err(db_error)? {
            Some(row) => {
                let (amount, limit, ..) = row.value();
                (amount, limit)
            }
            None => return Err(Error::VoucherNotFound),
        };
        if self
            .accounts
            .get((phone, code))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::AlreadyRedeemed);
        }
        // A slot outside 1..=limit does not exist; the slot source never hands one out.
        if claim.slot == 0 || claim.slot > limit {
            tracing::error!(
                code,
                slot = claim.slot,
                limit,
                "slot outside the voucher's range"
            );
            return Err(Error::SlotTaken);
        }
        if self
            .slots
            .get((code, claim.slot))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::SlotTaken);
        }
        let redeemed = self
            .redeemed
            .get(code)
            .map_err(db_error)?
            .map_or(0, |c| c.value());
        // I1: a free slot in range implies a free place under the limit.
        assert!(
            redeemed < limit,
            "I1: {code} has {redeemed} redemptions of {limit} and a free slot"
        );

        let credit = self.transact(NewTransaction {
            id: redemption_id(&claim.code, claim.phone),
            // The user's key below makes the claim idempotent; the id needs no index.
            replayable: false,
            phone: claim.phone,
            amount,
            reference: voucher_reference(&claim.code),
            at: claim.at,
        })?;
        self.slots
            .insert((code, claim.slot), (phone, claim.at.0))
            .map_err(db_error)?;
        self.accounts
            .insert(
                (phone, code),
                (i64::from(claim.slot), credit.sequence, claim.at.0),
            )
            .map_err(db_error)?;
        self.redeemed.insert(code, redeemed + 1).map_err(db_error)?;
        Ok(Redemption {
            id: credit.id,
            code: claim.code,
            phone: claim.phone,
            amount,
            slot: claim.slot,
            redeemed_at: claim.at,
            balance: credit.balance_after,
        })
    }

    fn create_profile(&mut self, profile: NewProfile) -> Result<Wallet> {
        let phone = profile.phone.stored();
        if self
            .accounts
            .get((phone, WALLET_HEAD))
            .map_err(db_error)?
            .is_some()
        {
            return Err(Error::ProfileExists);
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (0, 0, profile.at.0))
            .map_err(db_error)?;
        let mut balance = 0;
        if profile.opening_balance > 0 {
            let opening = self.transact(NewTransaction {
                id: Uuid::new_v4(),
                replayable: false,
                phone: profile.phone,
                amount: profile.opening_balance,
                reference: OPENING_BALANCE_REFERENCE.to_owned(),
                at: profile.at,
            })?;
            balance = opening.balance_after;
        }
        Ok(Wallet {
            phone: profile.phone,
            balance,
            created_at: profile.at,
        })
    }

    fn transact(&mut self, transaction: NewTransaction) -> Result<WalletTransaction> {
        let phone = transaction.phone.stored();
        let id = transaction.id.as_u128();
        if transaction.replayable {
            let first_sequence = self
                .transaction_ids
                .get(id)
                .map_err(db_error)?
                .map(|s| s.value());
            if let Some(sequence) = first_sequence {
                let first = read_transaction(&self.transactions, sequence)?;
                return wallet::replay(
                    first,
                    transaction.phone,
                    transaction.amount,
                    &transaction.reference,
                );
            }
        }
        let head = self
            .accounts
            .get((phone, WALLET_HEAD))
            .map_err(db_error)?
            .map(|w| w.value());
        let (balance, previous, created_at) = head.unwrap_or((0, 0, transaction.at.0));
        assert!(
            balance >= 0,
            "I5: wallet {phone} holds a negative balance {balance}"
        );
        let new_balance = wallet::balance_after(balance, transaction.amount)?;
        let sequence = self.last_sequence + 1;
        let row = (
            phone,
            id,
            transaction.amount,
            transaction.reference.as_str(),
            transaction.at.0,
            new_balance,
            previous,
        );
        self.transactions.insert(sequence, row).map_err(db_error)?;
        if transaction.replayable {
            self.transaction_ids
                .insert(id, sequence)
                .map_err(db_error)?;
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (new_balance, sequence, created_at))
            .map_err(db_error)?;
        self.last_sequence = sequence;
        assert!(new_balance >= 0, "I5: wallet {phone} would go negative");
        Ok(WalletTransaction {
            id: transaction.id,
            phone: transaction.phone,
            sequence,
            amount: transaction.amount,
            reference: transaction.reference,
            created_at: transaction.at,
            balance_after: new_balance,
        })
    }
}

/// An operation applied inside the open batch, waiting for the commit to answer.
enum Applied {
    Voucher(Reply<VoucherStatus>, Result<VoucherStatus>),
    Redemption(Reply<Redemption>, Result<Redemption>),
    Wallet(Reply<Wallet>, Result<Wallet>),
    Transaction(Reply<WalletTransaction>, Result<WalletTransaction>),
}

impl Applied {
    /// The ledger failure the operation met, which stops its batch; business
    /// answers such as `AlreadyRedeemed` are not failures.
    fn failure(&self) -> Option<&Error> {
        fn failed<T>(result: &Result<T>) -> Option<&Error> {
            result
                .as_ref()
                .err()
                .filter(|e| matches!(e, Error::Storage { .. } | Error::Unavailable { .. }))
        }
        match self {
            Applied::Voucher(_, r) => failed(r),
            Applied::Redemption(_, r) => failed(r),
            Applied::Wallet(_, r) => failed(r),
            Applied::Transaction(_, r) => failed(r),
        }
    }

    /// Sends the outcome, or `instead` if the batch did not commit. A caller that
    /// stopped waiting (its request timed out) is not an error here.
    fn answer(self, instead: Option<&Error>) {
        fn send<T>(reply: Reply<T>, result: Result<T>, instead: Option<&Error>) {
            let _ = reply.send(match instead {
                Some(error) => Err(error.clone()),
                None => result,
            });
        }
        match self {
            Applied::Voucher(reply, result) => send(reply, result, instead),
            Applied::Redemption(reply, result) => send(reply, result, instead),
            Applied::Wallet(reply, result) => send(reply, result, instead),
            Applied::Transaction(reply, result) => send(reply, result, instead),
        }
    }
}

impl WriteOp {
    /// Answers an operation that was never applied.
    fn refuse(self, error: Error) {
        match self {
            WriteOp::CreateVoucher(_, reply) => drop(reply.send(Err(error))),
            WriteOp::Claim(_, reply) => drop(reply.send(Err(error))),
            WriteOp::CreateProfile(_, reply) => drop(reply.send(Err(error))),
            WriteOp::Transact(_, reply) => drop(reply.send(Err(error))),
        }
    }
}

/// Why a batch did not commit.
enum Failed {
    /// Before the commit: nothing of the batch reached the disk.
    BeforeCommit(Error),
    /// The commit itself failed; whether it reached the disk is not known yet.
    Commit { error: Error, batch_sequence: u64 },
}

/// How a batch ended.
enum BatchEnd {
    /// Committed, or refused because of a write it held (not the disk): every
    /// write is answered and the writer carries on.
    Done,
    /// The disk failed before the commit; every write is answered `NotWritten`.
    NotWritten,
    /// The commit failed; the writes are answered once a fresh handle on the
    /// database tells whether it reached the disk.
    CommitFailed(Unresolved),
}

/// A batch whose commit failed, waiting for its answers.
struct Unresolved {
    applied: Vec<Applied>,
    /// The last transaction sequence before the batch.
    previous_sequence: u64,
    /// The last transaction sequence the batch would have committed.
    batch_sequence: u64,
}

impl Unresolved {
    /// Answers from what the reopened database holds: the batch's own answers if
    /// its commit reached the disk, `NotWritten` if it did not.
    fn resolve(self, db: &Database) {
        match self.landed(db) {
            Ok(landed @ (Some(true) | None)) => {
                if landed.is_some() {
                    tracing::warn!(
                        operations = self.applied.len(),
                        "a failed ledger commit reached the disk; its answers stand"
                    );
                }
                for done in self.applied {
                    done.answer(None);
                }
            }
            Ok(Some(false)) => {
                let refusal = Error::not_written("the ledger commit failed");
                for done in self.applied {
                    done.answer(Some(&refusal));
                }
            }
            Err(error) => self.give_up(error),
        }
    }

    /// Answers when the outcome cannot be told: not acknowledged, retry (every
    /// ledger write is safe to repeat by its key, like a lost PostgreSQL commit).
    fn give_up(self, cause: impl std::fmt::Display) {
        let unknown = Error::unavailable(format!("outcome of a failed ledger commit: {cause}"));
        for done in self.applied {
            done.answer(Some(&unknown));
        }
    }

    /// Whether the batch is in the database: Some(found), or None when it wrote
    /// nothing (every write was refused on its merits), so its answers hold
    /// either way. A batch commits whole or not at all, so one of its rows
    /// tells: the last transaction it appended, else its first new voucher or
    /// wallet (which did not exist before it, or it would have been refused).
    fn landed(&self, db: &Database) -> Result<Option<bool>> {
        let txn = db.begin_read().map_err(db_error)?;
        if self.batch_sequence > self.previous_sequence {
            let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
            let found = transactions
                .get(self.batch_sequence)
                .map_err(db_error)?
                .is_some();
            return Ok(Some(found));
        }
        for done in &self.applied {
            match done {
                Applied::Voucher(_, Ok(status)) => {
                    let vouchers = txn.open_table(VOUCHERS).map_err(db_error)?;
                    let code = status.voucher.code.as_str();
                    return Ok(Some(vouchers.get(code).map_err(db_error)?.is_some()));
                }
                Applied::Wallet(_, Ok(wallet)) => {
                    let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
                    let key = (wallet.phone.stored(), WALLET_HEAD);
                    return Ok(Some(accounts.get(key).map_err(db_error)?.is_some()));
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// What became of an attempt to replace the poisoned handle.
enum Reopen {
    Opened,
    /// Reads still hold the old handle (and with it redb's file lock).
    ReadersBusy,
    Failed(Error),
}

/// The one thread that writes: it owns the group commit and the recovery.
struct Writer {
    database: Arc<SharedDatabase>,
    /// The handle writes go through; None only while it is being replaced.
    db: Option<Arc<Database>>,
    last_sequence: u64,
    metrics: Arc<Metrics>,
    errors: ErrorLog,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Queued<WriteOp>>) {
        let mut batch = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = queue.blocking_recv() else {
                break; // Every sender is gone.
            };
            batch.push(first);
            while batch.len() < MAX_COMMIT_BATCH_OPS {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let operations = batch.len();
            let (end, requested) = self.commit_batch(&mut batch);
            shutdown = requested;
            let unresolved = match end {
                BatchEnd::Done => {
                    self.metrics
                        .observe_ledger_commit(operations, started.elapsed());
                    continue;
                }
                BatchEnd::NotWritten => None,
                BatchEnd::CommitFailed(unresolved) => Some(unresolved),
            };
            if shutdown.is_some() {
                // Stopping: the batch was not acknowledged; its callers retry
                // against the next instance.
                if let Some(batch) = unresolved {
                    batch.give_up("the ledger is shutting down");
                }
                break;
            }
            shutdown = self.recover(&mut queue, unresolved);
        }
        queue.close();
        tracing::info!("ledger writer stopped");
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// Applies and commits one batch and answers it (unless its commit failed);
    /// returns how it ended and the shutdown request if the batch held one
    /// (operations queued behind it are still in the batch and are applied first).
    fn commit_batch(
        &mut self,
        batch: &mut Vec<Queued<WriteOp>>,
    ) -> (BatchEnd, Option<oneshot::Sender<()>>) {
        let mut applied = Vec::with_capacity(batch.len());
        let mut shutdown = None;
        let mut not_reached = Vec::new();
        let outcome = self.apply_and_commit(batch, &mut applied, &mut not_reached, &mut shutdown);
        // What the batch still holds was never applied: after a failure to begin
        // the batch, all of it; after a failed write, what came behind it.
        for op in batch.drain(..).chain(not_reached) {
            match op {
                Queued::Write(op) => op.refuse(Error::not_written("its batch failed")),
                Queued::Shutdown(done) => shutdown = Some(done),
            }
        }
        let end = match outcome {
            Ok(sequence) => {
                self.last_sequence = sequence;
                for done in applied {
                    done.answer(None);
                }
                BatchEnd::Done
            }
            Err(Failed::BeforeCommit(error)) if is_io_failure(&error) => {
                self.record_failure("ledger batch not written", &error);
                let refusal = Error::not_written(&error);
                for done in applied {
                    done.answer(Some(&refusal));
                }
                BatchEnd::NotWritten
            }
            Err(Failed::BeforeCommit(error)) => {
                // A write met stored data it cannot make sense of: it gets that
                // error; the others of its batch were not written and may retry.
                tracing::error!(%error, operations = applied.len(), "ledger batch not committed");
                let refusal = Error::not_written("another write of its batch failed");
                for done in applied {
                    let own = done.failure().is_some();
                    done.answer((!own).then_some(&refusal));
                }
                BatchEnd::Done
            }
            Err(Failed::Commit {
                error,
                batch_sequence,
            }) => {
                self.record_failure("ledger commit failed", &error);
                BatchEnd::CommitFailed(Unresolved {
                    applied,
                    previous_sequence: self.last_sequence,
                    batch_sequence,
                })
            }
        };
        (end, shutdown)
    }

    /// Applies the batch in one write transaction and commits it; returns the
    /// last sequence it committed. Stops at the first write that fails and
    /// leaves the writes behind it in `not_reached`.
    fn apply_and_commit(
        &self,
        batch: &mut Vec<Queued<WriteOp>>,
        applied: &mut Vec<Applied>,
        not_reached: &mut Vec<Queued<WriteOp>>,
        shutdown: &mut Option<oneshot::Sender<()>>,
    ) -> Result<u64, Failed> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Failed::BeforeCommit(Error::unavailable("no database handle")))?;
        let mut txn = db
            .begin_write()
            .map_err(|e| Failed::BeforeCommit(db_error(e)))?;
        txn.set_durability(Durability::Immediate);
        let batch_sequence = {
            let mut tables =
                Tables::open(&txn, self.last_sequence).map_err(Failed::BeforeCommit)?;
            let mut ops = batch.drain(..);
            while let Some(op) = ops.next() {
                let done = match op {
                    Queued::Write(WriteOp::CreateVoucher(v, reply)) => {
                        Applied::Voucher(reply, tables.create_voucher(v))
                    }
                    Queued::Write(WriteOp::Claim(c, reply)) => {
                        Applied::Redemption(reply, tables.claim(c))
                    }
                    Queued::Write(WriteOp::CreateProfile(p, reply)) => {
                        Applied::Wallet(reply, tables.create_profile(p))
                    }
                    Queued::Write(WriteOp::Transact(t, reply)) => {
                        Applied::Transaction(reply, tables.transact(t))
                    }
                    Queued::Shutdown(done) => {
                        *shutdown = Some(done);
                        continue;
                    }
                };
                let failure = done.failure().cloned();
                applied.push(done);
                if let Some(error) = failure {
                    not_reached.extend(ops);
                    return Err(Failed::BeforeCommit(error));
                }
            }
            tables.last_sequence
        };
        txn.commit().map_err(|e| Failed::Commit {
            error: db_error(e),
            batch_sequence,
        })?;
        Ok(batch_sequence)
    }

    /// Runs while the ledger cannot write: refuses every write at once, swaps
    /// the poisoned handle for a fresh one (reads work again on it), answers
    /// the batch whose commit failed as soon as that can be told, and probes
    /// with backoff until a write succeeds. Returns the shutdown request if one
    /// came first: the ledger then stops unrecovered, which loses nothing,
    /// since every write it acknowledged is durable.
    fn recover(
        &mut self,
        queue: &mut mpsc::Receiver<Queued<WriteOp>>,
        mut unresolved: Option<Unresolved>,
    ) -> Option<oneshot::Sender<()>> {
        self.database.writable.store(false, Ordering::Release);
        let since = Instant::now();
        tracing::error!("the ledger cannot write; refusing writes until a probe write succeeds");
        let mut delays = recovery_delays();
        let mut poisoned = true;
        let mut next_reopen = since;
        let mut next_probe = since + next_delay(&mut delays);
        loop {
            loop {
                match queue.try_recv() {
                    Ok(Queued::Write(op)) => op.refuse(Error::not_written(RECOVERING)),
                    Ok(Queued::Shutdown(done)) => {
                        if let Some(batch) = unresolved.take() {
                            batch.give_up("the ledger shut down before it could tell");
                        }
                        return Some(done);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if let Some(batch) = unresolved.take() {
                            batch.give_up("the ledger was dropped before it could tell");
                        }
                        return None;
                    }
                }
            }
            let now = Instant::now();
            if poisoned && now >= next_reopen {
                match self.reopen() {
                    Reopen::Opened => {
                        poisoned = false;
                        if let (Some(batch), Some(db)) = (unresolved.take(), &self.db) {
                            batch.resolve(db);
                        }
                    }
                    Reopen::ReadersBusy => {}
                    Reopen::Failed(error) => {
                        self.record_failure("reopening the ledger database failed", &error);
                        if let Some(batch) = unresolved.take() {
                            batch.give_up(&error);
                        }
                        next_reopen = now + next_delay(&mut delays);
                    }
                }
            }
            if !poisoned && now >= next_probe {
                match self.probe() {
                    Ok(last_sequence) => {
                        self.last_sequence = last_sequence;
                        self.database.writable.store(true, Ordering::Release);
                        tracing::info!(
                            unwritable_ms = since.elapsed().as_millis() as u64,
                            "the ledger writes again"
                        );
                        return None;
                    }
                    Err(Probe::NoRoom(error)) => {
                        self.record_failure("the ledger's disk has no room yet", &error);
                        next_probe = now + next_delay(&mut delays);
                    }
                    Err(Probe::Failed(error)) => {
                        // The failed write poisoned the handle: replace it at
                        // once, so reads go on while the next probe waits.
                        self.record_failure("ledger probe write failed", &error);
                        poisoned = true;
                        next_reopen = now;
                        next_probe = now + next_delay(&mut delays);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(LEDGER_RECOVERY_POLL_MS));
        }
    }

    /// Replaces the handle: takes it from readers, waits for those still using
    /// it to finish (they hold redb's file lock), and opens the file again,
    /// which repairs it to its last durable commit.
    fn reopen(&mut self) -> Reopen {
        self.database.current.write().take();
        if let Some(db) = self.db.take() {
            match Arc::try_unwrap(db) {
                Ok(db) => drop(db),
                Err(still_read) => {
                    self.db = Some(still_read);
                    return Reopen::ReadersBusy;
                }
            }
        }
        match Database::create(self.database.file()) {
            Ok(db) => {
                let db = Arc::new(db);
                *self.database.current.write() = Some(db.clone());
                self.db = Some(db);
                Reopen::Opened
            }
            Err(error) => Reopen::Failed(Error::unavailable(format!(
                "reopening the ledger database: {error}"
            ))),
        }
    }

    /// Checks that the disk has room, then writes a probe row; returns the last
    /// transaction sequence, read in the same write transaction.
    fn probe(&self) -> Result<u64, Probe> {
        has_room(&self.database.directory)
            .map_err(|error| Probe::NoRoom(Error::unavailable(format!("space probe: {error}"))))?;
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Probe::Failed(Error::unavailable("no database handle")))?;
        probe_write(db).map_err(Probe::Failed)
    }

    fn record_failure(&mut self, failure: &'static str, error: &Error) {
        self.metrics.count_ledger_write_error();
        self.errors.log(failure, error);
    }
}

/// Why a recovery probe failed.
enum Probe {
    /// The scratch file could not be written: the disk is still full. The
    /// database handle was not touched and keeps serving reads.
    NoRoom(Error),
    /// The probe write on the database failed, which poisons the handle.
    Failed(Error),
}

/// The waits between recovery steps: doubling from the least to the longest.
fn recovery_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(LEDGER_RECOVERY_MIN_DELAY_MS))
        .with_max_delay(Duration::from_millis(LEDGER_RECOVERY_MAX_DELAY_MS))
        .without_max_times()
        .build()
}

fn next_delay(delays: &mut ExponentialBackoff) -> Duration {
    delays
        .next()
        .unwrap_or(Duration::from_millis(LEDGER_RECOVERY_MAX_DELAY_MS))
}

/// Writes (durably) and removes a scratch file of [`LEDGER_SPACE_PROBE_BYTES`]
/// beside the database: a cheap sign that the disk has room again, which does
/// not poison the database handle when it fails.
fn has_room(directory: &Path) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let path = directory.join(SPACE_PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        let mut left = LEDGER_SPACE_PROBE_BYTES;
        while left > 0 {
            let chunk = left.min(ZEROS.len());
            file.write_all(&ZEROS[..chunk])?;
            left -= chunk;
        }
        file.sync_data()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

/// The small durable write that tells the recovering writer the database takes
/// writes again; returns the last transaction sequence.
fn probe_write(db: &Database) -> Result<u64> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(Durability::Immediate);
    let last_sequence = {
        let mut probes = txn.open_table(PROBES).map_err(db_error)?;
        probes
            .insert("last", Timestamp::now().0)
            .map_err(db_error)?;
        let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
        let last = transactions.last().map_err(db_error)?;
        last.map_or(0, |(key, _)| key.value())
    };
    txn.commit().map_err(db_error)?;
    Ok(last_sequence)
}

/// Logs repeated ledger I/O errors at most once per
/// [`LEDGER_ERROR_LOG_INTERVAL_MS`] (a full disk fails every probe), with the
/// number left out since the last line.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, failure: &'static str, error: &Error) {
        let interval = Duration::from_millis(LEDGER_ERROR_LOG_INTERVAL_MS);
        if self.last.is_some_and(|at| at.elapsed() < interval) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(%error, failure, suppressed = self.suppressed, "ledger write failed");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}
