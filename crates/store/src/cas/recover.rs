//! Recovery of interrupted claims and settles, from the claim log.
//!
//! Every claim attempt is logged before it starts, and its entry stays until
//! nothing more is to be done for it: recovery takes the entries older than
//! a threshold, oldest first, and for each reads the user's key serially
//! (which also decides a write of it still in doubt):
//!
//! - the attempt is still in flight: it is driven to its end by the same
//!   driver the contender runs (the slot taken and the key committed, or the
//!   key released), whoever else drives it meanwhile;
//! - the attempt made a redemption: pending, the entry stays (it is how
//!   [`Inner::pending`] finds it; an all-in-one ledger credits it locally);
//!   credited, the entry goes; void, its slot is released, then the entry
//!   goes (the void attempt's own slot: every settle names the attempt it
//!   settles, so a redemption its user claimed since is left alone);
//! - the attempt never started, or ended without a redemption: while the
//!   key is still at the version its start expects, the version is bumped
//!   first (the start can never land after that); then its slot is released
//!   if it holds it (a void redemption whose user claimed again), and the
//!   entry goes.
//!
//! Every write is conditional, so recovery running beside live contenders
//! and other recovering instances changes nothing they decide.

use futures::future::join_all;
use futures::stream::{self, StreamExt};

use super::claim::{redemption_of, version_of, Finish};
use super::schema::{KeyState, LogEntry};
use super::settle::{Settled, Settling};
use super::store::{CasStore, Row};
use super::Inner;
use voucherd_core::domain::{RedemptionStatus, Timestamp};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{ClaimsRecovered, HalfKind, Resolution};

/// Log entries recovered at once.
const CONCURRENT_ENTRIES: usize = 8;

/// Log entries a pass reads, at most, per entry it may recover.
const SCANNED_PER_ENTRY: usize = 16;

/// What recovering one log entry came to.
enum Recovered {
    /// A claim in flight was driven to a redemption.
    Finished,
    /// A claim in flight lost its slot; its key was released.
    Abandoned,
    /// A pending redemption: left for the credit's recovery.
    Pending,
    /// A void redemption's slot was released.
    Released,
    /// The entry was left over (its attempt is over or never started).
    Cleaned,
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    /// See [`super::CasLedger::recover_claims`]. Entries of redemptions
    /// that are simply pending (their credit's recovery finishes them) are
    /// passed over on a plain read, so that a backlog of them (a wallet away
    /// for long) neither costs a Paxos round each per pass nor hides the
    /// interrupted claims logged after them.
    pub(super) async fn recover_claims(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> Result<ClaimsRecovered> {
        let mut pass = ClaimsRecovered::default();
        let entries = self
            .entries_to_recover(claimed_before, limit, &mut pass)
            .await?;
        pass.examined += entries.len();
        let outcomes: Vec<Result<Recovered>> = stream::iter(entries)
            .map(|entry| self.recover_owned(entry))
            .buffered(CONCURRENT_ENTRIES)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Ok(Recovered::Finished) => pass.finished += 1,
                Ok(Recovered::Abandoned) => pass.abandoned += 1,
                Ok(Recovered::Pending) => pass.pending += 1,
                Ok(Recovered::Released) => pass.released += 1,
                Ok(Recovered::Cleaned) => pass.cleaned += 1,
                Err(_) => pass.failed += 1,
            }
        }
        Ok(pass)
    }

    /// Up to `limit` log entries, oldest first, that need more than the
    /// credit's recovery; at most [`SCANNED_PER_ENTRY`] times as many read.
    async fn entries_to_recover(
        &self,
        claimed_before: Timestamp,
        limit: usize,
        pass: &mut ClaimsRecovered,
    ) -> Result<Vec<LogEntry>> {
        let mut log = self.log_since(claimed_before);
        let mut found = Vec::new();
        let mut scanned = 0;
        while found.len() < limit && scanned < limit.saturating_mul(SCANNED_PER_ENTRY) {
            let rows = log.take(&self.store, limit - found.len()).await?;
            if rows.is_empty() {
                break;
            }
            scanned += rows.len();
            let entries: Vec<LogEntry> = (rows.iter())
                .map(|(key, values)| LogEntry::read(key, values))
                .collect::<Result<_>>()?;
            let pending = join_all(entries.iter().map(|e| self.merely_pending(e))).await;
            for (entry, pending) in entries.into_iter().zip(pending) {
                if pending {
                    pass.examined += 1;
                    pass.pending += 1;
                } else {
                    found.push(entry);
                }
            }
        }
        Ok(found)
    }

    /// Whether a plain read shows the entry's redemption pending, with
    /// nothing for this pass to do (a voucher half's credit is the credit
    /// recovery's; a view gone stale is looked at again next pass).
    async fn merely_pending(&self, entry: &LogEntry) -> bool {
        if self.claims_credit() {
            return false;
        }
        let Ok(row) = self.key_row(entry.id, false).await else {
            return false;
        };
        let made = KeyState::read(row.as_ref()).map(|k| k.committed_by(entry.attempt));
        matches!(made, Ok(Some(c)) if c.status == RedemptionStatus::Pending)
    }

    async fn recover_owned(&self, entry: LogEntry) -> Result<Recovered> {
        self.recover_entry(&entry).await
    }

    async fn recover_entry(&self, entry: &LogEntry) -> Result<Recovered> {
        let row = self.key_row(entry.id, true).await?;
        let key = KeyState::read(row.as_ref())?;
        if key.attempt.is_some_and(|a| a.nonce == entry.attempt) {
            let voucher = self.known_voucher(&entry.code).await?;
            return match self
                .drive(&voucher, entry.id, entry.attempt, row, None)
                .await?
            {
                Finish::Won(row) => {
                    self.finish_locally(entry, &KeyState::read(row.as_ref())?)
                        .await?;
                    Ok(Recovered::Finished)
                }
                Finish::Lost => {
                    self.abandon(entry).await?;
                    Ok(Recovered::Abandoned)
                }
            };
        }
        match key.committed_by(entry.attempt).map(|c| c.status) {
            Some(RedemptionStatus::Pending) => {
                self.finish_locally(entry, &key).await?;
                Ok(Recovered::Pending)
            }
            Some(status) => self.settle_again(entry, status).await,
            None => self.clean(entry, row).await,
        }
    }

    /// A settled redemption's entry: settling its attempt again with its
    /// own status finishes the settle (a void's slot is released); the entry
    /// goes. Its user may have claimed again since the key was read, so that
    /// the key holds the next claim's redemption (still pending, say): that
    /// one is not this entry's to settle (the settle of this attempt is
    /// `Superseded`), only this attempt's slot is, if it still holds it.
    async fn settle_again(&self, entry: &LogEntry, status: RedemptionStatus) -> Result<Recovered> {
        let (resolution, recovered) = match status {
            RedemptionStatus::Void => {
                let reason = "recovered".to_owned();
                (Resolution::Void { reason }, Recovered::Released)
            }
            _ => (Resolution::Credited { balance: 0 }, Recovered::Cleaned),
        };
        let settling = Settling::Attempt(entry.attempt);
        match self.settle(entry.id, settling, resolution).await? {
            Settled::Done(_) => self.forget(entry).await,
            Settled::Superseded => self.abandon(entry).await?,
        }
        Ok(recovered)
    }

    /// An entry whose attempt, as the key read showed, is not in flight and
    /// made no live redemption. While the key is at the version the
    /// attempt's start expects, the start may still land: the version is
    /// bumped first (and if the start landed first, the entry is recovered
    /// again, now live). Once the key is past that version and shows no
    /// trace of the attempt, the attempt is over for good: it never took a
    /// slot, or made a redemption since voided, whose slot is released if it
    /// still holds it.
    async fn clean(&self, entry: &LogEntry, mut row: Option<Row>) -> Result<Recovered> {
        if version_of(&row)? == entry.version {
            row = self.write_key(entry.id, &row, Vec::new()).await?;
            if version_of(&row)? == entry.version {
                return Err(Error::unavailable("the key could not be fenced"));
            }
            let key = KeyState::read(row.as_ref())?;
            let live = key.attempt.is_some_and(|a| a.nonce == entry.attempt)
                || key.committed_by(entry.attempt).is_some();
            if live {
                return Box::pin(self.recover_entry(entry)).await;
            }
        }
        self.abandon(entry).await?;
        Ok(Recovered::Cleaned)
    }

    /// In an all-in-one ledger, a pending redemption's credit is local:
    /// recovery applies it (idempotently) and settles it.
    async fn finish_locally(&self, entry: &LogEntry, key: &KeyState) -> Result<()> {
        if !self.claims_credit() {
            return Ok(());
        }
        let Some(redemption) = redemption_of(entry.id, key)? else {
            return Ok(());
        };
        if redemption.status == RedemptionStatus::Pending {
            self.credit_locally(redemption, entry.attempt).await?;
        }
        Ok(())
    }
}
