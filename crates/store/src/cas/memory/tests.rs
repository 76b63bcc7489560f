//! The in-memory store's own rules: conditions (a missing row reads as
//! nulls, statics), batches all-or-nothing, undecided writes decided by the
//! next round, slices in order.

use std::ops::Bound;
use std::time::Duration;

use super::*;

/// A partition with statics (a wallet's `balance` stands in for any static column).
fn slots(bucket: i64) -> Partition {
    Partition {
        table: Table::Wallets,
        key: vec![Value::Int(bucket)],
    }
}

fn slot(n: i64) -> Clustering {
    vec![Value::Int(n)]
}

fn take(n: i64, taken: Option<i64>) -> Cas {
    Cas {
        partition: slots(0),
        writes: vec![Write::Update {
            row: slot(n),
            when: vec![("balance", taken.map(Value::Int)), ("holder", None)],
            set: vec![
                ("balance", Some(Value::Int(taken.unwrap_or(0) + 1))),
                ("holder", Some(Value::Int(n))),
            ],
        }],
    }
}

/// Always the same plan.
struct Always(Plan);

impl Faults for Always {
    fn plan(&self, _: Op) -> Plan {
        self.0
    }
}

#[tokio::test]
async fn conditions_see_nulls_statics_and_current_rows() {
    let store = MemoryStore::new();
    assert_eq!(store.cas(take(1, None)).await, CasOutcome::Applied);
    let CasOutcome::NotApplied(current) = store.cas(take(1, Some(1))).await else {
        panic!("slot 1 is held");
    };
    assert_eq!(current.statics.get("balance"), Some(&Value::Int(1)));
    assert_eq!(
        current.row(&slot(1)).and_then(|r| r.get("holder")),
        Some(&Value::Int(1))
    );
    // The static moved: a take expecting the old count fails.
    assert!(matches!(
        store.cas(take(2, None)).await,
        CasOutcome::NotApplied(_)
    ));
    assert_eq!(store.cas(take(2, Some(1))).await, CasOutcome::Applied);
}

#[tokio::test]
async fn a_batch_applies_all_or_nothing() {
    let store = MemoryStore::new();
    let insert = |n| Write::Insert {
        row: slot(n),
        values: Row::from([("gen", Value::Int(1))]),
    };
    let both = Cas {
        partition: slots(0),
        writes: vec![insert(1), insert(2)],
    };
    assert_eq!(store.cas(both.clone()).await, CasOutcome::Applied);
    let again = Cas {
        partition: slots(0),
        writes: vec![insert(3), insert(2)],
    };
    assert!(matches!(store.cas(again).await, CasOutcome::NotApplied(_)));
    let rows = store.dump(Table::Wallets)[0].rows.len();
    assert_eq!(rows, 2, "slot 3 was not inserted");
    let delete = Cas {
        partition: slots(0),
        writes: vec![Write::Delete {
            row: slot(1),
            when: Vec::new(),
        }],
    };
    assert_eq!(store.cas(delete.clone()).await, CasOutcome::Applied);
    assert!(matches!(store.cas(delete).await, CasOutcome::NotApplied(_)));
}

#[tokio::test]
async fn an_undecided_write_is_decided_by_the_next_round() {
    let data = MemoryStore::new();
    for applies in [true, false] {
        let plan = Plan {
            fate: Fate::Undecided {
                applies,
                visible_after: Duration::from_secs(3_600),
            },
            ..Plan::default()
        };
        let faulty = MemoryStore {
            faults: Some(Arc::new(Always(plan))),
            ..data.clone()
        };
        let n = i64::from(applies);
        assert_eq!(faulty.cas(take(n, None)).await, CasOutcome::Unknown);
        let at = RowKey {
            partition: slots(0),
            row: slot(n),
        };
        assert_eq!(data.read(at.clone()).await.unwrap().row(&slot(n)), None);
        let serial = data.read_serial(at).await.unwrap();
        assert_eq!(serial.row(&slot(n)).is_some(), applies);
        data.decide_all();
    }
}

#[tokio::test]
async fn slices_come_in_order_within_their_bounds() {
    let store = MemoryStore::new();
    for n in [5, 1, 3, 2, 4] {
        store.cas(take(n, store_taken(&store).await)).await;
    }
    let scan = |from, to, descending| Scan {
        from,
        to,
        descending,
        limit: 10,
    };
    let keys = |slice: Slice| -> Vec<i64> {
        (slice.rows.iter())
            .map(|(k, _)| match k[0] {
                Value::Int(n) => n,
                _ => -1,
            })
            .collect()
    };
    let all = store.scan(slots(0), scan(Bound::Unbounded, Bound::Unbounded, false));
    assert_eq!(keys(all.await.unwrap()), vec![1, 2, 3, 4, 5]);
    let some = scan(Bound::Excluded(slot(2)), Bound::Included(slot(4)), true);
    assert_eq!(keys(store.scan(slots(0), some).await.unwrap()), vec![4, 3]);
    let none = scan(Bound::Excluded(slot(3)), Bound::Excluded(slot(3)), false);
    assert!(keys(store.scan(slots(0), none).await.unwrap()).is_empty());
}

async fn store_taken(store: &MemoryStore) -> Option<i64> {
    let at = RowKey {
        partition: slots(0),
        row: Vec::new(),
    };
    match store.read(at).await.unwrap().statics.get("balance") {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

/// CQL's rule, which Cassandra showed (`tests/ledger_conformance/`,
/// backends `cassandra*`): a read naming a clustering row that does not exist
/// returns nothing, the partition's statics included; a read of the
/// partition alone returns them.
#[tokio::test]
async fn a_missing_row_reads_without_the_statics_and_the_partition_alone_with_them() {
    let store = MemoryStore::new();
    assert_eq!(store.cas(take(1, None)).await, CasOutcome::Applied);
    let at = |row: Clustering| RowKey {
        partition: slots(0),
        row,
    };
    let held = store.read(at(slot(1))).await.unwrap();
    assert_eq!(held.statics.get("balance"), Some(&Value::Int(1)));
    assert!(held.row(&slot(1)).is_some());
    for serial in [false, true] {
        let missing = if serial {
            store.read_serial(at(slot(2))).await.unwrap()
        } else {
            store.read(at(slot(2))).await.unwrap()
        };
        assert!(missing.rows.is_empty(), "serial: {serial}");
        assert!(missing.statics.is_empty(), "serial: {serial}: {missing:?}");
    }
    let alone = store.read(at(Vec::new())).await.unwrap();
    assert_eq!(alone.statics.get("balance"), Some(&Value::Int(1)));
    // A failed condition answers the partition's statics with the rows it
    // addressed, as the adapter completes Cassandra's answer.
    let CasOutcome::NotApplied(current) = store.cas(take(2, None)).await else {
        panic!("the count moved: the take must not apply");
    };
    assert_eq!(current.statics.get("balance"), Some(&Value::Int(1)));
}

/// Every round takes 10 ms before it takes effect; a contended one is lost.
struct Contended;

impl Faults for Contended {
    fn plan(&self, _: Op) -> Plan {
        Plan {
            before: Duration::from_millis(10),
            ..Plan::default()
        }
    }

    fn contended(&self, _: Op) -> Fate {
        Fate::Lost
    }
}

#[tokio::test(start_paused = true)]
async fn only_a_round_that_meets_another_on_its_partition_is_contended() {
    let store = MemoryStore::with_faults(Arc::new(Contended));
    // Alone, a round is never contended.
    assert_eq!(store.cas(take(1, None)).await, CasOutcome::Applied);
    // Two at once on one partition: the first to take effect meets the
    // other (lost), the second meets none (the first has ended).
    let (first, second) = tokio::join!(store.cas(take(2, Some(1))), async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        store.cas(take(3, Some(1))).await
    });
    assert_eq!(first, CasOutcome::Unknown);
    assert_eq!(second, CasOutcome::Applied);
    // A serial read is a round too; a plain read is not.
    let at = RowKey {
        partition: slots(0),
        row: slot(3),
    };
    let later = |cas| async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        store.cas(cas).await
    };
    let (serial, _) = tokio::join!(store.read_serial(at.clone()), later(take(4, Some(2))));
    assert!(serial.is_err(), "a contended serial read fails");
    let (plain, _) = tokio::join!(store.read(at.clone()), later(take(4, Some(2))));
    assert!(plain.is_ok(), "a plain read is no round");
    // Rounds on other partitions do not contend, and a round whose caller
    // stopped waiting (dropped) no longer counts.
    let other = Cas {
        partition: slots(1),
        ..take(1, None)
    };
    drop(store.cas(take(9, None)));
    let (here, there) = tokio::join!(store.cas(take(5, Some(3))), store.cas(other));
    assert_eq!((here, there), (CasOutcome::Applied, CasOutcome::Applied));
}
