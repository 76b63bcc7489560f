//! Reads of stored rows back into domain values. Reads use redb's MVCC read
//! transactions on the blocking pool and never wait for the writer.

use redb::{AccessGuard, ReadableTable};
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, Page, PageRequest, PhoneNumber, Redemption, RedemptionStatus, Timestamp,
    Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, ErrorCode, Result};

use super::db_error;
use super::tables::{
    redemption_of_state, StateRow, TransactionRow, VoucherRow, ACCOUNTS, PENDING, STATES,
    TRANSACTIONS, WALLET_HEAD,
};

pub(super) fn read_voucher(
    vouchers: &impl ReadableTable<&'static str, VoucherRow>,
    redeemed: &impl ReadableTable<&'static str, u32>,
    code: VoucherCode,
) -> Result<Option<VoucherStatus>> {
    let Some(row) = vouchers.get(code.as_str()).map_err(db_error)? else {
        return Ok(None);
    };
    let (amount, limit, starts_at, expires_at, created_at) = row.value();
    let count = redeemed
        .get(code.as_str())
        .map_err(db_error)?
        .map_or(0, |c| c.value());
    Ok(Some(VoucherStatus {
        voucher: Voucher {
            code,
            amount,
            limit,
            starts_at: starts_at.map(Timestamp),
            expires_at: expires_at.map(Timestamp),
            created_at: Timestamp(created_at),
        },
        redeemed: count,
    }))
}

/// The stored row of transaction `sequence`, which something in the ledger
/// refers to (a wallet head, a redemption, an idempotency key, a back-link).
fn transaction_row<'a>(
    transactions: &'a impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<AccessGuard<'a, TransactionRow<'static>>> {
    transactions
        .get(sequence)
        .map_err(db_error)?
        .ok_or_else(|| Error::storage(format!("transaction {sequence} is referenced but missing")))
}

/// Transaction `sequence` and the sequence of its wallet's previous transaction
/// (0 if it is the first).
pub(super) fn read_transaction_and_previous(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<(WalletTransaction, u64)> {
    let row = transaction_row(transactions, sequence)?;
    let (phone, id, amount, reference, created_at, balance_after, previous) = row.value();
    let transaction = WalletTransaction {
        id: Uuid::from_u128(id),
        phone: PhoneNumber::from_stored(phone),
        sequence,
        amount,
        reference: reference.to_owned(),
        created_at: Timestamp(created_at),
        balance_after,
    };
    Ok((transaction, previous))
}

pub(super) fn read_transaction(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<WalletTransaction> {
    Ok(read_transaction_and_previous(transactions, sequence)?.0)
}

/// The sequence of the wallet's transaction before `sequence`, or 0.
pub(super) fn previous_of(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    sequence: u64,
) -> Result<u64> {
    Ok(transaction_row(transactions, sequence)?.value().6)
}

/// A user's redemption of a voucher as it stands: credited in one write (role
/// `all`), or by its state row (voucher half; a void one too).
pub(super) fn read_redemption(
    txn: &redb::ReadTransaction,
    code: VoucherCode,
    phone: PhoneNumber,
) -> Result<Option<Redemption>> {
    let id = redemption_id(&code, phone);
    let states = txn.open_table(STATES).map_err(db_error)?;
    if let Some(row) = states.get(id.as_u128()).map_err(db_error)? {
        return redemption_of_state(id, row.value()).map(Some);
    }
    let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
    let Some(row) = accounts
        .get((phone.stored(), code.as_str()))
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let (slot, credit_sequence, redeemed_at) = row.value();
    let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
    let credit = read_transaction(&transactions, credit_sequence)?;
    Ok(Some(Redemption {
        id,
        code,
        phone,
        amount: credit.amount,
        slot: slot as u32,
        redeemed_at: Timestamp(redeemed_at),
        status: RedemptionStatus::Credited,
        balance: Some(credit.balance_after),
    }))
}

/// The status of a redemption in the report: its state row's in a voucher
/// half, credited where claims carry their credit.
pub(super) fn report_status(
    states: &impl ReadableTable<u128, StateRow<'static>>,
    code: &VoucherCode,
    phone: PhoneNumber,
) -> Result<RedemptionStatus> {
    let id = redemption_id(code, phone).as_u128();
    match states.get(id).map_err(db_error)? {
        Some(row) => RedemptionStatus::from_stored(row.value().0),
        None => Ok(RedemptionStatus::Credited),
    }
}

/// Up to `limit` pending redemptions claimed before `claimed_before`, oldest first.
pub(super) fn read_pending(
    txn: &redb::ReadTransaction,
    claimed_before: Timestamp,
    limit: usize,
) -> Result<Vec<Redemption>> {
    let pending = txn.open_table(PENDING).map_err(db_error)?;
    let states = txn.open_table(STATES).map_err(db_error)?;
    let range = pending
        .range((i64::MIN, 0u128)..(claimed_before.0, 0u128))
        .map_err(db_error)?;
    let mut found = Vec::new();
    for entry in range.take(limit) {
        let (key, _) = entry.map_err(db_error)?;
        let id = key.value().1;
        let row = states
            .get(id)
            .map_err(db_error)?
            .ok_or_else(|| Error::storage("a pending redemption has no state"))?;
        found.push(redemption_of_state(Uuid::from_u128(id), row.value())?);
    }
    Ok(found)
}

/// A wallet and one page of its transactions, newest first.
pub(super) fn read_wallet(
    txn: &redb::ReadTransaction,
    phone: PhoneNumber,
    page: PageRequest,
) -> Result<Option<(Wallet, Page<WalletTransaction>)>> {
    let accounts = txn.open_table(ACCOUNTS).map_err(db_error)?;
    let Some(head) = accounts
        .get((phone.stored(), WALLET_HEAD))
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let (balance, last_sequence, created_at) = head.value();
    let wallet = Wallet {
        phone,
        balance,
        created_at: Timestamp(created_at),
    };
    let transactions = txn.open_table(TRANSACTIONS).map_err(db_error)?;
    // Newest first: follow the wallet's back-chain from the head, or from the
    // transaction before the cursor.
    let mut next = match page.cursor {
        None => last_sequence,
        Some(cursor) => previous_of_cursor(&transactions, cursor, phone)?,
    };
    for _ in 0..page.offset {
        if next == 0 {
            break;
        }
        next = previous_of(&transactions, next)?;
    }
    let mut items = Vec::new();
    while next != 0 && items.len() < page.limit as usize {
        let (transaction, previous) = read_transaction_and_previous(&transactions, next)?;
        next = previous;
        items.push(transaction);
    }
    let next_cursor = (next != 0)
        .then(|| items.last().map(|t| t.sequence))
        .flatten();
    Ok(Some((wallet, Page { items, next_cursor })))
}

/// The transaction before `cursor`, which must be one of `phone`'s.
fn previous_of_cursor(
    transactions: &impl ReadableTable<u64, TransactionRow<'static>>,
    cursor: u64,
    phone: PhoneNumber,
) -> Result<u64> {
    read_transaction_and_previous(transactions, cursor)
        .ok()
        .filter(|(after, _)| after.phone == phone)
        .map(|(_, previous)| previous)
        .ok_or_else(|| {
            Error::invalid(
                ErrorCode::InvalidCursor,
                "cursor must be a next_cursor this service returned",
            )
        })
}
