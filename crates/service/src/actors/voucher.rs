//! Voucher shard actors: each owns the vouchers whose code hashes to it, keeps
//! their leased free slot numbers, and hands one to each contender.
//!
//! A shard never waits for a ledger commit inside `handle`: it submits the claim
//! (the ledger queues it in call order) and a task awaits the commit, answers the
//! client, and tells the shard how the slot ended (`SlotEnded`). What a shard does
//! await inside `handle` is bounded and rare: leasing a new batch of slots when
//! its pool is empty (a local pool, or one Redis call within `REDIS_OP_TIMEOUT_MS`),
//! and one ledger read to tell "sold out" from "leased elsewhere" when no slot is left. So one hot voucher
//! is served by one shard at the ledger's group-commit rate, not at one fsync per
//! request. The ledger, not the shard, is the authority on slots (I1) and users
//! (I2): a slot the ledger says is taken is dropped and the contender retries with
//! another, so a restarted shard that rebuilds its pool from the ledger is safe
//! even while claims of its predecessor are still in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::slots::{SlotBatch, SlotSource};
use voucherd_core::catalog::{Catalog, VoucherView};
use voucherd_core::clock::Clock;
use voucherd_core::domain::{PhoneNumber, Redemption, VoucherCode};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{Claim, VoucherLedger};
use voucherd_core::limits::{
    LOCAL_LEASE_BATCH_SLOTS, MAX_CLAIM_ATTEMPTS, MAX_SLOT_WAITERS_PER_VOUCHER,
};
use voucherd_metrics::Metrics;

/// The behaviour of a voucher shard.
pub struct VoucherShard;

/// What a shard is started (and restarted) with.
#[derive(Clone)]
pub struct VoucherShardArgs {
    pub index: usize,
    pub shards: usize,
    pub catalog: Arc<Catalog>,
    pub ledger: Arc<dyn VoucherLedger>,
    pub slots: Arc<dyn SlotSource>,
    pub metrics: Arc<Metrics>,
    /// Where a redemption's time comes from.
    pub clock: Arc<dyn Clock>,
}

pub struct VoucherShardState {
    args: VoucherShardArgs,
    pools: HashMap<VoucherCode, ShardPool>,
}

/// A voucher's slots as this shard holds them. A shard keeps one only while it
/// holds slots, claims or waiters of the voucher (see `forget_idle_pool`), and
/// none of its parts allocates before it is used, so an idle voucher costs the
/// shard nothing and a busy one a few ranges whatever its limit.
#[derive(Default)]
struct ShardPool {
    /// Leased slot numbers not yet handed out, as ranges; handed out lowest first.
    free: SlotBatch,
    /// Slots handed to claims whose commit has not settled.
    in_flight: u32,
    /// Contenders waiting because the pool is empty while claims are in flight
    /// (a failed claim gives its slot back).
    waiters: VecDeque<Contender>,
}

impl ShardPool {
    fn is_idle(&self) -> bool {
        self.free.is_empty() && self.in_flight == 0 && self.waiters.is_empty()
    }
}

/// One redemption request travelling through the shard.
pub struct Contender {
    phone: PhoneNumber,
    attempts: u32,
    reply: RpcReplyPort<Result<Redemption>>,
}

/// How a claim's slot ended.
pub enum SlotFate {
    /// The ledger committed the claim; the slot is spent.
    Won,
    /// The claim failed without spending the slot; it goes back to the pool.
    Returned,
    /// The ledger says another claim holds the slot; the contender tries again.
    SlotLost(Contender),
}

pub enum VoucherShardMsg {
    Redeem {
        code: VoucherCode,
        phone: PhoneNumber,
        reply: RpcReplyPort<Result<Redemption>>,
    },
    SlotEnded {
        code: VoucherCode,
        slot: u32,
        fate: SlotFate,
    },
    /// A redemption the ledger voided (split mode): its slot is free again.
    Released {
        code: VoucherCode,
        phone: PhoneNumber,
        slot: u32,
    },
    /// Makes the shard panic; used by tests to prove the supervisor restarts it.
    #[cfg(feature = "test-hooks")]
    InjectPanic,
}

impl Actor for VoucherShard {
    type Msg = VoucherShardMsg;
    type State = VoucherShardState;
    type Arguments = VoucherShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: VoucherShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Rebuild from the ledger: a predecessor's leased slots are free again,
        // and counts are the ledger's, not whatever the predecessor saw.
        for view in args.catalog.all() {
            let code = &view.voucher.code;
            if super::shard_of(code.as_str(), args.shards) != args.index {
                continue;
            }
            args.slots.reset(code).await?;
            if let Some(status) = args.ledger.voucher(code.clone()).await? {
                view.set_redeemed(status.redeemed);
                args.metrics
                    .set_remaining_slots(code.as_str(), view.remaining());
            }
        }
        Ok(VoucherShardState {
            args,
            pools: HashMap::new(),
        })
    }

    /// On a clean stop (shutdown), unused leased slots go back to the source.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (code, pool) in state.pools.drain() {
            if !pool.free.is_empty() {
                state.args.slots.give_back(&code, pool.free).await?;
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            VoucherShardMsg::Redeem { code, phone, reply } => {
                let Some(view) = state.args.catalog.get(code.as_str()) else {
                    let _ = reply.send(Err(Error::VoucherNotFound));
                    return Ok(());
                };
                let contender = Contender {
                    phone,
                    attempts: 0,
                    reply,
                };
                state.contend(&myself, &view, contender).await;
            }
            VoucherShardMsg::SlotEnded { code, slot, fate } => {
                let Some(view) = state.args.catalog.get(code.as_str()) else {
                    return Ok(());
                };
                state.settle(&myself, &view, slot, fate).await;
            }
            VoucherShardMsg::Released { code, phone, slot } => {
                state.release(&code, phone, slot).await;
            }
            #[cfg(feature = "test-hooks")]
            VoucherShardMsg::InjectPanic => panic!("injected voucher shard panic"),
        }
        Ok(())
    }
}

impl VoucherShardState {
    /// Takes a voided redemption's slot back: into the shard's pool while it
    /// holds one for the voucher, else back to the slot source.
    async fn release(&mut self, code: &VoucherCode, phone: PhoneNumber, slot: u32) {
        let Some(view) = self.args.catalog.get(code.as_str()) else {
            return;
        };
        view.record_release(phone);
        self.args
            .metrics
            .set_remaining_slots(code.as_str(), view.remaining());
        match self.pools.get_mut(code) {
            Some(pool) => {
                pool.free.insert(slot);
            }
            None => {
                let batch = SlotBatch::from_range(slot, slot);
                if let Err(error) = self.args.slots.give_back(code, batch).await {
                    // The source rebuilds from the ledger on its next refresh.
                    tracing::warn!(%code, slot, %error, "a released slot was not given back");
                }
            }
        }
    }

    /// Gives the contender a slot, parks it until one comes back, or rejects it.
    async fn contend(
        &mut self,
        myself: &ActorRef<VoucherShardMsg>,
        view: &Arc<VoucherView>,
        contender: Contender,
    ) {
        if view.is_exhausted() {
            let _ = contender.reply.send(Err(Error::VoucherExhausted));
            return;
        }
        let code = &view.voucher.code;
        let pool = self.pools.entry(code.clone()).or_default();
        if pool.free.is_empty() {
            match self
                .args
                .slots
                .lease(code, view.voucher.limit, LOCAL_LEASE_BATCH_SLOTS)
                .await
            {
                Ok(batch) => {
                    // Slot accounting: a lease holds at most what was asked, all
                    // slots of this voucher.
                    assert!(
                        batch.len() <= LOCAL_LEASE_BATCH_SLOTS as usize,
                        "a lease of {code} exceeds its batch size"
                    );
                    assert!(
                        batch.first().is_none_or(|lowest| lowest >= 1),
                        "a lease of {code} holds slot 0"
                    );
                    assert!(
                        batch
                            .last()
                            .is_none_or(|highest| highest <= view.voucher.limit),
                        "a lease of {code} holds a slot above its limit"
                    );
                    pool.free = batch;
                }
                Err(error) => {
                    tracing::warn!(%code, %error, "slot lease failed");
                    let _ = contender
                        .reply
                        .send(Err(Error::unavailable("slot lease failed")));
                    self.forget_idle_pool(code);
                    return;
                }
            }
        }
        if let Some(slot) = pool.free.pop_lowest() {
            pool.in_flight += 1;
            start_claim(myself, &self.args, view.clone(), slot, contender);
        } else if pool.in_flight > 0 {
            if pool.waiters.len() < MAX_SLOT_WAITERS_PER_VOUCHER {
                pool.waiters.push_back(contender);
            } else {
                let _ = contender.reply.send(Err(Error::unavailable(
                    "too many contenders waiting for a slot",
                )));
            }
        } else {
            self.forget_idle_pool(code);
            self.answer_without_slot(view, contender).await;
        }
    }

    /// Drops the voucher's pool when it holds nothing: the next contender leases
    /// again, exactly as it would from an empty pool, and a sold-out or quiet
    /// voucher costs the shard no memory.
    fn forget_idle_pool(&mut self, code: &VoucherCode) {
        if self.pools.get(code).is_some_and(ShardPool::is_idle) {
            self.pools.remove(code);
        }
    }

    /// No slot is free here and none is in flight: either the voucher is sold out
    /// (the ledger, shared by every instance, says so) or other instances hold
    /// the remaining slots in their leases; only the first is "exhausted".
    async fn answer_without_slot(&mut self, view: &Arc<VoucherView>, contender: Contender) {
        let code = &view.voucher.code;
        match self.args.ledger.voucher(code.clone()).await {
            Ok(Some(status)) if status.redeemed >= view.voucher.limit => {
                view.set_redeemed(status.redeemed);
                self.args.metrics.set_remaining_slots(code.as_str(), 0);
                let _ = contender.reply.send(Err(Error::VoucherExhausted));
            }
            Ok(_) => {
                tracing::debug!(%code, "no slot free here and none in flight: refused as leased elsewhere");
                let _ = contender.reply.send(Err(Error::unavailable(
                    "every free slot is leased elsewhere right now",
                )));
            }
            Err(error) => {
                let _ = contender.reply.send(Err(error));
            }
        }
    }

    async fn settle(
        &mut self,
        myself: &ActorRef<VoucherShardMsg>,
        view: &Arc<VoucherView>,
        slot: u32,
        fate: SlotFate,
    ) {
        let code = &view.voucher.code;
        let Some(pool) = self.pools.get_mut(code) else {
            return;
        };
        // Slot accounting: every settlement matches one slot handed out.
        assert!(
            pool.in_flight > 0,
            "slot {slot} of {code} settled with nothing in flight"
        );
        pool.in_flight -= 1;
        let mut retry = None;
        match fate {
            SlotFate::Won => {
                self.args
                    .metrics
                    .set_remaining_slots(code.as_str(), view.remaining());
            }
            SlotFate::Returned => {
                // Normally a slot in flight is not free meanwhile, but a source
                // that lost a write (Redis failover) may have leased it to this
                // shard again; the batch is a set and holds it once.
                if !pool.free.insert(slot) {
                    tracing::debug!(%code, slot, "a returned slot was leased again meanwhile");
                }
            }
            SlotFate::SlotLost(mut contender) => {
                self.args.metrics.count_slot_found_taken();
                // The source handed out a slot the ledger has taken, so the rest of
                // this batch may be taken too: it goes back to the source, which
                // realigns with the ledger before the retry leases again.
                let rest = std::mem::take(&mut pool.free);
                let limit = view.voucher.limit;
                if let Err(error) = self.args.slots.taken_elsewhere(code, limit, rest).await {
                    tracing::warn!(%code, %error, "realigning the slot pool with the ledger failed");
                }
                contender.attempts += 1;
                if contender.attempts < MAX_CLAIM_ATTEMPTS {
                    retry = Some(contender);
                } else {
                    tracing::debug!(%code, attempts = contender.attempts, "every slot tried was taken: refused");
                    let _ = contender
                        .reply
                        .send(Err(Error::unavailable("no slot could be claimed")));
                }
            }
        }
        if let Some(contender) = retry {
            self.contend(myself, view, contender).await;
        }
        // Serve parked contenders while slots are free or nothing is in flight
        // (then `contend` leases more or answers "exhausted").
        loop {
            let Some(pool) = self.pools.get_mut(code) else {
                return;
            };
            if pool.free.is_empty() && pool.in_flight > 0 {
                return;
            }
            let Some(waiter) = pool.waiters.pop_front() else {
                self.forget_idle_pool(code);
                return;
            };
            self.contend(myself, view, waiter).await;
        }
    }
}

/// Submits the claim to the ledger now (so shard order is ledger order) and
/// awaits its commit in a task, which answers the contender and settles the slot.
fn start_claim(
    myself: &ActorRef<VoucherShardMsg>,
    args: &VoucherShardArgs,
    view: Arc<VoucherView>,
    slot: u32,
    contender: Contender,
) {
    let code = view.voucher.code.clone();
    let clock = &args.clock;
    let committed = args.ledger.claim(Claim {
        code: code.clone(),
        phone: contender.phone,
        slot,
        at: clock.now(),
    });
    let myself = myself.clone();
    tokio::spawn(async move {
        let fate = match committed.await {
            Ok(redemption) => {
                view.record_win(contender.phone);
                let _ = contender.reply.send(Ok(redemption));
                SlotFate::Won
            }
            Err(Error::SlotTaken) => SlotFate::SlotLost(contender),
            Err(error) => {
                if error == Error::AlreadyRedeemed {
                    view.remember_winner(contender.phone);
                }
                let _ = contender.reply.send(Err(error));
                SlotFate::Returned
            }
        };
        // A shard that restarted meanwhile no longer tracks this slot; its
        // successor rebuilt its pool from the ledger, so dropping this is right.
        let _ = myself.cast(VoucherShardMsg::SlotEnded { code, slot, fate });
    });
}
