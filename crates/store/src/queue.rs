//! The bounded queue in front of a ledger's single writer, shared by every backend.
//!
//! Submitting is synchronous: a write enters the queue when the ledger method is
//! called, before its future is polled, so callers that call in some order (an
//! actor handling its mailbox) get their writes applied in that order (the
//! contract of [`super::Ledger`]). A full queue is an immediate `Overloaded`
//! rather than an unbounded wait.
//!
//! The reply plumbing is shared too: a write travels as a [`Request`] with the
//! [`Waiter`] that gets its answer; a backend's writer turns each request into
//! an [`WriteAnswer`] and, once its batch committed (or failed), hands it to the
//! waiter. A backend writes only how a request is applied.

use tokio::sync::{mpsc, oneshot};

use uuid::Uuid;

use voucherd_core::domain::{Redemption, Voucher, VoucherStatus, Wallet, WalletTransaction};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::Resolution;
use voucherd_core::ledger::{Claim, LedgerFuture, NewProfile, NewTransaction};
use voucherd_core::limits::MAX_LEDGER_QUEUE_OPS;

/// Where a write's answer goes.
pub type Reply<T> = oneshot::Sender<Result<T>>;

/// A write, as queued for a ledger's writer.
pub enum Request {
    CreateVoucher(Voucher),
    Claim(Claim),
    CreateProfile(NewProfile),
    Transact(NewTransaction),
    /// Settles a pending redemption (voucher half only).
    Settle(Uuid, Resolution),
}

/// Whoever waits for a write's outcome.
pub enum Waiter {
    Voucher(Reply<VoucherStatus>),
    Redemption(Reply<Redemption>),
    Wallet(Reply<Wallet>),
    Transaction(Reply<WalletTransaction>),
}

/// What a write came to, before its batch commits.
#[derive(Debug, Clone)]
pub enum WriteAnswer {
    Voucher(Result<VoucherStatus>),
    Redemption(Result<Redemption>),
    Wallet(Result<Wallet>),
    Transaction(Result<WalletTransaction>),
}

/// A queued write and whoever waits for it.
pub type QueuedWrite = (Request, Waiter);

impl WriteAnswer {
    /// The outcome of `request` when it was not applied, or its batch failed.
    pub fn failed(request: &Request, error: Error) -> Self {
        match request {
            Request::CreateVoucher(_) => WriteAnswer::Voucher(Err(error)),
            Request::Claim(_) | Request::Settle(..) => WriteAnswer::Redemption(Err(error)),
            Request::CreateProfile(_) => WriteAnswer::Wallet(Err(error)),
            Request::Transact(_) => WriteAnswer::Transaction(Err(error)),
        }
    }

    /// The ledger failure the write met, which stops its batch; business
    /// answers such as `AlreadyRedeemed` are not failures.
    pub fn failure(&self) -> Option<&Error> {
        let error = match self {
            WriteAnswer::Voucher(r) => r.as_ref().err(),
            WriteAnswer::Redemption(r) => r.as_ref().err(),
            WriteAnswer::Wallet(r) => r.as_ref().err(),
            WriteAnswer::Transaction(r) => r.as_ref().err(),
        };
        error.filter(|e| matches!(e, Error::Storage { .. } | Error::Unavailable { .. }))
    }
}

impl Waiter {
    /// Sends the outcome. A caller that stopped waiting (its request timed out)
    /// is not an error here.
    pub fn answer(self, outcome: WriteAnswer) {
        match (self, outcome) {
            (Waiter::Voucher(reply), WriteAnswer::Voucher(result)) => drop(reply.send(result)),
            (Waiter::Redemption(reply), WriteAnswer::Redemption(result)) => {
                drop(reply.send(result))
            }
            (Waiter::Wallet(reply), WriteAnswer::Wallet(result)) => drop(reply.send(result)),
            (Waiter::Transaction(reply), WriteAnswer::Transaction(result)) => {
                drop(reply.send(result))
            }
            (waiter, _) => {
                tracing::error!("ledger outcome does not match its operation");
                waiter.fail(Error::storage(
                    "ledger outcome does not match its operation",
                ));
            }
        }
    }

    /// Answers with `error`.
    pub fn fail(self, error: Error) {
        match self {
            Waiter::Voucher(reply) => drop(reply.send(Err(error))),
            Waiter::Redemption(reply) => drop(reply.send(Err(error))),
            Waiter::Wallet(reply) => drop(reply.send(Err(error))),
            Waiter::Transaction(reply) => drop(reply.send(Err(error))),
        }
    }
}

/// What the writer receives: a backend's write, or the request to finish.
pub enum Queued<Op> {
    Write(Op),
    /// Apply everything queued before this, refuse what comes after, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// The submitting side of a writer's queue.
pub struct WriteQueue {
    sender: mpsc::Sender<Queued<QueuedWrite>>,
}

impl WriteQueue {
    /// A queue of at most [`MAX_LEDGER_QUEUE_OPS`] writes, and its receiving end.
    pub fn bounded() -> (Self, mpsc::Receiver<Queued<QueuedWrite>>) {
        let (sender, receiver) = mpsc::channel(MAX_LEDGER_QUEUE_OPS);
        (Self { sender }, receiver)
    }

    /// Queues `request` now and returns the future of its answer, which the
    /// writer sends to the waiter `waiter` makes (`Waiter::Redemption`, …).
    pub fn submit<T: Send + 'static>(
        &self,
        request: Request,
        waiter: fn(Reply<T>) -> Waiter,
    ) -> LedgerFuture<T> {
        let (reply, answer) = oneshot::channel();
        let submitted = self
            .sender
            .try_send(Queued::Write((request, waiter(reply))));
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
