//! The writer thread: the group commit.
//!
//! All writes go through one writer thread that groups whatever is queued (up to
//! [`MAX_COMMIT_BATCH_OPS`]) into a single write transaction and one durable commit,
//! so throughput is not bounded by one fsync per request. Each operation inside a
//! batch checks its conditions before it writes anything, so a rejected operation
//! leaves no trace; a storage failure aborts the whole batch and every operation in
//! it is answered as failed (nothing of it was acknowledged, nothing is kept).

use super::*;

/// An operation applied inside the open batch, waiting for the commit to answer.
pub(super) enum Applied {
    Voucher(Reply<VoucherStatus>, Result<VoucherStatus>),
    Redemption(Reply<Redemption>, Result<Redemption>),
    Wallet(Reply<Wallet>, Result<Wallet>),
    Transaction(Reply<WalletTransaction>, Result<WalletTransaction>),
}

impl Applied {
    /// The ledger failure the operation met, which stops its batch; business
    /// answers such as `AlreadyRedeemed` are not failures.
    pub(super) fn failure(&self) -> Option<&Error> {
        fn failed<T>(result: &Result<T>) -> Option<&Error> {
            result
                .as_ref()
                .err()
                .filter(|e| matches!(e, Error::Storage { .. } | Error::Unavailable { .. }))
        }
        match self {
            Applied::Voucher(_, r) => failed(r),
            Applied::Redemption(_, r) => failed(r),
            Applied::Wallet(_, r) => failed(r),
            Applied::Transaction(_, r) => failed(r),
        }
    }

    /// Sends the outcome, or `instead` if the batch did not commit. A caller that
    /// stopped waiting (its request timed out) is not an error here.
    pub(super) fn answer(self, instead: Option<&Error>) {
        fn send<T>(reply: Reply<T>, result: Result<T>, instead: Option<&Error>) {
            let _ = reply.send(match instead {
                Some(error) => Err(error.clone()),
                None => result,
            });
        }
        match self {
            Applied::Voucher(reply, result) => send(reply, result, instead),
            Applied::Redemption(reply, result) => send(reply, result, instead),
            Applied::Wallet(reply, result) => send(reply, result, instead),
            Applied::Transaction(reply, result) => send(reply, result, instead),
        }
    }
}

impl WriteOp {
    /// Answers an operation that was never applied.
    pub(super) fn refuse(self, error: Error) {
        match self {
            WriteOp::CreateVoucher(_, reply) => drop(reply.send(Err(error))),
            WriteOp::Claim(_, reply) => drop(reply.send(Err(error))),
            WriteOp::CreateProfile(_, reply) => drop(reply.send(Err(error))),
            WriteOp::Transact(_, reply) => drop(reply.send(Err(error))),
        }
    }
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
pub(super) struct Writer {
    pub(super) database: Arc<SharedDatabase>,
    /// The handle writes go through; None only while it is being replaced.
    pub(super) db: Option<Arc<Database>>,
    pub(super) last_sequence: u64,
    pub(super) metrics: Arc<Metrics>,
    pub(super) errors: ErrorLog,
}

impl Writer {
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Queued<WriteOp>>) {
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
        batch: &mut Vec<Queued<WriteOp>>,
    ) -> (BatchEnd, Option<oneshot::Sender<()>>) {
        let mut applied = Vec::with_capacity(batch.len());
        let mut shutdown = None;
        let mut not_reached = Vec::new();
        let outcome = self.apply_and_commit(batch, &mut applied, &mut not_reached, &mut shutdown);
        // What the batch still holds was never applied: after a failure to begin
        // the batch, all of it; after a failed write, what came behind it.
        for op in batch.drain(..).chain(not_reached) {
            match op {
                Queued::Write(op) => op.refuse(Error::not_written("its batch failed")),
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
                    let own = done.failure().is_some();
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
        batch: &mut Vec<Queued<WriteOp>>,
        applied: &mut Vec<Applied>,
        not_reached: &mut Vec<Queued<WriteOp>>,
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
                Tables::open(&txn, self.last_sequence).map_err(Failed::BeforeCommit)?;
            let mut ops = batch.drain(..);
            while let Some(op) = ops.next() {
                let done = match op {
                    Queued::Write(WriteOp::CreateVoucher(v, reply)) => {
                        Applied::Voucher(reply, tables.create_voucher(v))
                    }
                    Queued::Write(WriteOp::Claim(c, reply)) => {
                        Applied::Redemption(reply, tables.claim(c))
                    }
                    Queued::Write(WriteOp::CreateProfile(p, reply)) => {
                        Applied::Wallet(reply, tables.create_profile(p))
                    }
                    Queued::Write(WriteOp::Transact(t, reply)) => {
                        Applied::Transaction(reply, tables.transact(t))
                    }
                    Queued::Shutdown(done) => {
                        *shutdown = Some(done);
                        continue;
                    }
                };
                let failure = done.failure().cloned();
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
