//! Paxos rounds per operation on the model, which reads as CQL does: each
//! step of the protocol applies at its first try when nothing contends, and
//! no serial read is needed. Before the ledger read a partition's statics on
//! their own, a fresh slot's take and every debit failed their first try
//! (the statics of a missing row read as absent).

use std::sync::Arc;

use super::memory::MemoryStore;
use super::observed::tests::count;
use super::{CasLedger, Observed};
use voucherd_core::domain::{PhoneNumber, Timestamp, Voucher, VoucherCode};
use voucherd_core::ledger::PendingLedger;
use voucherd_core::ledger::{
    Claim, HalfKind, NewProfile, NewTransaction, VoucherHalf, VoucherLedger, WalletHalf,
    WalletLedger,
};
use voucherd_metrics::Metrics;

struct Rounds {
    applied: f64,
    not_applied: f64,
    unknown: f64,
    serial_reads: f64,
}

fn rounds(metrics: &Metrics) -> Rounds {
    Rounds {
        applied: count(metrics, "lwt_outcomes_total{result=\"applied\"}"),
        not_applied: count(metrics, "lwt_outcomes_total{result=\"not_applied\"}"),
        unknown: count(metrics, "lwt_outcomes_total{result=\"unknown\"}"),
        serial_reads: count(metrics, "lwt_serial_reads_total"),
    }
}

fn phone(n: u64) -> PhoneNumber {
    PhoneNumber::parse(&format!("+98912{n:07}")).expect("a valid phone number")
}

fn at(micros: i64) -> Timestamp {
    Timestamp(1_780_000_000_000_000 + micros)
}

/// A ledger of half `H` over an observed model.
fn ledger<H: HalfKind>() -> (CasLedger<Observed<MemoryStore>, H>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let store = Observed::new(MemoryStore::new(), metrics.clone());
    (CasLedger::open_half(store), metrics)
}

#[tokio::test]
async fn a_claim_of_a_fresh_slot_takes_three_rounds_each_applied_at_once() {
    let (ledger, metrics) = ledger::<VoucherHalf>();
    let code = VoucherCode::parse("FRESH").unwrap();
    // 64 buckets: slots 1, 65 and 129 share one; each take is conditioned
    // on its own slot's row, so none refuses another.
    let voucher = Voucher::new(code.clone(), 500, 200, None, None, at(0)).unwrap();
    ledger.create_voucher(voucher).await.unwrap();
    let before = rounds(&metrics);
    for n in 0..3u32 {
        let claim = Claim {
            code: code.clone(),
            phone: phone(u64::from(n)),
            slot: 1 + 64 * n,
            at: at(i64::from(n)),
        };
        ledger.claim(claim).await.expect("a free slot is won");
    }
    let after = rounds(&metrics);
    // Start, take, commit: three per claim, none refused, none in doubt.
    assert_eq!(after.applied - before.applied, 9.0);
    assert_eq!(after.not_applied, 0.0);
    assert_eq!(after.unknown, 0.0);
    assert_eq!(after.serial_reads, 0.0);
    let pending = ledger.pending(at(10), 10).await.unwrap();
    assert_eq!(pending.len(), 3);
}

#[tokio::test]
async fn a_debit_of_a_funded_wallet_applies_at_its_first_round() {
    let (ledger, metrics) = ledger::<WalletHalf>();
    let owner = phone(7);
    let profile = NewProfile {
        phone: owner,
        opening_balance: 1_000,
        at: at(0),
    };
    ledger.create_profile(profile).await.unwrap();
    let before = rounds(&metrics);
    let debit = NewTransaction {
        id: uuid::Uuid::new_v4(),
        replayable: false,
        phone: owner,
        amount: -400,
        reference: "coffee".into(),
        at: at(1),
        refusal_is_final: false,
    };
    let applied = ledger
        .transact(debit)
        .await
        .expect("a funded debit applies");
    assert_eq!(applied.balance_after, 600);
    let after = rounds(&metrics);
    assert_eq!(after.applied - before.applied, 1.0);
    assert_eq!(after.not_applied, 0.0);
    assert_eq!(after.serial_reads, 0.0);
}
