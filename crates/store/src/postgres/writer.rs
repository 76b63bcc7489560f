//! The batch writer: the single task that owns the group commit. Write methods
//! queue their operation synchronously (submission order is apply order) and the
//! writer applies whatever is queued, up to [`MAX_COMMIT_BATCH_OPS`], in ONE
//! database transaction, wave by wave.
//!
//! A batch that fails (lost connection, serialization failure, deadlock with
//! another instance, a standby refusing to write after a failover) is retried
//! whole with backoff; nothing of it was acknowledged, so a retry never answers
//! anyone twice.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::ExponentialBuilder;
use backon::Retryable;
use deadpool_postgres::{Object, Pool, Transaction};
use tokio::sync::mpsc;
use voucherd_core::error::Result;
use voucherd_core::ledger::HalfKind;
use voucherd_core::limits::{ACTOR_CALL_TIMEOUT_MS, MAX_COMMIT_BATCH_OPS};
use voucherd_metrics::Metrics;

use super::claims::{claim_slots, create_vouchers};
use super::errors::Failure;
use super::outcome::Progress;
use super::settles::settle_redemptions;
use super::wallet_writes::apply_wallet_ops;
use super::waves::plan_wave;
use crate::queue::{Queued, QueuedWrite, Request, WriteAnswer};

/// How long one attempt at a batch may take, from BEGIN to the end of COMMIT.
/// A full batch takes tens of milliseconds; the rest is room for lock waits on
/// rows another instance holds. Shorter than a caller's wait so that a retry
/// can still answer in time.
const BATCH_ATTEMPT_TIMEOUT_MS: u64 = 4_000;
/// Retries of a failed batch after the first attempt.
const MAX_BATCH_RETRIES: usize = 3;
/// First delay before a retry; it doubles (with jitter) up to the maximum.
pub(super) const RETRY_MIN_DELAY_MS: u64 = 10;
/// Longest delay between two attempts at a batch.
pub(super) const RETRY_MAX_DELAY_MS: u64 = 400;

// A batch's attempts and delays together must fit in a caller's wait, or every
// retry would answer a caller that has already given up.
const _: () = assert!(
    BATCH_ATTEMPT_TIMEOUT_MS * 2 + RETRY_MIN_DELAY_MS < ACTOR_CALL_TIMEOUT_MS,
    "two attempts at a batch must fit in one actor call"
);
const _: () = assert!(RETRY_MIN_DELAY_MS <= RETRY_MAX_DELAY_MS);

/// The single task that writes: it owns the group commit.
pub(super) struct Writer<H: HalfKind> {
    pub(super) pool: Pool,
    /// Which halves the store holds: in a voucher half, claims are born pending.
    pub(super) half: PhantomData<H>,
    pub(super) metrics: Arc<Metrics>,
}

impl<H: HalfKind> Writer<H> {
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Queued<QueuedWrite>>) {
        let mut requests = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut waiters = Vec::with_capacity(MAX_COMMIT_BATCH_OPS);
        let mut shutdowns = Vec::new();
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Queued::Write((request, waiter)) => {
                        requests.push(request);
                        waiters.push(waiter);
                    }
                    Queued::Shutdown(done) => {
                        // Refuse new writes; those already queued are still
                        // applied, since recv drains a closed queue.
                        shutdowns.push(done);
                        queue.close();
                    }
                }
                if requests.len() < MAX_COMMIT_BATCH_OPS {
                    next = queue.try_recv().ok();
                }
            }
            if requests.is_empty() {
                continue;
            }
            let outcomes = self.commit(&requests).await;
            requests.clear();
            for (waiter, outcome) in waiters.drain(..).zip(outcomes) {
                waiter.answer(outcome);
            }
        }
        tracing::info!("ledger writer stopped");
        for done in shutdowns {
            let _ = done.send(());
        }
    }

    /// Applies one batch, retrying it whole on transient failures; returns one
    /// outcome per request.
    pub(super) async fn commit(&self, requests: &[Request]) -> Vec<WriteAnswer> {
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_delay(Duration::from_millis(RETRY_MAX_DELAY_MS))
            .with_max_times(MAX_BATCH_RETRIES)
            .with_jitter();
        let result = (|| self.attempt(requests))
            .retry(backoff)
            .when(Failure::is_transient)
            .notify(|failure, delay| {
                tracing::warn!(
                    error = %failure,
                    operations = requests.len(),
                    delay_ms = delay.as_millis() as u64,
                    "ledger batch not committed; retrying"
                );
            })
            .await;
        match result {
            Ok(outcomes) => {
                self.metrics
                    .observe_ledger_commit(requests.len(), started.elapsed());
                outcomes
            }
            Err(failure) => {
                tracing::error!(error = %failure, operations = requests.len(), "ledger batch failed");
                let error = failure.into_error();
                requests
                    .iter()
                    .map(|request| WriteAnswer::failed(request, error.clone()))
                    .collect()
            }
        }
    }

    pub(super) async fn attempt(&self, requests: &[Request]) -> Result<Vec<WriteAnswer>, Failure> {
        let mut client = self.pool.get().await?;
        let mut progress = Progress::new(requests.len());
        let limit = Duration::from_millis(BATCH_ATTEMPT_TIMEOUT_MS);
        let run = apply_batch::<H>(&mut client, requests, &mut progress);
        let failure = match tokio::time::timeout(limit, run).await {
            Ok(Ok(())) => return progress.into_outcomes(),
            Ok(Err(failure)) => {
                if failure.discards_connection() {
                    // Broken, or attached to a server that does not write (a
                    // standby after a failover): the pool's recycling only
                    // checks that a connection is open, so it must not get it
                    // back. The retry opens a new one, which a multi-host URL
                    // with target_session_attrs=read-write sends to the primary.
                    drop(Object::take(client));
                } else {
                    drop(client);
                }
                failure
            }
            Err(_) => {
                // The connection is somewhere inside the protocol: never hand
                // it out again. Closing it rolls back whatever was not committed.
                drop(Object::take(client));
                Failure::connection("a ledger batch did not finish in time")
            }
        };
        if progress.committing && failure.leaves_commit_unknown() {
            return self.resolve(progress, failure).await;
        }
        Err(failure)
    }
}

/// Applies every request in one transaction, wave by wave, and commits.
pub(super) async fn apply_batch<H: HalfKind>(
    client: &mut Object,
    requests: &[Request],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let transaction = client.transaction().await?;
    apply_waves::<H>(&transaction, requests, progress).await?;
    progress.committing = true;
    transaction.commit().await?;
    Ok(())
}

/// Applies every request inside `transaction`, wave by wave.
pub(super) async fn apply_waves<H: HalfKind>(
    transaction: &Transaction<'_>,
    requests: &[Request],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    while !pending.is_empty() {
        let (wave, deferred) = plan_wave(requests, &pending);
        apply_wave::<H>(transaction, requests, &wave, progress).await?;
        pending = deferred;
    }
    Ok(())
}

async fn apply_wave<H: HalfKind>(
    transaction: &Transaction<'_>,
    requests: &[Request],
    wave: &[usize],
    progress: &mut Progress,
) -> Result<(), Failure> {
    let mut vouchers = Vec::new();
    let mut claims = Vec::new();
    let mut wallet_ops = Vec::new();
    let mut settles = Vec::new();
    for &index in wave {
        match &requests[index] {
            Request::CreateVoucher(voucher) => vouchers.push((index, voucher)),
            Request::Claim(claim) => claims.push((index, claim)),
            Request::CreateProfile(_) | Request::Transact(_) => wallet_ops.push(index),
            Request::Settle(id, resolution) => settles.push((index, *id, resolution)),
        }
    }
    create_vouchers(transaction, &vouchers, progress).await?;
    claim_slots::<H>(transaction, &claims, progress).await?;
    apply_wallet_ops(transaction, requests, &wallet_ops, progress).await?;
    settle_redemptions::<H>(transaction, &settles, progress).await
}
