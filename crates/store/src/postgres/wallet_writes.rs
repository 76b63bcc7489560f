//! Wallet writes: profiles and client transactions decided in submission order
//! under the wallets' row locks, so a balance never goes below zero (I5) and
//! sequences grow along each wallet's history; a replayable transaction whose
//! refusal is final leaves a mark (`refused_transactions`) that refuses its id
//! again; also the transaction inserts the claim path shares.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::Transaction;
use uuid::Uuid;
use voucherd_core::domain::{
    wallet, PhoneNumber, Timestamp, Wallet, WalletTransaction, OPENING_BALANCE_REFERENCE,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{NewProfile, NewTransaction};

use super::errors::{storage_failure, Failure};
use super::outcome::{Probe, Progress};
use super::reads::{phone_column, stored_phone, stored_u64};
use crate::queue::{Request, WriteAnswer};

const INSERT_TRANSACTIONS: &str = "\
    INSERT INTO wallet_transactions \
        (phone, sequence, id, replayable, amount, reference, created_at, balance_after) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::bool[], \
                         $5::bigint[], $6::text[], $7::bigint[], $8::bigint[])";

/// The first transaction of each replayable id, and (last column true) the
/// ids refused for good, whose other columns mean nothing.
const FIND_REPLAYS: &str = "\
    SELECT id, phone, sequence, amount, reference, created_at, balance_after, false \
    FROM wallet_transactions WHERE replayable AND id = ANY($1::uuid[]) \
    UNION ALL \
    SELECT id, phone, 0::BIGINT, 0::BIGINT, '', refused_at, 0::BIGINT, true \
    FROM refused_transactions WHERE id = ANY($1::uuid[])";

/// Marks ids refused for good; a mark another instance made meanwhile stands.
const RECORD_REFUSALS: &str = "\
    INSERT INTO refused_transactions (id, phone, reason, refused_at) \
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[]) \
    ON CONFLICT (id) DO NOTHING";

/// Locks the heads of the wallets a wave's profiles and transactions touch,
/// in one order so that two instances cannot deadlock on them.
const LOCK_WALLETS: &str = "\
    SELECT phone, balance, last_sequence, created_at FROM wallets \
    WHERE phone = ANY($1::bigint[]) ORDER BY phone FOR UPDATE";

/// Opens wallets the lock found missing; a row not returned was opened by
/// another instance meanwhile, and the batch is retried.
const OPEN_WALLETS: &str = "\
    INSERT INTO wallets (phone, balance, last_sequence, created_at) \
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
    ON CONFLICT (phone) DO NOTHING RETURNING phone";

const UPDATE_WALLETS: &str = "\
    UPDATE wallets SET balance = u.balance, last_sequence = u.last_sequence \
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u (phone, balance, last_sequence) \
    WHERE wallets.phone = u.phone";

/// A wallet transaction about to be inserted.
pub(super) struct NewRow {
    pub(super) phone: i64,
    pub(super) sequence: i64,
    pub(super) id: Uuid,
    pub(super) replayable: bool,
    pub(super) amount: i64,
    pub(super) reference: String,
    pub(super) created_at: i64,
    pub(super) balance_after: i64,
}

impl NewRow {
    pub(super) fn to_transaction(&self, phone: PhoneNumber) -> WalletTransaction {
        WalletTransaction {
            id: self.id,
            phone,
            // Sequences start at 1 and only grow, so they are never negative.
            sequence: self.sequence as u64,
            amount: self.amount,
            reference: self.reference.clone(),
            created_at: Timestamp(self.created_at),
            balance_after: self.balance_after,
        }
    }
}

pub(super) async fn insert_transactions(
    transaction: &Transaction<'_>,
    rows: &[NewRow],
) -> Result<(), Failure> {
    if rows.is_empty() {
        return Ok(());
    }
    let phones: Vec<i64> = rows.iter().map(|r| r.phone).collect();
    let sequences: Vec<i64> = rows.iter().map(|r| r.sequence).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let replayable: Vec<bool> = rows.iter().map(|r| r.replayable).collect();
    let amounts: Vec<i64> = rows.iter().map(|r| r.amount).collect();
    let references: Vec<&str> = rows.iter().map(|r| r.reference.as_str()).collect();
    let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
    let balances: Vec<i64> = rows.iter().map(|r| r.balance_after).collect();
    let statement = transaction.prepare_cached(INSERT_TRANSACTIONS).await?;
    transaction
        .execute(
            &statement,
            &[
                &phones,
                &sequences,
                &ids,
                &replayable,
                &amounts,
                &references,
                &created,
                &balances,
            ],
        )
        .await?;
    Ok(())
}

/// A wallet's head as a wave of wallet operations sees it.
struct Head {
    /// Whether the row exists in the database (locked) or is opened by this wave.
    stored: bool,
    changed: bool,
    balance: i64,
    last_sequence: i64,
    created_at: i64,
}

/// Profiles and client transactions: the wallets are locked and read, every
/// operation is decided in submission order in Rust, then the heads and the
/// new transactions are written set-based.
pub(super) async fn apply_wallet_ops(
    transaction: &Transaction<'_>,
    requests: &[Request],
    indices: &[usize],
    progress: &mut Progress,
) -> Result<(), Failure> {
    if indices.is_empty() {
        return Ok(());
    }
    // Locked first: once another instance's transaction on these wallets
    // commits, its id (or its refusal's mark) is seen below.
    let mut heads = lock_heads(transaction, requests, indices).await?;
    let mut replays = find_replays(transaction, requests, indices).await?;
    let mut rows: Vec<NewRow> = Vec::new();
    for &index in indices {
        let outcome = match &requests[index] {
            Request::CreateProfile(profile) => {
                WriteAnswer::Wallet(open_profile(profile, &mut heads, &mut rows))
            }
            Request::Transact(new) => WriteAnswer::Transaction(apply_transaction(
                new,
                &mut heads,
                &mut replays,
                &mut rows,
            )),
            Request::CreateVoucher(_) | Request::Claim(_) | Request::Settle(..) => {
                return Err(Failure::permanent("a wave mixed up its operations"));
            }
        };
        progress.decide(index, outcome);
    }
    write_heads(transaction, &heads, rows.is_empty(), progress).await?;
    if let Some(first) = rows.first() {
        let (phone, sequence, id) = (first.phone, first.sequence, first.id);
        progress.wrote(|| Probe::Transaction {
            phone,
            sequence,
            id,
        });
    }
    insert_transactions(transaction, &rows).await?;
    record_refusals(transaction, &replays.new_refusals, progress).await
}

/// What a wave knows of its replayable ids.
#[derive(Default)]
struct Replays {
    /// The first transaction of each id applied before.
    first: HashMap<Uuid, WalletTransaction>,
    /// Ids refused for good: the stored marks and the wave's own.
    refused: HashSet<Uuid>,
    /// The marks the wave makes: (id, phone, reason, refused_at).
    new_refusals: Vec<(Uuid, i64, String, i64)>,
}

impl Replays {
    /// Answers a refused transaction; a replayable one whose refusal is final
    /// leaves a mark, so its id is refused again whatever the wallet holds later.
    fn refuse(&mut self, new: &NewTransaction, refusal: Error) -> Error {
        if new.replayable && new.refusal_is_final && self.refused.insert(new.id) {
            let phone = phone_column(new.phone);
            let mark = (new.id, phone, refusal.to_string(), new.at.0);
            self.new_refusals.push(mark);
        }
        refusal
    }
}

async fn record_refusals(
    transaction: &Transaction<'_>,
    refusals: &[(Uuid, i64, String, i64)],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let Some(&(first, ..)) = refusals.first() else {
        return Ok(());
    };
    let ids: Vec<Uuid> = refusals.iter().map(|r| r.0).collect();
    let phones: Vec<i64> = refusals.iter().map(|r| r.1).collect();
    let reasons: Vec<&str> = refusals.iter().map(|r| r.2.as_str()).collect();
    let ats: Vec<i64> = refusals.iter().map(|r| r.3).collect();
    let statement = transaction.prepare_cached(RECORD_REFUSALS).await?;
    transaction
        .execute(&statement, &[&ids, &phones, &reasons, &ats])
        .await?;
    progress.wrote(|| Probe::Refused { id: first });
    Ok(())
}

/// The first stored transaction of each replayable id the wave carries, and
/// which of them were refused for good.
async fn find_replays(
    transaction: &Transaction<'_>,
    requests: &[Request],
    indices: &[usize],
) -> Result<Replays, Failure> {
    let replay_ids: Vec<Uuid> = indices
        .iter()
        .filter_map(|&i| match &requests[i] {
            Request::Transact(t) if t.replayable => Some(t.id),
            _ => None,
        })
        .collect();
    let mut replays = Replays::default();
    if replay_ids.is_empty() {
        return Ok(replays);
    }
    let statement = transaction.prepare_cached(FIND_REPLAYS).await?;
    for row in transaction.query(&statement, &[&replay_ids]).await? {
        if row.try_get::<_, bool>(7)? {
            replays.refused.insert(row.try_get(0)?);
            continue;
        }
        let first = WalletTransaction {
            id: row.try_get(0)?,
            phone: stored_phone(row.try_get(1)?).map_err(storage_failure)?,
            sequence: stored_u64(row.try_get(2)?, "sequence").map_err(storage_failure)?,
            amount: row.try_get(3)?,
            reference: row.try_get(4)?,
            created_at: Timestamp(row.try_get(5)?),
            balance_after: row.try_get(6)?,
        };
        replays.first.insert(first.id, first);
    }
    Ok(replays)
}

/// Locks and reads the stored heads of every wallet the wave touches.
async fn lock_heads(
    transaction: &Transaction<'_>,
    requests: &[Request],
    indices: &[usize],
) -> Result<HashMap<i64, Head>, Failure> {
    let mut phones: Vec<i64> = indices
        .iter()
        .filter_map(|&i| match &requests[i] {
            Request::CreateProfile(p) => Some(phone_column(p.phone)),
            Request::Transact(t) => Some(phone_column(t.phone)),
            _ => None,
        })
        .collect();
    phones.sort_unstable();
    phones.dedup();
    let statement = transaction.prepare_cached(LOCK_WALLETS).await?;
    let mut heads = HashMap::with_capacity(phones.len());
    for row in transaction.query(&statement, &[&phones]).await? {
        let balance: i64 = row.try_get(1)?;
        // I5: a stored balance is never negative (and the CHECK agrees).
        assert!(balance >= 0, "I5: a stored wallet balance is negative");
        let head = Head {
            stored: true,
            changed: false,
            balance,
            last_sequence: row.try_get(2)?,
            created_at: row.try_get(3)?,
        };
        heads.insert(row.try_get(0)?, head);
    }
    Ok(heads)
}

/// Inserts the wallets the wave opened and updates those it changed. With no
/// transaction rows to probe, a new wallet tells whether a lost commit landed.
async fn write_heads(
    transaction: &Transaction<'_>,
    heads: &HashMap<i64, Head>,
    no_rows: bool,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut opened = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut updated = (Vec::new(), Vec::new(), Vec::new());
    for (&phone, head) in heads {
        assert!(head.balance >= 0, "I5: wallet {phone} would go negative");
        if !head.stored {
            opened.0.push(phone);
            opened.1.push(head.balance);
            opened.2.push(head.last_sequence);
            opened.3.push(head.created_at);
        } else if head.changed {
            updated.0.push(phone);
            updated.1.push(head.balance);
            updated.2.push(head.last_sequence);
        }
    }
    if !opened.0.is_empty() {
        let statement = transaction.prepare_cached(OPEN_WALLETS).await?;
        let inserted = transaction
            .query(&statement, &[&opened.0, &opened.1, &opened.2, &opened.3])
            .await?;
        if inserted.len() != opened.0.len() {
            return Err(Failure::conflict("a wallet was opened by another writer"));
        }
        if no_rows {
            let (phone, created_at) = (opened.0[0], opened.3[0]);
            progress.wrote(|| Probe::Wallet { phone, created_at });
        }
    }
    if !updated.0.is_empty() {
        let statement = transaction.prepare_cached(UPDATE_WALLETS).await?;
        transaction
            .execute(&statement, &[&updated.0, &updated.1, &updated.2])
            .await?;
    }
    Ok(())
}

impl Head {
    /// A wallet this wave opens.
    fn opened(at: Timestamp) -> Self {
        Head {
            stored: false,
            changed: true,
            balance: 0,
            last_sequence: 0,
            created_at: at.0,
        }
    }
}

/// Appends one transaction to a wallet's head as the wave sees it.
fn append(head: &mut Head, row: NewRow, rows: &mut Vec<NewRow>) {
    head.changed = true;
    head.balance = row.balance_after;
    head.last_sequence = row.sequence;
    rows.push(row);
}

fn open_profile(
    profile: &NewProfile,
    heads: &mut HashMap<i64, Head>,
    rows: &mut Vec<NewRow>,
) -> Result<Wallet> {
    let phone = phone_column(profile.phone);
    if heads.contains_key(&phone) {
        return Err(Error::ProfileExists);
    }
    let head = heads.entry(phone).or_insert(Head::opened(profile.at));
    if profile.opening_balance > 0 {
        append(
            head,
            NewRow {
                phone,
                sequence: 1,
                id: Uuid::new_v4(),
                replayable: false,
                amount: profile.opening_balance,
                reference: OPENING_BALANCE_REFERENCE.to_owned(),
                created_at: profile.at.0,
                balance_after: profile.opening_balance,
            },
            rows,
        );
    }
    Ok(Wallet {
        phone: profile.phone,
        balance: head.balance,
        created_at: profile.at,
    })
}

fn apply_transaction(
    new: &NewTransaction,
    heads: &mut HashMap<i64, Head>,
    replays: &mut Replays,
    rows: &mut Vec<NewRow>,
) -> Result<WalletTransaction> {
    if new.replayable {
        if replays.refused.contains(&new.id) {
            return Err(Error::CreditRefused {
                reason: "refused earlier".to_owned(),
            });
        }
        if let Some(first) = replays.first.get(&new.id) {
            return wallet::replay(first.clone(), new.phone, new.amount, &new.reference);
        }
    }
    let phone = phone_column(new.phone);
    let (balance, last_sequence) = heads
        .get(&phone)
        .map_or((0, 0), |head| (head.balance, head.last_sequence));
    let new_balance = wallet::balance_after(balance, new.amount)
        .map_err(|refusal| replays.refuse(new, refusal))?;
    // A credit opens the wallet if needed, as the embedded ledger does.
    let head = heads.entry(phone).or_insert(Head::opened(new.at));
    let row = NewRow {
        phone,
        sequence: last_sequence + 1,
        id: new.id,
        replayable: new.replayable,
        amount: new.amount,
        reference: new.reference.clone(),
        created_at: new.at.0,
        balance_after: new_balance,
    };
    let applied = row.to_transaction(new.phone);
    append(head, row, rows);
    if new.replayable {
        replays.first.insert(new.id, applied.clone());
    }
    Ok(applied)
}
