//! Settles and credits that must not reach a redemption other than their
//! own, step by step on the in-memory store, as two instances interleave
//! them (the CAS simulation finds the same interleavings at random):
//!
//! - role `all`: a credit refused for good voids the claim, and the refusal
//!   is recorded, so another instance that still sees the redemption
//!   pending (its recovery pass) cannot credit it once the wallet has room,
//!   and the user's next claim (the same id) is refused too (I3);
//! - a settle of an old attempt (a slow instance, a recovery pass working
//!   from a key read before the user claimed again) leaves the user's newer
//!   redemption alone (I3, I4), and recovery still frees the old attempt's
//!   slot (I1);
//! - a slow contender whose attempt another instance committed, voided and
//!   saw claimed again frees the attempt's slot before it drops its log
//!   entry (I1).

use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use uuid::Uuid;

use super::{Settled, Settling};
use crate::cas::memory::MemoryStore;
use crate::cas::schema::{col, int, KeyState};
use crate::cas::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture, Table,
    Value,
};
use crate::cas::{CasLedger, CasOptions, RandomNonces};
use voucherd_core::domain::{
    redemption_id, voucher_reference, PageRequest, PhoneNumber, Redemption, RedemptionStatus,
    Timestamp, Voucher, VoucherCode,
};
use voucherd_core::error::Error;
use voucherd_core::ledger::{
    AllInOne, Claim, HalfKind, NewProfile, NewTransaction, VoucherHalf, VoucherLedger, WalletLedger,
};
use voucherd_core::ledger::{PendingLedger, Resolution};

const AMOUNT: i64 = 100;

fn code() -> VoucherCode {
    VoucherCode::parse("ROLEALL").expect("a valid code")
}

fn phone() -> PhoneNumber {
    PhoneNumber::from_stored(989_120_000_001)
}

fn at(micros: i64) -> Timestamp {
    Timestamp(micros)
}

/// The ledger of half `H` over `store`.
fn open<H: HalfKind>(store: &MemoryStore) -> CasLedger<MemoryStore, H> {
    CasLedger::open_with(store.clone(), CasOptions::default(), Arc::new(RandomNonces))
}

fn claim(slot: u32, micros: i64) -> Claim {
    Claim {
        code: code(),
        phone: phone(),
        slot,
        at: at(micros),
    }
}

/// A voucher of three slots; the user's wallet opened with `opening`.
async fn prepare(ledger: &CasLedger<MemoryStore>, opening: i64) {
    let voucher = Voucher::new(code(), AMOUNT, 3, None, None, at(1)).expect("a valid voucher");
    ledger.create_voucher(voucher).await.expect("the voucher");
    let profile = NewProfile {
        phone: phone(),
        opening_balance: opening,
        at: at(1),
    };
    ledger.create_profile(profile).await.expect("the wallet");
}

/// The user's key as stored, read serially.
async fn key<H: HalfKind>(ledger: &CasLedger<MemoryStore, H>) -> KeyState {
    let id = redemption_id(&code(), phone());
    let row = ledger.inner.key_row(id, true).await.expect("the key");
    KeyState::read(row.as_ref()).expect("a readable key")
}

/// The attempt that made the redemption the key holds.
async fn committed_attempt<H: HalfKind>(ledger: &CasLedger<MemoryStore, H>) -> Uuid {
    let key = key(ledger).await;
    key.committed.expect("a redemption").attempt
}

/// The holder (id, attempt) of every held slot.
fn held_slots(store: &MemoryStore) -> Vec<(i64, Uuid)> {
    let mut held = Vec::new();
    for part in store.dump(Table::Slots) {
        for (clustering, row) in part.rows {
            if let (Some(Value::Int(slot)), Some(Value::Uuid(attempt))) =
                (clustering.first(), row.get(col::ATTEMPT))
            {
                held.push((*slot, *attempt));
            }
        }
    }
    held.sort();
    held
}

/// The attempts the claim log still names.
fn logged_attempts(store: &MemoryStore) -> Vec<Uuid> {
    let rows = store.dump(Table::ClaimLog).into_iter().flat_map(|p| p.rows);
    let mut attempts: Vec<Uuid> = rows
        .filter_map(|(clustering, _)| match clustering.get(2) {
            Some(Value::Uuid(attempt)) => Some(*attempt),
            _ => None,
        })
        .collect();
    attempts.sort();
    attempts
}

/// The voucher credits the user's wallet holds.
async fn voucher_credits(ledger: &CasLedger<MemoryStore>) -> usize {
    let page = PageRequest {
        limit: 100,
        offset: 0,
        cursor: None,
    };
    let (_, transactions) = (ledger.wallet(phone(), page).await)
        .expect("the wallet")
        .expect("an open wallet");
    let reference = voucher_reference(&code());
    (transactions.items.iter())
        .filter(|t| t.reference == reference)
        .count()
}

/// A debit of the user's own that makes room in the wallet.
fn spend(id: u128) -> NewTransaction {
    NewTransaction {
        id: Uuid::from_u128(id),
        replayable: false,
        phone: phone(),
        amount: -10 * AMOUNT,
        reference: "spend".to_owned(),
        at: at(5),
        refusal_is_final: false,
    }
}

/// Goal (I3): in role `all`, a claim whose credit the wallet refuses (its
/// balance would overflow) is void, and stays without a credit: another
/// instance's recovery that read it pending before the void credits it
/// locally once the wallet has room, and is refused (the refusal was
/// recorded with the void); so is the user's next claim, the same id.
#[tokio::test]
async fn role_all_a_void_claim_is_never_credited_by_another_instance_later() {
    let store = MemoryStore::new();
    let first = open::<AllInOne>(&store);
    let other = open::<AllInOne>(&store);
    prepare(&first, i64::MAX - AMOUNT / 2).await;

    let refused = first.claim(claim(1, 10)).await;
    assert!(matches!(refused, Err(Error::Invalid { .. })), "{refused:?}");
    let attempt = committed_attempt(&first).await;
    let void = key(&first).await.committed.expect("a redemption");
    assert_eq!(void.status, RedemptionStatus::Void);

    // The wallet gets room; the other instance's recovery had read the
    // redemption pending (as `finish_locally` passes it) and credits it now.
    first.transact(spend(7)).await.expect("room in the wallet");
    let id = redemption_id(&code(), phone());
    let pending = Redemption {
        id,
        code: code(),
        phone: phone(),
        amount: AMOUNT,
        slot: 1,
        redeemed_at: at(10),
        status: RedemptionStatus::Pending,
        balance: None,
    };
    let late = other.inner.credit_locally(pending, attempt).await;
    assert!(matches!(late, Err(Error::CreditRefused { .. })), "{late:?}");
    let recovered = other.recover_claims(at(i64::MAX / 2), 100).await;
    assert!(recovered.is_ok(), "{recovered:?}");
    assert_eq!(voucher_credits(&first).await, 0);
    assert_eq!(
        key(&first).await.committed.map(|c| c.status),
        Some(RedemptionStatus::Void)
    );

    // The user claims again: the same id, refused for good.
    let again = other.claim(claim(2, 20)).await;
    assert!(
        matches!(again, Err(Error::CreditRefused { .. })),
        "{again:?}"
    );
    assert_eq!(voucher_credits(&first).await, 0);
    assert!(held_slots(&store).is_empty());
    assert!(logged_attempts(&store).is_empty());
}

/// Goal (I3, I4): a settle of an old attempt changes nothing once the user
/// claimed again: the newer redemption stays pending, to be settled by its
/// own credit's answer (which may be 200 to its client).
#[tokio::test]
async fn a_stale_settle_of_an_old_attempt_leaves_the_newer_redemption_alone() {
    let store = MemoryStore::new();
    let ledger = open::<VoucherHalf>(&store);
    prepare(&open::<AllInOne>(&store), 0).await;
    let id = redemption_id(&code(), phone());

    ledger.claim(claim(1, 10)).await.expect("the first claim");
    let old = committed_attempt(&ledger).await;
    let reason = "refused".to_owned();
    let voided = ledger.settle(id, Resolution::Void { reason }).await;
    assert_eq!(voided.map(|r| r.status), Ok(RedemptionStatus::Void));
    ledger.claim(claim(2, 20)).await.expect("the claim again");
    let new = committed_attempt(&ledger).await;
    assert_ne!(old, new);

    for resolution in [
        Resolution::Void {
            reason: "late".to_owned(),
        },
        Resolution::Credited { balance: AMOUNT },
    ] {
        let stale = ledger.inner.settle(id, Settling::Attempt(old), resolution);
        assert_eq!(stale.await, Ok(Settled::Superseded));
    }
    let key = key(&ledger).await;
    let committed = key.committed.expect("a redemption");
    assert_eq!(
        (committed.attempt, committed.status, committed.slot),
        (new, RedemptionStatus::Pending, 2)
    );
    assert_eq!(held_slots(&store), vec![(2, new)]);
    assert_eq!(logged_attempts(&store), vec![new]);
}

/// When [`Meanwhile`] runs its work.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// A serial read of a user's key, before its answer comes back.
    KeyRead,
    /// A conditional write of a slot, before its answer comes back.
    SlotWrite,
}

/// An instance's store on which other instances do `work` (once) while one
/// of its operations is on its way back: what the instance then decides on
/// is the store as it was before that work.
#[derive(Clone)]
struct Meanwhile {
    inner: MemoryStore,
    after: After,
    work: Arc<Mutex<Option<BoxFuture<'static, ()>>>>,
}

impl Meanwhile {
    fn new(
        inner: &MemoryStore,
        after: After,
        work: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        Meanwhile {
            inner: inner.clone(),
            after,
            work: Arc::new(Mutex::new(Some(work.boxed()))),
        }
    }

    fn then<T: Send + 'static>(
        &self,
        now: After,
        op: BoxFuture<'static, T>,
    ) -> BoxFuture<'static, T> {
        let work = if now == self.after {
            self.work.lock().take()
        } else {
            None
        };
        async move {
            let answer = op.await;
            if let Some(work) = work {
                work.await;
            }
            answer
        }
        .boxed()
    }
}

impl CasStore for Meanwhile {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        let slot = cas.partition.table == Table::Slots;
        let write = self.inner.cas(cas);
        if slot {
            self.then(After::SlotWrite, write)
        } else {
            write
        }
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        let key = at.partition.table == Table::Redemptions;
        let read = self.inner.read_serial(at);
        if key {
            self.then(After::KeyRead, read)
        } else {
            read
        }
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.inner.read(at)
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        self.inner.scan(partition, scan)
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.inner.put(at, values)
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.inner.remove(at)
    }
}

/// Goal (I1, I3): recovery re-settling a void whose slot release a crash
/// interrupted, from a key it read before the user claimed again, frees the
/// old attempt's slot and leaves the newer pending redemption (its slot, its
/// log entry) alone.
#[tokio::test]
async fn recovery_re_settling_an_interrupted_void_frees_only_the_old_attempts_slot() {
    let store = MemoryStore::new();
    let ledger = open::<VoucherHalf>(&store);
    prepare(&open::<AllInOne>(&store), 0).await;
    let id = redemption_id(&code(), phone());

    ledger.claim(claim(1, 10)).await.expect("the first claim");
    let old = committed_attempt(&ledger).await;
    // The void's decision, then a crash: the slot is still held and the log
    // entry still there.
    let row = ledger.inner.key_row(id, true).await.expect("the key");
    let void = vec![(col::STATUS, int(i64::from(RedemptionStatus::Void.stored())))];
    (ledger.inner.write_key(id, &row, void).await).expect("the void");

    // Recovery reads the key serially; the user claims again meanwhile.
    let again = ledger.claim(claim(2, 20));
    let meanwhile = async move {
        again.await.expect("the claim again");
    };
    let recovering =
        CasLedger::<_, VoucherHalf>::open_half(Meanwhile::new(&store, After::KeyRead, meanwhile));
    let recovered = recovering.recover_claims(at(i64::MAX / 2), 100).await;
    assert!(recovered.is_ok(), "{recovered:?}");

    let committed = key(&ledger).await.committed.expect("a redemption");
    assert_ne!(committed.attempt, old);
    assert_eq!(committed.status, RedemptionStatus::Pending);
    assert_eq!(held_slots(&store), vec![(2, committed.attempt)]);
    assert_eq!(logged_attempts(&store), vec![committed.attempt]);
}

/// Goal (I1): a slow contender whose attempt recovery drove to a redemption
/// meanwhile, which was then voided (a crash before the slot's release) and
/// claimed again by its user, finds its attempt over and frees its slot
/// before it drops the attempt's log entry (the only way to it).
#[tokio::test]
async fn a_contender_whose_redemption_was_voided_and_claimed_again_frees_its_slot() {
    let store = MemoryStore::new();
    prepare(&open::<AllInOne>(&store), 0).await;
    let id = redemption_id(&code(), phone());

    // While the contender's take of slot 1 is on its way back: recovery
    // commits its attempt, a void is decided and its instance crashes, and
    // the user claims slot 2.
    let other = open::<VoucherHalf>(&store);
    let meanwhile = async move {
        let recovered = other.recover_claims(at(i64::MAX / 2), 100).await;
        assert_eq!(recovered.map(|r| r.finished), Ok(1));
        let row = other.inner.key_row(id, true).await.expect("the key");
        let void = vec![(col::STATUS, int(i64::from(RedemptionStatus::Void.stored())))];
        (other.inner.write_key(id, &row, void).await).expect("the void");
        other.claim(claim(2, 20)).await.expect("the claim again");
    };
    let contender =
        CasLedger::<_, VoucherHalf>::open_half(Meanwhile::new(&store, After::SlotWrite, meanwhile));
    let answer = contender.claim(claim(1, 10)).await;
    assert_eq!(answer, Err(Error::SlotTaken));

    let committed = key(&open::<VoucherHalf>(&store))
        .await
        .committed
        .expect("a redemption");
    assert_eq!(
        (committed.slot, committed.status),
        (2, RedemptionStatus::Pending)
    );
    assert_eq!(held_slots(&store), vec![(2, committed.attempt)]);
    assert_eq!(logged_attempts(&store), vec![committed.attempt]);
}
