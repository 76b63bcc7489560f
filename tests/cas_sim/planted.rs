//! The store the simulation's ledgers run on: the in-memory store, wrapped
//! in a planted bug when a test asks for one. The bugs live here, never in
//! `src/`: each changes what the protocol sees or sends, as a wrong protocol
//! would.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use uuid::Uuid;
use voucherd::store::cas::memory::MemoryStore;
use voucherd::store::cas::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture, Table,
    Value, Write,
};

use super::world::World;
use super::Planted;

/// The store as one ledger instance sees it.
#[derive(Clone)]
pub struct SimStore {
    pub inner: MemoryStore,
    pub bug: Planted,
    /// This instance runs the recovery passes.
    pub recovery: bool,
    /// Its conditional writes leave this long after it decided them, at most
    /// (a slow instance: a pause, a slow link), so that they land on a
    /// partition others changed meanwhile.
    pub slow: Option<(Arc<World>, u64)>,
}

impl SimStore {
    fn cas_now(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        match self.bug {
            Planted::UnconditionalUndo if self.recovery && is_undo(&cas) => {
                self.inner.cas(unconditional(cas))
            }
            Planted::UnknownAsLost if cas.partition.table == Table::Slots => {
                let lost = lost_to_another(&cas);
                let outcome = self.inner.cas(cas);
                async move {
                    match outcome.await {
                        CasOutcome::Unknown => CasOutcome::NotApplied(lost),
                        known => known,
                    }
                }
                .boxed()
            }
            _ => self.inner.cas(cas),
        }
    }
}

/// (b) An undo of a claim: its key released (the attempt cleared, no status
/// set), or its slot released (the holder cleared).
fn is_undo(cas: &Cas) -> bool {
    let clears = |column: &str, write: &Write| match write {
        Write::Update { set, .. } => {
            set.contains(&(column, None)) && !set.iter().any(|(c, _)| *c == "status")
        }
        _ => false,
    };
    let column = match cas.partition.table {
        Table::Redemptions => "attempt",
        Table::Slots => "holder",
        _ => return false,
    };
    cas.writes.iter().any(|write| clears(column, write))
}

/// (b) The undo written without its condition on the key's state.
fn unconditional(mut cas: Cas) -> Cas {
    for write in &mut cas.writes {
        if let Write::Update { when, .. } = write {
            when.clear();
        }
    }
    cas
}

/// (a) What a lost take would have lost to: another holder of the slot.
fn lost_to_another(cas: &Cas) -> Current {
    let mut current = Current::default();
    for write in &cas.writes {
        let holder = Row::from([
            ("holder", Value::Uuid(Uuid::from_u128(1))),
            ("attempt", Value::Uuid(Uuid::from_u128(2))),
            ("gen", Value::Int(i64::MAX / 2)),
        ]);
        current.rows.insert(write.row().clone(), holder);
    }
    current
}

impl CasStore for SimStore {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        let Some((world, max_ms)) = &self.slow else {
            return self.cas_now(cas);
        };
        let pause = world.millis(0, *max_ms);
        let this = self.clone();
        async move {
            tokio::time::sleep(pause).await;
            this.cas_now(cas).await
        }
        .boxed()
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        self.inner.read_serial(at)
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.inner.read(at)
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        self.inner.scan(partition, scan)
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.inner.put(at, values)
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.inner.remove(at)
    }
}
