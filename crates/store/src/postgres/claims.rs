//! The claim path and voucher creation: set-based inserts where the database
//! enforces I1 (primary key and limit CHECK) and I2 (UNIQUE (code, phone)), and
//! each winner is credited in the same transaction (I3); in a voucher half the
//! winners' redemptions are born pending instead, and credited elsewhere.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, voucher_reference, Redemption, RedemptionStatus, Voucher, VoucherStatus,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{Claim, HalfKind};

use super::errors::Failure;
use super::outcome::{Probe, Progress};
use super::reads::phone_column;
use super::wallet_writes::{insert_transactions, NewRow};
use crate::queue::WriteAnswer;

// The claim path. Slots come as BIGINT so that parameter types are the same on
// PostgreSQL (INT = 4 bytes) and CockroachDB (INT = 8 bytes).

/// Inserts a wave's claims; a claim on an unknown voucher or outside 1..=limit
/// joins nothing, and one whose slot or user key is taken is skipped, so the
/// returned rows are exactly the winners. `$column` and `$value` add a column.
macro_rules! insert_claims {
    ($column:literal, $value:literal) => {
        concat!(
            "INSERT INTO redemptions (code, slot, slot_limit, phone, id, amount, redeemed_at",
            $column,
            ") SELECT c.code, c.slot, v.slot_limit, c.phone, c.id, v.amount, c.redeemed_at",
            $value,
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::uuid[], $5::bigint[]) \
                 AS c (code, slot, phone, id, redeemed_at) \
            JOIN vouchers AS v ON v.code = c.code \
            WHERE c.slot BETWEEN 1 AND v.slot_limit \
            ON CONFLICT DO NOTHING \
            RETURNING code, slot, amount"
        )
    };
}

/// Claims credited in the same write: no state (see
/// `migrations/0002_redemption_states.sql`).
const CLAIM_SLOTS: &str = insert_claims!("", "");
/// The voucher half's claims: born pending (status 0); nobody is credited here.
const CLAIM_PENDING_SLOTS: &str = insert_claims!(", status", ", 0");

/// Why the claims of a wave that were not inserted lost: the voucher's limit
/// (NULL when there is no voucher) and the slot of the user's redemption (NULL
/// when the user holds none).
const CLASSIFY_REFUSED_CLAIMS: &str = "\
    SELECT c.position, v.slot_limit, r.slot \
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS c (code, phone, position) \
    LEFT JOIN vouchers AS v ON v.code = c.code \
    LEFT JOIN redemptions AS r ON r.code = c.code AND r.phone = c.phone";

/// Adds each phone's summed credits and their count to its wallet, opening it
/// if needed, and returns the head after the batch's credits.
const CREDIT_WALLETS: &str = "\
    INSERT INTO wallets (phone, balance, last_sequence, created_at) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
    ON CONFLICT (phone) DO UPDATE \
    SET balance = wallets.balance + excluded.balance, \
        last_sequence = wallets.last_sequence + excluded.last_sequence \
    RETURNING phone, balance, last_sequence";

const INSERT_VOUCHER: &str = "\
    INSERT INTO vouchers (code, amount, slot_limit, starts_at, expires_at, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code) DO NOTHING RETURNING code";

pub(super) async fn create_vouchers(
    transaction: &Transaction<'_>,
    vouchers: &[(usize, &Voucher)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if vouchers.is_empty() {
        return Ok(());
    }
    // Vouchers are created by hand, rarely: one statement each is fine.
    let statement = transaction.prepare_cached(INSERT_VOUCHER).await?;
    for &(index, voucher) in vouchers {
        let inserted = transaction
            .query_opt(
                &statement,
                &[
                    &voucher.code.as_str(),
                    &voucher.amount,
                    &i64::from(voucher.limit),
                    &voucher.starts_at.map(|t| t.0),
                    &voucher.expires_at.map(|t| t.0),
                    &voucher.created_at.0,
                ],
            )
            .await?;
        let outcome = if inserted.is_some() {
            progress.wrote(|| Probe::Voucher {
                code: voucher.code.as_str().to_owned(),
                created_at: voucher.created_at.0,
            });
            Ok(VoucherStatus {
                voucher: voucher.clone(),
                redeemed: 0,
            })
        } else {
            Err(Error::VoucherExists)
        };
        progress.decide(index, WriteAnswer::Voucher(outcome));
    }
    Ok(())
}

/// The claim path: claims the wave's slots, classifies the refused claims,
/// and credits the winners' wallets and records their transactions, or in a
/// voucher half answers the winners' redemptions as pending.
pub(super) async fn claim_slots<H: HalfKind>(
    transaction: &Transaction<'_>,
    claims: &[(usize, &Claim)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if claims.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = claims.iter().map(|(_, c)| c.code.as_str()).collect();
    let slots: Vec<i64> = claims.iter().map(|(_, c)| i64::from(c.slot)).collect();
    let phones: Vec<i64> = claims.iter().map(|(_, c)| phone_column(c.phone)).collect();
    let ids: Vec<Uuid> = claims
        .iter()
        .map(|(_, c)| redemption_id(&c.code, c.phone))
        .collect();
    let ats: Vec<i64> = claims.iter().map(|(_, c)| c.at.0).collect();
    let sql = if H::CLAIMS_PENDING {
        CLAIM_PENDING_SLOTS
    } else {
        CLAIM_SLOTS
    };
    let statement = transaction.prepare_cached(sql).await?;
    let inserted = transaction
        .query(&statement, &[&codes, &slots, &phones, &ids, &ats])
        .await?;
    // Slots are distinct within a wave, so (code, slot) names the winner.
    let position_of: HashMap<(&str, i64), usize> = codes
        .iter()
        .zip(&slots)
        .enumerate()
        .map(|(position, (&code, &slot))| ((code, slot), position))
        .collect();
    let mut amount_won: Vec<Option<i64>> = vec![None; claims.len()];
    for row in &inserted {
        let code: &str = row.try_get(0)?;
        let slot: i64 = row.try_get(1)?;
        let Some(&position) = position_of.get(&(code, slot)) else {
            return Err(Failure::permanent("a claimed slot matches no claim"));
        };
        amount_won[position] = Some(row.try_get(2)?);
    }

    let mut winners = Vec::with_capacity(inserted.len());
    let mut refused = Vec::new();
    for (&(index, claim), amount) in claims.iter().zip(amount_won) {
        match amount {
            Some(amount) => winners.push((index, claim, amount)),
            None => refused.push((index, claim)),
        }
    }
    classify_refused(transaction, &refused, progress).await?;
    if H::CLAIMS_PENDING {
        answer_pending(&winners, progress);
        Ok(())
    } else {
        credit_winners(transaction, &winners, progress).await
    }
}

/// The row a claim inserted, which tells whether a lost commit landed.
fn claim_probe(claim: &Claim, id: Uuid) -> impl FnOnce() -> Probe + '_ {
    move || Probe::Redemption {
        id,
        code: claim.code.as_str().to_owned(),
        slot: i64::from(claim.slot),
        phone: phone_column(claim.phone),
        redeemed_at: claim.at.0,
    }
}

/// Answers a voucher half's winners: their redemptions are pending, with no
/// balance until the wallet's answer settles them.
fn answer_pending(winners: &[(usize, &Claim, i64)], progress: &mut Progress) {
    for &(index, claim, amount) in winners {
        let id = redemption_id(&claim.code, claim.phone);
        progress.wrote(claim_probe(claim, id));
        progress.decide(
            index,
            WriteAnswer::Redemption(Ok(Redemption {
                id,
                code: claim.code.clone(),
                phone: claim.phone,
                amount,
                slot: claim.slot,
                redeemed_at: claim.at,
                status: RedemptionStatus::Pending,
                balance: None,
            })),
        );
    }
}

/// Answers each refused claim as the embedded ledger would: the voucher is
/// checked first, then the user's key, then the slot.
async fn classify_refused(
    transaction: &Transaction<'_>,
    refused: &[(usize, &Claim)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if refused.is_empty() {
        return Ok(());
    }
    let codes: Vec<&str> = refused.iter().map(|(_, c)| c.code.as_str()).collect();
    let phones: Vec<i64> = refused.iter().map(|(_, c)| phone_column(c.phone)).collect();
    let positions: Vec<i64> = (0..refused.len() as i64).collect();
    let statement = transaction.prepare_cached(CLASSIFY_REFUSED_CLAIMS).await?;
    let rows = transaction
        .query(&statement, &[&codes, &phones, &positions])
        .await?;
    for row in &rows {
        let position: i64 = row.try_get(0)?;
        let limit: Option<i64> = row.try_get(1)?;
        let held_slot: Option<i64> = row.try_get(2)?;
        let Some(&(index, claim)) = usize::try_from(position)
            .ok()
            .and_then(|position| refused.get(position))
        else {
            return Err(Failure::permanent("a refused claim came back unknown"));
        };
        let error = match (limit, held_slot) {
            (None, _) => Error::VoucherNotFound,
            (Some(_), Some(_)) => Error::AlreadyRedeemed,
            (Some(limit), None) => {
                // A slot outside 1..=limit does not exist; the slot source never hands one out.
                if claim.slot == 0 || i64::from(claim.slot) > limit {
                    tracing::error!(
                        code = claim.code.as_str(),
                        slot = claim.slot,
                        limit,
                        "slot outside the voucher's range"
                    );
                }
                Error::SlotTaken
            }
        };
        progress.decide(index, WriteAnswer::Redemption(Err(error)));
    }
    Ok(())
}

/// Adds the winners' credits to their wallets in one upsert and records one
/// transaction per credit (I3), in submission order per wallet.
async fn credit_winners(
    transaction: &Transaction<'_>,
    winners: &[(usize, &Claim, i64)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if winners.is_empty() {
        return Ok(());
    }
    // (sum of credits, number of credits, time of the first) per wallet.
    let mut totals: HashMap<i64, (i64, i64, i64)> = HashMap::new();
    for &(_, claim, amount) in winners {
        let total = totals
            .entry(phone_column(claim.phone))
            .or_insert((0, 0, claim.at.0));
        total.0 = total
            .0
            .checked_add(amount)
            .ok_or_else(|| Failure::permanent("a wallet's credits overflow"))?;
        total.1 += 1;
    }
    let phones: Vec<i64> = totals.keys().copied().collect();
    let sums: Vec<i64> = phones.iter().map(|p| totals[p].0).collect();
    let counts: Vec<i64> = phones.iter().map(|p| totals[p].1).collect();
    let opened: Vec<i64> = phones.iter().map(|p| totals[p].2).collect();
    let statement = transaction.prepare_cached(CREDIT_WALLETS).await?;
    let heads = transaction
        .query(&statement, &[&phones, &sums, &counts, &opened])
        .await?;
    // Each wallet's (balance, sequence) before this wave's credits.
    let mut before: HashMap<i64, (i64, i64)> = HashMap::with_capacity(heads.len());
    for row in &heads {
        let phone: i64 = row.try_get(0)?;
        let balance: i64 = row.try_get(1)?;
        let last_sequence: i64 = row.try_get(2)?;
        let Some(&(sum, count, _)) = totals.get(&phone) else {
            return Err(Failure::permanent("a credited wallet matches no claim"));
        };
        before.insert(phone, (balance - sum, last_sequence - count));
    }
    let mut rows = Vec::with_capacity(winners.len());
    for &(index, claim, amount) in winners {
        let phone = phone_column(claim.phone);
        let Some(head) = before.get_mut(&phone) else {
            return Err(Failure::permanent("a winner's wallet was not credited"));
        };
        head.0 += amount;
        head.1 += 1;
        let row = NewRow {
            phone,
            sequence: head.1,
            id: redemption_id(&claim.code, claim.phone),
            replayable: false,
            amount,
            reference: voucher_reference(&claim.code),
            created_at: claim.at.0,
            balance_after: head.0,
        };
        progress.wrote(claim_probe(claim, row.id));
        progress.decide(
            index,
            WriteAnswer::Redemption(Ok(Redemption {
                id: row.id,
                code: claim.code.clone(),
                phone: claim.phone,
                amount,
                slot: claim.slot,
                redeemed_at: claim.at,
                status: RedemptionStatus::Credited,
                balance: Some(row.balance_after),
            })),
        );
        rows.push(row);
    }
    insert_transactions(transaction, &rows).await
}
