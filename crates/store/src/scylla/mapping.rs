//! Pure result and error mapping: the rows a CQL statement answered (the
//! `[applied]` column of an LWT first) as the abstract store's values, and a
//! driver error as an outcome the ledger can act on.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use parking_lot::Mutex;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla::value::{CqlTimeuuid, CqlValue};

use super::cql::layout;
use crate::cas::store::{Clustering, Column, Current, Row, Slice, Table, Value};
use voucherd_core::error::{Error, Result};

/// The name of an LWT's first result column.
pub const APPLIED: &str = "[applied]";

/// Rows as a statement answered them: column names and, per row, one value
/// per column (null as `None`), already converted from CQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Value>>>,
    /// The `[applied]` flag of each row, when the statement was an LWT.
    pub applied: Vec<Option<bool>>,
}

/// An LWT's answer, before the adapter completes a partial one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Applied,
    /// Not applied; `complete` is false when the rows came back without
    /// every column of the table (Cassandra returns the condition columns
    /// only, and nothing for a missing row): the adapter then reads the rows
    /// serially instead.
    NotApplied {
        current: Current,
        complete: bool,
    },
}

/// Column names are `&'static str` in the abstract store; the schema's
/// columns are few, so each name read back is leaked once.
fn intern(name: &str) -> Column {
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Mutex::default).lock();
    if let Some(found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// One result row split into statics, its clustering key (`None` when the
/// row is absent: its key columns are null, or it only carries statics) and
/// its regular columns.
fn split(
    table: Table,
    columns: &[String],
    row: &[Option<Value>],
) -> (Row, Option<Clustering>, Row) {
    let layout = layout(table);
    let mut statics = Row::new();
    let mut values = Row::new();
    let mut key: Vec<Option<Value>> = vec![None; layout.clustering.len()];
    let mut partition_present = true;
    for (name, value) in columns.iter().zip(row) {
        let name = name.as_str();
        if name == APPLIED {
            continue;
        }
        if layout.partition.contains(&name) {
            partition_present &= value.is_some();
            continue;
        }
        if let Some(i) = layout.clustering.iter().position(|c| *c == name) {
            key[i] = value.clone();
            continue;
        }
        let Some(value) = value.clone() else { continue };
        if table.statics().contains(&name) {
            statics.insert(intern(name), value);
        } else {
            values.insert(intern(name), value);
        }
    }
    let key: Option<Clustering> = key.into_iter().collect();
    let present = partition_present && key.is_some();
    (statics, present.then(|| key.unwrap_or_default()), values)
}

/// The partition's statics and rows in a result.
pub fn current(table: Table, rows: &Rows) -> Current {
    let mut current = Current::default();
    for row in &rows.rows {
        let (statics, key, values) = split(table, &rows.columns, row);
        current.statics.extend(statics);
        if let Some(key) = key {
            current.rows.insert(key, values);
        }
    }
    current
}

/// A read of one row: only the row asked for counts (a clustered table's
/// partition alone, `at` empty, reads its statics).
pub fn read(table: Table, at: &Clustering, rows: &Rows) -> Current {
    let mut current = current(table, rows);
    current.rows.retain(|key, _| key == at);
    current
}

/// The rows of a scan, in the order they came.
pub fn slice(table: Table, rows: &Rows) -> Slice {
    let mut slice = Slice::default();
    for row in &rows.rows {
        let (statics, key, values) = split(table, &rows.columns, row);
        slice.statics.extend(statics);
        if let Some(key) = key {
            slice.rows.push((key, values));
        }
    }
    slice
}

/// An LWT's answer. `table_columns` are every column of the table (from the
/// prepared `SELECT *`): when the answer holds them all (Scylla: the old row,
/// applied or not) it is complete.
pub fn answer(table: Table, rows: &Rows, table_columns: &[String]) -> Result<Answer> {
    if !rows.columns.iter().any(|c| c == APPLIED) {
        // Not a conditional statement (a batch of unconditional updates).
        return Ok(Answer::Applied);
    }
    let flags: Vec<bool> = rows.applied.iter().map(|a| a.unwrap_or(false)).collect();
    if flags.is_empty() {
        return Err(Error::storage("an LWT answered no [applied] row"));
    }
    if flags.iter().all(|applied| *applied) {
        return Ok(Answer::Applied);
    }
    let complete = !table_columns.is_empty()
        && table_columns
            .iter()
            .all(|c| rows.columns.iter().any(|r| r == c));
    Ok(Answer::NotApplied {
        current: current(table, rows),
        complete,
    })
}

/// A CQL value as the abstract store's (`None`: a type it does not use).
pub fn from_cql(value: &CqlValue) -> Option<Value> {
    Some(match value {
        CqlValue::BigInt(v) => Value::Int(*v),
        CqlValue::Int(v) => Value::Int(i64::from(*v)),
        CqlValue::SmallInt(v) => Value::Int(i64::from(*v)),
        CqlValue::TinyInt(v) => Value::Int(i64::from(*v)),
        CqlValue::Uuid(v) => Value::Uuid(*v),
        CqlValue::Timeuuid(v) => Value::Uuid(*v.as_ref()),
        CqlValue::Text(v) | CqlValue::Ascii(v) => Value::Text(v.clone()),
        _ => return None,
    })
}

/// A value to bind to a marker of type `typ` (an `Int` narrowed to `int`,
/// `smallint` or `tinyint` columns when it fits).
pub fn to_cql(value: &Value, typ: &ColumnType<'_>, column: &str) -> Result<CqlValue> {
    let mismatch = || Error::storage(format!("column {column} ({typ:?}) cannot hold {value:?}"));
    let native = match typ {
        ColumnType::Native(native) => native,
        _ => return Err(mismatch()),
    };
    Ok(match (value, native) {
        (Value::Int(v), NativeType::BigInt | NativeType::Counter) => CqlValue::BigInt(*v),
        (Value::Int(v), NativeType::Int) => {
            CqlValue::Int(i32::try_from(*v).map_err(|_| mismatch())?)
        }
        (Value::Int(v), NativeType::SmallInt) => {
            CqlValue::SmallInt(i16::try_from(*v).map_err(|_| mismatch())?)
        }
        (Value::Int(v), NativeType::TinyInt) => {
            CqlValue::TinyInt(i8::try_from(*v).map_err(|_| mismatch())?)
        }
        (Value::Uuid(v), NativeType::Uuid) => CqlValue::Uuid(*v),
        (Value::Uuid(v), NativeType::Timeuuid) => CqlValue::Timeuuid(CqlTimeuuid::from(*v)),
        (Value::Text(v), NativeType::Text) => CqlValue::Text(v.clone()),
        (Value::Text(v), NativeType::Ascii) => CqlValue::Ascii(v.clone()),
        _ => return Err(mismatch()),
    })
}

/// What a failed request means for its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Sent, and then no answer (a timeout, a lost connection, a write
    /// failure): a write may or may not have been applied.
    Unknown,
    /// Refused before it was carried out (unavailable replicas, overload,
    /// no connection): nothing was applied; worth retrying later.
    Unavailable,
    /// Anything else (a bad statement, a schema mismatch, authentication).
    Other,
}

/// Classifies a driver error.
pub fn classify(error: &ExecutionError) -> Failure {
    match error {
        ExecutionError::RequestTimeout(_) => Failure::Unknown,
        ExecutionError::ConnectionPoolError(_) | ExecutionError::EmptyPlan => Failure::Unavailable,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::BrokenConnectionError(_) => Failure::Unknown,
            RequestAttemptError::UnableToAllocStreamId => Failure::Unavailable,
            RequestAttemptError::DbError(db, _) => match db {
                DbError::WriteTimeout { .. }
                | DbError::ReadTimeout { .. }
                | DbError::WriteFailure { .. } => Failure::Unknown,
                DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::RateLimitReached { .. } => Failure::Unavailable,
                _ => Failure::Other,
            },
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

/// The error a failed read or plain write answers, naming the hosts.
pub fn read_error(error: &ExecutionError, what: &str, hosts: &str) -> Error {
    match classify(error) {
        Failure::Unknown | Failure::Unavailable => {
            Error::unavailable(format!("ScyllaDB at {hosts}: {what}: {error}"))
        }
        Failure::Other => Error::storage(format!("ScyllaDB at {hosts}: {what}: {error}")),
    }
}
