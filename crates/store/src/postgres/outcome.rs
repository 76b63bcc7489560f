//! Whether a batch whose COMMIT reply was lost committed.
//!
//! When the connection breaks while COMMIT is in flight, the
//! outcome is unknown, so before retrying the writer looks for one row the
//! batch wrote: if it is there the batch committed and its answers stand,
//! otherwise it is retried, and if the database cannot be asked the batch is
//! answered `Storage` rather than risk applying a transaction twice.

use std::time::Duration;

use backon::ExponentialBuilder;
use backon::Retryable;
use uuid::Uuid;
use voucherd_core::error::Result;
use voucherd_core::ledger::HalfKind;

use super::errors::Failure;
use super::writer::{Writer, RETRY_MAX_DELAY_MS, RETRY_MIN_DELAY_MS};
use crate::queue::WriteAnswer;

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
/// A redemption credited by a settle: credited is final, so once the row says
/// so it stays so.
const PROBE_CREDITED: &str = "SELECT 1 FROM redemptions WHERE id = $1 AND status = 1";
const PROBE_VOID: &str =
    "SELECT 1 FROM void_redemptions WHERE id = $1 AND slot = $2 AND redeemed_at = $3";
const PROBE_REFUSED: &str = "SELECT 1 FROM refused_transactions WHERE id = $1";

impl<H: HalfKind> Writer<H> {
    /// After COMMIT's reply was lost: answers the batch if it committed, asks
    /// for a retry if it did not, and gives up if that cannot be told.
    pub(super) async fn resolve(
        &self,
        progress: Progress,
        failure: Failure,
    ) -> Result<Vec<WriteAnswer>, Failure> {
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
                ..
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
            Probe::Credited { id } => client.query_opt(PROBE_CREDITED, &[id]).await?,
            Probe::Void {
                id,
                slot,
                redeemed_at,
            } => {
                client
                    .query_opt(PROBE_VOID, &[id, slot, redeemed_at])
                    .await?
            }
            Probe::Refused { id } => client.query_opt(PROBE_REFUSED, &[id]).await?,
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
    /// A claimed redemption (pending in a voucher half, which may settle it
    /// later in the same batch: see [`Progress::rewrote`]).
    Redemption {
        id: Uuid,
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
    /// A redemption a settle credited.
    Credited {
        id: Uuid,
    },
    /// A redemption a settle voided (moved to `void_redemptions`).
    Void {
        id: Uuid,
        slot: i64,
        redeemed_at: i64,
    },
    /// The mark of a transaction refused for good.
    Refused {
        id: Uuid,
    },
}

impl Probe {
    /// The redemption whose row the probe looks for, if it is one.
    fn redemption(&self) -> Option<Uuid> {
        match self {
            Probe::Redemption { id, .. } | Probe::Credited { id } | Probe::Void { id, .. } => {
                Some(*id)
            }
            Probe::Voucher { .. }
            | Probe::Transaction { .. }
            | Probe::Wallet { .. }
            | Probe::Refused { .. } => None,
        }
    }
}

/// What an attempt has decided so far. It lives outside the attempt's future
/// so that it survives a timeout during COMMIT.
pub(super) struct Progress {
    pub(super) outcomes: Vec<Option<WriteAnswer>>,
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

    pub(super) fn decide(&mut self, index: usize, outcome: WriteAnswer) {
        self.outcomes[index] = Some(outcome);
    }

    pub(super) fn wrote(&mut self, probe: impl FnOnce() -> Probe) {
        if self.probe.is_none() {
            self.probe = Some(probe());
        }
    }

    /// Like [`Progress::wrote`], for a write that replaced the row of
    /// redemption `id` (a void moves it out of `redemptions`, a later void of
    /// a claim again rewrites its void row): a probe looking for the old row
    /// would miss a batch that committed, so it gives way to `probe`.
    pub(super) fn rewrote(&mut self, id: Uuid, probe: impl FnOnce() -> Probe) {
        if self
            .probe
            .as_ref()
            .is_none_or(|p| p.redemption() == Some(id))
        {
            self.probe = Some(probe());
        }
    }

    pub(super) fn into_outcomes(self) -> Result<Vec<WriteAnswer>, Failure> {
        self.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Failure::permanent("a ledger operation was left undecided"))
            })
            .collect()
    }
}
