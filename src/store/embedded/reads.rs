//! Reads of stored rows back into domain values. Reads use redb's MVCC read
//! transactions on the blocking pool and never wait for the writer.

use super::*;

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
