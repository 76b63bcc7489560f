//! The voucher ledger model, durable across crashes: claims (a free slot, the
//! user key and a pending redemption, one atomic write) and the
//! `PendingLedger` half of the protocol (settle: idempotent, one-way, void
//! releases slot and user key; pending: oldest first). Each operation takes a
//! little virtual time on both sides of the moment it applies, so a crash of
//! the caller can come before or after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::FutureExt;
use parking_lot::Mutex;
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, PhoneNumber, Redemption, RedemptionStatus, Timestamp, VoucherCode,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::LedgerFuture;
use voucherd_core::ledger::{PendingLedger, Resolution};

use voucherd_test_support::sim::world::{user, World};

#[derive(Debug)]
pub struct LedgerState {
    pub code: VoucherCode,
    pub amount: i64,
    pub limit: u32,
    /// Every redemption record ever written, in claim order. A user whose
    /// redemption was voided may claim again: the new claim has the same id
    /// (it derives from voucher and user) and becomes the live record, while
    /// the void one stays here for the checks.
    pub history: Vec<Redemption>,
    live: BTreeMap<Uuid, usize>,
    slots: BTreeMap<u32, Uuid>,
    users: BTreeMap<PhoneNumber, Uuid>,
    /// Settles that would have changed a settled redemption (refused).
    pub conflicts: Vec<String>,
}

impl LedgerState {
    pub fn live(&self, id: &Uuid) -> Option<&Redemption> {
        self.live.get(id).map(|&index| &self.history[index])
    }

    pub fn live_records(&self) -> impl Iterator<Item = &Redemption> {
        self.live.values().map(|&index| &self.history[index])
    }

    pub fn pending_count(&self) -> usize {
        let pending = |r: &&Redemption| r.status == RedemptionStatus::Pending;
        self.live_records().filter(pending).count()
    }

    fn claim(&mut self, world: &World, phone: PhoneNumber) -> Result<Redemption> {
        if self.users.contains_key(&phone) {
            return Err(Error::AlreadyRedeemed);
        }
        let free: Vec<u32> = (1..=self.limit)
            .filter(|slot| !self.slots.contains_key(slot))
            .collect();
        if free.is_empty() {
            return Err(Error::VoucherExhausted);
        }
        let slot = free[world.range(0, free.len() as u64 - 1) as usize];
        let redemption = Redemption {
            id: redemption_id(&self.code, phone),
            code: self.code.clone(),
            phone,
            amount: self.amount,
            slot,
            redeemed_at: world.now(),
            status: RedemptionStatus::Pending,
            balance: None,
        };
        if self.live.contains_key(&redemption.id) {
            world.event("ledger.claim_again_after_void", user(phone), 0);
        }
        self.live.insert(redemption.id, self.history.len());
        self.history.push(redemption.clone());
        self.slots.insert(slot, redemption.id);
        self.users.insert(phone, redemption.id);
        Ok(redemption)
    }

    fn settle(&mut self, world: &World, id: Uuid, resolution: Resolution) -> Result<Redemption> {
        let &index = self.live.get(&id).ok_or(Error::RedemptionNotFound)?;
        let record = &mut self.history[index];
        let target = resolution.status();
        if record.status == target {
            return Ok(record.clone());
        }
        if record.status != RedemptionStatus::Pending {
            let conflict = format!(
                "redemption of user {} is {:?}, asked to become {target:?}",
                user(record.phone),
                record.status
            );
            self.conflicts.push(conflict.clone());
            world.event("ledger.settle_conflict", user(record.phone), 0);
            return Err(Error::storage(conflict));
        }
        record.status = target;
        match resolution {
            Resolution::Credited { balance } => record.balance = Some(balance),
            Resolution::Void { .. } => {
                self.slots.remove(&record.slot);
                self.users.remove(&record.phone);
            }
        }
        Ok(record.clone())
    }

    fn pending(&self, claimed_before: Timestamp, limit: usize) -> Vec<Redemption> {
        let mut stuck: Vec<Redemption> = self
            .live_records()
            .filter(|r| r.status == RedemptionStatus::Pending && r.redeemed_at < claimed_before)
            .cloned()
            .collect();
        stuck.sort_by_key(|r| (r.redeemed_at, r.id));
        stuck.truncate(limit);
        stuck
    }
}

/// The voucher ledger: a handle on its durable state.
#[derive(Clone)]
pub struct VoucherLedger {
    world: Arc<World>,
    state: Arc<Mutex<LedgerState>>,
}

impl VoucherLedger {
    pub fn new(world: Arc<World>, code: VoucherCode, amount: i64, limit: u32) -> Self {
        let state = LedgerState {
            code,
            amount,
            limit,
            history: Vec::new(),
            live: BTreeMap::new(),
            slots: BTreeMap::new(),
            users: BTreeMap::new(),
            conflicts: Vec::new(),
        };
        VoucherLedger {
            world,
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn state(&self) -> parking_lot::MutexGuard<'_, LedgerState> {
        self.state.lock()
    }

    pub fn claim(&self, phone: PhoneNumber) -> LedgerFuture<Redemption> {
        let this = self.clone();
        async move {
            this.world.pause(1, 10).await;
            let claimed = this.state.lock().claim(&this.world, phone);
            let value = claimed.as_ref().map_or(-1, |r| i64::from(r.slot));
            this.world.event("ledger.claim", user(phone), value);
            this.world.pause(1, 10).await;
            claimed
        }
        .boxed()
    }
}

impl PendingLedger for VoucherLedger {
    fn settle(&self, id: Uuid, resolution: Resolution) -> LedgerFuture<Redemption> {
        let this = self.clone();
        async move {
            this.world.pause(1, 10).await;
            let fault = this.world.knobs.ledger_fault;
            if this.world.fault(fault) {
                this.world.event("ledger.settle_not_written", 0, 0);
                return Err(Error::not_written("simulated"));
            }
            let settled = this.state.lock().settle(&this.world, id, resolution);
            if let Ok(r) = &settled {
                let kind = match r.status {
                    RedemptionStatus::Credited => "ledger.credited",
                    _ => "ledger.voided",
                };
                this.world.event(kind, user(r.phone), r.slot.into());
            }
            this.world.pause(1, 10).await;
            if settled.is_ok() && this.world.fault(fault) {
                this.world.event("ledger.settle_unknown", 0, 0);
                return Err(Error::storage("simulated: outcome unknown"));
            }
            settled
        }
        .boxed()
    }

    fn pending(&self, claimed_before: Timestamp, limit: usize) -> LedgerFuture<Vec<Redemption>> {
        let this = self.clone();
        async move {
            this.world.pause(1, 10).await;
            if this.world.fault(this.world.knobs.ledger_fault) {
                return Err(Error::unavailable("simulated"));
            }
            let stuck = this.state.lock().pending(claimed_before, limit);
            this.world.pause(1, 10).await;
            Ok(stuck)
        }
        .boxed()
    }
}
