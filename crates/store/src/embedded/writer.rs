//! The writer thread: the group commit.
//!
//! All writes go through one writer thread that groups whatever is queued (up to
//! [`MAX_COMMIT_BATCH_OPS`]) into a single write transaction and one durable commit,
//! so throughput is not bounded by one fsync per request. Each operation inside a
//! batch checks its conditions before it writes anything, so a rejected operation
//! leaves no trace; a storage failure aborts the whole batch and every operation in
//! it is answered as failed (nothing of it was acknowledged, nothing is kept).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::HalfKind;
use voucherd_core::limits::MAX_COMMIT_BATCH_OPS;
use voucherd_metrics::Metrics;

use super::reopen::{ErrorLog, Unresolved};
use super::tables::Tables;
use super::{db_error, is_io_failure, SharedDatabase};
use crate::queue::{Queued, QueuedWrite, Request, Waiter, WriteAnswer};

/// A write applied inside the open batch, waiting for the commit to answer.
pub(super) struct Applied {
    pub(super) waiter: Waiter,
    pub(super) outcome: WriteAnswer,
}

impl Applied {
    /// Sends the outcome, or `instead` if the batch did not commit.
    pub(super) fn answer(self, instead: Option<&Error>) {
        match instead {
            Some(error) => self.waiter.fail(error.clone()),
            None => self.waiter.answer(self.outcome),
        }
    }
}

/// Answers a write that was never applied.
pub(super) fn refuse((_, waiter): QueuedWrite, error: Error) {
    waiter.fail(error)
}

/// Why a batch did not commit.
pub(super) enum Failed {
    /// Before the commit: nothing of the batch reached the disk.
    BeforeCommit(Error),
    /// The commit itself failed; whether it reached the disk is not known yet.
    Commit { error: Error, batch_sequence: u64 },
}

/// How a batch ended.
pub(super) enum BatchEnd {
    /// Committed, or refused because of a write it held (not the disk): every
    /// write is answered and the writer carries on.
    Done,
    /// The disk failed before the commit; every write is answered `NotWritten`.
    NotWritten,
    /// The commit failed; the writes are answered once a fresh handle on the
    /// database tells whether it reached the disk.
    CommitFailed(Unresolved),
}

/// The one thread that writes: it owns the group commit and the recovery.
pub(super) struct Writer<H: HalfKind> {
    pub(super) database: Arc<SharedDatabase>,
    /// The handle writes go through; None only while it is being replaced.
    pub(super) db: Option<Arc<Database>>,
    pub(super) last_sequence: u64,
    /// The half the store holds: in a voucher half, claims are born pending.
    pub(super) half: PhantomData<H>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) errors: ErrorLog,
}

impl<H: HalfKind> Writer<H> {
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Queued<QueuedWrite>>) {
        let mut batch = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut shutdown = None;
        while shutdown.is_none() {
            let Some(first) = queue.blocking_recv() else {
                break; // Every sender is gone.
            };
            batch.push(first);
            while batch.len() < MAX_COMMIT_BATCH_OPS {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let operations = batch.len();
            let (end, requested) = self.commit_batch(&mut batch);
            shutdown = requested;
            let unresolved = match end {
                BatchEnd::Done => {
                    self.metrics
                        .observe_ledger_commit(operations, started.elapsed());
                    continue;
                }
                BatchEnd::NotWritten => None,
                BatchEnd::CommitFailed(unresolved) => Some(unresolved),
            };
            if shutdown.is_some() {
                // Stopping: the batch was not acknowledged; its callers retry
                // against the next instance.
                if let Some(batch) = unresolved {
                    batch.give_up("the ledger is shutting down");
                }
                break;
            }
            shutdown = self.recover(&mut queue, unresolved);
        }
        queue.close();
        tracing::info!("ledger writer stopped");
        if let Some(done) = shutdown {
            let _ = done.send(());
        }
    }

    /// Applies and commits one batch and answers it (unless its commit failed);
    /// returns how it ended and the shutdown request if the batch held one
    /// (operations queued behind it are still in the batch and are applied first).
    pub(super) fn commit_batch(
        &mut self,
        batch: &mut Vec<Queued<QueuedWrite>>,
    ) -> (BatchEnd, Option<oneshot::Sender<()>>) {
        let mut applied = Vec::with_capacity(batch.len());
        let mut shutdown = None;
        let mut not_reached = Vec::new();
        let outcome = self.apply_and_commit(batch, &mut applied, &mut not_reached, &mut shutdown);
        // What the batch still holds was never applied: after a failure to begin
        // the batch, all of it; after a failed write, what came behind it.
        for op in batch.drain(..).chain(not_reached) {
            match op {
                Queued::Write(op) => refuse(op, Error::not_written("its batch failed")),
                Queued::Shutdown(done) => shutdown = Some(done),
            }
        }
        let end = match outcome {
            Ok(sequence) => {
                self.last_sequence = sequence;
                for done in applied {
                    done.answer(None);
                }
                BatchEnd::Done
            }
            Err(Failed::BeforeCommit(error)) if is_io_failure(&error) => {
                self.record_failure("ledger batch not written", &error);
                let refusal = Error::not_written(&error);
                for done in applied {
                    done.answer(Some(&refusal));
                }
                BatchEnd::NotWritten
            }
            Err(Failed::BeforeCommit(error)) => {
                // A write met stored data it cannot make sense of: it gets that
                // error; the others of its batch were not written and may retry.
                tracing::error!(%error, operations = applied.len(), "ledger batch not committed");
                let refusal = Error::not_written("another write of its batch failed");
                for done in applied {
                    let own = done.outcome.failure().is_some();
                    done.answer((!own).then_some(&refusal));
                }
                BatchEnd::Done
            }
            Err(Failed::Commit {
                error,
                batch_sequence,
            }) => {
                self.record_failure("ledger commit failed", &error);
                BatchEnd::CommitFailed(Unresolved {
                    applied,
                    previous_sequence: self.last_sequence,
                    batch_sequence,
                })
            }
        };
        (end, shutdown)
    }

    /// Applies the batch in one write transaction and commits it; returns the
    /// last sequence it committed. Stops at the first write that fails and
    /// leaves the writes behind it in `not_reached`.
    pub(super) fn apply_and_commit(
        &self,
        batch: &mut Vec<Queued<QueuedWrite>>,
        applied: &mut Vec<Applied>,
        not_reached: &mut Vec<Queued<QueuedWrite>>,
        shutdown: &mut Option<oneshot::Sender<()>>,
    ) -> Result<u64, Failed> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| Failed::BeforeCommit(Error::unavailable("no database handle")))?;
        let mut txn = db
            .begin_write()
            .map_err(|e| Failed::BeforeCommit(db_error(e)))?;
        txn.set_durability(Durability::Immediate);
        let batch_sequence = {
            let mut tables =
                Tables::open::<H>(&txn, self.last_sequence).map_err(Failed::BeforeCommit)?;
            let mut ops = batch.drain(..);
            while let Some(op) = ops.next() {
                let (request, waiter) = match op {
                    Queued::Write(pending) => pending,
                    Queued::Shutdown(done) => {
                        *shutdown = Some(done);
                        continue;
                    }
                };
                let outcome = match request {
                    Request::CreateVoucher(v) => WriteAnswer::Voucher(tables.create_voucher(v)),
                    Request::Claim(c) => WriteAnswer::Redemption(tables.claim(c)),
                    Request::CreateProfile(p) => WriteAnswer::Wallet(tables.create_profile(p)),
                    Request::Transact(t) => WriteAnswer::Transaction(tables.transact(t)),
                    Request::Settle(id, r) => WriteAnswer::Redemption(tables.settle(id, r)),
                };
                let failure = outcome.failure().cloned();
                let done = Applied { waiter, outcome };
                applied.push(done);
                if let Some(error) = failure {
                    not_reached.extend(ops);
                    return Err(Failed::BeforeCommit(error));
                }
            }
            tables.last_sequence
        };
        txn.commit().map_err(|e| Failed::Commit {
            error: db_error(e),
            batch_sequence,
        })?;
        Ok(batch_sequence)
    }
}
