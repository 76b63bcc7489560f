//! A [`CasStore`] that records what its conditional writes answered: the LWT
//! metrics (`lwt_outcomes_total{result}`, `lwt_duration_seconds`,
//! `lwt_serial_reads_total`, `lwt_unknowns_resolved_total`). It wraps any
//! store, so the metrics are the same over ScyllaDB and over the in-memory
//! model, and their bookkeeping is tested here without a cluster.
//!
//! An unknown outcome is *resolved* by the next successful serial read of its
//! partition: that read is a Paxos round, which completes any round still in
//! flight, so after it the write has either landed or never will. The ledger
//! always reads serially after an unknown (see `super`), so every unknown is
//! followed by its resolution unless the serial read itself fails or the
//! process stops first; `lwt_outcomes_total{result="unknown"}` minus
//! `lwt_unknowns_resolved_total` is the number still in doubt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use super::store::{
    Cas, CasOutcome, CasStore, Current, Partition, Row, RowKey, Scan, Slice, StoreFuture,
};
use voucherd_metrics::{LwtMetrics, LwtResult, Metrics};

/// Partitions with unresolved unknowns remembered at most (a store that
/// times out without end must not grow this without bound; the oldest
/// doubts are then forgotten and never counted as resolved).
const MAX_DOUBTED_PARTITIONS: usize = 4_096;

/// `store`, with its operations recorded in the LWT metrics.
pub struct Observed<S> {
    store: S,
    shared: Arc<Shared>,
}

struct Shared {
    metrics: Arc<Metrics>,
    /// Unknown outcomes not yet resolved, by partition.
    doubts: Mutex<HashMap<Partition, u64>>,
}

impl<S: CasStore> Observed<S> {
    pub fn new(store: S, metrics: Arc<Metrics>) -> Self {
        Observed {
            store,
            shared: Arc::new(Shared {
                metrics,
                doubts: Mutex::default(),
            }),
        }
    }
}

impl Shared {
    fn lwt(&self) -> &LwtMetrics {
        &self.metrics.lwt
    }

    fn doubt(&self, partition: Partition) {
        let mut doubts = self.doubts.lock();
        if doubts.len() >= MAX_DOUBTED_PARTITIONS && !doubts.contains_key(&partition) {
            doubts.clear();
        }
        *doubts.entry(partition).or_default() += 1;
    }

    fn resolve(&self, partition: &Partition) {
        if let Some(unknowns) = self.doubts.lock().remove(partition) {
            self.lwt().resolved(unknowns);
        }
    }
}

impl<S: CasStore> CasStore for Observed<S> {
    fn cas(&self, cas: Cas) -> BoxFuture<'static, CasOutcome> {
        let shared = self.shared.clone();
        let partition = cas.partition.clone();
        let answer = self.store.cas(cas);
        async move {
            let start = Instant::now();
            let outcome = answer.await;
            let result = match outcome {
                CasOutcome::Applied => LwtResult::applied,
                CasOutcome::NotApplied(_) => LwtResult::not_applied,
                CasOutcome::Unknown => {
                    shared.doubt(partition);
                    LwtResult::unknown
                }
            };
            shared.lwt().observe(result, start.elapsed());
            outcome
        }
        .boxed()
    }

    fn read_serial(&self, at: RowKey) -> StoreFuture<Current> {
        let shared = self.shared.clone();
        let partition = at.partition.clone();
        let read = self.store.read_serial(at);
        async move {
            shared.lwt().serial_read();
            let current = read.await?;
            shared.resolve(&partition);
            Ok(current)
        }
        .boxed()
    }

    fn read(&self, at: RowKey) -> StoreFuture<Current> {
        self.store.read(at)
    }

    fn scan(&self, partition: Partition, scan: Scan) -> StoreFuture<Slice> {
        self.store.scan(partition, scan)
    }

    fn put(&self, at: RowKey, values: Row) -> StoreFuture<()> {
        self.store.put(at, values)
    }

    fn remove(&self, at: RowKey) -> StoreFuture<()> {
        self.store.remove(at)
    }

    fn reachable(&self) -> bool {
        self.store.reachable()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cas::memory::{Fate, Faults, MemoryStore, Op, Plan};
    use crate::cas::store::{Table, Value, Write};

    /// Takes effect (a read: fails) and answers `Unknown`.
    fn unanswered() -> Plan {
        Plan {
            fate: Fate::Unanswered,
            ..Plan::default()
        }
    }

    /// Every conditional write answers `Unknown` after applying; reads work.
    struct UnknownWrites;

    impl Faults for UnknownWrites {
        fn plan(&self, op: Op) -> Plan {
            match op {
                Op::Cas(_) => unanswered(),
                _ => Plan::default(),
            }
        }
    }

    fn partition(n: i64) -> Partition {
        Partition {
            table: Table::Redemptions,
            key: vec![Value::Int(n)],
        }
    }

    fn insert(n: i64) -> Cas {
        Cas {
            partition: partition(n),
            writes: vec![Write::Insert {
                row: Vec::new(),
                values: Row::from([("status", Value::Text("pending".into()))]),
            }],
        }
    }

    fn at(n: i64) -> RowKey {
        RowKey {
            partition: partition(n),
            row: Vec::new(),
        }
    }

    /// The value of sample `name` (with its labels) in the exposition, or 0.
    pub(in crate::cas) fn count(metrics: &Metrics, name: &str) -> f64 {
        let prefix = format!("voucherd_{name} ");
        metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn answers_are_counted_and_an_unknown_is_resolved_by_a_serial_read_of_its_partition() {
        let metrics = Arc::new(Metrics::new());
        let healthy = Observed::new(MemoryStore::new(), metrics.clone());
        assert_eq!(healthy.cas(insert(1)).await, CasOutcome::Applied);
        assert!(matches!(
            healthy.cas(insert(1)).await,
            CasOutcome::NotApplied(_)
        ));
        assert_eq!(
            count(&metrics, "lwt_outcomes_total{result=\"applied\"}"),
            1.0
        );
        assert_eq!(
            count(&metrics, "lwt_outcomes_total{result=\"not_applied\"}"),
            1.0
        );

        let faulty = Observed::new(
            MemoryStore::with_faults(Arc::new(UnknownWrites)),
            metrics.clone(),
        );
        assert_eq!(faulty.cas(insert(2)).await, CasOutcome::Unknown);
        assert_eq!(faulty.cas(insert(3)).await, CasOutcome::Unknown);
        assert_eq!(faulty.cas(insert(3)).await, CasOutcome::Unknown);
        assert_eq!(
            count(&metrics, "lwt_outcomes_total{result=\"unknown\"}"),
            3.0
        );
        assert_eq!(count(&metrics, "lwt_unknowns_resolved_total"), 0.0);

        // A plain read settles nothing; a serial read of another partition
        // neither.
        faulty.read(at(3)).await.unwrap();
        faulty.read_serial(at(1)).await.unwrap();
        assert_eq!(count(&metrics, "lwt_unknowns_resolved_total"), 0.0);

        // The serial read of partition 3 resolves both of its unknowns, once.
        let current = faulty.read_serial(at(3)).await.unwrap();
        assert!(current.row(&Vec::new()).is_some(), "the write had applied");
        faulty.read_serial(at(3)).await.unwrap();
        assert_eq!(count(&metrics, "lwt_unknowns_resolved_total"), 2.0);
        faulty.read_serial(at(2)).await.unwrap();
        assert_eq!(count(&metrics, "lwt_unknowns_resolved_total"), 3.0);
        assert_eq!(count(&metrics, "lwt_serial_reads_total"), 4.0);
        assert!(
            count(&metrics, "lwt_duration_seconds_count") >= 5.0,
            "every conditional write is timed"
        );
    }

    /// A serial read that fails resolves nothing.
    struct FailingReads;

    impl Faults for FailingReads {
        fn plan(&self, op: Op) -> Plan {
            match op {
                Op::Cas(_) => unanswered(),
                Op::SerialRead(_) => unanswered(),
                _ => Plan::default(),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_serial_read_leaves_the_unknown_in_doubt() {
        let metrics = Arc::new(Metrics::new());
        let store = Observed::new(
            MemoryStore::with_faults(Arc::new(FailingReads)),
            metrics.clone(),
        );
        assert_eq!(store.cas(insert(7)).await, CasOutcome::Unknown);
        assert!(store.read_serial(at(7)).await.is_err());
        assert_eq!(count(&metrics, "lwt_unknowns_resolved_total"), 0.0);
    }

    #[tokio::test]
    async fn the_ledger_is_unreachable_while_the_store_probe_fails() {
        use crate::cas::CasLedger;
        use voucherd_core::ledger::{Durable, LedgerHealth};

        let store = MemoryStore::new();
        let ledger = CasLedger::open(Observed::new(store.clone(), Arc::new(Metrics::new())));
        assert_eq!(ledger.health(), LedgerHealth::Healthy);
        store.set_down(true);
        assert_eq!(ledger.health(), LedgerHealth::Unreachable);
        store.set_down(false);
        assert_eq!(ledger.health(), LedgerHealth::Healthy);
    }
}
