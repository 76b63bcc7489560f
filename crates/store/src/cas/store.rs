//! The abstract store under [`super::CasLedger`]: rows addressed by (table,
//! partition key, clustering key), conditional writes that are linearizable
//! per partition, and plain reads. It is the part of ScyllaDB's lightweight
//! transactions (LWT) the ledger relies on, and nothing more; a thin adapter
//! maps each operation to one CQL statement (named on each item below).
//!
//! What the ledger assumes of an implementation:
//! - A [`Cas`] (one conditional statement, or a conditional batch: every
//!   statement in one partition of one table) is applied atomically or not at
//!   all, linearizably with every other `Cas` and serial read of that partition.
//! - It answers [`CasOutcome::Applied`], [`CasOutcome::NotApplied`] with the
//!   current rows it addressed (CQL's `[applied] = false` row set), or
//!   [`CasOutcome::Unknown`]: a timeout or a lost connection, after which the
//!   write may or may not have been applied, and may still be applied by the
//!   next Paxos round on that partition; a [`CasStore::read_serial`] of the
//!   partition settles it (the read is such a round).
//! - A missing row reads as all columns null, so `IF col = null` holds on it
//!   (CQL's rule for conditions on a row that does not exist).
//! - Plain reads ([`CasStore::read`], [`CasStore::scan`]) see every write
//!   whose `Cas` answered `Applied` (LOCAL_QUORUM after a LOCAL_QUORUM commit),
//!   but not a write whose outcome is still undecided.
//! - Plain writes ([`CasStore::put`], [`CasStore::remove`]) are idempotent
//!   upserts and deletes; an error means they may or may not have landed.

use std::collections::BTreeMap;
use std::ops::Bound;

use futures::future::BoxFuture;
use uuid::Uuid;

use voucherd_core::error::Result;

/// A column name, as in the CQL schema (`cql/schema.cql`).
pub type Column = &'static str;

/// A non-null column value. Null is the absence of a value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// CQL `bigint` (and `int` columns, widened).
    Int(i64),
    /// CQL `uuid`.
    Uuid(Uuid),
    /// CQL `text`.
    Text(String),
}

/// A row's (or a partition's static) columns that are not null.
pub type Row = BTreeMap<Column, Value>;

/// The clustering key of a row, in clustering order. Empty for a table
/// without clustering columns; in a table with clustering columns, an empty
/// key addresses the partition's static columns only.
pub type Clustering = Vec<Value>;

/// The tables of the ledger; `cql/schema.cql` holds their definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// PRIMARY KEY ((catalog), code): every voucher, in one partition.
    Vouchers,
    /// PRIMARY KEY ((code, bucket), slot), no statics: slot claims (I1).
    Slots,
    /// PRIMARY KEY (id): a user's key of a voucher (I2) and its redemption.
    Redemptions,
    /// PRIMARY KEY ((shard), claimed_at, id, attempt): claims to finish.
    ClaimLog,
    /// PRIMARY KEY ((phone), kind, pos, id), statics balance and version:
    /// a wallet, its transactions and its transaction ids (I5).
    Wallets,
    /// PRIMARY KEY (id): the request an idempotency key was first used for.
    TransactionIds,
}

impl Table {
    /// The CQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Vouchers => "vouchers",
            Table::Slots => "slots",
            Table::Redemptions => "redemptions",
            Table::ClaimLog => "claim_log",
            Table::Wallets => "wallets",
            Table::TransactionIds => "transaction_ids",
        }
    }

    /// The table's static columns (one value per partition).
    pub fn statics(self) -> &'static [Column] {
        match self {
            Table::Slots => &[],
            Table::Wallets => &["balance", "version", "opened_at", "opened_by"],
            _ => &[],
        }
    }

    pub fn is_static(self, column: Column) -> bool {
        self.statics().contains(&column)
    }
}

/// A partition: its table and the values of its partition key columns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub table: Table,
    pub key: Vec<Value>,
}

/// One row: its partition and clustering key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub partition: Partition,
    pub row: Clustering,
}

/// `IF column = value`, or `IF column = null` when the value is `None`.
pub type Condition = (Column, Option<Value>);

/// `SET column = value`, or `SET column = null` when the value is `None`.
pub type Assignment = (Column, Option<Value>);

/// One conditional statement of a [`Cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `INSERT INTO t (..) VALUES (..) IF NOT EXISTS`.
    Insert { row: Clustering, values: Row },
    /// `UPDATE t SET a = ?, .. WHERE <key> IF c = ? AND ..`. Conditions and
    /// assignments may name static columns; an update creates a missing row.
    Update {
        row: Clustering,
        when: Vec<Condition>,
        set: Vec<Assignment>,
    },
    /// `DELETE FROM t WHERE <key> IF c = ? AND ..` (`IF EXISTS` when `when`
    /// is empty).
    Delete {
        row: Clustering,
        when: Vec<Condition>,
    },
}

impl Write {
    /// The clustering key the statement addresses.
    pub fn row(&self) -> &Clustering {
        match self {
            Write::Insert { row, .. } | Write::Update { row, .. } | Write::Delete { row, .. } => {
                row
            }
        }
    }
}

/// A conditional write: one statement, or a conditional batch
/// (`BEGIN BATCH .. APPLY BATCH`) whose statements all address one partition
/// of one table. It applies when every statement's condition holds, and then
/// applies all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cas {
    pub partition: Partition,
    pub writes: Vec<Write>,
}

/// What a partition holds now: its statics and the rows asked about (a row
/// that does not exist is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    pub statics: Row,
    pub rows: BTreeMap<Clustering, Row>,
}

impl Current {
    pub fn row(&self, key: &Clustering) -> Option<&Row> {
        self.rows.get(key)
    }
}

/// The answer to a [`Cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    Applied,
    /// A condition failed; nothing was written. The current rows, read in the
    /// same Paxos round.
    NotApplied(Current),
    /// No answer (a timeout, a lost connection): the write may or may not
    /// have been applied, now or by a later round. Settle it with
    /// [`CasStore::read_serial`].
    Unknown,
}

/// A slice of one partition, in clustering order or its reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub from: Bound<Clustering>,
    pub to: Bound<Clustering>,
    pub descending: bool,
    pub limit: usize,
}

impl Scan {
    /// True when no key can lie between the bounds (a start past the end, or
    /// one key excluded at either end): every store answers no rows, and
    /// `BTreeMap::range` would panic on such bounds.
    pub fn is_empty(&self) -> bool {
        let (Bound::Included(a) | Bound::Excluded(a)) = &self.from else {
            return false;
        };
        let (Bound::Included(b) | Bound::Excluded(b)) = &self.to else {
            return false;
        };
        let both_included = matches!(
            (&self.from, &self.to),
            (Bound::Included(_), Bound::Included(_))
        );
        a > b || (a == b && !both_included)
    }
}

/// The rows of a [`Scan`], in its order, and the partition's statics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice {
    pub statics: Row,
    pub rows: Vec<(Clustering, Row)>,
}

/// What store futures resolve to.
pub type StoreFuture<T> = BoxFuture<'static, Result<T>>;

/// A store of partitions with per-partition compare-and-set.
pub trait CasStore: Send + Sync + 'static {
    /// A conditional statement or single-partition conditional batch (see
    /// [`Write`]), at SERIAL consistency for the Paxos round and
    /// LOCAL_QUORUM for its commit. Never fails: a failure is `Unknown`.
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome>;

    /// `SELECT * FROM t WHERE <key>` at SERIAL consistency: the row as the
    /// last decided Paxos round left it, after completing any round still in
    /// progress on the partition (a plain read after it sees that round's
    /// commit). The statics come with the row only when the row exists, as in
    /// CQL; an empty clustering key reads the partition's statics alone.
    fn read_serial(&self, at: RowKey) -> StoreFuture<Current>;

    /// The same at QUORUM: cheaper, sees every applied `Cas` (and the same
    /// rule for statics).
    fn read(&self, at: RowKey) -> StoreFuture<Current>;

    /// `SELECT * FROM t WHERE <partition> AND <clustering range>
    /// [ORDER BY .. DESC] LIMIT n` at LOCAL_QUORUM.
    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice>;

    /// `INSERT INTO t (..) VALUES (..)` at LOCAL_QUORUM, no condition.
    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()>;

    /// `DELETE FROM t WHERE <key>` at LOCAL_QUORUM, no condition.
    fn remove(&self, at: RowKey) -> StoreFuture<()>;

    /// Whether the store answered its last health probe (readiness). A
    /// store without a probe (the in-memory one) is always reachable.
    fn reachable(&self) -> bool {
        true
    }
}
