//! Every crash point of the CAS ledger's claim and void, one by one: a
//! ledger whose store stops answering after its n-th operation (that
//! operation applied or not) is abandoned mid-write, as a crashed process
//! would leave it; a fresh ledger's `recover_claims` then finishes or undoes
//! it, and the ledger reads as if the write had happened whole or not at all.
//! The simulation (`tests/cas_simulation/`) covers the same ground at
//! random; this walks it exhaustively for one claim and one void.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use voucherd_core::domain::{PhoneNumber, RedemptionStatus, Timestamp, Voucher, VoucherCode};
use voucherd_core::error::Error;
use voucherd_core::ledger::{Claim, VoucherHalf, VoucherLedger};
use voucherd_core::ledger::{PendingLedger, Resolution};
use voucherd_store::cas::memory::MemoryStore;
use voucherd_store::cas::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture,
};
use voucherd_store::cas::CasLedger;

/// The store of a process that dies at its `budget`-th operation: before
/// it takes effect, or (`applied`) right after.
#[derive(Clone)]
struct Dying {
    inner: MemoryStore,
    budget: Arc<AtomicUsize>,
    applied: bool,
    used: Arc<AtomicUsize>,
}

impl Dying {
    fn new(inner: &MemoryStore, budget: usize, applied: bool) -> Self {
        Dying {
            inner: inner.clone(),
            budget: Arc::new(AtomicUsize::new(budget)),
            applied,
            used: Arc::default(),
        }
    }

    /// Runs `op`, unless the process died: then the caller waits forever.
    fn guard<T: Send + 'static>(&self, op: BoxFuture<'static, T>) -> BoxFuture<'static, T> {
        self.used.fetch_add(1, Ordering::SeqCst);
        let left = self.budget.fetch_sub(1, Ordering::SeqCst);
        match left {
            0 => futures::future::pending().boxed(),
            1 if self.applied => async move {
                op.await;
                futures::future::pending::<T>().await
            }
            .boxed(),
            1 => futures::future::pending().boxed(),
            _ => op,
        }
    }
}

impl CasStore for Dying {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        self.guard(self.inner.cas(cas))
    }
    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        self.guard(self.inner.read_serial(at))
    }
    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.guard(self.inner.read(at))
    }
    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        self.guard(self.inner.scan(partition, scan))
    }
    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.guard(self.inner.put(at, values))
    }
    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.guard(self.inner.remove(at))
    }
}

fn code() -> VoucherCode {
    VoucherCode::parse("GOAL").expect("a valid code")
}

fn phone(n: u64) -> PhoneNumber {
    PhoneNumber::from_stored(989_120_000_000 + n)
}

fn claim(n: u64, slot: u32) -> Claim {
    Claim {
        code: code(),
        phone: phone(n),
        slot,
        at: Timestamp(1_780_000_000_000_000 + n as i64),
    }
}

/// A store holding voucher GOAL (limit 2).
async fn store() -> MemoryStore {
    let store = MemoryStore::new();
    let ledger = CasLedger::<_, VoucherHalf>::open_half(store.clone());
    let voucher = Voucher::new(code(), 100, 2, None, None, Timestamp(0)).expect("valid");
    ledger.create_voucher(voucher).await.expect("create");
    store
}

/// Runs `write` on a ledger dying at operation `budget`; answers whether it
/// finished, and how many operations it used.
async fn run_dying<F, T>(
    store: &MemoryStore,
    budget: usize,
    applied: bool,
    write: F,
) -> (bool, usize)
where
    F: FnOnce(Arc<CasLedger<Dying, VoucherHalf>>) -> BoxFuture<'static, T>,
{
    let dying = Dying::new(store, budget, applied);
    let used = dying.used.clone();
    let ledger = Arc::new(CasLedger::<_, VoucherHalf>::open_half(dying));
    let finished = tokio::time::timeout(Duration::from_millis(50), write(ledger.clone()))
        .await
        .is_ok();
    ledger.halt();
    (finished, used.load(Ordering::SeqCst))
}

/// Recovery on a fresh ledger, then what user 1's redemption is.
async fn recover(
    store: &MemoryStore,
) -> (
    CasLedger<MemoryStore, VoucherHalf>,
    Option<RedemptionStatus>,
) {
    let ledger = CasLedger::<_, VoucherHalf>::open_half(store.clone());
    let everything = Timestamp(i64::MAX / 2);
    for _ in 0..3 {
        ledger
            .recover_claims(everything, 100)
            .await
            .expect("recover");
    }
    let redemption = ledger.redemption(code(), phone(1)).await.expect("read");
    (ledger, redemption.map(|r| r.status))
}

/// The slot and the count agree with user 1's redemption, and a claim of
/// slot 1 by user 2 is refused exactly when user 1 holds it.
async fn assert_whole(ledger: &CasLedger<MemoryStore, VoucherHalf>, holds: bool, case: &str) {
    let usage = ledger.slot_usage(code()).await.expect("usage");
    let redeemed = ledger
        .voucher(code())
        .await
        .expect("read")
        .expect("exists")
        .redeemed;
    assert_eq!(
        (usage.taken, redeemed),
        (u32::from(holds), u32::from(holds)),
        "{case}"
    );
    let pending = ledger
        .pending(Timestamp(i64::MAX / 2), 10)
        .await
        .expect("pending");
    let is_pending = pending.iter().any(|r| r.phone == phone(1));
    let other = ledger.claim(claim(2, 1)).await;
    assert_eq!(
        other.is_err(),
        holds,
        "{case}: slot 1 to another user: {other:?}"
    );
    let again = ledger.claim(claim(1, 2)).await;
    let refused = matches!(again, Err(Error::AlreadyRedeemed));
    assert_eq!(
        refused, holds,
        "{case}: user 1 again: {again:?}, pending {is_pending}"
    );
}

#[tokio::test]
async fn a_claim_interrupted_anywhere_ends_whole_or_not_at_all() {
    let (_, total) = run_dying(&store().await, usize::MAX, false, |l| {
        async move { l.claim(claim(1, 1)).await }.boxed()
    })
    .await;
    assert!(total >= 6, "a claim takes several operations, took {total}");
    for budget in 1..=total {
        for applied in [false, true] {
            let store = store().await;
            let case = format!("claim dying at operation {budget} (applied {applied})");
            run_dying(&store, budget, applied, |l| {
                async move { l.claim(claim(1, 1)).await }.boxed()
            })
            .await;
            let (ledger, status) = recover(&store).await;
            assert!(
                matches!(status, None | Some(RedemptionStatus::Pending)),
                "{case}: {status:?}"
            );
            assert_whole(&ledger, status.is_some(), &case).await;
        }
    }
}

#[tokio::test]
async fn a_void_interrupted_anywhere_releases_the_slot_after_recovery() {
    let void = |l: Arc<CasLedger<Dying, VoucherHalf>>| {
        let id = voucherd_core::domain::redemption_id(&code(), phone(1));
        let reason = "refused".to_owned();
        async move { l.settle(id, Resolution::Void { reason }).await }.boxed()
    };
    let claimed = || async {
        let store = store().await;
        let ledger = CasLedger::<_, VoucherHalf>::open_half(store.clone());
        ledger.claim(claim(1, 1)).await.expect("claim");
        store
    };
    let (_, total) = run_dying(&claimed().await, usize::MAX, false, void).await;
    for budget in 1..=total {
        for applied in [false, true] {
            let store = claimed().await;
            let case = format!("void dying at operation {budget} (applied {applied})");
            run_dying(&store, budget, applied, void).await;
            let (ledger, status) = recover(&store).await;
            let holds = match status {
                Some(RedemptionStatus::Pending) => true,
                Some(RedemptionStatus::Void) => false,
                other => panic!("{case}: {other:?}"),
            };
            let usage = ledger.slot_usage(code()).await.expect("usage");
            assert_eq!(usage.taken, u32::from(holds), "{case}");
            let redeemed = ledger.voucher(code()).await.expect("read").expect("exists");
            assert_eq!(redeemed.redeemed, u32::from(holds), "{case}");
        }
    }
}
