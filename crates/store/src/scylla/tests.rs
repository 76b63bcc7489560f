//! Unit tests of the pure halves of the adapter: statements and answers,
//! without a server.

use std::ops::Bound;
use std::time::Duration;

use scylla::errors::{
    BrokenConnectionErrorKind, DbError, ExecutionError, RequestAttemptError, WriteType,
};
use scylla::frame::types::Consistency;
use uuid::Uuid;

use super::cql::{self, layout};
use super::mapping::{self, Answer, Failure, Rows, APPLIED};
use crate::cas::store::{Partition, RowKey, Scan, Table, Value, Write};

fn int(v: i64) -> Value {
    Value::Int(v)
}

fn wallet(phone: i64) -> Partition {
    Partition {
        table: Table::Wallets,
        key: vec![int(phone)],
    }
}

fn redemption(id: Uuid) -> Partition {
    Partition {
        table: Table::Redemptions,
        key: vec![Value::Uuid(id)],
    }
}

#[test]
fn an_insert_is_if_not_exists_with_every_key_column() {
    let id = Uuid::from_u128(7);
    let write = Write::Insert {
        row: vec![],
        values: [("version", int(1)), ("code", Value::Text("A".into()))].into(),
    };
    let s = cql::write(&redemption(id), &write);
    assert_eq!(
        s.text,
        "INSERT INTO redemptions (id, code, version) VALUES (?, ?, ?) IF NOT EXISTS"
    );
    assert_eq!(
        s.values,
        vec![
            Some(Value::Uuid(id)),
            Some(Value::Text("A".into())),
            Some(int(1))
        ]
    );
}

#[test]
fn an_update_binds_sets_then_key_then_conditions_and_spells_nulls() {
    let write = Write::Update {
        row: vec![],
        when: vec![("version", Some(int(3))), ("opened_at", None)],
        set: vec![("balance", Some(int(10))), ("opened_by", None)],
    };
    let s = cql::write(&wallet(5), &write);
    assert_eq!(
        s.text,
        "UPDATE wallets SET balance = ?, opened_by = null WHERE phone = ? IF version = ? AND opened_at = null"
    );
    assert_eq!(s.values, vec![Some(int(10)), Some(int(5)), Some(int(3))]);
}

#[test]
fn a_delete_without_conditions_is_if_exists() {
    let at = vec![int(0), int(1), Value::Uuid(Uuid::nil())];
    let s = cql::write(
        &wallet(5),
        &Write::Delete {
            row: at.clone(),
            when: vec![],
        },
    );
    assert_eq!(
        s.text,
        "DELETE FROM wallets WHERE phone = ? AND kind = ? AND pos = ? AND id = ? IF EXISTS"
    );
    let s = cql::write(
        &wallet(5),
        &Write::Delete {
            row: at,
            when: vec![("amount", Some(int(2)))],
        },
    );
    assert!(s.text.ends_with("AND id = ? IF amount = ?"), "{}", s.text);
    assert_eq!(s.values.len(), 5);
}

#[test]
fn reads_select_the_row_or_the_statics_alone() {
    let s = cql::select(&RowKey {
        partition: wallet(9),
        row: vec![],
    });
    assert_eq!(s.text, "SELECT * FROM wallets WHERE phone = ? LIMIT 1");
    let slots = Partition {
        table: Table::Slots,
        key: vec![Value::Text("V".into()), int(2)],
    };
    let s = cql::select(&RowKey {
        partition: slots,
        row: vec![int(4)],
    });
    assert_eq!(
        s.text,
        "SELECT * FROM slots WHERE code = ? AND bucket = ? AND slot = ?"
    );
    assert_eq!(s.values.len(), 3);
}

#[test]
fn scans_turn_prefix_bounds_into_tuple_relations_with_the_store_order() {
    let scan = Scan {
        from: Bound::Included(vec![int(0)]),
        to: Bound::Excluded(vec![int(0), int(7)]),
        descending: true,
        limit: 11,
    };
    let s = cql::scan(&wallet(1), &scan).unwrap();
    assert_eq!(
        s.text,
        "SELECT * FROM wallets WHERE phone = ? AND (kind) >= (?) AND (kind, pos) < (?, ?) ORDER BY kind DESC LIMIT 11"
    );
    // An excluded short prefix as lower bound still takes the rows under it;
    // an included one as upper bound does not (they sort after it).
    let scan = Scan {
        from: Bound::Excluded(vec![int(0)]),
        to: Bound::Included(vec![int(1)]),
        descending: false,
        limit: usize::MAX,
    };
    let s = cql::scan(&wallet(1), &scan).unwrap();
    assert_eq!(
        s.text,
        "SELECT * FROM wallets WHERE phone = ? AND (kind) >= (?) AND (kind) < (?)"
    );
    let full = vec![int(0), int(1), Value::Uuid(Uuid::nil())];
    let scan = Scan {
        from: Bound::Excluded(full.clone()),
        to: Bound::Unbounded,
        descending: false,
        limit: 3,
    };
    let s = cql::scan(&wallet(1), &scan).unwrap();
    assert!(
        s.text.contains("AND (kind, pos, id) > (?, ?, ?) LIMIT 3"),
        "{}",
        s.text
    );
    let empty = Scan {
        from: Bound::Included(vec![int(2)]),
        to: Bound::Excluded(vec![int(1)]),
        descending: false,
        limit: 3,
    };
    assert_eq!(cql::scan(&wallet(1), &empty), None);
}

#[test]
fn plain_writes_are_unconditional() {
    let at = RowKey {
        partition: Partition {
            table: Table::ClaimLog,
            key: vec![int(3)],
        },
        row: vec![int(100), Value::Uuid(Uuid::nil()), Value::Uuid(Uuid::max())],
    };
    let s = cql::put(&at, &[("slot", int(4))].into());
    assert_eq!(
        s.text,
        "INSERT INTO claim_log (shard, claimed_at, id, attempt, slot) VALUES (?, ?, ?, ?, ?)"
    );
    let s = cql::remove(&at);
    assert_eq!(
        s.text,
        "DELETE FROM claim_log WHERE shard = ? AND claimed_at = ? AND id = ? AND attempt = ?"
    );
}

#[test]
fn every_table_has_a_layout_matching_its_documented_key() {
    assert_eq!(layout(Table::Slots).partition, ["code", "bucket"]);
    assert_eq!(
        layout(Table::ClaimLog).clustering,
        ["claimed_at", "id", "attempt"]
    );
    assert!(layout(Table::Redemptions).clustering.is_empty());
}

#[test]
fn the_schema_splits_into_statements_aimed_at_any_keyspace() {
    let statements = cql::schema_statements(super::SCHEMA);
    assert!(statements.len() >= 7, "{statements:?}");
    assert!(statements.iter().all(|s| !s.contains("--")));
    let from = cql::schema_keyspace(&statements);
    assert!(from.is_some());
    let create = cql::retarget(&statements[0], from.as_deref(), "fresh_ks").unwrap();
    assert!(
        create.starts_with("CREATE KEYSPACE IF NOT EXISTS fresh_ks "),
        "{create}"
    );
    let sample = "CREATE TABLE IF NOT EXISTS voucherd.slots (a bigint PRIMARY KEY)";
    let table = cql::retarget(sample, Some("voucherd"), "fresh_ks").unwrap();
    assert_eq!(
        table,
        "CREATE TABLE IF NOT EXISTS fresh_ks.slots (a bigint PRIMARY KEY)"
    );
    assert!(
        !create.contains("tablets"),
        "the schema is portable: {create}"
    );
    let cassandra = cql::keyspace_options(&create, 1, false);
    assert!(cassandra.contains("'replication_factor': 1"), "{cassandra}");
    assert!(!cassandra.contains("tablets"), "{cassandra}");
    let scylla = cql::keyspace_options(&create, 3, true);
    assert!(scylla.contains("'replication_factor': 3"), "{scylla}");
    assert!(
        scylla.ends_with(" AND tablets = {'enabled': false}"),
        "{scylla}"
    );
    assert_eq!(cql::retarget("USE voucherd", from.as_deref(), "k"), None);
    let text =
        "-- a comment; with a semicolon\nCREATE TABLE t (a int PRIMARY KEY); // trailing\n\n;";
    assert_eq!(
        cql::schema_statements(text),
        vec!["CREATE TABLE t (a int PRIMARY KEY)".to_owned()]
    );
}

fn columns(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

const SLOT_COLUMNS: &[&str] = &["code", "bucket", "slot", "attempt", "gen", "holder"];

/// Scylla's shape: `[applied]`, then every column of the old row.
fn scylla_answer(applied: bool, gen: Option<i64>) -> Rows {
    let mut names = vec![APPLIED];
    names.extend_from_slice(SLOT_COLUMNS);
    let row = vec![
        None,
        Some(Value::Text("V".into())),
        Some(int(0)),
        Some(int(4)),
        None,
        gen.map(int),
        None,
    ];
    Rows {
        columns: columns(&names),
        rows: vec![row],
        applied: vec![Some(applied)],
    }
}

#[test]
fn scylla_answers_map_applied_and_not_applied_with_the_old_row() {
    let all = columns(SLOT_COLUMNS);
    let applied = mapping::answer(Table::Slots, &scylla_answer(true, Some(1)), &all).unwrap();
    assert_eq!(applied, Answer::Applied);
    let refused = mapping::answer(Table::Slots, &scylla_answer(false, Some(3)), &all).unwrap();
    let Answer::NotApplied { current, complete } = refused else {
        panic!("{refused:?}")
    };
    assert!(complete);
    assert!(current.statics.is_empty(), "a slot row has no statics");
    let row = current.row(&vec![int(4)]).expect("the old row");
    assert_eq!(row.get("gen"), Some(&int(3)));
    assert!(!row.contains_key("holder") && !row.contains_key("code"));
}

#[test]
fn a_missing_row_in_scyllas_shape_reads_as_absent() {
    let mut names = vec![APPLIED];
    names.extend_from_slice(SLOT_COLUMNS);
    let rows = Rows {
        columns: columns(&names),
        rows: vec![vec![None; names.len()]],
        applied: vec![Some(false)],
    };
    let answer = mapping::answer(Table::Slots, &rows, &columns(SLOT_COLUMNS)).unwrap();
    let Answer::NotApplied { current, complete } = answer else {
        panic!("{answer:?}")
    };
    assert!(complete);
    assert!(current.rows.is_empty() && current.statics.is_empty());
}

#[test]
fn cassandras_answers_are_applied_alone_or_partial_rows_to_complete() {
    let all = columns(SLOT_COLUMNS);
    // Applied: `[applied]` alone.
    let applied = Rows {
        columns: columns(&[APPLIED]),
        rows: vec![vec![None]],
        applied: vec![Some(true)],
    };
    assert_eq!(
        mapping::answer(Table::Slots, &applied, &all).unwrap(),
        Answer::Applied
    );
    // Not applied: the key and condition columns only.
    let refused = Rows {
        columns: columns(&[APPLIED, "code", "bucket", "slot", "gen"]),
        rows: vec![vec![
            None,
            Some(Value::Text("V".into())),
            Some(int(0)),
            Some(int(4)),
            Some(int(5)),
        ]],
        applied: vec![Some(false)],
    };
    let answer = mapping::answer(Table::Slots, &refused, &all).unwrap();
    let Answer::NotApplied { complete, current } = answer else {
        panic!("{answer:?}")
    };
    assert!(!complete, "the adapter must read the rest serially");
    assert_eq!(
        current.row(&vec![int(4)]).unwrap().get("gen"),
        Some(&int(5))
    );
    // Not applied on a missing row: `[applied]` alone.
    let missing = Rows {
        columns: columns(&[APPLIED]),
        rows: vec![vec![None]],
        applied: vec![Some(false)],
    };
    let answer = mapping::answer(Table::Slots, &missing, &all).unwrap();
    assert!(matches!(
        answer,
        Answer::NotApplied {
            complete: false,
            ..
        }
    ));
}

#[test]
fn a_batch_applies_only_when_every_row_says_so() {
    let all = columns(SLOT_COLUMNS);
    let mut rows = scylla_answer(false, Some(1));
    rows.rows.push(rows.rows[0].clone());
    rows.applied = vec![Some(false), Some(false)];
    assert!(matches!(
        mapping::answer(Table::Slots, &rows, &all).unwrap(),
        Answer::NotApplied { .. }
    ));
    rows.applied = vec![Some(true), Some(true)];
    assert_eq!(
        mapping::answer(Table::Slots, &rows, &all).unwrap(),
        Answer::Applied
    );
}

#[test]
fn reads_keep_only_the_row_asked_for_and_the_statics() {
    let rows = scylla_answer(true, Some(1));
    let current = mapping::read(Table::Slots, &vec![int(4)], &rows);
    assert_eq!(current.rows.len(), 1);
    let statics_only = mapping::read(Table::Slots, &vec![], &rows);
    assert!(statics_only.rows.is_empty() && statics_only.statics.is_empty());
}

#[test]
fn values_convert_both_ways_by_column_type() {
    use scylla::frame::response::result::{ColumnType, NativeType};
    use scylla::value::CqlValue;
    let int_col = ColumnType::Native(NativeType::Int);
    assert_eq!(
        mapping::to_cql(&int(5), &int_col, "c").unwrap(),
        CqlValue::Int(5)
    );
    assert!(mapping::to_cql(&int(1 << 40), &int_col, "c").is_err());
    let big = ColumnType::Native(NativeType::BigInt);
    assert_eq!(
        mapping::to_cql(&int(1 << 40), &big, "c").unwrap(),
        CqlValue::BigInt(1 << 40)
    );
    assert!(mapping::to_cql(&Value::Text("x".into()), &big, "c").is_err());
    assert_eq!(mapping::from_cql(&CqlValue::Int(3)), Some(int(3)));
    assert_eq!(
        mapping::from_cql(&CqlValue::Text("t".into())),
        Some(Value::Text("t".into()))
    );
}

#[test]
fn timeouts_and_lost_connections_are_unknown_outcomes() {
    let timeout = ExecutionError::RequestTimeout(Duration::from_secs(1));
    assert_eq!(mapping::classify(&timeout), Failure::Unknown);
    let write_timeout = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::WriteTimeout {
            consistency: Consistency::LocalSerial,
            received: 1,
            required: 2,
            write_type: WriteType::Cas,
        },
        "Operation timed out".into(),
    ));
    assert_eq!(mapping::classify(&write_timeout), Failure::Unknown);
    let broken = ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(
        BrokenConnectionErrorKind::ChannelError.into(),
    ));
    assert_eq!(mapping::classify(&broken), Failure::Unknown);
    let unavailable = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::Unavailable {
            consistency: Consistency::LocalQuorum,
            required: 2,
            alive: 1,
        },
        "Cannot achieve consistency level".into(),
    ));
    assert_eq!(mapping::classify(&unavailable), Failure::Unavailable);
    let overloaded = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::Overloaded,
        "overloaded".into(),
    ));
    assert_eq!(mapping::classify(&overloaded), Failure::Unavailable);
    let syntax = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
        DbError::SyntaxError,
        "bad".into(),
    ));
    assert_eq!(mapping::classify(&syntax), Failure::Other);
    let error = mapping::read_error(&syntax, "reading a row", "h1:9042,h2:9042");
    assert!(error.to_string().contains("h1:9042,h2:9042"), "{error}");
    let error = mapping::read_error(&timeout, "reading a row", "h1:9042");
    assert!(
        matches!(error, voucherd_core::error::Error::Unavailable { .. }),
        "{error}"
    );
}

/// Two datacenters that each ran Paxos among their own replicas could both
/// decide one slot: the default is SERIAL (and QUORUM), LOCAL_* only for a
/// deployment that pins every writer to one named datacenter.
#[test]
fn lwts_are_serial_unless_writers_are_pinned_to_one_datacenter() {
    use scylla::statement::{Consistency, SerialConsistency};
    let default = super::CqlOptions::default();
    assert_eq!(
        super::consistencies(super::Mode::Lwt, &default),
        (Consistency::Quorum, Some(SerialConsistency::Serial))
    );
    assert_eq!(
        super::consistencies(super::Mode::Serial, &default),
        (Consistency::Serial, Some(SerialConsistency::Serial))
    );
    assert_eq!(
        super::consistencies(super::Mode::Quorum, &default),
        (Consistency::Quorum, None)
    );
    let pinned = super::CqlOptions {
        local_dc: Some("dc1".into()),
        ..super::CqlOptions::default()
    };
    assert_eq!(
        super::consistencies(super::Mode::Lwt, &pinned),
        (
            Consistency::LocalQuorum,
            Some(SerialConsistency::LocalSerial)
        )
    );
    assert_eq!(
        super::consistencies(super::Mode::Serial, &pinned),
        (
            Consistency::LocalSerial,
            Some(SerialConsistency::LocalSerial)
        )
    );
    assert_eq!(
        super::consistencies(super::Mode::Quorum, &pinned),
        (Consistency::LocalQuorum, None)
    );
}
