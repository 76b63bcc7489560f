//! Whether a batch whose COMMIT reply was lost committed.
//!
//! When the connection breaks while COMMIT is in flight, the
//! outcome is unknown, so before retrying the writer looks for one row the
//! batch wrote: if it is there the batch committed and its answers stand,
//! otherwise it is retried, and if the database cannot be asked the batch is
//! answered `Storage` rather than risk applying a transaction twice.

use super::*;

/// Attempts to find out whether a batch whose COMMIT reply was lost committed.
/// With the delays above they span about three seconds: long enough to ride out
/// a database restart, short enough to answer within a caller's wait.
const MAX_RESOLVE_ATTEMPTS: usize = 10;

// Rows that tell whether a batch committed (see `Probe`).
const PROBE_VOUCHER: &str = "SELECT 1 FROM vouchers WHERE code = $1 AND created_at = $2";
const PROBE_REDEMPTION: &str = "SELECT 1 FROM redemptions \
    WHERE code = $1 AND slot = $2 AND phone = $3 AND redeemed_at = $4";
const PROBE_TRANSACTION: &str =
    "SELECT 1 FROM wallet_transactions WHERE phone = $1 AND sequence = $2 AND id = $3";
const PROBE_WALLET: &str = "SELECT 1 FROM wallets WHERE phone = $1 AND created_at = $2";

impl Writer {
    /// After COMMIT's reply was lost: answers the batch if it committed, asks
    /// for a retry if it did not, and gives up if that cannot be told.
    pub(super) async fn resolve(
        &self,
        progress: Progress,
        failure: Failure,
    ) -> Result<Vec<Outcome>, Failure> {
        let Some(probe) = progress.probe.clone() else {
            // The batch wrote nothing: its answers hold either way.
            return progress.into_outcomes();
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_delay(Duration::from_millis(RETRY_MAX_DELAY_MS))
            .with_max_times(MAX_RESOLVE_ATTEMPTS);
        let committed = (|| self.probe(&probe))
            .retry(backoff)
            .when(Failure::is_transient)
            .await;
        match committed {
            Ok(true) => {
                tracing::warn!(error = %failure, "ledger commit reply lost; the batch committed");
                progress.into_outcomes()
            }
            Ok(false) => Err(failure),
            Err(unknown) => Err(Failure::Unresolved {
                cause: format!("commit outcome unknown ({failure}); checking failed: {unknown}"),
            }),
        }
    }

    pub(super) async fn probe(&self, probe: &Probe) -> Result<bool, Failure> {
        let client = self.pool.get().await?;
        let row = match probe {
            Probe::Voucher { code, created_at } => {
                client.query_opt(PROBE_VOUCHER, &[code, created_at]).await?
            }
            Probe::Redemption {
                code,
                slot,
                phone,
                redeemed_at,
            } => {
                client
                    .query_opt(PROBE_REDEMPTION, &[code, slot, phone, redeemed_at])
                    .await?
            }
            Probe::Transaction {
                phone,
                sequence,
                id,
            } => {
                client
                    .query_opt(PROBE_TRANSACTION, &[phone, sequence, id])
                    .await?
            }
            Probe::Wallet { phone, created_at } => {
                client.query_opt(PROBE_WALLET, &[phone, created_at]).await?
            }
        };
        Ok(row.is_some())
    }
}

/// One row a batch wrote, exact enough that finding it proves the batch
/// committed (a batch commits whole or not at all).
#[derive(Debug, Clone)]
pub(super) enum Probe {
    Voucher {
        code: String,
        created_at: i64,
    },
    Redemption {
        code: String,
        slot: i64,
        phone: i64,
        redeemed_at: i64,
    },
    Transaction {
        phone: i64,
        sequence: i64,
        id: Uuid,
    },
    Wallet {
        phone: i64,
        created_at: i64,
    },
}

/// What an attempt has decided so far. It lives outside the attempt's future
/// so that it survives a timeout during COMMIT.
pub(super) struct Progress {
    pub(super) outcomes: Vec<Option<Outcome>>,
    pub(super) probe: Option<Probe>,
    pub(super) committing: bool,
}

impl Progress {
    pub(super) fn new(operations: usize) -> Self {
        Self {
            outcomes: vec![None; operations],
            probe: None,
            committing: false,
        }
    }

    pub(super) fn decide(&mut self, index: usize, outcome: Outcome) {
        self.outcomes[index] = Some(outcome);
    }

    pub(super) fn wrote(&mut self, probe: impl FnOnce() -> Probe) {
        if self.probe.is_none() {
            self.probe = Some(probe());
        }
    }

    pub(super) fn into_outcomes(self) -> Result<Vec<Outcome>, Failure> {
        self.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Failure::permanent("a ledger operation was left undecided"))
            })
            .collect()
    }
}
