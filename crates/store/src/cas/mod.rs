//! The ledger over a store of partitions with per-partition compare-and-set
//! (ScyllaDB's lightweight transactions, abstracted as [`CasStore`]).
//!
//! No write here is one atomic step across the whole ledger: a claim touches
//! the user's key, a slot and a log entry, each in its own partition. So each
//! write is a short protocol of conditional steps, every step idempotent or
//! guarded by its condition, and every crash between two steps is finished or
//! undone by [`CasLedger::recover_claims`] (run by the voucher service's
//! recovery pass). `cql/README.md` describes the protocol step by step; in
//! short:
//!
//! - **claim** (user key first): log the attempt (a plain write in the claim
//!   log) → start it on the user's key (`IF NOT EXISTS` / `IF version = ?`:
//!   the key names the attempt, its slot and the slot generation its take
//!   expects) → take the slot (`IF gen = ? AND holder = null`, the slot's
//!   own row only, so takes of different slots never refuse each other) →
//!   commit the key
//!   (`IF version = ?`). A slot lost to another attempt aborts the key; a slot
//!   freed and taken again meanwhile moves the key's attempt to the slot's new
//!   generation. The take of a given generation can happen at most once, and
//!   a generation only grows, so a late duplicate of a take never lands.
//! - **settle**: the key's status (`IF version = ?`, only while the key
//!   holds the redemption of the attempt settled), then for a void the
//!   slot's release (`IF holder = ? AND attempt = ?`), then the log entry.
//! - **wallet**: a credit or debit is one conditional batch in the wallet's
//!   partition: the balance and version (`IF version = ?`), the transaction
//!   row, and the transaction id's marker (`IF NOT EXISTS`), so a replay
//!   changes nothing; an idempotency key is first bound to its request in a
//!   partition of its own (`IF NOT EXISTS`), so it binds across wallets.
//! - an `Unknown` answer is settled by a serial read and the protocol goes on
//!   from what the row says (a step that applied is recognised by the
//!   attempt's nonce or the transaction id).
//!
//! Writes are ordered as the ledger contract asks by [`order`]; the
//! in-memory store of [`memory`] runs the conformance suites and the CAS
//! simulation (`tests/cas_simulation/`).

pub mod memory;
pub mod observed;
pub mod store;

mod claim;
mod order;
mod reads;
mod recover;
mod schema;
mod settle;
mod wallet;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use parking_lot::Mutex;
use uuid::Uuid;

use self::order::{Lane, Order, Use};
use self::schema::{voucher_key, VoucherRow};
use self::settle::{Settled, Settling};
use self::store::{Cas, CasOutcome, Current, RowKey, Write};
pub use observed::Observed;
pub use store::CasStore;
use voucherd_core::domain::{
    redemption_id, Page, PageRequest, PhoneNumber, Redemption, ReportEntry, Timestamp, Voucher,
    VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{
    AllInOne, Claim, Durable, HalfKind, HoldsVouchers, HoldsWallets, LedgerFuture, LedgerHealth,
    NewProfile, NewTransaction, PendingLedger, SlotUsage, VoucherLedger, WalletLedger,
};
use voucherd_core::ledger::{ClaimsRecovered, Resolution};

/// The partition holding every voucher's row (what a store's health probe
/// reads: every claim starts there).
pub fn catalog_partition() -> store::Partition {
    schema::catalog()
}

/// Where claim attempts get their nonces: random in production, seeded in
/// the simulation (so a seed replays).
pub trait Nonces: Send + Sync + 'static {
    fn next(&self) -> Uuid;
}

/// Random (v4) nonces.
pub struct RandomNonces;

impl Nonces for RandomNonces {
    fn next(&self) -> Uuid {
        Uuid::new_v4()
    }
}

/// The layout knobs of a CAS ledger. Every instance sharing a store must use
/// the same ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasOptions {
    /// A voucher's slots spread over `min(limit, max_buckets)` partitions.
    pub max_buckets: u32,
    /// Partitions of the claim log.
    pub log_shards: u32,
    /// Conditional steps one write may take before it answers `Unavailable`
    /// (contention; recovery finishes what it leaves).
    pub max_steps: u32,
    /// Test-only, always `None` outside the CAS simulation's planted bugs
    /// (`tests/cas_simulation/planted.rs`). Never set it.
    #[doc(hidden)]
    pub planted: PlantedBug,
}

/// A bug the CAS simulation plants in the ledger itself, where nothing the
/// store sees could plant it (test-only; see [`CasOptions::planted`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlantedBug {
    #[default]
    None,
    /// A settle of one claim attempt's redemption settles whatever
    /// redemption the key holds, as settles did before they named their
    /// attempt.
    SettleAnyAttempt,
    /// Reads take a partition's statics from the read of a clustering row,
    /// as the ledger did before it met Cassandra: when the row does not
    /// exist, the statics do not come back either.
    StaticsFromRowRead,
}

impl Default for CasOptions {
    fn default() -> Self {
        CasOptions {
            max_buckets: 64,
            log_shards: 16,
            max_steps: 32,
            planted: PlantedBug::None,
        }
    }
}

/// The ledger over a [`CasStore`], holding half `H` (see [`HalfKind`]; the
/// default is both halves, role `all`). It implements the ledger traits of
/// its half only, so a wallet half has no `claim`:
///
/// ```compile_fail
/// use voucherd_core::ledger::{Claim, VoucherLedger, WalletHalf};
/// use voucherd_store::cas::memory::MemoryStore;
/// use voucherd_store::cas::CasLedger;
///
/// fn claim(ledger: &CasLedger<MemoryStore, WalletHalf>, claim: Claim) {
///     let _ = ledger.claim(claim); // error: `VoucherLedger` is not implemented
/// }
/// ```
///
/// while a voucher half has, and an all-in-one ledger is a whole [`Ledger`]:
///
/// ```
/// use voucherd_core::ledger::{Claim, Ledger, VoucherHalf, VoucherLedger};
/// use voucherd_store::cas::memory::MemoryStore;
/// use voucherd_store::cas::CasLedger;
///
/// fn claim(ledger: &CasLedger<MemoryStore, VoucherHalf>, claim: Claim) {
///     let _ = ledger.claim(claim);
/// }
/// fn whole(ledger: CasLedger<MemoryStore>) -> Box<dyn Ledger> {
///     Box::new(ledger)
/// }
/// ```
///
/// [`Ledger`]: voucherd_core::ledger::Ledger
pub struct CasLedger<S: CasStore, H: HalfKind = AllInOne> {
    inner: Arc<Inner<S, H>>,
}

/// What every protocol step reads: the store, the layout, and caches.
pub(super) struct Inner<S, H> {
    store: S,
    half: PhantomData<H>,
    options: CasOptions,
    order: Arc<Order>,
    nonces: Arc<dyn Nonces>,
    /// Vouchers never change once created.
    vouchers: Mutex<BTreeMap<VoucherCode, Arc<VoucherRow>>>,
    /// The voucher and slot of redemptions this instance claimed, so that
    /// their settles order behind those claims only (bounded; a settle of an
    /// id not here waits for every earlier write).
    claimed: Mutex<BTreeMap<Uuid, (String, u32)>>,
}

/// Entries of [`Inner::claimed`] kept at most.
const MAX_REMEMBERED_CLAIMS: usize = 65_536;

impl<S: CasStore> CasLedger<S> {
    /// Opens the all-in-one ledger over `store`.
    pub fn open(store: S) -> Self {
        Self::open_half(store)
    }
}

impl<S: CasStore, H: HalfKind> CasLedger<S, H> {
    /// Opens the ledger holding half `H` over `store`
    /// (`CasLedger::<_, VoucherHalf>::open_half(store)`).
    pub fn open_half(store: S) -> Self {
        Self::open_with(store, CasOptions::default(), Arc::new(RandomNonces))
    }

    /// [`CasLedger::open_half`] with its options and attempt nonces.
    pub fn open_with(store: S, options: CasOptions, nonces: Arc<dyn Nonces>) -> Self {
        let inner = Inner {
            store,
            half: PhantomData,
            options,
            order: Arc::default(),
            nonces,
            vouchers: Mutex::default(),
            claimed: Mutex::default(),
        };
        CasLedger {
            inner: Arc::new(inner),
        }
    }

    /// Stops every write in flight where it stands and refuses new ones, as
    /// a crash of the process would (the simulation's crash).
    pub fn halt(&self) {
        self.inner.order.halt();
    }

    fn write<T, F>(
        &self,
        lanes: Vec<(Lane, Use)>,
        work: impl FnOnce(Arc<Inner<S, H>>) -> F,
    ) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        self.inner.order.submit(lanes, work(self.inner.clone()))
    }
}

impl<S: CasStore, H: HoldsVouchers> CasLedger<S, H> {
    /// Finishes or undoes claim attempts logged before `claimed_before`
    /// (oldest first, up to `limit`), releases the slots of void redemptions
    /// whose release was interrupted, and drops log entries nothing needs.
    /// In an all-in-one ledger it also credits pending redemptions (their
    /// credit is local) and settles them.
    pub fn recover_claims(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> LedgerFuture<ClaimsRecovered> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.recover_claims(claimed_before, limit).await })
    }
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    fn nonce(&self) -> Uuid {
        self.nonces.next()
    }

    /// Whether claims carry their credit (role `all`) or are born pending.
    fn claims_credit(&self) -> bool {
        !H::CLAIMS_PENDING
    }

    /// A row and its partition's statics. CQL returns no statics with a
    /// clustering row that does not exist (a wallet's marker of a new
    /// transaction, a slot never taken), so those come from a read of the
    /// partition alone. After a serial read of the row, which completes any
    /// Paxos round in progress on the partition, a plain read of the statics
    /// sees that round. The two reads are not one snapshot: every write decided
    /// from them is conditioned on what it read, so a change in between only
    /// makes it not apply.
    pub(super) async fn read_with_statics(&self, at: RowKey, serial: bool) -> Result<Current> {
        let table = at.partition.table;
        let mut current = if serial {
            self.store.read_serial(at.clone()).await?
        } else {
            self.store.read(at.clone()).await?
        };
        let absent = current.row(&at.row).is_none();
        if self.options.planted == PlantedBug::StaticsFromRowRead {
            return Ok(current);
        }
        if absent && !at.row.is_empty() && !table.statics().is_empty() {
            let partition_alone = RowKey {
                partition: at.partition,
                row: Vec::new(),
            };
            current.statics = self.store.read(partition_alone).await?.statics;
        }
        Ok(current)
    }

    /// The voucher, from the cache or the catalog.
    async fn voucher_row(&self, code: &VoucherCode) -> Result<Option<Arc<VoucherRow>>> {
        if let Some(row) = self.vouchers.lock().get(code) {
            return Ok(Some(row.clone()));
        }
        let key = voucher_key(code);
        let current = self.store.read(key.clone()).await?;
        let Some(row) = current.row(&key.row) else {
            return Ok(None);
        };
        let row = Arc::new(VoucherRow::from_row(code.clone(), row)?);
        self.vouchers.lock().insert(code.clone(), row.clone());
        Ok(Some(row))
    }

    async fn create_voucher(&self, voucher: Voucher) -> Result<VoucherStatus> {
        let buckets = voucher.limit.min(self.options.max_buckets).max(1);
        let row = VoucherRow { voucher, buckets };
        let key = voucher_key(&row.voucher.code);
        let values = row.to_row();
        for _ in 0..self.options.max_steps {
            let insert = Write::Insert {
                row: key.row.clone(),
                values: values.clone(),
            };
            let cas = Cas {
                partition: key.partition.clone(),
                writes: vec![insert],
            };
            let stored = match self.store.cas(cas).await {
                CasOutcome::Applied => Some(true),
                CasOutcome::NotApplied(_) => Some(false),
                // Ours if the row is the one written (an identical creation
                // by another instance is the same voucher); absent: not applied.
                CasOutcome::Unknown => {
                    let current = self.store.read_serial(key.clone()).await?;
                    current.row(&key.row).map(|r| r == &values)
                }
            };
            match stored {
                Some(true) => {
                    return Ok(VoucherStatus {
                        voucher: row.voucher,
                        redeemed: 0,
                    })
                }
                Some(false) => return Err(Error::VoucherExists),
                None => continue,
            }
        }
        Err(Error::unavailable("the voucher could not be created"))
    }

    fn remember_claim(&self, id: Uuid, code: &VoucherCode, slot: u32) {
        let mut claimed = self.claimed.lock();
        if claimed.len() >= MAX_REMEMBERED_CLAIMS {
            claimed.clear();
        }
        claimed.insert(id, (code.as_str().to_owned(), slot));
    }

    fn settle_lanes(&self, id: Uuid) -> Vec<(Lane, Use)> {
        match self.claimed.lock().get(&id) {
            Some((code, slot)) => vec![
                (Lane::Key(id), Use::Exclusive),
                (Lane::Slot(code.clone(), *slot), Use::Exclusive),
            ],
            None => vec![(Lane::All, Use::Exclusive)],
        }
    }
}

impl<S: CasStore, H: HalfKind> Durable for CasLedger<S, H> {
    fn shutdown(&self) -> LedgerFuture<()> {
        let order = self.inner.order.clone();
        Box::pin(async move {
            order.close().await;
            Ok(())
        })
    }

    /// Unreachable while the store's own probe fails (see
    /// [`CasStore::reachable`]); readiness then says `database_unreachable`.
    fn health(&self) -> LedgerHealth {
        if self.inner.store.reachable() {
            LedgerHealth::Healthy
        } else {
            LedgerHealth::Unreachable
        }
    }
}

impl<S: CasStore, H: HoldsVouchers> PendingLedger for CasLedger<S, H> {
    /// Split mode's settle knows the id only: it settles the redemption the
    /// key holds ([`Settling::ById`] says why that is safe).
    fn settle(&self, id: Uuid, resolution: Resolution) -> LedgerFuture<Redemption> {
        let lanes = self.inner.settle_lanes(id);
        self.write(lanes, |inner| async move {
            match inner.settle(id, Settling::ById, resolution).await? {
                Settled::Done(redemption) => Ok(redemption),
                Settled::Superseded => Err(Error::storage("a settle by id was superseded")),
            }
        })
    }

    fn pending(&self, claimed_before: Timestamp, limit: usize) -> LedgerFuture<Vec<Redemption>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.pending(claimed_before, limit).await })
    }

    fn recover_claims(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> LedgerFuture<ClaimsRecovered> {
        CasLedger::recover_claims(self, claimed_before, limit)
    }
}

impl<S: CasStore, H: HoldsVouchers> VoucherLedger for CasLedger<S, H> {
    fn create_voucher(&self, voucher: Voucher) -> LedgerFuture<VoucherStatus> {
        let lanes = vec![(
            Lane::Voucher(voucher.code.as_str().to_owned()),
            Use::Exclusive,
        )];
        self.write(
            lanes,
            |inner| async move { inner.create_voucher(voucher).await },
        )
    }

    fn claim(&self, claim: Claim) -> LedgerFuture<Redemption> {
        let id = redemption_id(&claim.code, claim.phone);
        let code = claim.code.as_str().to_owned();
        self.inner.remember_claim(id, &claim.code, claim.slot);
        let mut lanes = vec![
            (Lane::Voucher(code.clone()), Use::Shared),
            (Lane::Key(id), Use::Exclusive),
            (Lane::Slot(code, claim.slot), Use::Exclusive),
        ];
        if self.inner.claims_credit() {
            lanes.push((Lane::Wallet(claim.phone.stored()), Use::Exclusive));
        }
        self.write(lanes, |inner| async move { inner.claim(claim, id).await })
    }

    fn voucher(&self, code: VoucherCode) -> LedgerFuture<Option<VoucherStatus>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.voucher_status(&code).await })
    }

    fn vouchers(&self) -> LedgerFuture<Vec<VoucherStatus>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.all_vouchers().await })
    }

    fn redemption(
        &self,
        code: VoucherCode,
        phone: PhoneNumber,
    ) -> LedgerFuture<Option<Redemption>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.redemption(&code, phone).await })
    }

    fn report(&self, code: VoucherCode, page: PageRequest) -> LedgerFuture<Page<ReportEntry>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.report(&code, page).await })
    }

    fn winners(&self, code: VoucherCode) -> LedgerFuture<Vec<PhoneNumber>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.winners(&code).await })
    }

    fn slot_usage(&self, code: VoucherCode) -> LedgerFuture<SlotUsage> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.slot_usage(&code).await })
    }
}

impl<S: CasStore, H: HoldsWallets> WalletLedger for CasLedger<S, H> {
    fn create_profile(&self, profile: NewProfile) -> LedgerFuture<Wallet> {
        let lanes = vec![(Lane::Wallet(profile.phone.stored()), Use::Exclusive)];
        self.write(
            lanes,
            |inner| async move { inner.create_profile(profile).await },
        )
    }

    fn transact(&self, transaction: NewTransaction) -> LedgerFuture<WalletTransaction> {
        let mut lanes = vec![(Lane::Wallet(transaction.phone.stored()), Use::Exclusive)];
        if transaction.replayable {
            lanes.push((Lane::TransactionId(transaction.id), Use::Exclusive));
        }
        self.write(
            lanes,
            |inner| async move { inner.transact(transaction).await },
        )
    }

    fn wallet(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> LedgerFuture<Option<(Wallet, Page<WalletTransaction>)>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.wallet(phone, page).await })
    }
}

#[cfg(test)]
mod rounds_tests;
