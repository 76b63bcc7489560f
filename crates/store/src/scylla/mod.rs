//! [`ScyllaStore`]: the [`CasStore`] of the CAS ledger over ScyllaDB (or
//! Cassandra) through the `scylla` driver. Each abstract operation becomes
//! one prepared statement ([`cql`], cached per shape) or, for a multi-row
//! `Cas`, a single-partition conditional batch; answers and driver errors are
//! mapped by [`mapping`]. Both modules are pure and unit-tested without a
//! server; the conformance suites run the whole ledger against a real
//! cluster when `VOUCHERD_TEST_SCYLLA` names one.
//!
//! Consistency ([`CqlOptions`]): by default every statement at QUORUM, LWTs
//! with SERIAL for their Paxos round and serial reads at SERIAL, which is
//! safe whatever datacenter each writer is in. With `local_dc` set, LOCAL_QUORUM
//! and LOCAL_SERIAL, and the driver sends every statement to that datacenter
//! only (no failover to another): Paxos rounds of two datacenters never run on
//! disjoint quorums, because no writer ever coordinates in the other one. LWTs
//! are prepared, so the driver routes them to the partition's replicas in one
//! fixed order.

pub mod cql;
pub mod mapping;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;

use self::cql::Statement;
use self::mapping::{Answer, Failure, Rows};
use crate::cas::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture, Table,
    Value,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::limits::{
    CQL_REQUEST_TIMEOUT_MS, DATABASE_PROBE_INTERVAL_MS, DATABASE_PROBE_TIMEOUT_MS,
};

/// The CQL schema `voucherd migrate --store scylla://…` applies.
pub const SCHEMA: &str = include_str!("../../../../cql/schema.cql");

/// How the ledger uses the cluster: `scylla://…/keyspace?local_dc=NAME&replication_factor=N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlOptions {
    /// The one datacenter every writer of this keyspace uses. `None` (the
    /// default): SERIAL and QUORUM, correct with writers in any datacenter.
    /// `Some(dc)`: LOCAL_SERIAL and LOCAL_QUORUM, and the driver talks to `dc`
    /// only. Only correct when *every* instance of the deployment names the same
    /// datacenter: two datacenters deciding LWTs locally can both apply
    /// contradicting conditions (two users on one slot).
    pub local_dc: Option<String>,
    /// The replication factor `voucherd migrate` creates the keyspace with (per
    /// datacenter). 3 by default: a Paxos round needs 2 of 3 replicas, so the
    /// ledger keeps deciding with one replica down. A one-node test cluster
    /// needs 1.
    pub replication_factor: u32,
}

impl Default for CqlOptions {
    fn default() -> Self {
        CqlOptions {
            local_dc: None,
            replication_factor: 3,
        }
    }
}

impl CqlOptions {
    fn consistency(&self) -> Consistency {
        match self.local_dc {
            Some(_) => Consistency::LocalQuorum,
            None => Consistency::Quorum,
        }
    }

    fn serial(&self) -> SerialConsistency {
        match self.local_dc {
            Some(_) => SerialConsistency::LocalSerial,
            None => SerialConsistency::Serial,
        }
    }
}

/// How long connecting to the cluster may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a session (every known host tried) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// A [`CasStore`] over a ScyllaDB keyspace. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    shared: Arc<Shared>,
}

struct Shared {
    session: Session,
    /// `host1:9042,host2:9042`, for error messages.
    hosts: String,
    /// Prepared statements by consistency and text (the text is the shape).
    prepared: Mutex<HashMap<(Mode, String), PreparedStatement>>,
    /// Every column of each table (from its prepared `SELECT *`).
    columns: Mutex<HashMap<Table, Vec<String>>>,
    /// Whether the last probe read a quorum of the catalog (see [`watch`]).
    reachable: AtomicBool,
    options: CqlOptions,
}

/// How a statement is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// A conditional write: a (LOCAL_)QUORUM commit after a (LOCAL_)SERIAL
    /// Paxos round.
    Lwt,
    /// A read or plain write at (LOCAL_)QUORUM.
    Quorum,
    /// A serial read ((LOCAL_)SERIAL).
    Serial,
}

/// The consistency of a statement run in `mode`, and of its Paxos round.
fn consistencies(mode: Mode, options: &CqlOptions) -> (Consistency, Option<SerialConsistency>) {
    match mode {
        Mode::Lwt => (options.consistency(), Some(options.serial())),
        Mode::Quorum => (options.consistency(), None),
        Mode::Serial => {
            let read = match options.serial() {
                SerialConsistency::Serial => Consistency::Serial,
                SerialConsistency::LocalSerial => Consistency::LocalSerial,
            };
            (read, Some(options.serial()))
        }
    }
}

/// Connects to `hosts` (`host:port` each), failing within [`OPEN_TIMEOUT`].
/// With a local datacenter, the driver's plans name its nodes only.
async fn connect(hosts: &[String], options: &CqlOptions) -> anyhow::Result<Session> {
    let names = hosts.join(",");
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &options.local_dc {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .request_timeout(Some(Duration::from_millis(CQL_REQUEST_TIMEOUT_MS)))
        .build();
    let builder = SessionBuilder::new()
        .known_nodes(hosts)
        .connection_timeout(CONNECT_TIMEOUT)
        .default_execution_profile_handle(profile.into_handle());
    match tokio::time::timeout(OPEN_TIMEOUT, builder.build()).await {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(error)) => Err(anyhow::anyhow!(
            "cannot connect to ScyllaDB at {names}: {error}"
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to ScyllaDB at {names}: no answer within {}s",
            OPEN_TIMEOUT.as_secs()
        )),
    }
}

impl ScyllaStore {
    /// Connects to `hosts` and uses `keyspace` (which `migrate` creates).
    /// A task probes the cluster every second for readiness until the store
    /// is dropped.
    pub async fn open(
        hosts: &[String],
        keyspace: &str,
        options: &CqlOptions,
    ) -> anyhow::Result<Self> {
        let names = hosts.join(",");
        let session = connect(hosts, options).await?;
        session
            .use_keyspace(keyspace, true)
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "ScyllaDB at {names}: cannot use keyspace {keyspace} (run `voucherd migrate` first?): {error}"
                )
            })?;
        let store = ScyllaStore {
            shared: Arc::new(Shared {
                session,
                hosts: names,
                prepared: Mutex::default(),
                columns: Mutex::default(),
                reachable: AtomicBool::new(true),
                options: options.clone(),
            }),
        };
        tokio::spawn(watch(Arc::downgrade(&store.shared)));
        Ok(store)
    }

    /// One bounded LOCAL_QUORUM read of the catalog partition's first row:
    /// it answers only while a quorum of the catalog's replicas does, which
    /// is what every claim needs.
    async fn probe(&self) -> Result<()> {
        let statement = cql::scan(
            &crate::cas::catalog_partition(),
            &Scan {
                from: std::ops::Bound::Unbounded,
                to: std::ops::Bound::Unbounded,
                descending: false,
                limit: 1,
            },
        )
        .ok_or_else(|| Error::storage("the probe's scan is empty"))?;
        let limit = Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS);
        match tokio::time::timeout(limit, self.run(Mode::Quorum, &statement)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(fail)) => Err(fail.into_error(self, "probing the cluster")),
            Err(_) => Err(Error::unavailable("the cluster did not answer the probe")),
        }
    }

    fn unavailable_or_storage(&self, error: &ExecutionError, what: &str) -> Error {
        mapping::read_error(error, what, &self.shared.hosts)
    }

    async fn prepare(&self, mode: Mode, text: &str) -> Result<PreparedStatement> {
        let key = (mode, text.to_owned());
        if let Some(found) = self.shared.prepared.lock().get(&key) {
            return Ok(found.clone());
        }
        let mut prepared = self.shared.session.prepare(text).await.map_err(|error| {
            Error::storage(format!(
                "ScyllaDB at {}: cannot prepare `{text}`: {error}",
                self.shared.hosts
            ))
        })?;
        let (consistency, serial) = consistencies(mode, &self.shared.options);
        prepared.set_consistency(consistency);
        prepared.set_serial_consistency(serial);
        // A conditional write is never retried by the driver: its outcome is
        // the ledger's to settle (a serial read), not a resend's.
        prepared.set_is_idempotent(mode != Mode::Lwt);
        self.shared.prepared.lock().insert(key, prepared.clone());
        Ok(prepared)
    }

    /// Every column of `table`, from the result metadata of its `SELECT *`.
    async fn table_columns(&self, table: Table) -> Result<Vec<String>> {
        if let Some(found) = self.shared.columns.lock().get(&table) {
            return Ok(found.clone());
        }
        let text = format!("SELECT * FROM {}", table.name());
        let prepared = self.prepare(Mode::Quorum, &text).await?;
        let columns: Vec<String> = prepared
            .get_current_result_set_col_specs()
            .get()
            .iter()
            .map(|spec| spec.name().to_owned())
            .collect();
        self.shared.columns.lock().insert(table, columns.clone());
        Ok(columns)
    }

    async fn run(&self, mode: Mode, statement: &Statement) -> std::result::Result<Rows, Fail> {
        let prepared = self
            .prepare(mode, &statement.text)
            .await
            .map_err(Fail::Here)?;
        let values = bind(&prepared, &statement.values).map_err(Fail::Here)?;
        let result = self
            .shared
            .session
            .execute_unpaged(&prepared, values)
            .await
            .map_err(|error| Fail::Driver(Box::new(error)))?;
        rows_of(result).map_err(Fail::Here)
    }

    async fn run_batch(&self, statements: &[Statement]) -> std::result::Result<Rows, Fail> {
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(statements.len());
        for statement in statements {
            let prepared = self
                .prepare(Mode::Lwt, &statement.text)
                .await
                .map_err(Fail::Here)?;
            values.push(bind(&prepared, &statement.values).map_err(Fail::Here)?);
            batch.append_statement(prepared);
        }
        let (consistency, serial) = consistencies(Mode::Lwt, &self.shared.options);
        batch.set_consistency(consistency);
        batch.set_serial_consistency(serial);
        batch.set_is_idempotent(false);
        let result = self
            .shared
            .session
            .batch(&batch, values)
            .await
            .map_err(|error| Fail::Driver(Box::new(error)))?;
        rows_of(result).map_err(Fail::Here)
    }

    async fn cas_now(&self, cas: Cas) -> Result<CasOutcome> {
        let table = cas.partition.table;
        let statements: Vec<Statement> = cas
            .writes
            .iter()
            .map(|w| cql::write(&cas.partition, w))
            .collect();
        let answered = match statements.as_slice() {
            [one] => self.run(Mode::Lwt, one).await,
            _ => self.run_batch(&statements).await,
        };
        let rows = match answered {
            Ok(rows) => rows,
            Err(Fail::Here(error)) => return Err(error),
            Err(Fail::Driver(error)) => {
                let failure = mapping::classify(&error);
                if failure == Failure::Other {
                    tracing::error!(hosts = %self.shared.hosts, %error, "ScyllaDB refused an LWT; its outcome is taken as unknown");
                } else {
                    tracing::warn!(hosts = %self.shared.hosts, %error, ?failure, "LWT outcome unknown");
                }
                return Ok(CasOutcome::Unknown);
            }
        };
        let columns = self.table_columns(table).await?;
        match mapping::answer(table, &rows, &columns)? {
            Answer::Applied => Ok(CasOutcome::Applied),
            Answer::NotApplied {
                current,
                complete: true,
            } => Ok(CasOutcome::NotApplied(current)),
            Answer::NotApplied {
                complete: false, ..
            } => {
                // Cassandra's shape: read the addressed rows serially, then
                // the statics (a row that does not exist brings none; after
                // the serial reads a plain one sees every decided round).
                let keys: BTreeSet<_> = cas.writes.iter().map(|w| w.row().clone()).collect();
                let mut current = Current::default();
                for row in keys {
                    let at = RowKey {
                        partition: cas.partition.clone(),
                        row,
                    };
                    let read = self.read_with(Mode::Serial, at).await?;
                    current.statics.extend(read.statics);
                    current.rows.extend(read.rows);
                }
                if !table.statics().is_empty() {
                    let partition_alone = RowKey {
                        partition: cas.partition.clone(),
                        row: Vec::new(),
                    };
                    current.statics = self.read_with(Mode::Quorum, partition_alone).await?.statics;
                }
                Ok(CasOutcome::NotApplied(current))
            }
        }
    }

    async fn read_with(&self, mode: Mode, at: RowKey) -> Result<Current> {
        let statement = cql::select(&at);
        let rows = self
            .run(mode, &statement)
            .await
            .map_err(|fail| fail.into_error(self, "reading a row"))?;
        Ok(mapping::read(at.partition.table, &at.row, &rows))
    }

    async fn scan_now(&self, partition: Partition, scan: Scan) -> Result<Slice> {
        let table = partition.table;
        let mut slice = match cql::scan(&partition, &scan) {
            Some(statement) => {
                let rows = self
                    .run(Mode::Quorum, &statement)
                    .await
                    .map_err(|fail| fail.into_error(self, "scanning a partition"))?;
                mapping::slice(table, &rows)
            }
            None => Slice::default(),
        };
        if slice.rows.is_empty() && !table.statics().is_empty() {
            // A range with no rows carries no statics: read them alone.
            let at = RowKey {
                partition,
                row: Vec::new(),
            };
            slice.statics = self.read_with(Mode::Quorum, at).await?.statics;
        }
        Ok(slice)
    }

    async fn plain(&self, statement: Statement, what: &str) -> Result<()> {
        let prepared = self.prepare(Mode::Quorum, &statement.text).await?;
        let values = bind(&prepared, &statement.values)?;
        self.shared
            .session
            .execute_unpaged(&prepared, values)
            .await
            .map_err(|error| self.unavailable_or_storage(&error, what))?;
        Ok(())
    }
}

/// Why a statement failed: in the driver (to classify) or here.
enum Fail {
    Driver(Box<ExecutionError>),
    Here(Error),
}

impl Fail {
    fn into_error(self, store: &ScyllaStore, what: &str) -> Error {
        match self {
            Fail::Driver(error) => store.unavailable_or_storage(&error, what),
            Fail::Here(error) => error,
        }
    }
}

/// The values of a statement, typed as its markers are.
fn bind(prepared: &PreparedStatement, values: &[Option<Value>]) -> Result<Vec<Option<CqlValue>>> {
    let specs = prepared.get_variable_col_specs();
    if specs.len() != values.len() {
        return Err(Error::storage(format!(
            "`{}` takes {} values, given {}",
            prepared.get_statement(),
            specs.len(),
            values.len()
        )));
    }
    specs
        .iter()
        .zip(values)
        .map(|(spec, value)| {
            value
                .as_ref()
                .map(|v| mapping::to_cql(v, spec.typ(), spec.name()))
                .transpose()
        })
        .collect()
}

/// The rows of a result (none for a statement that returns no rows).
fn rows_of(result: QueryResult) -> Result<Rows> {
    if !result.is_rows() {
        return Ok(Rows::default());
    }
    let rows = result
        .into_rows_result()
        .map_err(|error| Error::storage(format!("reading a ScyllaDB result: {error}")))?;
    let columns: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let applied_at = columns.iter().position(|c| c == mapping::APPLIED);
    let mut out = Rows {
        columns,
        ..Rows::default()
    };
    let typed = rows
        .rows::<scylla::value::Row>()
        .map_err(|error| Error::storage(format!("reading a ScyllaDB result: {error}")))?;
    for row in typed {
        let row =
            row.map_err(|error| Error::storage(format!("reading a ScyllaDB row: {error}")))?;
        let applied =
            applied_at.map(|i| matches!(row.columns.get(i), Some(Some(CqlValue::Boolean(true)))));
        out.applied.push(applied);
        out.rows.push(
            row.columns
                .iter()
                .map(|v| v.as_ref().and_then(mapping::from_cql))
                .collect(),
        );
    }
    Ok(out)
}

impl CasStore for ScyllaStore {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        let this = self.clone();
        async move {
            match this.cas_now(cas).await {
                Ok(outcome) => outcome,
                Err(error) => {
                    tracing::error!(hosts = %this.shared.hosts, %error, "LWT failed; its outcome is taken as unknown");
                    CasOutcome::Unknown
                }
            }
        }
        .boxed()
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        let this = self.clone();
        async move { this.read_with(Mode::Serial, at).await }.boxed()
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        let this = self.clone();
        async move { this.read_with(Mode::Quorum, at).await }.boxed()
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        let this = self.clone();
        async move { this.scan_now(partition, scan).await }.boxed()
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        let this = self.clone();
        async move { this.plain(cql::put(&at, &values), "writing a row").await }.boxed()
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        let this = self.clone();
        async move { this.plain(cql::remove(&at), "deleting a row").await }.boxed()
    }

    fn reachable(&self) -> bool {
        self.shared.reachable.load(Ordering::Acquire)
    }
}

/// Probes the cluster every [`DATABASE_PROBE_INTERVAL_MS`] and records the
/// answer for readiness. A failed probe is tried again at once (the driver
/// may have been reconnecting) before the cluster counts as unreachable.
/// Ends once the store is dropped.
async fn watch(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(Duration::from_millis(DATABASE_PROBE_INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<Instant> = None;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let store = ScyllaStore { shared };
        let mut answer = store.probe().await;
        if answer.is_err() {
            answer = store.probe().await;
        }
        match (answer, down_since) {
            (Ok(()), Some(since)) => {
                tracing::info!(
                    hosts = %store.shared.hosts,
                    unreachable_ms = since.elapsed().as_millis() as u64,
                    "the ScyllaDB cluster answers again"
                );
                store.shared.reachable.store(true, Ordering::Release);
                down_since = None;
            }
            (Err(error), None) => {
                tracing::warn!(hosts = %store.shared.hosts, %error, "the ScyllaDB cluster does not answer");
                store.shared.reachable.store(false, Ordering::Release);
                down_since = Some(Instant::now());
            }
            _ => {}
        }
    }
}

/// Applies [`SCHEMA`] to the cluster at `hosts`, in `keyspace` (the schema's
/// keyspace statement is retargeted to it, so tests can use fresh ones), with
/// the options' replication factor. On ScyllaDB the keyspace also disables
/// tablets (`cql/schema.cql` says why); Cassandra has no such option.
pub async fn migrate(hosts: &[String], keyspace: &str, options: &CqlOptions) -> anyhow::Result<()> {
    let names = hosts.join(",");
    let session = connect(hosts, options).await?;
    let scylla = session
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .any(|node| node.sharder().is_some());
    let mut used = false;
    let statements = cql::schema_statements(SCHEMA);
    let from = cql::schema_keyspace(&statements);
    for statement in &statements {
        let Some(statement) = cql::retarget(statement, from.as_deref(), keyspace) else {
            continue;
        };
        let creates_keyspace = statement
            .to_ascii_uppercase()
            .starts_with("CREATE KEYSPACE");
        let statement = if creates_keyspace {
            cql::keyspace_options(&statement, options.replication_factor, scylla)
        } else {
            statement
        };
        if !creates_keyspace && !used {
            session
                .use_keyspace(keyspace, true)
                .await
                .map_err(|error| {
                    anyhow::anyhow!(
                        "CQL cluster at {names}: cannot use keyspace {keyspace}: {error}"
                    )
                })?;
            used = true;
        }
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|error| anyhow::anyhow!("CQL cluster at {names}: `{statement}`: {error}"))?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(|error| anyhow::anyhow!("CQL cluster at {names}: schema agreement: {error}"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
