//! The halves of split mode, on every backend: a voucher half (claims born
//! pending, settled credited or void, the pending listed for recovery) and a
//! wallet half (a credit whose refusal is final is refused again).

use voucherd_core::domain::{Redemption, RedemptionStatus, ReportEntry};
use voucherd_core::error::ErrorCode;
use voucherd_core::ledger::Resolution;

use super::fixtures::*;
use super::*;

fn credited(balance: i64) -> Resolution {
    Resolution::Credited { balance }
}

fn void(reason: &str) -> Resolution {
    Resolution::Void {
        reason: reason.to_owned(),
    }
}

fn id_of(code_text: &str, phone_n: u64) -> Uuid {
    redemption_id(&code(code_text), phone(phone_n))
}

fn is_storage<T: std::fmt::Debug>(answer: &Result<T, Error>) -> bool {
    matches!(answer, Err(Error::Storage { .. }))
}

async fn read(ledger: &dyn VoucherLedger, code_text: &str, phone_n: u64) -> Option<Redemption> {
    ledger
        .redemption(code(code_text), phone(phone_n))
        .await
        .expect("read the redemption")
}

async fn report(ledger: &dyn VoucherLedger, code_text: &str) -> Vec<ReportEntry> {
    let page = ledger
        .report(code(code_text), page(100, 0, None))
        .await
        .expect("report");
    page.items
}

async fn pending_ids(ledger: &dyn VoucherLedger, before: Timestamp, limit: usize) -> Vec<Uuid> {
    let pending = ledger.pending(before, limit).await.expect("pending");
    for redemption in &pending {
        assert_eq!(redemption.status, RedemptionStatus::Pending);
        assert_eq!(redemption.balance, None);
    }
    pending.iter().map(|r| r.id).collect()
}

/// The balance of user `phone_n` as the wallet half of `store` sees it (it
/// opens it, reads, and shuts it down).
async fn wallet_balance(store: &Store, phone_n: u64) -> Option<i64> {
    let wallets = store.open_wallets().await;
    let found = balance(wallets.as_ref(), phone_n).await;
    wallets.shutdown().await.expect("shut down");
    found
}

/// A claim of a voucher half holds its slot and user key but credits nobody:
/// it is pending, with no balance, until settled. Settling is idempotent and
/// one-way.
pub async fn a_voucher_half_claim_is_pending_until_settled(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 500, 10).await;
    let claimed = ledger.claim(claim("GOAL", 1, 1)).await.expect("claim");
    let expected = Redemption {
        id: id_of("GOAL", 1),
        code: code("GOAL"),
        phone: phone(1),
        amount: 500,
        slot: 1,
        redeemed_at: claim("GOAL", 1, 1).at,
        status: RedemptionStatus::Pending,
        balance: None,
    };
    assert_eq!(claimed, expected);
    assert_eq!(
        read(ledger.as_ref(), "GOAL", 1).await,
        Some(expected.clone())
    );
    assert_eq!(
        report(ledger.as_ref(), "GOAL").await[0].status,
        RedemptionStatus::Pending
    );
    // A voucher half has no wallet to read: the wallet half of the same
    // store tells, with the voucher half shut down meanwhile (an embedded
    // store is open once at a time).
    ledger.shutdown().await.expect("shut down");
    drop(ledger);
    assert_eq!(wallet_balance(store, 1).await, None, "no local credit");
    let ledger = store.open_vouchers().await;
    assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 1);
    assert_eq!(
        ledger.claim(claim("GOAL", 1, 2)).await,
        Err(Error::AlreadyRedeemed)
    );

    let settled = ledger.settle(expected.id, credited(800)).await;
    let credited_one = Redemption {
        status: RedemptionStatus::Credited,
        balance: Some(800),
        ..expected.clone()
    };
    assert_eq!(settled, Ok(credited_one.clone()));
    assert_eq!(
        read(ledger.as_ref(), "GOAL", 1).await,
        Some(credited_one.clone())
    );
    assert_eq!(
        report(ledger.as_ref(), "GOAL").await[0].status,
        RedemptionStatus::Credited
    );
    assert!(pending_ids(ledger.as_ref(), at(1_000_000), 10)
        .await
        .is_empty());

    // Again with the same status: a no-op answering the redemption as stored.
    let again = ledger.settle(expected.id, credited(999)).await;
    assert_eq!(again, Ok(credited_one.clone()));
    // A settled redemption never changes status.
    assert!(is_storage(&ledger.settle(expected.id, void("late")).await));
    assert_eq!(read(ledger.as_ref(), "GOAL", 1).await, Some(credited_one));
    assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 1);
    ledger.shutdown().await.expect("shut down");
    drop(ledger);
    assert_eq!(
        wallet_balance(store, 1).await,
        None,
        "still no local credit"
    );
}

/// Voiding releases the slot and the user key in the same write: the slot is a
/// gap, the count goes down, and the user may claim again (pending again).
pub async fn a_void_releases_the_slot_and_the_user_key(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 5).await;
    for n in 1..=3 {
        ledger
            .claim(claim("GOAL", n, n as u32))
            .await
            .expect("claim");
    }
    let voided = ledger
        .settle(id_of("GOAL", 2), void("refused"))
        .await
        .expect("void");
    assert_eq!(voided.status, RedemptionStatus::Void);
    assert_eq!(voided.balance, None);
    assert_eq!(voided.slot, 2);
    assert_eq!(read(ledger.as_ref(), "GOAL", 2).await, Some(voided.clone()));
    let usage = ledger.slot_usage(code("GOAL")).await.expect("usage");
    let expected_usage = SlotUsage {
        highest_taken: 3,
        gaps: vec![2],
        taken: 2,
    };
    assert_eq!(usage, expected_usage);
    assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 2);
    let slots: Vec<u32> = report(ledger.as_ref(), "GOAL")
        .await
        .iter()
        .map(|e| e.slot)
        .collect();
    assert_eq!(slots, vec![1, 3]);
    let winners: BTreeSet<_> = ledger
        .winners(code("GOAL"))
        .await
        .expect("winners")
        .into_iter()
        .collect();
    assert_eq!(winners, [phone(1), phone(3)].into_iter().collect());
    assert_eq!(
        ledger.settle(voided.id, void("again")).await,
        Ok(voided.clone())
    );
    assert!(is_storage(&ledger.settle(voided.id, credited(5)).await));

    // The freed slot goes to another user; the user claims again, another slot.
    let other = ledger
        .claim(claim("GOAL", 4, 2))
        .await
        .expect("the freed slot");
    assert_eq!(other.status, RedemptionStatus::Pending);
    let again = ledger
        .claim(claim("GOAL", 2, 4))
        .await
        .expect("claim again");
    assert_eq!(
        (again.status, again.slot, again.id),
        (RedemptionStatus::Pending, 4, voided.id)
    );
    assert_eq!(read(ledger.as_ref(), "GOAL", 2).await, Some(again.clone()));
    assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 4);
    let settled = ledger
        .settle(again.id, credited(100))
        .await
        .expect("credit");
    assert_eq!(
        (settled.status, settled.slot),
        (RedemptionStatus::Credited, 4)
    );
    assert_eq!(read(ledger.as_ref(), "GOAL", 2).await, Some(settled));
    ledger.shutdown().await.expect("shut down");
}

/// pending() lists only pending redemptions claimed before the given time,
/// oldest first, at most `limit`.
pub async fn pending_lists_the_oldest_pending_first(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 10).await;
    // (user, claimed at): users 4 and 3 are settled below.
    let times = [(1, 50), (2, 10), (3, 40), (4, 20), (5, 60), (6, 30)];
    for (n, offset) in times {
        let at_time = Claim {
            at: at(offset),
            ..claim("GOAL", n, n as u32)
        };
        ledger.claim(at_time).await.expect("claim");
    }
    ledger
        .settle(id_of("GOAL", 4), credited(1))
        .await
        .expect("credit");
    ledger
        .settle(id_of("GOAL", 3), void("refused"))
        .await
        .expect("void");

    let oldest_first = [2, 6, 1, 5].map(|n| id_of("GOAL", n)).to_vec();
    assert_eq!(
        pending_ids(ledger.as_ref(), at(1_000), 100).await,
        oldest_first
    );
    assert_eq!(
        pending_ids(ledger.as_ref(), at(50), 100).await,
        oldest_first[..2]
    );
    assert_eq!(
        pending_ids(ledger.as_ref(), at(1_000), 3).await,
        oldest_first[..3]
    );
    assert!(pending_ids(ledger.as_ref(), at(10), 100).await.is_empty());
    assert!(pending_ids(ledger.as_ref(), at(1_000), 0).await.is_empty());
    let listed = ledger.pending(at(1_000), 1).await.expect("pending");
    assert_eq!(
        Some(&listed[0]),
        read(ledger.as_ref(), "GOAL", 2).await.as_ref()
    );
    ledger.shutdown().await.expect("shut down");
}

/// Settling an id no claim made is `RedemptionNotFound`, whatever the resolution.
pub async fn settling_an_unknown_redemption_is_not_found(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 10).await;
    ledger.claim(claim("GOAL", 1, 1)).await.expect("claim");
    for id in [Uuid::new_v4(), id_of("GOAL", 2), id_of("NOPE", 1)] {
        assert_eq!(
            ledger.settle(id, credited(1)).await,
            Err(Error::RedemptionNotFound)
        );
        assert_eq!(
            ledger.settle(id, void("x")).await,
            Err(Error::RedemptionNotFound)
        );
    }
    assert_eq!(read(ledger.as_ref(), "GOAL", 2).await, None);
    ledger.shutdown().await.expect("shut down");
}

/// Claims and settles submitted together apply in submission order: a void
/// frees the slot and key for the claims after it, and a settle sees the
/// claims before it.
pub async fn settles_apply_in_submission_order(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 2).await;
    let (id1, id2) = (id_of("GOAL", 1), id_of("GOAL", 2));
    let a = ledger.claim(claim("GOAL", 1, 1));
    let b = ledger.settle(id1, void("refused"));
    let c = ledger.claim(claim("GOAL", 2, 1));
    let d = ledger.claim(claim("GOAL", 1, 2));
    let e = ledger.settle(id2, credited(10));
    let f = ledger.settle(id2, credited(99));
    let g = ledger.settle(id1, credited(20));
    let (a, b, c, d, e, f, g) = futures::join!(a, b, c, d, e, f, g);
    assert_eq!(a.expect("claim").status, RedemptionStatus::Pending);
    assert_eq!(b.expect("void").status, RedemptionStatus::Void);
    assert_eq!(c.expect("the freed slot").slot, 1);
    assert_eq!(d.expect("claim again").slot, 2);
    let e = e.expect("credit");
    assert_eq!(
        (e.status, e.balance),
        (RedemptionStatus::Credited, Some(10))
    );
    assert_eq!(f, Ok(e), "a second credit answers the first");
    let g = g.expect("credit the new claim");
    assert_eq!(
        (g.status, g.slot, g.balance),
        (RedemptionStatus::Credited, 2, Some(20))
    );

    assert!(is_storage(&ledger.settle(id2, void("late")).await));
    assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 2);
    let usage = ledger.slot_usage(code("GOAL")).await.expect("usage");
    assert_eq!((usage.highest_taken, usage.taken), (2, 2));
    assert!(pending_ids(ledger.as_ref(), at(i64::MAX / 2), 10)
        .await
        .is_empty());
    ledger.shutdown().await.expect("shut down");
}

/// Credits submitted together, of redemptions pending, already credited and
/// unknown: each answers as if applied alone (the SQL ledger credits the
/// pending ones with one statement and settles the others one by one). A
/// credit of a void redemption is a storage error, asked alone: the embedded
/// ledger fails the other writes of a batch that meets one.
pub async fn credits_together_answer_each_as_alone(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 10).await;
    for user in 1..=4 {
        ledger
            .claim(claim("GOAL", user, user as u32))
            .await
            .expect("claim");
    }
    let (id1, id2, id3, id4) = (
        id_of("GOAL", 1),
        id_of("GOAL", 2),
        id_of("GOAL", 3),
        id_of("GOAL", 4),
    );
    ledger.settle(id1, credited(10)).await.expect("credit");
    ledger.settle(id4, void("refused")).await.expect("void");
    let (a, b, c, d) = futures::join!(
        ledger.settle(id3, credited(30)),
        ledger.settle(id1, credited(11)),
        ledger.settle(Uuid::new_v4(), credited(1)),
        ledger.settle(id2, credited(20)),
    );
    let balance_of = |answer: Result<Redemption, Error>| {
        let redemption = answer.expect("credited");
        assert_eq!(redemption.status, RedemptionStatus::Credited);
        redemption.balance
    };
    assert_eq!(balance_of(a), Some(30));
    assert_eq!(balance_of(b), Some(10), "the first credit stands");
    assert_eq!(c, Err(Error::RedemptionNotFound));
    assert_eq!(balance_of(d), Some(20));
    assert!(
        is_storage(&ledger.settle(id4, credited(40)).await),
        "a void redemption is never credited"
    );
    for (user, balance) in [(1, 10), (2, 20), (3, 30)] {
        let stored = read(ledger.as_ref(), "GOAL", user).await.expect("stored");
        assert_eq!(
            (stored.status, stored.balance),
            (RedemptionStatus::Credited, Some(balance))
        );
    }
    assert_eq!(
        read(ledger.as_ref(), "GOAL", 4).await.map(|r| r.status),
        Some(RedemptionStatus::Void)
    );
    assert!(pending_ids(ledger.as_ref(), at(i64::MAX / 2), 10)
        .await
        .is_empty());
    ledger.shutdown().await.expect("shut down");
}

/// Everything a voucher half holds in one string, to compare across a reopen.
async fn voucher_half_state(ledger: &dyn VoucherLedger) -> String {
    let voucher = ledger.voucher(code("GOAL")).await.expect("voucher");
    let report = report(ledger, "GOAL").await;
    let usage = ledger.slot_usage(code("GOAL")).await.expect("usage");
    let winners = ledger.winners(code("GOAL")).await.expect("winners");
    let pending = ledger
        .pending(at(i64::MAX / 2), 100)
        .await
        .expect("pending");
    let mut redemptions = Vec::new();
    for n in 1..=5 {
        redemptions.push(read(ledger, "GOAL", n).await);
    }
    format!("{voucher:?}{report:?}{usage:?}{winners:?}{pending:?}{redemptions:?}")
}

/// I4: after shutdown, a reopened voucher half holds the same redemptions in
/// the same states, and settles and claims as before.
pub async fn a_reopened_voucher_half_holds_the_same_state(store: &Store) {
    let ledger = store.open_vouchers().await;
    create_voucher(ledger.as_ref(), "GOAL", 100, 5).await;
    for n in 1..=4 {
        ledger
            .claim(claim("GOAL", n, n as u32))
            .await
            .expect("claim");
    }
    ledger
        .settle(id_of("GOAL", 1), credited(100))
        .await
        .expect("credit");
    ledger
        .settle(id_of("GOAL", 2), void("refused"))
        .await
        .expect("void");
    let before = voucher_half_state(ledger.as_ref()).await;
    ledger.shutdown().await.expect("shut down");
    drop(ledger);

    let reopened = store.open_vouchers().await;
    assert_eq!(
        voucher_half_state(reopened.as_ref()).await,
        before,
        "I4: same state"
    );
    let credit = reopened
        .settle(id_of("GOAL", 1), credited(5))
        .await
        .expect("no-op");
    assert_eq!(credit.balance, Some(100));
    let voided = reopened.settle(id_of("GOAL", 2), void("again")).await;
    assert_eq!(voided.map(|r| r.status), Ok(RedemptionStatus::Void));
    assert!(is_storage(
        &reopened.settle(id_of("GOAL", 1), void("late")).await
    ));
    let third = reopened
        .settle(id_of("GOAL", 3), credited(7))
        .await
        .expect("credit");
    assert_eq!(third.balance, Some(7));
    assert_eq!(
        reopened.claim(claim("GOAL", 4, 5)).await,
        Err(Error::AlreadyRedeemed)
    );
    assert_eq!(
        reopened.claim(claim("GOAL", 9, 3)).await,
        Err(Error::SlotTaken)
    );
    let again = reopened
        .claim(claim("GOAL", 2, 2))
        .await
        .expect("claim again");
    assert_eq!(again.status, RedemptionStatus::Pending);
    reopened.shutdown().await.expect("shut down");
}

/// The voucher service's credit of redemption (`GOAL`, `phone_n`) as the
/// wallet half receives it: replayable, and its refusal is final.
fn final_credit(phone_n: u64, amount: i64) -> NewTransaction {
    NewTransaction {
        id: id_of("GOAL", phone_n),
        replayable: true,
        phone: phone(phone_n),
        amount,
        reference: voucher_reference(&code("GOAL")),
        at: at(1),
        refusal_is_final: true,
    }
}

/// A credit whose refusal is final (here: it would overflow the balance) is
/// refused again with `CreditRefused` even once the wallet could take it,
/// also when submitted together with the first, and after a reopen.
pub async fn a_final_refusal_is_remembered(store: &Store) {
    let ledger = store.open_wallets().await;
    let near_max = i64::MAX - 10;
    let profile = NewProfile {
        phone: phone(1),
        opening_balance: near_max,
        at: at(0),
    };
    ledger.create_profile(profile.clone()).await.expect("open");
    let refused = ledger.transact(final_credit(1, 100)).await;
    assert!(
        matches!(
            refused,
            Err(Error::Invalid {
                code: ErrorCode::InvalidAmount,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(balance(ledger.as_ref(), 1).await, Some(near_max));
    ledger.transact(credit(1, -1_000, 2)).await.expect("debit");
    let again = ledger.transact(final_credit(1, 100)).await;
    assert!(
        matches!(again, Err(Error::CreditRefused { .. })),
        "{again:?}"
    );
    let other_body = NewTransaction {
        amount: 1,
        ..final_credit(1, 100)
    };
    let other = ledger.transact(other_body).await;
    assert!(
        matches!(other, Err(Error::CreditRefused { .. })),
        "{other:?}"
    );

    // Submitted together: the first is refused, the second refused again.
    let profile = NewProfile {
        phone: phone(2),
        ..profile
    };
    ledger.create_profile(profile).await.expect("open");
    let first = ledger.transact(final_credit(2, 100));
    let together = ledger.transact(final_credit(2, 100));
    let (first, together) = futures::join!(first, together);
    assert!(matches!(first, Err(Error::Invalid { .. })), "{first:?}");
    assert!(
        matches!(together, Err(Error::CreditRefused { .. })),
        "{together:?}"
    );
    assert_balance_is_the_sum(ledger.as_ref(), 1).await;
    ledger.shutdown().await.expect("shut down");
    drop(ledger);

    let reopened = store.open_wallets().await;
    let after = reopened.transact(final_credit(1, 100)).await;
    assert!(
        matches!(after, Err(Error::CreditRefused { .. })),
        "{after:?}"
    );
    assert_eq!(balance(reopened.as_ref(), 1).await, Some(near_max - 1_000));
    reopened.shutdown().await.expect("shut down");
}

/// A client's replayable transaction (its refusal is not final) leaves no
/// trace when refused: the same id may succeed later, then replays.
pub async fn a_refusal_that_is_not_final_leaves_no_trace(store: &Store) {
    let ledger = store.open_wallets().await;
    let keyed = NewTransaction {
        id: transaction_id(Some("order-1")),
        replayable: true,
        ..credit(1, -50, 1)
    };
    assert_eq!(
        ledger.transact(keyed.clone()).await,
        Err(Error::InsufficientFunds)
    );
    ledger.transact(credit(1, 80, 2)).await.expect("credit");
    let applied = ledger.transact(keyed.clone()).await.expect("debit");
    assert_eq!(applied.balance_after, 30);
    assert_eq!(ledger.transact(keyed).await, Ok(applied));
    assert_eq!(balance(ledger.as_ref(), 1).await, Some(30));
    assert_balance_is_the_sum(ledger.as_ref(), 1).await;
    ledger.shutdown().await.expect("shut down");
}

/// An applied credit sent again answers its first transaction (the balance
/// it made, not today's), also when submitted together with it.
pub async fn a_final_credit_replays_its_first_answer(store: &Store) {
    let ledger = store.open_wallets().await;
    let first = ledger.transact(final_credit(1, 500)).await.expect("credit");
    assert_eq!(first.balance_after, 500);
    ledger.transact(credit(1, -200, 2)).await.expect("debit");
    let later = NewTransaction {
        at: at(99),
        ..final_credit(1, 500)
    };
    assert_eq!(ledger.transact(later).await, Ok(first.clone()));
    let other_amount = ledger.transact(final_credit(1, 501)).await;
    assert_eq!(other_amount, Err(Error::IdempotencyKeyReused));
    assert_eq!(balance(ledger.as_ref(), 1).await, Some(300));

    let a = ledger.transact(final_credit(2, 40));
    let b = ledger.transact(final_credit(2, 40));
    let (a, b) = futures::join!(a, b);
    assert_eq!(b, Ok(a.expect("credit")));
    assert_eq!(history(ledger.as_ref(), 2).await.len(), 1);
    assert_balance_is_the_sum(ledger.as_ref(), 1).await;
    ledger.shutdown().await.expect("shut down");
}
