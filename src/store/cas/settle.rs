//! Settling a redemption: its key's status first (the decision), then for a
//! void the slot's release, then the log entry. A crash after the decision
//! leaves the log entry, and recovery finishes the release; settling again
//! with the same status finishes it too.

use uuid::Uuid;

use super::claim::redemption_of;
use super::schema::{col, int, log_key, Holder, KeyState, SlotState, VoucherRow};
use super::store::{Cas, CasOutcome, CasStore, RowKey, Value, Write};
use super::Inner;
use crate::domain::{voucher_reference, Redemption, RedemptionStatus};
use crate::error::{Error, Result};
use crate::redemption::{is_final_refusal, Resolution};
use crate::store::NewTransaction;

impl<S: CasStore> Inner<S> {
    /// See [`crate::redemption::PendingLedger::settle`].
    pub(super) async fn settle(&self, id: Uuid, resolution: Resolution) -> Result<Redemption> {
        let target = resolution.status();
        let balance = match resolution {
            Resolution::Credited { balance } => int(balance),
            Resolution::Void { .. } => None,
        };
        let mut row = self.key_row(id, false).await?;
        for _ in 0..self.options.max_steps {
            let key = KeyState::read(row.as_ref())?;
            let Some(committed) = key.committed else {
                return Err(Error::RedemptionNotFound);
            };
            if committed.status == target {
                return self.settled(id, &key).await;
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
        code: &crate::domain::VoucherCode,
    ) -> Result<std::sync::Arc<VoucherRow>> {
        (self.voucher_row(code).await?)
            .ok_or_else(|| Error::storage(format!("voucher {code} is referenced but missing")))
    }

    /// Frees `slot` if `holder` still holds it, with the bucket's count.
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
            state = match self.store.cas(release_write(&key, &state, holder)?).await {
                CasOutcome::Applied => return Ok(()),
                CasOutcome::NotApplied(current) => {
                    SlotState::read(&current.statics, current.row(&key.row))?
                }
                CasOutcome::Unknown => self.slot_state(voucher, slot, true).await?,
            };
        }
        Err(Error::unavailable("a slot release kept being contended"))
    }

    /// An all-in-one ledger's credit of a claim it made pending: the local
    /// wallet applies it (idempotent by the redemption id) and the claim is
    /// settled by the answer; an unknown answer leaves it pending, for
    /// recovery.
    ///
    /// The credit's refusal is final (`refusal_is_final`): the wallet
    /// records it in the same batch that decides it, so the id is refused
    /// for good however the wallet changes later, as the wallet service's
    /// is. Only such a refusal voids the claim: a void redemption then never
    /// gets its credit from another instance that still sees it pending (a
    /// recovery pass) once the wallet has room, and every later claim of the
    /// same user (the same id) gets the same answer.
    pub(super) async fn credit_locally(&self, redemption: Redemption) -> Result<Redemption> {
        let credit = NewTransaction {
            id: redemption.id,
            replayable: false,
            phone: redemption.phone,
            amount: redemption.amount,
            reference: voucher_reference(&redemption.code),
            at: redemption.redeemed_at,
            refusal_is_final: true,
        };
        match self.transact(credit).await {
            Ok(transaction) => {
                let balance = transaction.balance_after;
                let settled = self
                    .settle(redemption.id, Resolution::Credited { balance })
                    .await;
                // The credit is durable: the claim stands credited even if
                // recording it failed (recovery records it).
                Ok(settled.unwrap_or(Redemption {
                    status: RedemptionStatus::Credited,
                    balance: Some(balance),
                    ..redemption
                }))
            }
            Err(refusal) if is_final_refusal(&refusal) => {
                let reason = refusal.to_string();
                self.settle(redemption.id, Resolution::Void { reason })
                    .await?;
                Err(refusal)
            }
            Err(unknown) => Err(unknown),
        }
    }
}

/// The release of slot `key`, which `state` shows held by `holder`.
fn release_write(key: &RowKey, state: &SlotState, holder: Holder) -> Result<Cas> {
    let taken = state.taken.unwrap_or(0);
    if taken < 1 {
        let detail = format!("slot {:?} is held, its bucket counts none", key.row);
        return Err(Error::storage(detail));
    }
    let write = Write::Update {
        row: key.row.clone(),
        when: vec![
            (col::TAKEN, int(taken)),
            (col::HOLDER, Some(Value::Uuid(holder.id))),
            (col::ATTEMPT, Some(Value::Uuid(holder.attempt))),
        ],
        set: vec![
            (col::TAKEN, int(taken - 1)),
            (col::HOLDER, None),
            (col::ATTEMPT, None),
        ],
    };
    Ok(Cas {
        partition: key.partition.clone(),
        writes: vec![write],
    })
}

#[cfg(test)]
#[path = "settle_tests.rs"]
mod tests;
