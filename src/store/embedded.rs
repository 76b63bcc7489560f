//! The embedded ledger on redb: the default store, needing no other server.
//!
//! All writes go through one writer thread that groups whatever is queued (up to
//! [`MAX_COMMIT_BATCH_OPS`]) into a single write transaction and one durable commit,
//! so throughput is not bounded by one fsync per request. Each operation inside a
//! batch checks its conditions before it writes anything, so a rejected operation
//! leaves no trace; a storage failure aborts the whole batch and every operation in
//! it is answered with `Storage` (nothing of it was acknowledged, nothing is kept).
//! Reads use redb's MVCC read transactions on the blocking pool and never wait
//! for the writer.
//!
//! The layout keeps the pages one claim dirties few, because page writes bound a
//! B-tree's commit rate: a user's wallet head and redemption markers share one
//! key prefix (one leaf), transactions are appended to a log keyed by a global
//! sequence, slots are handed out lowest first (appends too), and only ids that
//! can be replayed (client idempotency keys) get an index. A claim thus touches
//! one randomly placed page instead of four.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use redb::{AccessGuard, Database, Durability, ReadableTable, Table, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::queue::{stop_process_after_writer_panic, Queued, WriteQueue};
use super::{Claim, Ledger, LedgerFuture, NewProfile, NewTransaction, SlotUsage};
use crate::domain::{
    redemption_id, voucher_reference, Page, PageRequest, PhoneNumber, Redemption, ReportEntry,
    Timestamp, Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction,
    OPENING_BALANCE_REFERENCE,
};
use crate::error::{Error, Result};
use crate::limits::MAX_COMMIT_BATCH_OPS;
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

/// The account row key of a wallet's head. Voucher codes are never empty, so it
/// cannot collide with a redemption, and it sorts first among a phone's rows.
const WALLET_HEAD: &str = "";

const DATABASE_FILE: &str = "voucherd.redb";

type Reply<T> = oneshot::Sender<Result<T>>;

enum WriteOp {
    CreateVoucher(Voucher, Reply<VoucherStatus>),
    Claim(Claim, Reply<Redemption>),
    CreateProfile(NewProfile, Reply<Wallet>),
    Transact(NewTransaction, Reply<WalletTransaction>),
}

/// The redb-backed ledger. Cheap to share: it is a queue sender and a database handle.
pub struct EmbeddedLedger {
    db: Arc<Database>,
    writes: WriteQueue<WriteOp>,
}

impl EmbeddedLedger {
    /// Opens (or creates) the store in directory `path` and starts its writer thread.
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let db = Arc::new(Database::create(path.join(DATABASE_FILE))?);
        let last_sequence = create_tables(&db)?;
        let (writes, queue) = WriteQueue::bounded();
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let run = || run_writer(&writer_db, queue, last_sequence, &metrics);
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                    stop_process_after_writer_panic();
                }
            })?;
        Ok(Self { db, writes })
    }

    fn submit<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> WriteOp) -> LedgerFuture<T> {
        let (reply, answer) = oneshot::channel();
        self.writes.submit(make(reply), answer)
    }

    fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> LedgerFuture<T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let txn = db.begin_read().map_err(Error::storage)?;
                work(&txn)
            })
            .await
            .map_err(Error::storage)?
        })
    }
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
            let vouchers = txn.open_table(VOUCHERS).map_err(Error::storage)?;
            let redeemed = txn.open_table(REDEEMED).map_err(Error::storage)?;
            read_voucher(&vouchers, &redeemed, code)
        })
    }

    fn vouchers(&self) -> LedgerFuture<Vec<VoucherStatus>> {
        self.read(move |txn| {
            let vouchers = txn.open_table(VOUCHERS).map_err(Error::storage)?;
            let redeemed = txn.open_table(REDEEMED).map_err(Error::storage)?;
            let mut all = Vec::new();
            for entry in vouchers.iter().map_err(Error::storage)? {
                let (key, _) = entry.map_err(Error::storage)?;
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
            let accounts = txn.open_table(ACCOUNTS).map_err(Error::storage)?;
            let Some(row) = accounts
                .get((phone.stored(), code.as_str()))
                .map_err(Error::storage)?
            else {
                return Ok(None);
            };
            let (slot, credit_sequence, redeemed_at) = row.value();
            let transactions = txn.open_table(TRANSACTIONS).map_err(Error::storage)?;
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
            let slots = txn.open_table(SLOTS).map_err(Error::storage)?;
            let first_slot = match page.cursor {
                // A cursor past the largest slot reads as an empty page.
                Some(after) => u32::try_from(after.saturating_add(1)).unwrap_or(u32::MAX),
                None => 1,
            };
            let range = slots
                .range((code.as_str(), first_slot)..=(code.as_str(), u32::MAX))
                .map_err(Error::storage)?;
            let mut items = Vec::new();
            let mut more = false;
            for entry in range.skip(page.offset as usize) {
                let (key, value) = entry.map_err(Error::storage)?;
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
            let slots = txn.open_table(SLOTS).map_err(Error::storage)?;
            let range = slots
                .range((code.as_str(), 1u32)..=(code.as_str(), u32::MAX))
                .map_err(Error::storage)?;
            range
                .map(|entry| {
                    let (_, value) = entry.map_err(Error::storage)?;
                    Ok(PhoneNumber::from_stored(value.value().0))
                })
                .collect()
        })
    }

    fn slot_usage(&self, code: VoucherCode) -> LedgerFuture<SlotUsage> {
        self.read(move |txn| {
            let slots = txn.open_table(SLOTS).map_err(Error::storage)?;
            let range = slots
                .range((code.as_str(), 1u32)..=(code.as_str(), u32::MAX))
                .map_err(Error::storage)?;
            let mut usage = SlotUsage::default();
            let mut next_expected = 1u32;
            for entry in range {
                let (key, _) = entry.map_err(Error::storage)?;
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
            let accounts = txn.open_table(ACCOUNTS).map_err(Error::storage)?;
            let Some(head) = accounts
                .get((phone.stored(), WALLET_HEAD))
                .map_err(Error::storage)?
            else {
                return Ok(None);
            };
            let (balance, last_sequence, created_at) = head.value();
            let wallet = Wallet {
                phone,
                balance,
                created_at: Timestamp(created_at),
            };
            let transactions = txn.open_table(TRANSACTIONS).map_err(Error::storage)?;
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
}

fn read_voucher(
    vouchers: &impl ReadableTable<&'static str, VoucherRow>,
    redeemed: &impl ReadableTable<&'static str, u32>,
    code: VoucherCode,
) -> Result<Option<VoucherStatus>> {
    let Some(row) = vouchers.get(code.as_str()).map_err(Error::storage)? else {
        return Ok(None);
    };
    let (amount, limit, starts_at, expires_at, created_at) = row.value();
    let count = redeemed
        .get(code.as_str())
        .map_err(Error::storage)?
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
        .map_err(Error::storage)?
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
            vouchers: txn.open_table(VOUCHERS).map_err(Error::storage)?,
            redeemed: txn.open_table(REDEEMED).map_err(Error::storage)?,
            slots: txn.open_table(SLOTS).map_err(Error::storage)?,
            accounts: txn.open_table(ACCOUNTS).map_err(Error::storage)?,
            transactions: txn.open_table(TRANSACTIONS).map_err(Error::storage)?,
            transaction_ids: txn.open_table(TRANSACTION_IDS).map_err(Error::storage)?,
            last_sequence,
        })
    }

    fn create_voucher(&mut self, voucher: Voucher) -> Result<VoucherStatus> {
        let code = voucher.code.as_str();
        if self.vouchers.get(code).map_err(Error::storage)?.is_some() {
            return Err(Error::VoucherExists);
        }
        let row = (
            voucher.amount,
            voucher.limit,
            voucher.starts_at.map(|t| t.0),
            voucher.expires_at.map(|t| t.0),
            voucher.created_at.0,
        );
        self.vouchers.insert(code, row).map_err(Error::storage)?;
        self.redeemed.insert(code, 0).map_err(Error::storage)?;
        Ok(VoucherStatus {
            voucher,
            redeemed: 0,
        })
    }

    fn claim(&mut self, claim: Claim) -> Result<Redemption> {
        let code = claim.code.as_str();
        let phone = claim.phone.stored();
        let (amount, limit) = match self.vouchers.get(code).map_err(Error::storage)? {
            Some(row) => {
                let (amount, limit, ..) = row.value();
                (amount, limit)
            }
            None => return Err(Error::VoucherNotFound),
        };
        if self
            .accounts
            .get((phone, code))
            .map_err(Error::storage)?
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
            .map_err(Error::storage)?
            .is_some()
        {
            return Err(Error::SlotTaken);
        }
        let redeemed = self
            .redeemed
            .get(code)
            .map_err(Error::storage)?
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
            .map_err(Error::storage)?;
        self.accounts
            .insert(
                (phone, code),
                (i64::from(claim.slot), credit.sequence, claim.at.0),
            )
            .map_err(Error::storage)?;
        self.redeemed
            .insert(code, redeemed + 1)
            .map_err(Error::storage)?;
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
            .map_err(Error::storage)?
            .is_some()
        {
            return Err(Error::ProfileExists);
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (0, 0, profile.at.0))
            .map_err(Error::storage)?;
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
                .map_err(Error::storage)?
                .map(|s| s.value());
            if let Some(sequence) = first_sequence {
                let first = read_transaction(&self.transactions, sequence)?;
                let same_request = first.phone == transaction.phone
                    && first.amount == transaction.amount
                    && first.reference == transaction.reference;
                return if same_request {
                    Ok(first)
                } else {
                    Err(Error::IdempotencyKeyReused)
                };
            }
        }
        let head = self
            .accounts
            .get((phone, WALLET_HEAD))
            .map_err(Error::storage)?
            .map(|w| w.value());
        let (balance, previous, created_at) = head.unwrap_or((0, 0, transaction.at.0));
        assert!(
            balance >= 0,
            "I5: wallet {phone} holds a negative balance {balance}"
        );
        let new_balance = balance
            .checked_add(transaction.amount)
            .ok_or_else(|| Error::invalid("invalid_amount", "the balance would overflow"))?;
        if new_balance < 0 {
            return Err(Error::InsufficientFunds);
        }
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
        self.transactions
            .insert(sequence, row)
            .map_err(Error::storage)?;
        if transaction.replayable {
            self.transaction_ids
                .insert(id, sequence)
                .map_err(Error::storage)?;
        }
        self.accounts
            .insert((phone, WALLET_HEAD), (new_balance, sequence, created_at))
            .map_err(Error::storage)?;
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
    fn is_storage_failure(&self) -> bool {
        let failed = |e: &Error| matches!(e, Error::Storage { .. });
        match self {
            Applied::Voucher(_, r) => r.as_ref().err().is_some_and(failed),
            Applied::Redemption(_, r) => r.as_ref().err().is_some_and(failed),
            Applied::Wallet(_, r) => r.as_ref().err().is_some_and(failed),
            Applied::Transaction(_, r) => r.as_ref().err().is_some_and(failed),
        }
    }

    /// Sends the outcome, or `failure` if the batch did not commit. A caller that
    /// stopped waiting (its request timed out) is not an error here.
    fn answer(self, failure: Option<&Error>) {
        fn send<T>(reply: Reply<T>, result: Result<T>, failure: Option<&Error>) {
            let _ = reply.send(match failure {
                Some(error) => Err(error.clone()),
                None => result,
            });
        }
        match self {
            Applied::Voucher(reply, result) => send(reply, result, failure),
            Applied::Redemption(reply, result) => send(reply, result, failure),
            Applied::Wallet(reply, result) => send(reply, result, failure),
            Applied::Transaction(reply, result) => send(reply, result, failure),
        }
    }
}

fn run_writer(
    db: &Database,
    mut queue: mpsc::Receiver<Queued<WriteOp>>,
    mut last_sequence: u64,
    metrics: &Metrics,
) {
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
        shutdown = commit_batch(db, &mut batch, &mut last_sequence);
        metrics.observe_ledger_commit(operations, started.elapsed());
    }
    queue.close();
    tracing::info!("ledger writer stopped");
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
}

/// Applies and commits one batch, advancing `last_sequence` only if it commits;
/// returns the shutdown request if the batch held one (operations queued behind
/// it are still in the batch and are applied first).
fn commit_batch(
    db: &Database,
    batch: &mut Vec<Queued<WriteOp>>,
    last_sequence: &mut u64,
) -> Option<oneshot::Sender<()>> {
    let mut shutdown = None;
    let mut applied = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<u64> {
        let mut txn = db.begin_write().map_err(Error::storage)?;
        txn.set_durability(Durability::Immediate);
        let committed_sequence;
        {
            let mut tables = Tables::open(&txn, *last_sequence)?;
            for op in batch.drain(..) {
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
                        shutdown = Some(done);
                        continue;
                    }
                };
                let failed = done.is_storage_failure();
                applied.push(done);
                if failed {
                    return Err(Error::storage("an operation of the batch failed to write"));
                }
            }
            committed_sequence = tables.last_sequence;
        }
        txn.commit().map_err(Error::storage)?;
        Ok(committed_sequence)
    })();
    let failure = match outcome {
        Ok(sequence) => {
            *last_sequence = sequence;
            None
        }
        Err(error) => {
            tracing::error!(%error, operations = applied.len(), "ledger batch not committed");
            Some(error)
        }
    };
    // Operations not reached because of a failure are answered through drop
    // (their reply senders close), which callers see as `Unavailable`.
    batch.clear();
    for done in applied {
        done.answer(failure.as_ref());
    }
    shutdown
}
