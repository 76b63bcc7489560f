//! Submission order for a ledger whose writes are several round trips each.
//!
//! The ledger contract: writes submitted in some order apply in that order.
//! The embedded and SQL ledgers get it from one writer queue; here that would
//! put every claim behind the previous one. Instead each write names the
//! lanes it touches (a slot, a user's key, a wallet, ...), shared or
//! exclusive, and starts as soon as every earlier write it conflicts with
//! has finished: writes on different slots, users and wallets run at once,
//! writes on the same one in submission order. Every write also uses lane
//! [`Lane::All`] shared, so a write that cannot name its lanes (a settle of a
//! redemption this instance never saw) takes it exclusively: a barrier.
//!
//! Each write runs in a task of its own, started when it is submitted (so it
//! goes on whether or not its caller polls), and registered until it ends:
//! [`Order::close`] waits for all of them (a shutdown) and [`Order::halt`]
//! aborts them where they stand (a crash, in tests).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::{FutureExt, Shared};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use uuid::Uuid;

use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::LedgerFuture;

/// What a write touches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Lane {
    All,
    Voucher(String),
    Slot(String, u32),
    Key(Uuid),
    Wallet(u64),
    TransactionId(Uuid),
}

/// How a write uses a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    Shared,
    Exclusive,
}

/// Resolves when a write has ended (its sender dropped).
type Done = Shared<oneshot::Receiver<()>>;

#[derive(Default)]
struct LaneState {
    exclusive: Option<Done>,
    shared: Vec<Done>,
}

fn is_done(done: &Done) -> bool {
    done.peek().is_some()
}

impl LaneState {
    fn is_idle(&self) -> bool {
        self.exclusive.as_ref().is_none_or(is_done) && self.shared.iter().all(is_done)
    }

    /// The writes a new one using the lane must wait for; then records it.
    fn enter(&mut self, how: Use, done: &Done) -> Vec<Done> {
        self.shared.retain(|d| !is_done(d));
        let mut wait: Vec<Done> = self.exclusive.iter().cloned().collect();
        match how {
            Use::Shared => self.shared.push(done.clone()),
            Use::Exclusive => {
                wait.append(&mut self.shared);
                self.exclusive = Some(done.clone());
            }
        }
        wait
    }
}

/// The lanes of the writes in flight.
#[derive(Default)]
pub(super) struct Order {
    lanes: Mutex<BTreeMap<Lane, LaneState>>,
    tasks: Mutex<BTreeMap<u64, AbortHandle>>,
    next: AtomicU64,
    closed: AtomicBool,
}

/// Lanes are swept of finished writes after this many submissions.
const SWEEP_EVERY: u64 = 1_024;

impl Order {
    /// Starts `work` once every earlier write it conflicts with has ended;
    /// answers its result. Refused (`Unavailable`) once closed.
    pub(super) fn submit<T, F>(
        self: &Arc<Self>,
        lanes: Vec<(Lane, Use)>,
        work: F,
    ) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(Error::unavailable("the ledger is shut down")) });
        }
        self.start(lanes, work)
    }

    fn start<T, F>(self: &Arc<Self>, mut lanes: Vec<(Lane, Use)>, work: F) -> LedgerFuture<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        if !lanes.iter().any(|(lane, _)| *lane == Lane::All) {
            lanes.push((Lane::All, Use::Shared));
        }
        let (finished, done) = oneshot::channel::<()>();
        let done = done.shared();
        let wait = self.enter(&lanes, &done);
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        // Held while spawning, so the task cannot unregister before it is registered.
        let mut tasks = self.tasks.lock();
        let task = tokio::spawn(async move {
            futures::future::join_all(wait).await;
            let result = work.await;
            this.tasks.lock().remove(&number);
            drop(finished);
            result
        });
        tasks.insert(number, task.abort_handle());
        drop(tasks);
        Box::pin(async move {
            task.await
                .unwrap_or_else(|_| Err(Error::unavailable("the ledger stopped this write")))
        })
    }

    fn enter(&self, lanes: &[(Lane, Use)], done: &Done) -> Vec<Done> {
        let mut states = self.lanes.lock();
        if self
            .next
            .load(Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            states.retain(|_, state| !state.is_idle());
        }
        lanes
            .iter()
            .flat_map(|(lane, how)| states.entry(lane.clone()).or_default().enter(*how, done))
            .collect()
    }

    /// Refuses new writes and waits for every write submitted before.
    pub(super) async fn close(self: &Arc<Self>) {
        let barrier = self.start(vec![(Lane::All, Use::Exclusive)], async { Ok(()) });
        self.closed.store(true, Ordering::Release);
        let _ = barrier.await;
    }

    /// Refuses new writes and aborts every write in flight where it stands.
    pub(super) fn halt(&self) {
        self.closed.store(true, Ordering::Release);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks.values() {
            task.abort();
        }
    }
}
