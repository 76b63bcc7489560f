//! The invariants checked at the end of a schedule, on everything the store
//! holds (read straight from the in-memory store, in the layout of
//! `cql/schema.cql`), once faults stopped and recovery ran to quiescence.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;
use voucherd_core::domain::{voucher_reference, VoucherCode};
use voucherd_core::error::Error;
use voucherd_store::cas::memory::{Dumped, MemoryStore};
use voucherd_store::cas::store::{Row, Table, Value};
use voucherd_test_support::sim::runner::{violation, Violation};
use voucherd_test_support::sim::world::World;

use super::clients::{Answer, Told};

type Outcome = Result<(), Violation>;

const PENDING: i64 = 0;
const CREDITED: i64 = 1;

fn int(row: &Row, column: &str) -> Option<i64> {
    match row.get(column) {
        Some(Value::Int(v)) => Some(*v),
        _ => None,
    }
}

fn id(row: &Row, column: &str) -> Option<Uuid> {
    match row.get(column) {
        Some(Value::Uuid(v)) => Some(*v),
        _ => None,
    }
}

fn text(row: &Row, column: &str) -> Option<String> {
    match row.get(column) {
        Some(Value::Text(v)) => Some(v.clone()),
        _ => None,
    }
}

/// A user's key as stored.
#[derive(Debug, Clone)]
struct Key {
    phone: i64,
    amount: Option<i64>,
    status: Option<i64>,
    slot: Option<i64>,
    slot_attempt: Option<Uuid>,
    balance: Option<i64>,
    attempt: Option<Uuid>,
}

impl Key {
    fn is_live(&self) -> bool {
        matches!(self.status, Some(PENDING | CREDITED))
    }
}

/// A wallet transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    phone: i64,
    sequence: i64,
    id: Uuid,
    amount: i64,
    reference: String,
    balance_after: i64,
}

/// A slot bucket: its number, whether it holds statics (it must not: no
/// count shared by the slots of a bucket), and its held slots
/// (slot, holder id, attempt).
struct Bucket {
    number: i64,
    statics: bool,
    held: Vec<(i64, Uuid, Uuid)>,
}

/// A wallet: statics, transactions by sequence, and markers (id → the
/// sequence applied, or `None` for a refusal).
struct WalletView {
    balance: i64,
    version: Option<i64>,
    transactions: Vec<Stored>,
    markers: BTreeMap<Uuid, Option<i64>>,
}

/// Everything the store holds, typed.
struct Contents {
    buckets: Vec<Bucket>,
    keys: BTreeMap<Uuid, Key>,
    log_entries: usize,
    wallets: BTreeMap<i64, WalletView>,
    bindings: BTreeMap<Uuid, (i64, i64, String)>,
}

fn read(store: &MemoryStore) -> Contents {
    let buckets = store.dump(Table::Slots).iter().map(bucket).collect();
    let keys = store
        .dump(Table::Redemptions)
        .iter()
        .filter_map(key)
        .collect();
    let log_entries = store
        .dump(Table::ClaimLog)
        .iter()
        .map(|p| p.rows.len())
        .sum();
    let wallets = store.dump(Table::Wallets).iter().map(wallet).collect();
    let bindings = store
        .dump(Table::TransactionIds)
        .iter()
        .filter_map(binding)
        .collect();
    Contents {
        buckets,
        keys,
        log_entries,
        wallets,
        bindings,
    }
}

fn bucket(part: &Dumped) -> Bucket {
    let number = match part.partition.key.get(1) {
        Some(Value::Int(b)) => *b,
        _ => -1,
    };
    let held = (part.rows.iter())
        .filter_map(
            |(k, row)| match (k.first(), id(row, "holder"), id(row, "attempt")) {
                (Some(Value::Int(slot)), Some(holder), Some(attempt)) => {
                    Some((*slot, holder, attempt))
                }
                _ => None,
            },
        )
        .collect();
    Bucket {
        number,
        statics: !part.statics.is_empty(),
        held,
    }
}

fn key(part: &Dumped) -> Option<(Uuid, Key)> {
    let Some(Value::Uuid(redemption)) = part.partition.key.first() else {
        return None;
    };
    let row = &part.rows.first()?.1;
    let key = Key {
        phone: int(row, "phone").unwrap_or(-1),
        amount: int(row, "amount"),
        status: int(row, "status"),
        slot: int(row, "slot"),
        slot_attempt: id(row, "slot_attempt"),
        balance: int(row, "balance"),
        attempt: id(row, "attempt"),
    };
    Some((*redemption, key))
}

fn wallet(part: &Dumped) -> (i64, WalletView) {
    let phone = match part.partition.key.first() {
        Some(Value::Int(p)) => *p,
        _ => -1,
    };
    let mut transactions = Vec::new();
    let mut markers = BTreeMap::new();
    for (k, row) in &part.rows {
        match k.as_slice() {
            [Value::Int(0), Value::Int(sequence), Value::Uuid(id)] => transactions.push(Stored {
                phone,
                sequence: *sequence,
                id: *id,
                amount: int(row, "amount").unwrap_or(0),
                reference: text(row, "reference").unwrap_or_default(),
                balance_after: int(row, "balance_after").unwrap_or(-1),
            }),
            [Value::Int(1), _, Value::Uuid(id)] => {
                markers.insert(*id, int(row, "sequence"));
            }
            _ => {}
        }
    }
    let view = WalletView {
        balance: int(&part.statics, "balance").unwrap_or(0),
        version: int(&part.statics, "version"),
        transactions,
        markers,
    };
    (phone, view)
}

fn binding(part: &Dumped) -> Option<(Uuid, (i64, i64, String))> {
    let Some(Value::Uuid(tx)) = part.partition.key.first() else {
        return None;
    };
    let row = &part.rows.first()?.1;
    let body = (
        int(row, "phone")?,
        int(row, "amount")?,
        text(row, "reference")?,
    );
    Some((*tx, body))
}

/// What the schedule knows besides the store.
pub struct Expected<'a> {
    pub code: &'a VoucherCode,
    pub limit: u32,
    pub answers: &'a [Answer],
    pub told: &'a [Told],
}

pub fn check(store: &MemoryStore, expected: &Expected, world: &World) -> Outcome {
    let undecided = store.decide_all();
    if undecided > 0 {
        let detail = format!("{undecided} writes still undecided after recovery");
        return Err(violation("liveness", detail));
    }
    let contents = read(store);
    fingerprint(&contents, world);
    quiet(&contents)?;
    slots_agree(&contents, expected.limit)?;
    counts(&contents)?;
    wallets(&contents)?;
    credited(&contents, expected.code)?;
    durable(&contents, expected.answers)?;
    told(&contents, expected.told)
}

/// Folds the final redemptions and balances into the trace's fingerprint.
fn fingerprint(contents: &Contents, world: &World) {
    for key in contents.keys.values() {
        world.event("final.redemption", 0, key.status.unwrap_or(-1));
    }
    for wallet in contents.wallets.values() {
        world.event("final.balance", 0, wallet.balance);
    }
}

/// No claim in flight, nothing pending, nothing left in the claim log.
fn quiet(contents: &Contents) -> Outcome {
    if let Some((id, _)) = contents.keys.iter().find(|(_, k)| k.attempt.is_some()) {
        return Err(violation("claiming", format!("{id} is still claiming")));
    }
    if let Some((id, _)) = contents
        .keys
        .iter()
        .find(|(_, k)| k.status == Some(PENDING))
    {
        return Err(violation("liveness", format!("{id} is still pending")));
    }
    if contents.log_entries > 0 {
        let detail = format!("{} claim log entries left", contents.log_entries);
        return Err(violation("liveness", detail));
    }
    Ok(())
}

/// I1 and I2 through the slots: every held slot is in range and held by the
/// attempt that made a live redemption recorded on that slot; every live
/// redemption holds its slot; no user holds two.
fn slots_agree(contents: &Contents, limit: u32) -> Outcome {
    let mut holders = BTreeMap::new();
    for &(slot, holder, attempt) in contents.buckets.iter().flat_map(|b| &b.held) {
        if !(1..=i64::from(limit)).contains(&slot) {
            return Err(violation(
                "I1 limit",
                format!("slot {slot} is out of range"),
            ));
        }
        let key = contents.keys.get(&holder);
        let made = key.is_some_and(|k| {
            k.is_live() && k.slot_attempt == Some(attempt) && k.slot == Some(slot)
        });
        if !made {
            let detail = format!(
                "slot {slot} is held by {holder} (attempt {attempt}), whose key is {key:?}"
            );
            return Err(violation("I1 limit (orphan slot)", detail));
        }
        if holders.insert(holder, slot).is_some() || holders.len() > limit as usize {
            return Err(violation("I1 limit", format!("{holder} holds two slots")));
        }
    }
    let mut phones = BTreeSet::new();
    for (id, key) in contents.keys.iter().filter(|(_, k)| k.is_live()) {
        if holders.get(id).copied() != key.slot {
            let detail = format!("{id} is live on slot {:?}, the slot disagrees", key.slot);
            return Err(violation("keys and slots", detail));
        }
        if !phones.insert(key.phone) {
            return Err(violation(
                "I2 unique",
                format!("phone {} wins twice", key.phone),
            ));
        }
    }
    Ok(())
}

/// No bucket keeps a count (a condition takes of different slots would
/// share), and the held slots are as many as the live redemptions.
fn counts(contents: &Contents) -> Outcome {
    let mut total = 0;
    for bucket in &contents.buckets {
        if bucket.statics {
            let detail = format!("bucket {} holds static columns", bucket.number);
            return Err(violation("count", detail));
        }
        total += bucket.held.len();
    }
    let live = contents.keys.values().filter(|k| k.is_live()).count();
    if total != live {
        return Err(violation(
            "count",
            format!("{total} held slots, {live} redemptions"),
        ));
    }
    Ok(())
}

/// I5 and exactly-once per id: each wallet's transactions are 1..=version,
/// each balance_after the running sum, never negative, the balance their
/// sum; every transaction has its id's marker; no id applied twice anywhere.
fn wallets(contents: &Contents) -> Outcome {
    let mut ids = BTreeSet::new();
    for (phone, wallet) in &contents.wallets {
        let mut sum: i128 = 0;
        for (n, tx) in wallet.transactions.iter().enumerate() {
            sum += i128::from(tx.amount);
            let in_order = tx.sequence == n as i64 + 1;
            if !in_order || sum != i128::from(tx.balance_after) || tx.balance_after < 0 {
                let detail = format!("wallet {phone}: {tx:?} after a running sum of {sum}");
                return Err(violation("I5 balance", detail));
            }
            if wallet.markers.get(&tx.id) != Some(&Some(tx.sequence)) {
                return Err(violation("exactly once", format!("{tx:?} has no marker")));
            }
            if !ids.insert(tx.id) {
                return Err(violation(
                    "exactly once",
                    format!("{} applied twice", tx.id),
                ));
            }
        }
        let (balance, version) = (wallet.balance, wallet.version);
        let count = wallet.transactions.len() as i64;
        if sum != i128::from(balance) || balance < 0 || version.unwrap_or(0) != count {
            let detail =
                format!("wallet {phone}: balance {balance}, version {version:?}, sum {sum}");
            return Err(violation("I5 balance", detail));
        }
    }
    Ok(())
}

fn by_id(contents: &Contents) -> BTreeMap<Uuid, &Stored> {
    (contents.wallets.values())
        .flat_map(|wallet| &wallet.transactions)
        .map(|tx| (tx.id, tx))
        .collect()
}

/// I3: a credited redemption has its one credit (same id, phone, amount,
/// reference, and the balance it recorded); a void one none; every voucher
/// credit is a credited redemption's; an applied keyed transaction is the
/// request its key is bound to.
fn credited(contents: &Contents, code: &VoucherCode) -> Outcome {
    let applied = by_id(contents);
    let reference = voucher_reference(code);
    for (id, key) in &contents.keys {
        let credit = applied.get(id);
        let is_credited = key.status == Some(CREDITED);
        let matches = credit.is_some_and(|tx| {
            tx.phone == key.phone
                && Some(tx.amount) == key.amount
                && tx.reference == reference
                && key.balance.is_none_or(|b| b == tx.balance_after)
        });
        if is_credited != matches || (!is_credited && credit.is_some()) {
            let detail = format!("{id}: {key:?}, credit {credit:?}");
            return Err(violation("I3 credited", detail));
        }
    }
    credits_backed(contents, &applied)
}

/// Every voucher credit backs a credited redemption; every applied
/// transaction is the request its id is bound to.
fn credits_backed(contents: &Contents, applied: &BTreeMap<Uuid, &Stored>) -> Outcome {
    for (id, tx) in applied {
        let backed = contents
            .keys
            .get(id)
            .is_some_and(|k| k.status == Some(CREDITED));
        if tx.reference.starts_with("voucher:") && !backed {
            return Err(violation(
                "I3 credited",
                format!("{tx:?} has no redemption"),
            ));
        }
        let bound = contents.bindings.get(id);
        let same = bound.is_none_or(|(phone, amount, reference)| {
            (*phone, *amount, reference.as_str()) == (tx.phone, tx.amount, tx.reference.as_str())
        });
        if !same {
            return Err(violation(
                "idempotency",
                format!("{tx:?} is bound to {bound:?}"),
            ));
        }
    }
    Ok(())
}

/// I4: a client told credited finds it credited; told pending or void finds
/// the redemption.
fn durable(contents: &Contents, answers: &[Answer]) -> Outcome {
    for answer in answers {
        let (id, credited) = match answer {
            Answer::Credited(id) => (id, true),
            Answer::Pending(id) | Answer::Void(id) => (id, false),
            _ => continue,
        };
        let status = contents.keys.get(id).and_then(|k| k.status);
        let holds = status.is_some() && (!credited || status == Some(CREDITED));
        if !holds {
            let detail = format!("answered {answer:?}, the ledger has {status:?}");
            return Err(violation("I4 durable", detail));
        }
    }
    Ok(())
}

/// Every transaction a client was told applied is the stored one (a replay
/// answers the first); one told refused for good was not applied.
fn told(contents: &Contents, told: &[Told]) -> Outcome {
    let applied = by_id(contents);
    for t in told {
        let stored = applied.get(&t.request.id);
        match &t.answer {
            Ok(tx) => {
                let same = stored.is_some_and(|s| {
                    (s.sequence, s.amount, s.balance_after)
                        == (tx.sequence as i64, tx.amount, tx.balance_after)
                        && s.phone == tx.phone.stored() as i64
                });
                if !same {
                    let detail = format!("told {tx:?}, stored {stored:?}");
                    return Err(violation("exactly once", detail));
                }
            }
            Err(Error::IdempotencyKeyReused) => {
                let own = stored.is_some_and(|s| {
                    s.phone == t.request.phone.stored() as i64
                        && s.amount == t.request.amount
                        && s.reference == t.request.reference
                });
                if own {
                    return Err(violation(
                        "idempotency",
                        format!("{:?} refused, yet applied", t.request),
                    ));
                }
            }
            Err(_) => {}
        }
    }
    Ok(())
}
