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
//! One file per concern: `tables` (the layout and how each write is applied),
//! `writer` (the group commit), `reopen` (a fresh handle after an I/O error) and `reads`.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use redb::{Database, ReadableTable};
use uuid::Uuid;

use crate::queue::{stop_process_after_writer_panic, Reply, Request, Waiter, WriteQueue};
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

mod reads;
mod reopen;
mod tables;
mod writer;

use reads::{read_pending, read_redemption, read_voucher, read_wallet, report_status};
use reopen::ErrorLog;
use tables::{create_tables, REDEEMED, SLOTS, STATES, VOUCHERS};
use writer::Writer;

const DATABASE_FILE: &str = "voucherd.redb";

/// The redb-backed ledger holding half `H` (see [`HalfKind`]; the default is
/// both halves, role `all`). Cheap to share: it is a queue sender and a
/// database handle.
pub struct EmbeddedLedger<H: HalfKind = AllInOne> {
    database: Arc<SharedDatabase>,
    writes: WriteQueue,
    half: PhantomData<H>,
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
    /// Opens (or creates) the all-in-one store in directory `path` and starts
    /// its writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Self::open_half(path, metrics)
    }
}

impl<H: HalfKind> EmbeddedLedger<H> {
    /// Opens (or creates) the store in directory `path` holding half `H`
    /// (`EmbeddedLedger::<VoucherHalf>::open_half(..)`).
    pub fn open_half(path: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let db = Arc::new(Database::create(path.join(DATABASE_FILE))?);
        let last_sequence = create_tables(&db)?;
        let database = Arc::new(SharedDatabase {
            directory: path.to_owned(),
            current: RwLock::new(Some(db.clone())),
            writable: AtomicBool::new(true),
        });
        let (writes, queue) = WriteQueue::bounded();
        let writer = Writer::<H> {
            database: database.clone(),
            db: Some(db),
            last_sequence,
            half: PhantomData,
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
        Ok(Self {
            database,
            writes,
            half: PhantomData,
        })
    }

    fn submit<T: Send + 'static>(
        &self,
        request: Request,
        waiter: fn(Reply<T>) -> Waiter,
    ) -> LedgerFuture<T> {
        // While the writer recovers, refuse at once rather than queue writes it
        // could only refuse later.
        if !self.database.is_writable() {
            return Box::pin(async { Err(Error::not_written(RECOVERING)) });
        }
        self.writes.submit(request, waiter)
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

impl<H: HalfKind> Durable for EmbeddedLedger<H> {
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

impl<H: HoldsVouchers> PendingLedger for EmbeddedLedger<H> {
    fn settle(&self, id: Uuid, resolution: Resolution) -> LedgerFuture<Redemption> {
        self.submit(Request::Settle(id, resolution), Waiter::Redemption)
    }

    fn pending(&self, claimed_before: Timestamp, limit: usize) -> LedgerFuture<Vec<Redemption>> {
        self.read(move |txn| read_pending(txn, claimed_before, limit))
    }
}

impl<H: HoldsWallets> WalletLedger for EmbeddedLedger<H> {
    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet> {
        self.submit(Request::CreateProfile(profile), Waiter::Wallet)
    }

    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction> {
        self.submit(Request::Transact(transaction), Waiter::Transaction)
    }

    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>> {
        self.read(move |txn| read_wallet(txn, phone, page))
    }
}

impl<H: HoldsVouchers> VoucherLedger for EmbeddedLedger<H> {
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus> {
        self.submit(Request::CreateVoucher(voucher), Waiter::Voucher)
    }

    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption> {
        self.submit(Request::Claim(claim), Waiter::Redemption)
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
        self.read(move |txn| read_redemption(txn, code, phone))
    }

    fn report(&self, code: VoucherCode, page: PageRequest) -> LedgerFuture<Page<ReportEntry>> {
        self.read(move |txn| {
            let slots = txn.open_table(SLOTS).map_err(db_error)?;
            let states = txn.open_table(STATES).map_err(db_error)?;
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
                let phone = PhoneNumber::from_stored(phone);
                items.push(ReportEntry {
                    slot: key.value().1,
                    phone,
                    redeemed_at: Timestamp(redeemed_at),
                    status: report_status(&states, &code, phone)?,
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
}
