//! Where each kind of row lives (partition and clustering keys) and the typed
//! views of the rows the protocol reads. `cql/schema.cql` is the same layout
//! in CQL; `cql/README.md` explains the choice of every partition key.

use uuid::Uuid;

use super::store::{Clustering, Column, Partition, Row, RowKey, Table, Value};
use voucherd_core::domain::{PhoneNumber, RedemptionStatus, Timestamp, Voucher, VoucherCode};
use voucherd_core::error::{Error, Result};

/// The one partition of the voucher catalog.
const CATALOG: i64 = 0;

/// Column names, as in `cql/schema.cql`.
pub(super) mod col {
    use super::Column;

    // vouchers
    pub const AMOUNT: Column = "amount";
    pub const SLOT_LIMIT: Column = "slot_limit";
    pub const STARTS_AT: Column = "starts_at";
    pub const EXPIRES_AT: Column = "expires_at";
    pub const CREATED_AT: Column = "created_at";
    pub const BUCKETS: Column = "buckets";
    // slots
    pub const GEN: Column = "gen";
    pub const HOLDER: Column = "holder";
    pub const ATTEMPT: Column = "attempt";
    // redemptions
    pub const VERSION: Column = "version";
    pub const CODE: Column = "code";
    pub const PHONE: Column = "phone";
    pub const STATUS: Column = "status";
    pub const SLOT: Column = "slot";
    pub const SLOT_ATTEMPT: Column = "slot_attempt";
    pub const CLAIMED_AT: Column = "claimed_at";
    pub const BALANCE: Column = "balance";
    pub const ATTEMPT_SLOT: Column = "attempt_slot";
    pub const ATTEMPT_GEN: Column = "attempt_gen";
    pub const ATTEMPT_AT: Column = "attempt_at";
    // wallets (statics: BALANCE, VERSION, OPENED_AT, OPENED_BY)
    pub const OPENED_AT: Column = "opened_at";
    pub const OPENED_BY: Column = "opened_by";
    pub const REFERENCE: Column = "reference";
    pub const BALANCE_AFTER: Column = "balance_after";
    pub const SEQUENCE: Column = "sequence";
    pub const REFUSED: Column = "refused";
}

pub(super) fn int(value: i64) -> Option<Value> {
    Some(Value::Int(value))
}

pub(super) fn uuid(value: Uuid) -> Option<Value> {
    Some(Value::Uuid(value))
}

pub(super) fn text(value: &str) -> Option<Value> {
    Some(Value::Text(value.to_owned()))
}

/// A row built from (column, value) pairs, nulls left out.
pub(super) fn row_of(pairs: Vec<(Column, Option<Value>)>) -> Row {
    pairs
        .into_iter()
        .filter_map(|(column, value)| value.map(|v| (column, v)))
        .collect()
}

pub(super) fn get_int(row: &Row, column: Column) -> Result<Option<i64>> {
    match row.get(column) {
        None => Ok(None),
        Some(Value::Int(v)) => Ok(Some(*v)),
        Some(other) => Err(mistyped(column, other)),
    }
}

pub(super) fn get_uuid(row: &Row, column: Column) -> Result<Option<Uuid>> {
    match row.get(column) {
        None => Ok(None),
        Some(Value::Uuid(v)) => Ok(Some(*v)),
        Some(other) => Err(mistyped(column, other)),
    }
}

pub(super) fn get_text(row: &Row, column: Column) -> Result<Option<String>> {
    match row.get(column) {
        None => Ok(None),
        Some(Value::Text(v)) => Ok(Some(v.clone())),
        Some(other) => Err(mistyped(column, other)),
    }
}

pub(super) fn need<T>(value: Option<T>, column: Column) -> Result<T> {
    value.ok_or_else(|| Error::storage(format!("column {column} is missing")))
}

fn mistyped(column: Column, value: &Value) -> Error {
    Error::storage(format!("column {column} holds {value:?}"))
}

/// A u32 stored as an Int.
pub(super) fn small(value: i64, column: Column) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::storage(format!("column {column} holds {value}")))
}

/// The catalog row of voucher `code`.
pub(super) fn voucher_key(code: &VoucherCode) -> RowKey {
    RowKey {
        partition: catalog(),
        row: vec![Value::Text(code.as_str().to_owned())],
    }
}

pub(super) fn catalog() -> Partition {
    Partition {
        table: Table::Vouchers,
        key: vec![Value::Int(CATALOG)],
    }
}

/// A voucher and how many slot partitions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VoucherRow {
    pub voucher: Voucher,
    pub buckets: u32,
}

impl VoucherRow {
    pub fn to_row(&self) -> Row {
        let v = &self.voucher;
        row_of(vec![
            (col::AMOUNT, int(v.amount)),
            (col::SLOT_LIMIT, int(i64::from(v.limit))),
            (col::STARTS_AT, v.starts_at.and_then(|t| int(t.0))),
            (col::EXPIRES_AT, v.expires_at.and_then(|t| int(t.0))),
            (col::CREATED_AT, int(v.created_at.0)),
            (col::BUCKETS, int(i64::from(self.buckets))),
        ])
    }

    pub fn from_row(code: VoucherCode, row: &Row) -> Result<Self> {
        let voucher = Voucher {
            code,
            amount: need(get_int(row, col::AMOUNT)?, col::AMOUNT)?,
            limit: small(
                need(get_int(row, col::SLOT_LIMIT)?, col::SLOT_LIMIT)?,
                col::SLOT_LIMIT,
            )?,
            starts_at: get_int(row, col::STARTS_AT)?.map(Timestamp),
            expires_at: get_int(row, col::EXPIRES_AT)?.map(Timestamp),
            created_at: Timestamp(need(get_int(row, col::CREATED_AT)?, col::CREATED_AT)?),
        };
        let buckets = small(
            need(get_int(row, col::BUCKETS)?, col::BUCKETS)?,
            col::BUCKETS,
        )?;
        Ok(VoucherRow { voucher, buckets })
    }

    /// The partition of `slot`'s row: consecutive slots land in different
    /// partitions, so contenders handed neighbouring slots do not contend.
    pub fn bucket_of(&self, slot: u32) -> u32 {
        slot % self.buckets.max(1)
    }

    pub fn slot_key(&self, slot: u32) -> RowKey {
        RowKey {
            partition: self.bucket(self.bucket_of(slot)),
            row: vec![Value::Int(i64::from(slot))],
        }
    }

    pub fn bucket(&self, bucket: u32) -> Partition {
        Partition {
            table: Table::Slots,
            key: vec![
                Value::Text(self.voucher.code.as_str().to_owned()),
                Value::Int(i64::from(bucket)),
            ],
        }
    }
}

/// Which claim attempt holds a slot: the redemption id and the attempt's nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holder {
    pub id: Uuid,
    pub attempt: Uuid,
}

/// A slot row as read, with the exact values a condition must repeat (a
/// missing row or static reads as null).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct SlotState {
    /// How many times the slot was taken; only a take changes it.
    pub gen: Option<i64>,
    pub holder: Option<Holder>,
}

impl SlotState {
    pub fn read(row: Option<&Row>) -> Result<Self> {
        let Some(row) = row else {
            return Ok(SlotState::default());
        };
        let holder = match (get_uuid(row, col::HOLDER)?, get_uuid(row, col::ATTEMPT)?) {
            (Some(id), Some(attempt)) => Some(Holder { id, attempt }),
            (None, None) => None,
            _ => return Err(Error::storage("a slot holder without its attempt")),
        };
        Ok(SlotState {
            gen: get_int(row, col::GEN)?,
            holder,
        })
    }

    pub fn generation(&self) -> i64 {
        self.gen.unwrap_or(0)
    }

    pub fn held_by(&self, holder: Holder) -> bool {
        self.holder == Some(holder)
    }
}

/// A claim attempt in flight on a user's key: the slot it goes for, at the
/// slot generation its take expects, and the claim's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Attempt {
    pub nonce: Uuid,
    pub slot: u32,
    pub gen: i64,
    pub at: Timestamp,
}

/// The redemption a user's key holds (its status is the visible one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Committed {
    pub status: RedemptionStatus,
    pub slot: u32,
    /// The attempt that took the slot.
    pub attempt: Uuid,
    pub claimed_at: Timestamp,
    pub balance: Option<i64>,
}

/// A user's key of a voucher: a row per redemption id, never deleted, whose
/// `version` grows with every write (a missing row is version `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct KeyState {
    pub version: Option<i64>,
    pub code: Option<String>,
    pub phone: Option<u64>,
    pub amount: Option<i64>,
    pub committed: Option<Committed>,
    pub attempt: Option<Attempt>,
}

pub(super) fn key_of(id: Uuid) -> RowKey {
    RowKey {
        partition: Partition {
            table: Table::Redemptions,
            key: vec![Value::Uuid(id)],
        },
        row: Vec::new(),
    }
}

impl KeyState {
    pub fn read(row: Option<&Row>) -> Result<Self> {
        let Some(row) = row else {
            return Ok(KeyState::default());
        };
        Ok(KeyState {
            version: get_int(row, col::VERSION)?,
            code: get_text(row, col::CODE)?,
            phone: get_int(row, col::PHONE)?.map(|p| p as u64),
            amount: get_int(row, col::AMOUNT)?,
            committed: committed_of(row)?,
            attempt: attempt_of(row)?,
        })
    }

    /// Holds a redemption that is not void: the user may not claim again.
    pub fn is_live(&self) -> bool {
        self.committed
            .is_some_and(|c| c.status != RedemptionStatus::Void)
    }

    /// The committed redemption, if attempt `nonce` made it.
    pub fn committed_by(&self, nonce: Uuid) -> Option<Committed> {
        self.committed.filter(|c| c.attempt == nonce)
    }

    pub fn phone(&self) -> Result<PhoneNumber> {
        Ok(PhoneNumber::from_stored(need(self.phone, col::PHONE)?))
    }

    pub fn code(&self) -> Result<VoucherCode> {
        VoucherCode::parse(&need(self.code.clone(), col::CODE)?).map_err(Error::storage)
    }
}

fn committed_of(row: &Row) -> Result<Option<Committed>> {
    let Some(status) = get_int(row, col::STATUS)? else {
        return Ok(None);
    };
    let stored = u8::try_from(status).map_err(|_| Error::storage("bad status"))?;
    Ok(Some(Committed {
        status: RedemptionStatus::from_stored(stored)?,
        slot: small(need(get_int(row, col::SLOT)?, col::SLOT)?, col::SLOT)?,
        attempt: need(get_uuid(row, col::SLOT_ATTEMPT)?, col::SLOT_ATTEMPT)?,
        claimed_at: Timestamp(need(get_int(row, col::CLAIMED_AT)?, col::CLAIMED_AT)?),
        balance: get_int(row, col::BALANCE)?,
    }))
}

fn attempt_of(row: &Row) -> Result<Option<Attempt>> {
    let Some(nonce) = get_uuid(row, col::ATTEMPT)? else {
        return Ok(None);
    };
    let slot = need(get_int(row, col::ATTEMPT_SLOT)?, col::ATTEMPT_SLOT)?;
    Ok(Some(Attempt {
        nonce,
        slot: small(slot, col::ATTEMPT_SLOT)?,
        gen: need(get_int(row, col::ATTEMPT_GEN)?, col::ATTEMPT_GEN)?,
        at: Timestamp(need(get_int(row, col::ATTEMPT_AT)?, col::ATTEMPT_AT)?),
    }))
}

/// An entry of the claim log: a claim attempt somebody must finish, or a
/// pending redemption (or a void one whose slot is not yet free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LogEntry {
    pub claimed_at: Timestamp,
    pub id: Uuid,
    pub attempt: Uuid,
    pub code: VoucherCode,
    pub phone: PhoneNumber,
    pub slot: u32,
    /// The key version the attempt's start is conditioned on (`None`: the
    /// start inserts the key): once the key is past it, the start can never
    /// apply.
    pub version: Option<i64>,
}

/// The claim log row of attempt `attempt` of redemption `id`.
pub(super) fn log_key(claimed_at: Timestamp, id: Uuid, attempt: Uuid, shards: u32) -> RowKey {
    RowKey {
        partition: log_shard(id, shards),
        row: vec![
            Value::Int(claimed_at.0),
            Value::Uuid(id),
            Value::Uuid(attempt),
        ],
    }
}

/// The claim log partition of redemption `id`.
pub(super) fn log_shard(id: Uuid, shards: u32) -> Partition {
    let shard = (id.as_u128() % u128::from(shards.max(1))) as i64;
    log_partition(shard)
}

pub(super) fn log_partition(shard: i64) -> Partition {
    Partition {
        table: Table::ClaimLog,
        key: vec![Value::Int(shard)],
    }
}

impl LogEntry {
    pub fn key(&self, shards: u32) -> RowKey {
        log_key(self.claimed_at, self.id, self.attempt, shards)
    }

    pub fn values(&self) -> Row {
        row_of(vec![
            (col::CODE, text(self.code.as_str())),
            (col::PHONE, int(self.phone.stored() as i64)),
            (col::SLOT, int(i64::from(self.slot))),
            (col::VERSION, self.version.and_then(int)),
        ])
    }

    pub fn read(row: &Clustering, values: &Row) -> Result<Self> {
        let [Value::Int(at), Value::Uuid(id), Value::Uuid(attempt)] = row.as_slice() else {
            return Err(Error::storage(format!("a claim log key {row:?}")));
        };
        let code = need(get_text(values, col::CODE)?, col::CODE)?;
        Ok(LogEntry {
            claimed_at: Timestamp(*at),
            id: *id,
            attempt: *attempt,
            code: VoucherCode::parse(&code).map_err(Error::storage)?,
            phone: PhoneNumber::from_stored(need(get_int(values, col::PHONE)?, col::PHONE)? as u64),
            slot: small(need(get_int(values, col::SLOT)?, col::SLOT)?, col::SLOT)?,
            version: get_int(values, col::VERSION)?,
        })
    }
}
