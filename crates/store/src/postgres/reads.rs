//! Reads: the SELECT statements and the conversion of stored columns back into
//! domain values (every stored number is checked on the way back).

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::Row;
use voucherd_core::domain::{
    redemption_id, Page, PageRequest, PhoneNumber, Redemption, RedemptionStatus, ReportEntry,
    Timestamp, Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, ErrorCode, Result};

use super::errors::Failure;

// Reads.
pub(super) const SELECT_VOUCHER: &str = "\
    SELECT v.code, v.amount, v.slot_limit, v.starts_at, v.expires_at, v.created_at, \
           (SELECT count(*) FROM redemptions AS r WHERE r.code = v.code) \
    FROM vouchers AS v WHERE v.code = $1";
pub(super) const SELECT_VOUCHERS: &str = "\
    SELECT v.code, v.amount, v.slot_limit, v.starts_at, v.expires_at, v.created_at, \
           (SELECT count(*) FROM redemptions AS r WHERE r.code = v.code) \
    FROM vouchers AS v";
/// A user's redemption in the columns of [`stored_redemption`]: the live row
/// (whose balance, when it was credited in the claim's write, is its credit's),
/// else the void one.
const SELECT_REDEMPTION: &str = "\
    SELECT r.id, r.code, r.slot, r.phone, r.amount, r.redeemed_at, r.status, \
           coalesce(r.balance, t.balance_after), 0 AS rank \
    FROM redemptions AS r \
    LEFT JOIN wallet_transactions AS t \
           ON r.status IS NULL AND t.phone = r.phone AND t.id = r.id \
    WHERE r.code = $1 AND r.phone = $2 \
    UNION ALL \
    SELECT id, code, slot, phone, amount, redeemed_at, 2::SMALLINT, NULL::BIGINT, 1 \
    FROM void_redemptions WHERE id = $3 \
    ORDER BY rank LIMIT 1";
pub(super) const SELECT_REPORT: &str = "\
    SELECT slot, phone, redeemed_at, status FROM redemptions \
    WHERE code = $1 AND slot > $2 ORDER BY slot LIMIT $3 OFFSET $4";
/// The oldest pending redemptions, on the partial index of the pending.
const SELECT_PENDING: &str = "\
    SELECT id, code, slot, phone, amount, redeemed_at, status, balance FROM redemptions \
    WHERE status = 0 AND redeemed_at < $1 ORDER BY redeemed_at, id LIMIT $2";
pub(super) const SELECT_WINNERS: &str =
    "SELECT phone FROM redemptions WHERE code = $1 ORDER BY slot";
/// The free ranges below the highest taken slot, and one last row (first = 0)
/// holding that highest slot; one statement, so one consistent snapshot.
pub(super) const SELECT_SLOT_GAPS: &str = "\
    WITH taken AS ( \
        SELECT slot, lag(slot, 1, 0::BIGINT) OVER (ORDER BY slot) AS previous \
        FROM redemptions WHERE code = $1) \
    SELECT previous + 1, slot - 1 FROM taken WHERE slot > previous + 1 \
    UNION ALL \
    SELECT 0, coalesce(max(slot), 0) FROM taken";
pub(super) const SELECT_WALLET: &str =
    "SELECT balance, last_sequence, created_at FROM wallets WHERE phone = $1";
pub(super) const SELECT_WALLET_PAGE: &str = "\
    SELECT id, sequence, amount, reference, created_at, balance_after \
    FROM wallet_transactions WHERE phone = $1 AND sequence < $2 \
    ORDER BY sequence DESC LIMIT $3 OFFSET $4";

pub(super) fn read_error(error: tokio_postgres::Error) -> Error {
    Failure::from(error).into_error()
}

/// Runs a read statement (prepared once per connection) and returns its rows.
pub(super) async fn read_rows(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(read_error)?;
    client.query(&statement, params).await.map_err(read_error)
}

/// Runs a read statement that finds at most one row.
pub(super) async fn read_row(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(read_error)?;
    client
        .query_opt(&statement, params)
        .await
        .map_err(read_error)
}

/// A column of a row, without the panic of `Row::get` on a type mismatch.
pub(super) fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T> {
    row.try_get(index).map_err(read_error)
}

pub(super) fn stored_phone(value: i64) -> Result<PhoneNumber> {
    u64::try_from(value)
        .map(PhoneNumber::from_stored)
        .map_err(|_| Error::storage(format!("stored phone {value} is negative")))
}

pub(super) fn stored_u32(value: i64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::storage(format!("stored {what} {value} out of range")))
}

pub(super) fn stored_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::storage(format!("stored {what} {value} out of range")))
}

/// Every phone is at most 15 digits (checked at the edge), so it fits an i64.
pub(super) fn phone_column(phone: PhoneNumber) -> i64 {
    phone.stored() as i64
}

/// A redemption's status as stored: NULL for one credited in the claim's own
/// write (role `all`), else [`RedemptionStatus::stored`].
pub(super) fn stored_status(value: Option<i16>) -> Result<RedemptionStatus> {
    let Some(value) = value else {
        return Ok(RedemptionStatus::Credited);
    };
    let value = u8::try_from(value)
        .map_err(|_| Error::storage(format!("unknown redemption status {value}")))?;
    RedemptionStatus::from_stored(value)
}

/// A redemption from the columns (id, code, slot, phone, amount, redeemed_at,
/// status, balance).
pub(super) fn stored_redemption(row: &Row) -> Result<Redemption> {
    let code: String = column(row, 1)?;
    Ok(Redemption {
        id: column(row, 0)?,
        code: VoucherCode::parse(&code).map_err(Error::storage)?,
        slot: stored_u32(column(row, 2)?, "slot")?,
        phone: stored_phone(column(row, 3)?)?,
        amount: column(row, 4)?,
        redeemed_at: Timestamp(column(row, 5)?),
        status: stored_status(column(row, 6)?)?,
        balance: column(row, 7)?,
    })
}

/// A user's redemption of a voucher as it stands (a void one too).
pub(super) async fn read_redemption(
    client: Object,
    code: VoucherCode,
    phone: PhoneNumber,
) -> Result<Option<Redemption>> {
    let id = redemption_id(&code, phone);
    let params: [&(dyn ToSql + Sync); 3] = [&code.as_str(), &phone_column(phone), &id];
    let row = read_row(&client, SELECT_REDEMPTION, &params).await?;
    row.as_ref().map(stored_redemption).transpose()
}

/// One line of a voucher's report from (slot, phone, redeemed_at, status).
pub(super) fn report_entry(row: &Row) -> Result<ReportEntry> {
    Ok(ReportEntry {
        slot: stored_u32(column(row, 0)?, "slot")?,
        phone: stored_phone(column(row, 1)?)?,
        redeemed_at: Timestamp(column(row, 2)?),
        status: stored_status(column(row, 3)?)?,
    })
}

pub(super) fn voucher_status(row: &Row) -> Result<VoucherStatus> {
    let code: String = column(row, 0)?;
    let starts_at: Option<i64> = column(row, 3)?;
    let expires_at: Option<i64> = column(row, 4)?;
    Ok(VoucherStatus {
        voucher: Voucher {
            code: VoucherCode::parse(&code).map_err(Error::storage)?,
            amount: column(row, 1)?,
            limit: stored_u32(column(row, 2)?, "limit")?,
            starts_at: starts_at.map(Timestamp),
            expires_at: expires_at.map(Timestamp),
            created_at: Timestamp(column(row, 5)?),
        },
        redeemed: stored_u32(column(row, 6)?, "redemption count")?,
    })
}

/// A wallet's head and one page of its transactions, newest first, from one
/// snapshot, so the balance matches the newest transaction shown.
pub(super) async fn read_wallet(
    mut client: Object,
    phone: PhoneNumber,
    page: PageRequest,
) -> Result<Option<(Wallet, Page<WalletTransaction>)>> {
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(read_error)?;
    let head = transaction
        .prepare_cached(SELECT_WALLET)
        .await
        .map_err(read_error)?;
    let Some(head) = transaction
        .query_opt(&head, &[&phone_column(phone)])
        .await
        .map_err(read_error)?
    else {
        return Ok(None);
    };
    let wallet = Wallet {
        phone,
        balance: column(&head, 0)?,
        created_at: Timestamp(column(&head, 2)?),
    };
    let before = page_start(page.cursor, column(&head, 1)?)?;
    let statement = transaction
        .prepare_cached(SELECT_WALLET_PAGE)
        .await
        .map_err(read_error)?;
    let window = [
        &phone_column(phone) as &(dyn ToSql + Sync),
        &before,
        &(i64::from(page.limit) + 1),
        &i64::from(page.offset),
    ];
    let rows = transaction
        .query(&statement, &window)
        .await
        .map_err(read_error)?;
    transaction.commit().await.map_err(read_error)?;
    let more = rows.len() > page.limit as usize;
    let items = rows
        .iter()
        .take(page.limit as usize)
        .map(|row| wallet_transaction(row, phone))
        .collect::<Result<Vec<_>>>()?;
    let next_cursor = more.then(|| items.last().map(|t| t.sequence)).flatten();
    Ok(Some((wallet, Page { items, next_cursor })))
}

/// The sequence a wallet page starts below: a cursor is the sequence of one of
/// this wallet's transactions.
fn page_start(cursor: Option<u64>, last_sequence: i64) -> Result<i64> {
    match cursor.map(i64::try_from) {
        None => Ok(i64::MAX),
        Some(Ok(cursor)) if (1..=last_sequence).contains(&cursor) => Ok(cursor),
        Some(_) => Err(Error::invalid(
            ErrorCode::InvalidCursor,
            "cursor must be a next_cursor this service returned",
        )),
    }
}

fn wallet_transaction(row: &Row, phone: PhoneNumber) -> Result<WalletTransaction> {
    Ok(WalletTransaction {
        id: column(row, 0)?,
        phone,
        sequence: stored_u64(column(row, 1)?, "sequence")?,
        amount: column(row, 2)?,
        reference: column(row, 3)?,
        created_at: Timestamp(column(row, 4)?),
        balance_after: column(row, 5)?,
    })
}

/// Up to `limit` pending redemptions claimed before `claimed_before`, oldest first.
pub(super) async fn read_pending(
    client: Object,
    claimed_before: Timestamp,
    limit: usize,
) -> Result<Vec<Redemption>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = read_rows(&client, SELECT_PENDING, &[&claimed_before.0, &limit]).await?;
    rows.iter().map(stored_redemption).collect()
}
