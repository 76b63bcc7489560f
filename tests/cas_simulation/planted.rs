//! The store the simulation's ledgers run on: the in-memory store, wrapped
//! in a planted bug when a test asks for one. The bugs live here, never in
//! `src/`: each changes what the protocol sees or sends, as a wrong protocol
//! would. Two cannot be planted from outside the ledger (a settle that
//! ignores its attempt decides on the rows it read, and writes nothing
//! wrong for the store to see; a read that omits the statics' own read is
//! a read the store answers rightly): they are the ledger's test-only
//! switch `CasOptions::planted`, set in `cluster.rs`.

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};
use parking_lot::Mutex;
use uuid::Uuid;
use voucherd_store::cas::memory::MemoryStore;
use voucherd_store::cas::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture, Table,
    Value, Write,
};

use voucherd_test_support::sim::world::World;

use super::cluster::Kind;
use super::Planted;

/// The store as one ledger instance sees it.
#[derive(Clone)]
pub struct SimStore {
    pub inner: MemoryStore,
    pub bug: Planted,
    /// What the instance runs (which half of the ledger it holds).
    pub kind: Kind,
    /// This instance runs the recovery passes.
    pub recovery: bool,
    /// Its conditional writes leave this long after it decided them, at most
    /// (a slow instance: a pause, a slow link), so that they land on a
    /// partition others changed meanwhile; and its reads answer up to this
    /// long after they read, so that it decides on rows others changed
    /// since.
    pub slow: Option<(Arc<World>, u64)>,
    /// Its process may die right after a settle's void applied (see
    /// `Setup::crash_after_void`): the write never answers, and the
    /// instance's number goes to the cluster, which crashes it.
    pub dies_after_void: Option<DiesAfterVoid>,
    /// Its serial reads of users' keys answer up to this long after they
    /// read (see `Setup::paused_recovery_ms`).
    pub paused: Option<(Arc<World>, u64)>,
}

/// Where a store asks for its instance's crash.
#[derive(Clone)]
pub struct DiesAfterVoid {
    pub world: Arc<World>,
    pub instance: usize,
    pub requests: Arc<Mutex<Vec<usize>>>,
}

/// `read`, answered up to `max_ms` after it read, if given.
fn late<T: Send + 'static>(
    read: StoreFuture<T>,
    max_ms: Option<&(Arc<World>, u64)>,
) -> StoreFuture<T> {
    let Some((world, max_ms)) = max_ms else {
        return read;
    };
    let pause = world.millis(0, *max_ms);
    async move {
        let answer = read.await;
        tokio::time::sleep(pause).await;
        answer
    }
    .boxed()
}

/// A settle's void: the key's status set to void (2).
fn is_void(cas: &Cas) -> bool {
    let voids = |write: &Write| match write {
        Write::Update { set, .. } => set.contains(&("status", Some(Value::Int(2)))),
        _ => false,
    };
    cas.partition.table == Table::Redemptions && cas.writes.iter().any(voids)
}

impl SimStore {
    /// A slow instance hears a read's answer late.
    fn answer_late<T: Send + 'static>(&self, read: StoreFuture<T>) -> StoreFuture<T> {
        late(read, self.slow.as_ref())
    }

    fn cas_now(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        match self.bug {
            Planted::UnconditionalUndo if self.recovery && is_undo(&cas) => {
                self.inner.cas(unconditional(cas))
            }
            Planted::NonFinalRefusal if self.kind == Kind::All && is_refusal(&cas) => {
                self.inner.cas(unrecorded(cas))
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

/// (c) A wallet batch that records a transaction id's refusal: its marker
/// row holds the reason.
fn is_refusal(cas: &Cas) -> bool {
    let records = |write: &Write| match write {
        Write::Insert { values, .. } => values.contains_key("refused"),
        _ => false,
    };
    cas.partition.table == Table::Wallets && cas.writes.iter().any(records)
}

/// (c) The refusal's batch without its marker: the statics' write (`IF
/// version = ?`) still decides the refusal against the wallet as read, but
/// nothing records it.
fn unrecorded(mut cas: Cas) -> Cas {
    cas.writes.retain(
        |write| !matches!(write, Write::Insert { values, .. } if values.contains_key("refused")),
    );
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
        let dies = self.dies_after_void.clone().filter(|_| is_void(&cas));
        let pause = (self.slow.as_ref()).map(|(world, max_ms)| world.millis(0, *max_ms));
        let this = self.clone();
        async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            let outcome = this.cas_now(cas).await;
            // Most voids, while faults last.
            match dies {
                Some(dies)
                    if outcome == CasOutcome::Applied
                        && dies.world.faulty()
                        && dies.world.chance(800) =>
                {
                    dies.requests.lock().push(dies.instance);
                    futures::future::pending().await
                }
                _ => outcome,
            }
        }
        .boxed()
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        let key = at.partition.table == Table::Redemptions;
        let read = self.answer_late(self.inner.read_serial(at));
        late(read, self.paused.as_ref().filter(|_| key))
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.answer_late(self.inner.read(at))
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        self.answer_late(self.inner.scan(partition, scan))
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.inner.put(at, values)
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.inner.remove(at)
    }
}
