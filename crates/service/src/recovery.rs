//! The recovery task of a voucher service: finishes redemptions left pending.
//!
//! A redemption stays pending when its credit's answer was unknown (the wallet
//! was down, slow or partitioned away) or when the voucher service stopped
//! between claim and settle. On start and then every [`RECOVERY_INTERVAL_MS`]
//! (plus jitter, so instances sharing a ledger do not pass in step), a pass
//! takes the redemptions pending for longer than a threshold
//! ([`voucherd_core::limits::RECOVERY_PENDING_AFTER_MS`] unless configured),
//! oldest first, re-sends their credits in batches (idempotent: the wallet
//! applies an id once) and settles each by the answer, with
//! [`voucherd_core::redemption::recover_once`]. Concurrency is bounded by the batch
//! size and the wallet client's own limits. Two instances recovering the same
//! redemption is harmless: both credits carry one id, and settling is
//! idempotent.

use std::sync::Arc;
use std::time::Duration;

use voucherd_core::clock::Clock;
use voucherd_core::domain::{Redemption, Timestamp};
use voucherd_core::ledger::PendingLedger;
use voucherd_core::limits::{MAX_CREDITS_PER_CALL, RECOVERY_INTERVAL_MS, RECOVERY_MAX_PER_PASS};
use voucherd_core::redemption::{recover_once, CreditPort, RecoveryPass};
use voucherd_metrics::Metrics;

/// What recovery needs, shared with the task.
pub struct Recovery {
    pub ledger: Arc<dyn PendingLedger>,
    /// The wallet service (role `voucher`); None where claims carry their
    /// credit (role `all`), where a pass only finishes interrupted claims.
    pub wallet: Option<Arc<dyn CreditPort>>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// How long a redemption stays pending before a pass takes it
    /// ([`voucherd_core::limits::RECOVERY_PENDING_AFTER_MS`] unless configured).
    pub pending_after: Duration,
    /// Takes a redemption a pass voided back into the voucher shards' memory
    /// (its slot and its user key; the ledger released them).
    pub release: Arc<dyn Fn(&Redemption) + Send + Sync>,
}

impl Recovery {
    /// Runs passes until the task is dropped (aborted with the app).
    pub async fn run(self) {
        loop {
            let pass = self.pass().await;
            if pass.examined > 0 {
                tracing::info!(
                    examined = pass.examined,
                    credited = pass.credited,
                    voided = pass.voided,
                    still_pending = pass.still_pending,
                    "recovery pass"
                );
            }
            let full = pass.examined >= RECOVERY_MAX_PER_PASS;
            // A full pass means more are waiting: go on at once.
            if !full {
                tokio::time::sleep(next_interval()).await;
            }
        }
    }

    /// One pass over up to [`RECOVERY_MAX_PER_PASS`] pending redemptions, in
    /// batches of one wallet call each.
    pub async fn pass(&self) -> RecoveryPass {
        let now = self.clock.now();
        let threshold = i64::try_from(self.pending_after.as_micros()).unwrap_or(i64::MAX);
        let claimed_before = Timestamp(now.0.saturating_sub(threshold));
        self.recover_claims(claimed_before).await;
        let mut total = RecoveryPass::default();
        let Some(wallet) = &self.wallet else {
            return total;
        };
        while total.examined < RECOVERY_MAX_PER_PASS {
            let pass = match recover_once(
                self.ledger.as_ref(),
                wallet.as_ref(),
                claimed_before,
                MAX_CREDITS_PER_CALL,
            )
            .await
            {
                Ok(pass) => pass,
                Err(error) => {
                    tracing::warn!(%error, "recovery could not read the pending redemptions");
                    break;
                }
            };
            let done = pass.examined < MAX_CREDITS_PER_CALL || pass.still_pending > 0;
            for voided in &pass.released {
                (self.release)(voided);
            }
            merge(&mut total, pass);
            // A batch left pending (the wallet is still away) ends the pass:
            // the same redemptions would come first again.
            if done {
                break;
            }
        }
        let oldest_age = total
            .oldest
            .map(|at| Duration::from_micros(now.0.saturating_sub(at.0).max(0) as u64))
            .unwrap_or_default();
        self.metrics.protocol.observe_recovery(&total, oldest_age);
        total
    }
}

impl Recovery {
    /// Finishes claims a crash interrupted between their steps (a ledger
    /// whose claims are one write has none), so that they are pending, or
    /// gone, before credits are re-sent.
    async fn recover_claims(&self, claimed_before: Timestamp) {
        match (self.ledger)
            .recover_claims(claimed_before, RECOVERY_MAX_PER_PASS)
            .await
        {
            Ok(claims) if claims.examined > 0 => {
                tracing::info!(?claims, "recovered interrupted claims");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "recovery could not read the claim log"),
        }
    }
}

fn merge(total: &mut RecoveryPass, pass: RecoveryPass) {
    total.examined += pass.examined;
    total.credited += pass.credited;
    total.voided += pass.voided;
    total.still_pending += pass.still_pending;
    total.released.extend(pass.released);
    total.oldest = match (total.oldest, pass.oldest) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
}

/// The interval plus up to half of it again, at random.
fn next_interval() -> Duration {
    let jitter = rand_jitter(RECOVERY_INTERVAL_MS / 2);
    Duration::from_millis(RECOVERY_INTERVAL_MS + jitter)
}

/// A number in `0..=max`, from the low bits of a fresh v4 UUID (random enough
/// to spread instances apart; no cryptographic need).
fn rand_jitter(max: u64) -> u64 {
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    random % (max + 1)
}
