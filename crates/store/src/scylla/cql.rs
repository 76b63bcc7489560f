//! Pure statement building: each abstract operation of [`CasStore`] as CQL
//! text with bind markers and the values to bind, in marker order. The text
//! names the statement's shape (tables, columns, which values are null), so it
//! is the key its prepared statement is cached under.
//!
//! [`CasStore`]: crate::cas::CasStore

use std::ops::Bound;

use crate::cas::store::{Clustering, Column, Partition, Row, RowKey, Scan, Table, Value, Write};

/// The key columns of a table, as `cql/schema.cql` names them (the abstract
/// store gives key values by position only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub partition: &'static [&'static str],
    pub clustering: &'static [&'static str],
}

/// The key columns of `table` (the PRIMARY KEYs that `store.rs` documents).
pub fn layout(table: Table) -> Layout {
    let (partition, clustering): (&'static [&'static str], &'static [&'static str]) = match table {
        Table::Vouchers => (&["catalog"], &["code"]),
        Table::Slots => (&["code", "bucket"], &["slot"]),
        Table::Redemptions => (&["id"], &[]),
        Table::ClaimLog => (&["shard"], &["claimed_at", "id", "attempt"]),
        Table::Wallets => (&["phone"], &["kind", "pos", "id"]),
        Table::TransactionIds => (&["id"], &[]),
    };
    Layout {
        partition,
        clustering,
    }
}

/// One statement: CQL text with `?` markers and the values they take (a
/// `None` is a bound null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub text: String,
    pub values: Vec<Option<Value>>,
}

struct Builder {
    text: String,
    values: Vec<Option<Value>>,
}

impl Builder {
    fn new(text: impl Into<String>) -> Self {
        Builder {
            text: text.into(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    fn bind(&mut self, value: Option<Value>) {
        self.text.push('?');
        self.values.push(value);
    }

    /// `WHERE pk1 = ? AND .. [AND ck1 = ? ..]` for the given clustering prefix.
    fn key(&mut self, partition: &Partition, row: &Clustering) {
        let layout = layout(partition.table);
        let mut first = true;
        let columns = layout.partition.iter().zip(&partition.key);
        let clustering = layout.clustering.iter().zip(row);
        for (column, value) in columns.chain(clustering) {
            self.push(if first { " WHERE " } else { " AND " });
            first = false;
            self.push(column);
            self.push(" = ");
            self.bind(Some(value.clone()));
        }
    }

    /// `IF c = ? AND ..`, a null condition spelled `c = null`.
    fn conditions(&mut self, when: &[(Column, Option<Value>)]) {
        for (i, (column, value)) in when.iter().enumerate() {
            self.push(if i == 0 { " IF " } else { " AND " });
            self.push(column);
            match value {
                Some(value) => {
                    self.push(" = ");
                    self.bind(Some(value.clone()));
                }
                None => self.push(" = null"),
            }
        }
    }

    fn done(self) -> Statement {
        Statement {
            text: self.text,
            values: self.values,
        }
    }
}

fn insert_text(
    table: Table,
    partition: &Partition,
    row: &Clustering,
    values: &Row,
    if_not_exists: bool,
) -> Statement {
    let layout = layout(table);
    let mut columns: Vec<&str> = layout.partition.to_vec();
    columns.extend(layout.clustering.iter().take(row.len()));
    columns.extend(values.keys().copied());
    let mut b = Builder::new(format!(
        "INSERT INTO {} ({}) VALUES (",
        table.name(),
        columns.join(", ")
    ));
    let all = partition.key.iter().chain(row).chain(values.values());
    for (i, value) in all.enumerate() {
        if i > 0 {
            b.push(", ");
        }
        b.bind(Some(value.clone()));
    }
    b.push(")");
    if if_not_exists {
        b.push(" IF NOT EXISTS");
    }
    b.done()
}

/// One conditional statement of a `Cas` on `partition`.
pub fn write(partition: &Partition, write: &Write) -> Statement {
    let table = partition.table;
    match write {
        Write::Insert { row, values } => insert_text(table, partition, row, values, true),
        Write::Update { row, when, set } => {
            let mut b = Builder::new(format!("UPDATE {} SET ", table.name()));
            for (i, (column, value)) in set.iter().enumerate() {
                if i > 0 {
                    b.push(", ");
                }
                b.push(column);
                match value {
                    Some(value) => {
                        b.push(" = ");
                        b.bind(Some(value.clone()));
                    }
                    None => b.push(" = null"),
                }
            }
            b.key(partition, row);
            b.conditions(when);
            b.done()
        }
        Write::Delete { row, when } => {
            let mut b = Builder::new(format!("DELETE FROM {}", table.name()));
            b.key(partition, row);
            if when.is_empty() {
                b.push(" IF EXISTS");
            } else {
                b.conditions(when);
            }
            b.done()
        }
    }
}

/// `SELECT * FROM t WHERE <key>` (the statics with it; `LIMIT 1` when the
/// key is a clustered table's partition alone, for its statics).
pub fn select(at: &RowKey) -> Statement {
    let table = at.partition.table;
    let mut b = Builder::new(format!("SELECT * FROM {}", table.name()));
    b.key(&at.partition, &at.row);
    if at.row.len() < layout(table).clustering.len() {
        b.push(" LIMIT 1");
    }
    b.done()
}

/// The CQL comparison for one bound of a scan over a clustering prefix, so
/// that it selects what the abstract store's order (a shorter key sorts
/// before every key it prefixes) selects.
fn bound_op(lower: bool, included: bool, full: bool) -> &'static str {
    match (lower, included, full) {
        (true, true, _) => ">=",
        // rows extending a shorter prefix sort after it: still in.
        (true, false, false) => ">=",
        (true, false, true) => ">",
        (false, false, _) => "<",
        // rows extending a shorter prefix sort after it: out.
        (false, true, false) => "<",
        (false, true, true) => "<=",
    }
}

/// `SELECT * FROM t WHERE <partition> AND (c..) >= (?..) AND (c..) < (?..)
/// [ORDER BY c1 DESC] [LIMIT n]`.
pub fn scan(partition: &Partition, scan: &Scan) -> Option<Statement> {
    if scan.is_empty() {
        return None;
    }
    let table = partition.table;
    let layout = layout(table);
    let mut b = Builder::new(format!("SELECT * FROM {}", table.name()));
    b.key(partition, &Vec::new());
    let bounds = [(true, &scan.from), (false, &scan.to)];
    for (lower, bound) in bounds {
        let (key, included) = match bound {
            Bound::Included(key) => (key, true),
            Bound::Excluded(key) => (key, false),
            Bound::Unbounded => continue,
        };
        if key.is_empty() {
            if lower || included {
                continue;
            }
            // `< ()`: nothing sorts before the empty key.
            return None;
        }
        let full = key.len() >= layout.clustering.len();
        let columns = &layout.clustering[..key.len().min(layout.clustering.len())];
        b.push(" AND (");
        b.push(&columns.join(", "));
        b.push(") ");
        b.push(bound_op(lower, included, full));
        b.push(" (");
        for (i, value) in key.iter().take(columns.len()).enumerate() {
            if i > 0 {
                b.push(", ");
            }
            b.bind(Some(value.clone()));
        }
        b.push(")");
    }
    if scan.descending {
        if let Some(first) = layout.clustering.first() {
            b.push(&format!(" ORDER BY {first} DESC"));
        }
    }
    if scan.limit < i32::MAX as usize {
        b.push(&format!(" LIMIT {}", scan.limit));
    }
    Some(b.done())
}

/// `INSERT INTO t (..) VALUES (..)`, unconditional.
pub fn put(at: &RowKey, values: &Row) -> Statement {
    insert_text(at.partition.table, &at.partition, &at.row, values, false)
}

/// `DELETE FROM t WHERE <key>`, unconditional.
pub fn remove(at: &RowKey) -> Statement {
    let mut b = Builder::new(format!("DELETE FROM {}", at.partition.table.name()));
    b.key(&at.partition, &at.row);
    b.done()
}

/// The statements of a schema file: split on `;`, `--` and `//` comments
/// dropped, blank ones skipped.
pub fn schema_statements(schema: &str) -> Vec<String> {
    let uncommented: String = schema
        .lines()
        .map(|line| {
            let cut = [line.find("--"), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n");
    uncommented
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// The keyspace a schema's `CREATE KEYSPACE` names.
pub fn schema_keyspace(statements: &[String]) -> Option<String> {
    statements.iter().find_map(|statement| {
        let words: Vec<&str> = statement.split_whitespace().collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        if upper.len() < 3 || upper[0] != "CREATE" || upper[1] != "KEYSPACE" {
            return None;
        }
        let at = if upper[2] == "IF" { 5 } else { 2 };
        words.get(at).map(|name| (*name).to_owned())
    })
}

/// A schema statement aimed at `keyspace` instead of the schema's own
/// (`from`): the keyspace a `CREATE KEYSPACE` names and every `from.`
/// qualifier become `keyspace`; a `USE` is dropped (the caller uses
/// `keyspace`).
pub fn retarget(statement: &str, from: Option<&str>, keyspace: &str) -> Option<String> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.first().map(String::as_str) == Some("USE") {
        return None;
    }
    let mut words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    if upper.len() >= 3 && upper[0] == "CREATE" && upper[1] == "KEYSPACE" {
        let at = if upper[2] == "IF" { 5 } else { 2 };
        if let Some(name) = words.get_mut(at) {
            *name = keyspace.to_owned();
        }
    } else if let Some(from) = from {
        let qualified = format!("{from}.");
        for word in &mut words {
            if let Some(rest) = word.strip_prefix(&qualified) {
                *word = format!("{keyspace}.{rest}");
            }
        }
    }
    Some(words.join(" "))
}

/// A `CREATE KEYSPACE` statement of the schema with `replication_factor`
/// replicas per datacenter and, on ScyllaDB, tablets disabled (the schema
/// itself is portable: Cassandra rejects the `tablets` option).
pub fn keyspace_options(statement: &str, replication_factor: u32, scylla: bool) -> String {
    let mut statement = statement.trim_end().trim_end_matches(';').replace(
        "'replication_factor': 3",
        &format!("'replication_factor': {replication_factor}"),
    );
    if scylla {
        statement.push_str(" AND tablets = {'enabled': false}");
    }
    statement
}
