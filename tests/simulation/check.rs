//! The invariants checked at the end of every schedule, once faults have
//! stopped, every redemption is settled and the network is quiet.

use std::collections::BTreeMap;

use uuid::Uuid;
use voucherd_core::domain::{
    voucher_reference, PhoneNumber, Redemption, RedemptionStatus, WalletTransaction,
};
use voucherd_test_support::sim::world::user;

use super::ledger::LedgerState;
use super::service::Answer;
use super::wallet::WalletState;

pub use voucherd_test_support::sim::runner::{violation, Violation};

type Outcome = Result<(), Violation>;

pub fn check(ledger: &LedgerState, wallet: &WalletState, answers: &[Answer]) -> Outcome {
    settled(ledger)?;
    limit(ledger)?;
    unique(ledger)?;
    credited(ledger, wallet)?;
    durable(ledger, answers)?;
    balance(wallet)
}

/// Liveness, and one-way settling: nothing pending, and no settle ever tried
/// to change a settled redemption (the wallet's answers never disagreed).
fn settled(ledger: &LedgerState) -> Outcome {
    if let Some(conflict) = ledger.conflicts.first() {
        return Err(violation("I3 credited (settle conflict)", conflict.clone()));
    }
    match ledger.pending_count() {
        0 => Ok(()),
        n => Err(violation(
            "liveness",
            format!("{n} redemptions still pending"),
        )),
    }
}

fn non_void(ledger: &LedgerState) -> impl Iterator<Item = &Redemption> {
    ledger
        .history
        .iter()
        .filter(|r| r.status != RedemptionStatus::Void)
}

/// I1, over every record ever written: at most `limit` non-void, on distinct
/// slots in 1..=limit.
fn limit(ledger: &LedgerState) -> Outcome {
    let mut slots = BTreeMap::new();
    for r in non_void(ledger) {
        let in_range = (1..=ledger.limit).contains(&r.slot);
        if !in_range || slots.insert(r.slot, r.phone).is_some() {
            let detail = format!("slot {} held twice or out of range", r.slot);
            return Err(violation("I1 limit", detail));
        }
    }
    Ok(())
}

/// I2, over every record ever written: one non-void redemption per user.
fn unique(ledger: &LedgerState) -> Outcome {
    let mut holders: BTreeMap<PhoneNumber, u32> = BTreeMap::new();
    for r in non_void(ledger) {
        let held = holders.entry(r.phone).or_default();
        *held += 1;
        if *held > 1 {
            let detail = format!("user {} holds two redemptions", user(r.phone));
            return Err(violation("I2 unique", detail));
        }
    }
    Ok(())
}

/// Every wallet transaction, by id.
fn transactions(wallet: &WalletState) -> BTreeMap<Uuid, Vec<&WalletTransaction>> {
    let mut by_id: BTreeMap<Uuid, Vec<&WalletTransaction>> = BTreeMap::new();
    for tx in wallet.accounts.values().flat_map(|a| &a.transactions) {
        by_id.entry(tx.id).or_default().push(tx);
    }
    by_id
}

/// I3: credited ⇔ exactly one matching credit with its id; a void record
/// (even one whose user claimed again later) never has one; no voucher credit
/// without its non-void redemption; no credit id applied twice; and the
/// balance a credited redemption recorded is the one its credit produced.
fn credited(ledger: &LedgerState, wallet: &WalletState) -> Outcome {
    let by_id = transactions(wallet);
    let credits_of = |id: &Uuid| by_id.get(id).map_or(&[][..], Vec::as_slice);
    let reference = voucher_reference(&ledger.code);
    let i3 = |detail: String| Err(violation("I3 credited", detail));
    let credited = || {
        let credited = |r: &&Redemption| r.status == RedemptionStatus::Credited;
        ledger.live_records().filter(credited)
    };
    for r in credited() {
        credit_matches(r, credits_of(&r.id), &reference).or_else(i3)?;
    }
    for r in ledger.history.iter() {
        if r.status == RedemptionStatus::Void && by_id.contains_key(&r.id) {
            let later = ledger.live(&r.id).map(|live| live.status);
            let detail = match later {
                Some(RedemptionStatus::Void) => "void, yet credited",
                // The user claimed again (same id) and the wallet, which had
                // refused this id for good, applied it after all.
                _ => "void, yet credited to a later claim with the same id",
            };
            return i3(format!("user {}: {detail}", user(r.phone)));
        }
    }
    for tx in by_id.values().flatten() {
        let live = ledger.live(&tx.id).map(|r| r.status);
        let backed = matches!(live, Some(s) if s != RedemptionStatus::Void);
        if tx.reference.starts_with("voucher:") && !backed {
            return i3(format!(
                "user {}: credit without redemption",
                user(tx.phone)
            ));
        }
    }
    if let Some((id, n)) = wallet.applications.iter().find(|(_, &n)| n > 1) {
        return i3(format!("credit {id} applied {n} times"));
    }
    for r in credited() {
        recorded_balance_matches(r, credits_of(&r.id)[0]).or_else(i3)?;
    }
    Ok(())
}

fn credit_matches(
    r: &Redemption,
    credits: &[&WalletTransaction],
    reference: &str,
) -> Result<(), String> {
    let who = user(r.phone);
    let [tx] = credits else {
        return Err(format!(
            "user {who}: credited with {} credits",
            credits.len()
        ));
    };
    let same = tx.phone == r.phone && tx.amount == r.amount && tx.reference == reference;
    if same {
        Ok(())
    } else {
        Err(format!(
            "user {who}: the credit differs from the redemption"
        ))
    }
}

fn recorded_balance_matches(r: &Redemption, tx: &WalletTransaction) -> Result<(), String> {
    match r.balance {
        Some(balance) if balance != tx.balance_after => Err(format!(
            "user {}: settled with balance {balance}, the wallet says {}",
            user(r.phone),
            tx.balance_after
        )),
        _ => Ok(()),
    }
}

/// I4: what a client was told still holds: credited stays credited, and a
/// pending or void answer names a redemption the ledger still has.
fn durable(ledger: &LedgerState, answers: &[Answer]) -> Outcome {
    for answer in answers {
        let (id, credited) = match answer {
            Answer::Credited(id) => (id, true),
            Answer::Pending(id) | Answer::Void(id) => (id, false),
            _ => continue,
        };
        let status = ledger.live(id).map(|r| r.status);
        let holds = status.is_some() && (!credited || status == Some(RedemptionStatus::Credited));
        if !holds {
            let detail = format!("answered {answer:?}, the ledger has {status:?}");
            return Err(violation("I4 durable", detail));
        }
    }
    Ok(())
}

/// I5: every balance is the sum of its transactions, step by step, and never
/// below zero.
fn balance(wallet: &WalletState) -> Outcome {
    for (phone, account) in &wallet.accounts {
        let mut sum: i128 = 0;
        for tx in &account.transactions {
            sum += i128::from(tx.amount);
            if sum != i128::from(tx.balance_after) || tx.balance_after < 0 {
                let detail = format!(
                    "user {}: running balance {sum}, stored {}",
                    user(*phone),
                    tx.balance_after
                );
                return Err(violation("I5 balance", detail));
            }
        }
        if sum != i128::from(account.balance) || account.balance < 0 {
            let detail = format!(
                "user {}: balance {} but transactions sum to {sum}",
                user(*phone),
                account.balance
            );
            return Err(violation("I5 balance", detail));
        }
    }
    Ok(())
}
