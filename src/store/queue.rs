//! The bounded queue in front of a ledger's single writer, shared by every backend.
//!
//! Submitting is synchronous: a write enters the queue when the ledger method is
//! called, before its future is polled, so callers that call in some order (an
//! actor handling its mailbox) get their writes applied in that order (the
//! contract of [`super::Ledger`]). A full queue is an immediate `Overloaded`
//! rather than an unbounded wait.

use tokio::sync::{mpsc, oneshot};

use super::LedgerFuture;
use crate::error::{Error, Result};
use crate::limits::MAX_LEDGER_QUEUE_OPS;

/// What the writer receives: a backend's write, or the request to finish.
pub enum Queued<Op> {
    Write(Op),
    /// Apply everything queued before this, refuse what comes after, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// The submitting side of a writer's queue.
pub struct WriteQueue<Op> {
    sender: mpsc::Sender<Queued<Op>>,
}

impl<Op: Send + 'static> WriteQueue<Op> {
    /// A queue of at most [`MAX_LEDGER_QUEUE_OPS`] writes, and its receiving end.
    pub fn bounded() -> (Self, mpsc::Receiver<Queued<Op>>) {
        let (sender, receiver) = mpsc::channel(MAX_LEDGER_QUEUE_OPS);
        (Self { sender }, receiver)
    }

    /// Queues `op` now and returns the future of its answer, which the writer
    /// sends through the sender paired with `answer`.
    pub fn submit<T: Send + 'static>(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<T>>,
    ) -> LedgerFuture<T> {
        let submitted = self.sender.try_send(Queued::Write(op));
        Box::pin(async move {
            match submitted {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Err(Error::unavailable("ledger writer stopped"))),
                Err(mpsc::error::TrySendError::Full(_)) => Err(Error::Overloaded),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(Error::unavailable("ledger is shut down"))
                }
            }
        })
    }

    /// Finishes every write queued so far and stops the writer.
    pub fn shutdown(&self) -> LedgerFuture<()> {
        let (done, finished) = oneshot::channel();
        let sender = self.sender.clone();
        Box::pin(async move {
            // The queue may be full; wait for room rather than skip the flush.
            if sender.send(Queued::Shutdown(done)).await.is_err() {
                return Ok(()); // Already shut down.
            }
            finished
                .await
                .map_err(|_| Error::unavailable("ledger writer stopped before flushing"))
        })
    }
}

/// Ends the process when a ledger writer panics. A panic there means an invariant
/// assertion failed (the ledger would otherwise have been written wrong); carrying
/// on would leave an instance that looks ready but can never write. Stopping lets
/// the supervisor (systemd, Kubernetes) restart it on the last durable state.
pub fn stop_process_after_writer_panic() -> ! {
    tracing::error!("the ledger writer panicked: an invariant broke; stopping the process");
    std::process::abort()
}
