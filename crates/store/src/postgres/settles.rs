//! Settling pending redemptions (the voucher half; see
//! [`voucherd_core::ledger::PendingLedger::settle`]), set-based like the claim
//! path: a wave's redemptions are locked and read with one statement, every
//! settle is decided in Rust in submission order (so two settles of one id in
//! a wave answer as if applied one by one), and the changes are written with
//! one statement per kind. Crediting sets the status and the balance; voiding
//! moves the row to `void_redemptions`, which releases the slot (I1) and the
//! user's key (I2) in the same transaction.
//!
//! The common wave, credits of distinct pending redemptions (the voucher
//! service settles each win once the wallet applied it), takes a shorter path:
//! one `UPDATE … RETURNING` of the rows still pending, no locking read first. Only the
//! ids it did not update (already settled, void, unknown, or settled by
//! another instance meanwhile) go through the general path above.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use uuid::Uuid;
use voucherd_core::domain::{Redemption, RedemptionStatus};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{HalfKind, Resolution};

use super::errors::{storage_failure, Failure};
use super::outcome::{Probe, Progress};
use super::reads::{phone_column, stored_redemption};
use crate::queue::WriteAnswer;

/// The redemptions with a state the wave settles, locked in one order so that
/// two instances cannot deadlock on them; the columns of [`stored_redemption`].
const LOCK_STATES: &str = "\
    SELECT id, code, slot, phone, amount, redeemed_at, status, balance FROM redemptions \
    WHERE id = ANY($1::uuid[]) AND status IS NOT NULL ORDER BY id FOR UPDATE";

/// The void redemptions among the wave's ids, in the same columns.
const SELECT_VOIDS: &str = "\
    SELECT id, code, slot, phone, amount, redeemed_at, 2::SMALLINT, NULL::BIGINT \
    FROM void_redemptions WHERE id = ANY($1::uuid[])";

/// `status <> 1` means pending (the column holds 0 or 1, or NULL for a
/// redemption made in one write), written so that the planner finds the rows
/// by id: `status = 0` would let it scan the pending index, whose dead entries
/// (every redemption settled since the last vacuum) grow with the crowd.
const CREDIT_REDEMPTIONS: &str = "\
    UPDATE redemptions SET status = 1, balance = u.balance \
    FROM unnest($1::uuid[], $2::bigint[]) AS u (id, balance) \
    WHERE redemptions.id = u.id AND redemptions.status <> 1";

/// [`CREDIT_REDEMPTIONS`] returning the credited rows, in the columns of
/// [`stored_redemption`].
const CREDIT_PENDING: &str = "\
    UPDATE redemptions SET status = 1, balance = u.balance \
    FROM unnest($1::uuid[], $2::bigint[]) AS u (id, balance) \
    WHERE redemptions.id = u.id AND redemptions.status <> 1 \
    RETURNING redemptions.id, code, slot, phone, amount, redeemed_at, status, \
        redemptions.balance";

const RELEASE_REDEMPTIONS: &str =
    "DELETE FROM redemptions WHERE id = ANY($1::uuid[]) AND status <> 1";

/// A void row replaces the one of an earlier claim by the same user.
const RECORD_VOIDS: &str = "\
    INSERT INTO void_redemptions (id, code, phone, slot, amount, redeemed_at, reason) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], \
                         $5::bigint[], $6::bigint[], $7::text[]) \
    ON CONFLICT (id) DO UPDATE SET code = excluded.code, phone = excluded.phone, \
        slot = excluded.slot, amount = excluded.amount, \
        redeemed_at = excluded.redeemed_at, reason = excluded.reason";

/// What a wave's settles change.
#[derive(Default)]
struct Changes {
    /// (id, balance after the credit when known).
    credited: Vec<(Uuid, Option<i64>)>,
    /// The redemptions voided, and why.
    voided: Vec<(Redemption, String)>,
}

/// Settles a wave's pending redemptions; only a voucher half holds any.
pub(super) async fn settle_redemptions<H: HalfKind>(
    transaction: &Transaction<'_>,
    settles: &[(usize, Uuid, &Resolution)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if settles.is_empty() {
        return Ok(());
    }
    if !H::CLAIMS_PENDING {
        for &(index, ..) in settles {
            let error = Error::storage("no redemption states in this ledger");
            progress.decide(index, WriteAnswer::Redemption(Err(error)));
        }
        return Ok(());
    }
    let rest = credit_pending(transaction, settles, progress).await?;
    settle_generally(transaction, &rest, progress).await
}

/// The short path: if every settle of the wave credits a distinct id, credits
/// those still pending with one statement and answers them. Returns the
/// settles left for the general path (all of them when the wave is not of
/// that kind).
async fn credit_pending<'a>(
    transaction: &Transaction<'_>,
    settles: &[(usize, Uuid, &'a Resolution)],
    progress: &mut Progress,
) -> Result<Vec<(usize, Uuid, &'a Resolution)>, Failure> {
    let mut credits: Vec<(usize, Uuid, Option<i64>)> = Vec::with_capacity(settles.len());
    for &(index, id, resolution) in settles {
        let Resolution::Credited { balance } = resolution else {
            return Ok(settles.to_vec());
        };
        // A balance is never negative; the embedded ledger stores none then.
        credits.push((index, id, (*balance >= 0).then_some(*balance)));
    }
    // Sorted, so that two instances crediting overlapping waves lock rows in
    // the same order.
    credits.sort_unstable_by_key(|&(_, id, _)| id);
    if credits.windows(2).any(|pair| pair[0].1 == pair[1].1) {
        return Ok(settles.to_vec());
    }
    let ids: Vec<Uuid> = credits.iter().map(|&(_, id, _)| id).collect();
    let balances: Vec<Option<i64>> = credits.iter().map(|&(.., balance)| balance).collect();
    let statement = transaction.prepare_cached(CREDIT_PENDING).await?;
    let rows = transaction.query(&statement, &[&ids, &balances]).await?;
    let mut credited = HashMap::with_capacity(rows.len());
    for row in &rows {
        let redemption = stored_redemption(row).map_err(storage_failure)?;
        credited.insert(redemption.id, redemption);
    }
    if let Some(&first) = credited.keys().next() {
        progress.wrote(|| Probe::Credited { id: first });
    }
    let mut rest = Vec::new();
    for &(index, id, resolution) in settles {
        match credited.remove(&id) {
            Some(redemption) => progress.decide(index, WriteAnswer::Redemption(Ok(redemption))),
            None => rest.push((index, id, resolution)),
        }
    }
    Ok(rest)
}

/// The general path: locks and reads every settled redemption, decides each
/// settle in submission order, then writes the changes.
async fn settle_generally(
    transaction: &Transaction<'_>,
    settles: &[(usize, Uuid, &Resolution)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if settles.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = settles.iter().map(|&(_, id, _)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states = read_states(transaction, &ids).await?;
    let mut changes = Changes::default();
    for &(index, id, resolution) in settles {
        let outcome = settle_one(&mut states, id, resolution, &mut changes);
        progress.decide(index, WriteAnswer::Redemption(outcome));
    }
    credit(transaction, &changes.credited, progress).await?;
    release(transaction, &changes.voided, progress).await
}

/// Each id's redemption as it stands: its live row (locked) if it has one,
/// else its void row.
async fn read_states(
    transaction: &Transaction<'_>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Redemption>, Failure> {
    let mut states = HashMap::with_capacity(ids.len());
    let statement = transaction.prepare_cached(LOCK_STATES).await?;
    for row in transaction.query(&statement, &[&ids]).await? {
        let redemption = stored_redemption(&row).map_err(storage_failure)?;
        states.insert(redemption.id, redemption);
    }
    if states.len() == ids.len() {
        return Ok(states);
    }
    let statement = transaction.prepare_cached(SELECT_VOIDS).await?;
    for row in transaction.query(&statement, &[&ids]).await? {
        let redemption = stored_redemption(&row).map_err(storage_failure)?;
        states.entry(redemption.id).or_insert(redemption);
    }
    Ok(states)
}

/// Decides one settle against the redemption as the wave left it so far.
fn settle_one(
    states: &mut HashMap<Uuid, Redemption>,
    id: Uuid,
    resolution: &Resolution,
    changes: &mut Changes,
) -> Result<Redemption> {
    let current = states.get_mut(&id).ok_or(Error::RedemptionNotFound)?;
    let target = resolution.status();
    if current.status == target {
        return Ok(current.clone());
    }
    if current.status != RedemptionStatus::Pending {
        return Err(Error::storage(format!(
            "redemption {id} is {} and cannot become {}",
            current.status.as_str(),
            target.as_str()
        )));
    }
    current.status = target;
    match resolution {
        Resolution::Credited { balance } => {
            // A balance is never negative; the embedded ledger stores none then.
            current.balance = (*balance >= 0).then_some(*balance);
            changes.credited.push((id, current.balance));
        }
        Resolution::Void { reason } => {
            current.balance = None;
            changes.voided.push((current.clone(), reason.clone()));
        }
    }
    Ok(current.clone())
}

async fn credit(
    transaction: &Transaction<'_>,
    credited: &[(Uuid, Option<i64>)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let Some(&(first, _)) = credited.first() else {
        return Ok(());
    };
    let ids: Vec<Uuid> = credited.iter().map(|&(id, _)| id).collect();
    let balances: Vec<Option<i64>> = credited.iter().map(|&(_, balance)| balance).collect();
    let statement = transaction.prepare_cached(CREDIT_REDEMPTIONS).await?;
    let updated = transaction.execute(&statement, &[&ids, &balances]).await?;
    if updated != credited.len() as u64 {
        // The rows were locked pending: only a bug gets here.
        return Err(Failure::permanent("a pending redemption was not credited"));
    }
    progress.wrote(|| Probe::Credited { id: first });
    Ok(())
}

/// Voids: the rows leave `redemptions` (freeing slot and user key) for
/// `void_redemptions`.
async fn release(
    transaction: &Transaction<'_>,
    voided: &[(Redemption, String)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if voided.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = voided.iter().map(|(r, _)| r.id).collect();
    let statement = transaction.prepare_cached(RELEASE_REDEMPTIONS).await?;
    let deleted = transaction.execute(&statement, &[&ids]).await?;
    if deleted != voided.len() as u64 {
        return Err(Failure::permanent("a pending redemption was not released"));
    }
    let codes: Vec<&str> = voided.iter().map(|(r, _)| r.code.as_str()).collect();
    let phones: Vec<i64> = voided.iter().map(|(r, _)| phone_column(r.phone)).collect();
    let slots: Vec<i64> = voided.iter().map(|(r, _)| i64::from(r.slot)).collect();
    let amounts: Vec<i64> = voided.iter().map(|(r, _)| r.amount).collect();
    let claimed: Vec<i64> = voided.iter().map(|(r, _)| r.redeemed_at.0).collect();
    let reasons: Vec<&str> = voided.iter().map(|(_, reason)| reason.as_str()).collect();
    let statement = transaction.prepare_cached(RECORD_VOIDS).await?;
    transaction
        .execute(
            &statement,
            &[&ids, &codes, &phones, &slots, &amounts, &claimed, &reasons],
        )
        .await?;
    for (redemption, _) in voided {
        let (id, slot, redeemed_at) = (
            redemption.id,
            i64::from(redemption.slot),
            redemption.redeemed_at.0,
        );
        progress.rewrote(id, || Probe::Void {
            id,
            slot,
            redeemed_at,
        });
    }
    Ok(())
}
