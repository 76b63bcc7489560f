//! An in-memory [`CasStore`]: every operation is atomic under one lock, so it
//! is linearizable per partition (and beyond), with an optional fault
//! injector that delays operations and makes some answers unknown:
//! - a conditional write applied, but answered `Unknown`;
//! - a conditional write dropped, answered `Unknown`;
//! - a conditional write left undecided, answered `Unknown`, as a Paxos round
//!   accepted by too few replicas is: the next conditional write or serial
//!   read on its partition decides it first (applies it, if its conditions
//!   still hold, or drops it); plain reads do not see it until then (or until
//!   its commit would have reached them, if it applies);
//! - plain reads and serial reads failing, plain writes lost or applied
//!   without an answer;
//! - contention, as a real cluster shows it: a conditional write or serial
//!   read that meets another Paxos round in flight on its partition may time
//!   out (Cassandra's `WriteTimeout` of type CAS, its `ReadTimeout` at
//!   SERIAL), the write lost or left undecided ([`Faults::contended`]).
//!   Unlike the faults above, these come with concurrency on one partition,
//!   where the protocols are most delicate, and not at random.
//!
//! A delay is spent before and after the moment an operation takes effect,
//! so a caller that stops (a crash) while waiting may stop before or after it.
//! Conformance tests run it without faults; the CAS simulation with them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::store::{
    Cas, CasOutcome, CasStore, Clustering, Column, Current, Partition, Row, RowKey, Scan, Slice,
    StoreFuture, Table, Value, Write,
};
use voucherd_core::error::Error;

/// What an operation is, as the fault injector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Cas(Table),
    SerialRead(Table),
    Read(Table),
    Write(Table),
}

/// How an operation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fate {
    #[default]
    Normal,
    /// Takes effect (a `Cas` if its conditions hold) but the caller hears
    /// `Unknown` (a read: an error).
    Unanswered,
    /// Takes no effect and the caller hears `Unknown` (a read: an error).
    Lost,
    /// A `Cas` left undecided (see the module docs): it `applies` or not when
    /// the next round on its partition comes, and plain reads see it
    /// `visible_after` this long if it applies.
    Undecided {
        applies: bool,
        visible_after: Duration,
    },
}

/// One operation's fate and delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub before: Duration,
    pub fate: Fate,
    pub after: Duration,
}

/// Decides each operation's [`Plan`].
pub trait Faults: Send + Sync + 'static {
    fn plan(&self, op: Op) -> Plan;

    /// The fate of a conditional write or serial read (`op`) planned
    /// `Normal` that, when it takes effect, meets another round in flight on
    /// its partition (one begun and not yet decided). A real coordinator
    /// that keeps losing its ballot gives up after its contention timeout:
    /// its proposal never accepted (`Lost`) or accepted by too few replicas
    /// (`Undecided`); a serial read fails. `Normal` by default.
    fn contended(&self, op: Op) -> Fate {
        let _ = op;
        Fate::Normal
    }
}

/// The in-memory store; clones share the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    data: Arc<Mutex<BTreeMap<Partition, Part>>>,
    faults: Option<Arc<dyn Faults>>,
    /// What [`CasStore::reachable`] answers: false once [`Self::set_down`]
    /// said so (a health probe's view; operations are unaffected).
    down: Arc<AtomicBool>,
}

/// A partition: statics, rows, the conditional write left undecided, and
/// how many rounds (conditional writes and serial reads) are in flight on it.
#[derive(Debug, Default)]
struct Part {
    statics: Row,
    rows: BTreeMap<Clustering, Row>,
    undecided: Option<Undecided>,
    rounds: usize,
}

/// A round in flight on a partition, from its start until it takes effect
/// or its caller stops waiting (a crash): dropping it ends it.
struct Round {
    data: Arc<Mutex<BTreeMap<Partition, Part>>>,
    partition: Partition,
}

impl Round {
    fn begin(store: &MemoryStore, partition: &Partition) -> Round {
        let mut data = store.data.lock();
        data.entry(partition.clone()).or_default().rounds += 1;
        Round {
            data: store.data.clone(),
            partition: partition.clone(),
        }
    }

    /// Another round is in flight on the partition.
    fn contended(&self) -> bool {
        let data = self.data.lock();
        data.get(&self.partition)
            .is_some_and(|part| part.rounds > 1)
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        if let Some(part) = self.data.lock().get_mut(&self.partition) {
            part.rounds -= 1;
        }
    }
}

#[derive(Debug)]
struct Undecided {
    cas: Cas,
    applies: bool,
    visible_at: Instant,
}

/// Everything a partition holds, for tests that check a whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub partition: Partition,
    pub statics: Row,
    pub rows: Vec<(Clustering, Row)>,
}

impl MemoryStore {
    /// A store without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose operations `faults` plans.
    pub fn with_faults(faults: Arc<dyn Faults>) -> Self {
        MemoryStore {
            data: Arc::default(),
            faults: Some(faults),
            down: Arc::default(),
        }
    }

    /// The same data without the fault injector.
    pub fn without_faults(&self) -> Self {
        MemoryStore {
            data: self.data.clone(),
            faults: None,
            down: self.down.clone(),
        }
    }

    /// Makes the store's health probe fail (`true`) or pass again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    fn plan(&self, op: Op) -> Plan {
        self.faults
            .as_ref()
            .map_or_else(Plan::default, |faults| faults.plan(op))
    }

    /// The fate of round `op` planned `fate`, as it takes effect.
    fn fate_of(&self, op: Op, fate: Fate, round: &Round) -> Fate {
        match &self.faults {
            Some(faults) if fate == Fate::Normal && round.contended() => faults.contended(op),
            _ => fate,
        }
    }

    /// Every partition of `table`, in key order (undecided writes left out).
    pub fn dump(&self, table: Table) -> Vec<Dumped> {
        let data = self.data.lock();
        data.iter()
            .filter(|(partition, _)| partition.table == table)
            .map(|(partition, part)| Dumped {
                partition: partition.clone(),
                statics: part.statics.clone(),
                rows: part
                    .rows
                    .iter()
                    .map(|(k, r)| (k.clone(), r.clone()))
                    .collect(),
            })
            .collect()
    }

    /// Decides every undecided write now, as the next round on each
    /// partition would; answers how many there were.
    pub fn decide_all(&self) -> usize {
        let mut data = self.data.lock();
        let mut decided = 0;
        for part in data.values_mut() {
            decided += usize::from(part.undecided.is_some());
            part.decide();
        }
        decided
    }
}

async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn unavailable() -> Error {
    Error::unavailable("the store did not answer (simulated)")
}

impl Part {
    fn value(&self, table: Table, row: &Clustering, column: Column) -> Option<&Value> {
        if table.is_static(column) {
            self.statics.get(column)
        } else {
            self.rows.get(row).and_then(|r| r.get(column))
        }
    }

    fn holds(&self, table: Table, write: &Write) -> bool {
        let condition = |(column, expected): &(Column, Option<Value>)| {
            self.value(table, write.row(), column) == expected.as_ref()
        };
        match write {
            Write::Insert { row, .. } => !self.rows.contains_key(row),
            Write::Update { when, .. } => when.iter().all(condition),
            Write::Delete { row, when } if when.is_empty() => self.rows.contains_key(row),
            Write::Delete { when, .. } => when.iter().all(condition),
        }
    }

    /// Assigns `columns` of `row` (statics go to the partition's); the row
    /// is created when a regular column is assigned.
    fn set<'a>(
        &mut self,
        table: Table,
        row: &Clustering,
        columns: impl Iterator<Item = (Column, Option<&'a Value>)>,
    ) {
        let (statics, regular): (Vec<_>, Vec<_>) = columns.partition(|(c, _)| table.is_static(c));
        let assign = |target: &mut Row, (column, value): (Column, Option<&Value>)| {
            match value {
                Some(v) => target.insert(column, v.clone()),
                None => target.remove(column),
            };
        };
        for assignment in statics {
            assign(&mut self.statics, assignment);
        }
        if !regular.is_empty() {
            let target = self.rows.entry(row.clone()).or_default();
            for assignment in regular {
                assign(target, assignment);
            }
        }
    }

    fn apply(&mut self, table: Table, write: &Write) {
        match write {
            Write::Insert { row, values } => {
                self.rows.insert(row.clone(), Row::new());
                self.set(table, row, values.iter().map(|(c, v)| (*c, Some(v))));
            }
            Write::Update { row, set, .. } => {
                self.set(table, row, set.iter().map(|(c, v)| (*c, v.as_ref())));
            }
            Write::Delete { row, .. } => {
                self.rows.remove(row);
            }
        }
    }

    /// Applies `cas` if every condition holds; answers whether it did.
    fn try_apply(&mut self, cas: &Cas) -> bool {
        let table = cas.partition.table;
        if !cas.writes.iter().all(|w| self.holds(table, w)) {
            return false;
        }
        for write in &cas.writes {
            self.apply(table, write);
        }
        true
    }

    fn current<'a>(&self, rows: impl Iterator<Item = &'a Clustering>) -> Current {
        let rows = rows
            .filter_map(|key| self.rows.get(key).map(|r| (key.clone(), r.clone())))
            .collect();
        Current {
            statics: self.statics.clone(),
            rows,
        }
    }

    /// The next round on the partition decides its undecided write.
    fn decide(&mut self) {
        if let Some(undecided) = self.undecided.take() {
            if undecided.applies {
                self.try_apply(&undecided.cas);
            }
        }
    }

    /// A plain read sees an undecided write once its commit would have landed.
    fn reveal(&mut self, now: Instant) {
        let due = (self.undecided.as_ref()).is_some_and(|u| u.applies && now >= u.visible_at);
        if due {
            if let Some(undecided) = self.undecided.take() {
                self.try_apply(&undecided.cas);
            }
        }
    }
}

impl MemoryStore {
    fn apply_cas(&self, cas: Cas, fate: Fate) -> CasOutcome {
        let mut data = self.data.lock();
        let part = data.entry(cas.partition.clone()).or_default();
        part.decide();
        match fate {
            Fate::Normal if part.try_apply(&cas) => CasOutcome::Applied,
            Fate::Normal => CasOutcome::NotApplied(part.current(cas.writes.iter().map(Write::row))),
            Fate::Unanswered => {
                part.try_apply(&cas);
                CasOutcome::Unknown
            }
            Fate::Lost => CasOutcome::Unknown,
            Fate::Undecided {
                applies,
                visible_after,
            } => {
                part.undecided = Some(Undecided {
                    cas,
                    applies,
                    visible_at: Instant::now() + visible_after,
                });
                CasOutcome::Unknown
            }
        }
    }

    fn read_now(&self, at: &RowKey, serial: bool) -> Current {
        let mut data = self.data.lock();
        let Some(part) = data.get_mut(&at.partition) else {
            return Current::default();
        };
        if serial {
            part.decide();
        } else {
            part.reveal(Instant::now());
        }
        let mut current = part.current(std::iter::once(&at.row));
        // CQL: a SELECT naming a clustering row that does not exist returns
        // no row at all, so the partition's statics do not come back either
        // (Cassandra and ScyllaDB alike; `tests/ledger_conformance/` runs
        // the ledger on Cassandra). Only a read of the partition alone (an
        // empty clustering key) returns the statics without a row.
        if !at.row.is_empty() && current.rows.is_empty() {
            current.statics.clear();
        }
        current
    }

    fn scan_now(&self, partition: &Partition, scan: &Scan) -> Slice {
        let mut data = self.data.lock();
        let Some(part) = data.get_mut(partition) else {
            return Slice::default();
        };
        part.reveal(Instant::now());
        if scan.is_empty() {
            return Slice {
                statics: part.statics.clone(),
                rows: Vec::new(),
            };
        }
        let range = part
            .rows
            .range::<Clustering, _>((scan.from.as_ref(), scan.to.as_ref()));
        let pick = |(k, r): (&Clustering, &Row)| (k.clone(), r.clone());
        let rows = if scan.descending {
            range.rev().take(scan.limit).map(pick).collect()
        } else {
            range.take(scan.limit).map(pick).collect()
        };
        Slice {
            statics: part.statics.clone(),
            rows,
        }
    }

    fn write_now(&self, at: &RowKey, values: Option<Row>) {
        let mut data = self.data.lock();
        let part = data.entry(at.partition.clone()).or_default();
        match values {
            Some(values) => {
                let row = part.rows.entry(at.row.clone()).or_default();
                row.extend(values);
            }
            None => {
                part.rows.remove(&at.row);
            }
        }
    }

    fn read_with(&self, at: RowKey, serial: bool) -> StoreFuture<Current> {
        let this = self.clone();
        let op = if serial { Op::SerialRead } else { Op::Read };
        let op = op(at.partition.table);
        let plan = self.plan(op);
        let round = serial.then(|| Round::begin(self, &at.partition));
        async move {
            pause(plan.before).await;
            let fate = match &round {
                Some(round) => this.fate_of(op, plan.fate, round),
                None => plan.fate,
            };
            drop(round);
            if fate != Fate::Normal {
                return Err(unavailable());
            }
            let current = this.read_now(&at, serial);
            pause(plan.after).await;
            Ok(current)
        }
        .boxed()
    }

    fn write_with(&self, at: RowKey, values: Option<Row>) -> StoreFuture<()> {
        let this = self.clone();
        let plan = self.plan(Op::Write(at.partition.table));
        async move {
            pause(plan.before).await;
            if plan.fate != Fate::Lost {
                this.write_now(&at, values);
            }
            pause(plan.after).await;
            match plan.fate {
                Fate::Normal => Ok(()),
                _ => Err(unavailable()),
            }
        }
        .boxed()
    }
}

impl CasStore for MemoryStore {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        let this = self.clone();
        let op = Op::Cas(cas.partition.table);
        let plan = self.plan(op);
        let round = Round::begin(self, &cas.partition);
        async move {
            pause(plan.before).await;
            let fate = this.fate_of(op, plan.fate, &round);
            drop(round);
            let outcome = this.apply_cas(cas, fate);
            pause(plan.after).await;
            outcome
        }
        .boxed()
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        self.read_with(at, true)
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.read_with(at, false)
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        let this = self.clone();
        let plan = self.plan(Op::Read(partition.table));
        async move {
            pause(plan.before).await;
            if plan.fate != Fate::Normal {
                return Err(unavailable());
            }
            let slice = this.scan_now(&partition, &scan);
            pause(plan.after).await;
            Ok(slice)
        }
        .boxed()
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.write_with(at, Some(values))
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.write_with(at, None)
    }

    fn reachable(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}

/// Fault rates, per mille of operations, and the longest delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultRates {
    /// A conditional write answers `Unknown` (applied, dropped or undecided,
    /// a third each); a plain write fails (applied or not).
    pub unknown: u64,
    /// A read (plain or serial) fails.
    pub read_error: u64,
    /// A conditional write or serial read that meets another round in
    /// flight on its partition times out ([`Faults::contended`]): a write
    /// lost or left undecided, half each; a serial read fails.
    pub contention: u64,
    /// Half of the delays are none, the others uniform in `0..=max_delay`.
    pub max_delay: Duration,
}

/// A fault injector drawing every plan from one seeded generator
/// (SplitMix64), so that the same seed and the same order of operations
/// give the same faults. Faults can be switched off (a heal).
pub struct SeededFaults {
    state: Mutex<u64>,
    rates: FaultRates,
    on: AtomicBool,
}

impl SeededFaults {
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        SeededFaults {
            state: Mutex::new(seed),
            rates,
            on: AtomicBool::new(true),
        }
    }

    /// No faults and no delays from now on.
    pub fn heal(&self) {
        self.on.store(false, Ordering::Relaxed);
    }

    fn next(&self) -> u64 {
        let mut state = self.state.lock();
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// No delay half of the time, else uniform up to the longest.
    fn delay(&self) -> Duration {
        let max = self.rates.max_delay.as_micros() as u64;
        let draw = self.below(2 * (max + 1));
        Duration::from_micros(draw.saturating_sub(max + 1))
    }

    fn fate(&self, op: Op) -> Fate {
        let per_mille = match op {
            Op::Cas(_) | Op::Write(_) => self.rates.unknown,
            Op::Read(_) | Op::SerialRead(_) => self.rates.read_error,
        };
        if self.below(1_000) >= per_mille {
            return Fate::Normal;
        }
        match (op, self.below(3)) {
            (Op::Cas(_), 2) => Fate::Undecided {
                applies: self.below(2) == 0,
                visible_after: self.delay(),
            },
            (_, 0) => Fate::Unanswered,
            _ => Fate::Lost,
        }
    }
}

impl Faults for SeededFaults {
    fn contended(&self, op: Op) -> Fate {
        if !self.on.load(Ordering::Relaxed) || self.below(1_000) >= self.rates.contention {
            return Fate::Normal;
        }
        match (op, self.below(2)) {
            (Op::Cas(_), 0) => Fate::Undecided {
                applies: self.below(2) == 0,
                visible_after: self.delay(),
            },
            _ => Fate::Lost,
        }
    }

    fn plan(&self, op: Op) -> Plan {
        if !self.on.load(Ordering::Relaxed) {
            return Plan::default();
        }
        Plan {
            before: self.delay(),
            fate: self.fate(op),
            after: self.delay(),
        }
    }
}

#[cfg(test)]
mod tests;
