//! Settling a redemption: its key's status first (the decision), then for a
//! void the slot's release, then the log entry. A crash after the decision
//! leaves the log entry, and recovery finishes the release; settling again
//! with the same status finishes it too.
//!
//! A user's key holds one redemption at a time, but not always the same
//! one: once a redemption is void its user may claim again, and the next
//! claim's attempt commits a new redemption under the same id. So a settle
//! names the attempt whose redemption it settles ([`Settling::Attempt`]),
//! and one that finds the key holding a newer attempt's redemption changes
//! nothing ([`Settled::Superseded`]): a decision about an old redemption
//! (a slow instance, a recovery pass working from an old view) never lands
//! on the next one. Only split mode's settle by id cannot name its attempt
//! ([`Settling::ById`], see there why that is safe).

use uuid::Uuid;

use super::claim::redemption_of;
use super::schema::{col, int, log_key, Holder, KeyState, SlotState, VoucherRow};
use super::store::{Cas, CasOutcome, CasStore, RowKey, Value, Write};
use super::{Inner, PlantedBug};
use voucherd_core::domain::{voucher_reference, Redemption, RedemptionStatus};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::Resolution;
use voucherd_core::ledger::{HalfKind, NewTransaction};
use voucherd_core::redemption::is_final_refusal;

/// Which redemption of a user's key a settle settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settling {
    /// The one this claim attempt made (the key's committed `slot_attempt`):
    /// what an all-in-one ledger's credit and recovery settle, as they know
    /// the attempt.
    Attempt(Uuid),
    /// Whichever the key holds when the settle reads it: split mode's
    /// [`voucherd_core::ledger::PendingLedger::settle`], whose caller knows the
    /// id only. Safe because the wallet service's answer for a credit id is
    /// final (a refusal is recorded and replayed, as an applied credit is)
    /// and a redemption's credit id is its redemption id: every attempt of
    /// one id gets the same answer, so the answer given for an older attempt
    /// is the answer its successor gets. An applied credit cannot even be
    /// stale: a redemption whose credit applied is never voided, so its user
    /// never claims again. The write itself is conditioned on the key's
    /// version as read, so it settles the redemption that read showed.
    ById,
}

/// What a settle came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Settled {
    /// The key holds the redemption, settled as asked (now or before).
    Done(Redemption),
    /// The key holds a newer attempt's redemption (the one to settle was
    /// void and its user claimed again): nothing was written, and the key
    /// is the newer redemption's to settle.
    Superseded,
}

impl<S: CasStore, H: HalfKind> Inner<S, H> {
    /// See [`voucherd_core::ledger::PendingLedger::settle`]: the redemption
    /// `which` names, `Pending` → the resolution's status. An attempt's
    /// settle decides `Superseded` only on a view at least as new as the
    /// attempt's commit (a serial read or a write's answer): a plain read
    /// may not show the commit yet.
    pub(super) async fn settle(
        &self,
        id: Uuid,
        which: Settling,
        resolution: Resolution,
    ) -> Result<Settled> {
        let which = if self.options.planted == PlantedBug::SettleAnyAttempt {
            Settling::ById
        } else {
            which
        };
        let target = resolution.status();
        assert_ne!(
            target,
            RedemptionStatus::Pending,
            "a settle decides the redemption"
        );
        let balance = match resolution {
            Resolution::Credited { balance } => int(balance),
            Resolution::Void { .. } => None,
        };
        let mut row = self.key_row(id, false).await?;
        let mut fresh = false;
        for _ in 0..self.options.max_steps {
            let key = KeyState::read(row.as_ref())?;
            let committed = match (key.committed, which) {
                (Some(committed), Settling::ById) => committed,
                (Some(committed), Settling::Attempt(nonce)) if committed.attempt == nonce => {
                    committed
                }
                (None, Settling::ById) => return Err(Error::RedemptionNotFound),
                _ if !fresh => {
                    row = self.key_row(id, true).await?;
                    fresh = true;
                    continue;
                }
                (None, _) => return Err(Error::RedemptionNotFound),
                (Some(_), _) => return Ok(Settled::Superseded),
            };
            if committed.status == target {
                return self.settled(id, &key).await.map(Settled::Done);
            }
            if committed.status != RedemptionStatus::Pending {
                return Err(Error::storage(format!(
                    "redemption {id} is {} and cannot become {}",
                    committed.status.as_str(),
                    target.as_str()
                )));
            }
            let set = vec![
                (col::STATUS, int(i64::from(target.stored()))),
                (col::BALANCE, balance.clone()),
            ];
            row = self.write_key(id, &row, set).await?;
            fresh = true;
        }
        Err(Error::unavailable("a settle kept being contended"))
    }

    /// Finishes a settled redemption: a void one's slot is released; the log
    /// entry goes.
    async fn settled(&self, id: Uuid, key: &KeyState) -> Result<Redemption> {
        let redemption =
            redemption_of(id, key)?.ok_or_else(|| Error::storage("a settled key holds nothing"))?;
        let committed = key
            .committed
            .ok_or_else(|| Error::storage("a settled key holds nothing"))?;
        if redemption.status == RedemptionStatus::Void {
            let voucher = self.known_voucher(&redemption.code).await?;
            let holder = Holder {
                id,
                attempt: committed.attempt,
            };
            self.release(&voucher, redemption.slot, holder).await?;
        }
        let entry = log_key(
            committed.claimed_at,
            id,
            committed.attempt,
            self.options.log_shards,
        );
        let _ = self.store.remove(entry).await;
        Ok(redemption)
    }

    /// A voucher a redemption refers to: it must exist.
    pub(super) async fn known_voucher(
        &self,
        code: &voucherd_core::domain::VoucherCode,
    ) -> Result<std::sync::Arc<VoucherRow>> {
        (self.voucher_row(code).await?)
            .ok_or_else(|| Error::storage(format!("voucher {code} is referenced but missing")))
    }

    /// Frees `slot` if `holder` still holds it.
    pub(super) async fn release(
        &self,
        voucher: &VoucherRow,
        slot: u32,
        holder: Holder,
    ) -> Result<()> {
        let key = voucher.slot_key(slot);
        let mut state = self.slot_state(voucher, slot, false).await?;
        for _ in 0..self.options.max_steps {
            if !state.held_by(holder) {
                return Ok(());
            }
            state = match self.store.cas(release_write(&key, holder)).await {
                CasOutcome::Applied => return Ok(()),
                CasOutcome::NotApplied(current) => SlotState::read(current.row(&key.row))?,
                CasOutcome::Unknown => self.slot_state(voucher, slot, true).await?,
            };
        }
        Err(Error::unavailable("a slot release kept being contended"))
    }

    /// An all-in-one ledger's credit of the claim `attempt` made pending:
    /// the local wallet applies it (idempotent by the redemption id) and the
    /// claim is settled by the answer; an unknown answer leaves it pending,
    /// for recovery.
    ///
    /// The credit's refusal is final (`refusal_is_final`): the wallet
    /// records it in the same batch that decides it, so the id is refused
    /// for good however the wallet changes later, as the wallet service's
    /// is. Only such a refusal voids the claim: a void redemption then never
    /// gets its credit from another instance that still sees it pending (a
    /// recovery pass) once the wallet has room, and every later claim of the
    /// same user (the same id) gets the same answer.
    pub(super) async fn credit_locally(
        &self,
        redemption: Redemption,
        attempt: Uuid,
    ) -> Result<Redemption> {
        let credit = NewTransaction {
            id: redemption.id,
            replayable: false,
            phone: redemption.phone,
            amount: redemption.amount,
            reference: voucher_reference(&redemption.code),
            at: redemption.redeemed_at,
            refusal_is_final: true,
        };
        let settling = Settling::Attempt(attempt);
        match self.transact(credit).await {
            Ok(transaction) => {
                let balance = transaction.balance_after;
                let credited = Resolution::Credited { balance };
                match self.settle(redemption.id, settling, credited).await {
                    Ok(Settled::Done(settled)) => Ok(settled),
                    // Voided, though its credit applied: only a refusal
                    // recorded for good voids, so the protocol broke. Not
                    // answered as credited.
                    Ok(Settled::Superseded) => Err(Error::storage(format!(
                        "redemption {} was voided and claimed again, yet its credit applied",
                        redemption.id
                    ))),
                    // The credit is durable: the claim stands credited even
                    // if recording it failed (recovery records it).
                    Err(_) => Ok(Redemption {
                        status: RedemptionStatus::Credited,
                        balance: Some(balance),
                        ..redemption
                    }),
                }
            }
            Err(refusal) if is_final_refusal(&refusal) => {
                let reason = refusal.to_string();
                // Superseded: this attempt's redemption is void already (by
                // this same refusal) and its user claimed again.
                self.settle(redemption.id, settling, Resolution::Void { reason })
                    .await?;
                Err(refusal)
            }
            Err(unknown) => Err(unknown),
        }
    }
}

/// The release of slot `key`, which `state` shows held by `holder`.
fn release_write(key: &RowKey, holder: Holder) -> Cas {
    let write = Write::Update {
        row: key.row.clone(),
        when: vec![
            (col::HOLDER, Some(Value::Uuid(holder.id))),
            (col::ATTEMPT, Some(Value::Uuid(holder.attempt))),
        ],
        set: vec![(col::HOLDER, None), (col::ATTEMPT, None)],
    };
    Cas {
        partition: key.partition.clone(),
        writes: vec![write],
    }
}

#[cfg(test)]
mod tests;
