//! Settles and credits that must not reach a redemption other than their
//! own, step by step on the in-memory store, as two instances interleave
//! them (the CAS simulation finds the same interleavings at random):
//!
//! - role `all`: a credit refused for good voids the claim, and the refusal
//!   is recorded, so another instance that still sees the redemption
//!   pending (its recovery pass) cannot credit it once the wallet has room,
//!   and the user's next claim (the same id) is refused too (I3).

use std::sync::Arc;

use uuid::Uuid;

use crate::domain::{
    redemption_id, voucher_reference, PageRequest, PhoneNumber, Redemption, RedemptionStatus,
    Timestamp, Voucher, VoucherCode,
};
use crate::error::Error;
use crate::store::cas::memory::MemoryStore;
use crate::store::cas::schema::{col, KeyState};
use crate::store::cas::store::{Table, Value};
use crate::store::cas::{CasLedger, CasOptions, RandomNonces};
use crate::store::{Claim, Half, NewProfile, NewTransaction, VoucherLedger, WalletLedger};

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

fn open(store: &MemoryStore, half: Half) -> CasLedger<MemoryStore> {
    CasLedger::open_with(
        store.clone(),
        half,
        CasOptions::default(),
        Arc::new(RandomNonces),
    )
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
async fn key(ledger: &CasLedger<MemoryStore>) -> KeyState {
    let id = redemption_id(&code(), phone());
    let row = ledger.inner.key_row(id, true).await.expect("the key");
    KeyState::read(row.as_ref()).expect("a readable key")
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
    let first = open(&store, Half::Both);
    let other = open(&store, Half::Both);
    prepare(&first, i64::MAX - AMOUNT / 2).await;

    let refused = first.claim(claim(1, 10)).await;
    assert!(matches!(refused, Err(Error::Invalid { .. })), "{refused:?}");
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
    let late = other.inner.credit_locally(pending).await;
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
