//! Slot sources: where a voucher shard gets the slot numbers it hands to contenders.
//!
//! A voucher with limit N has slots 1..=N. A source only hands numbers out fast;
//! it is never trusted for correctness, because the ledger refuses a second claim
//! of the same slot. A source that forgets or double-hands a slot costs a retry,
//! never an over-redemption (I1).

pub mod batch;
pub mod local;
pub mod redis;

use futures::future::BoxFuture;

pub use batch::SlotBatch;

use voucherd_core::domain::VoucherCode;
use voucherd_core::error::Result;

/// Hands out batches of free slot numbers of a voucher.
pub trait SlotSource: Send + Sync + 'static {
    /// Takes up to `max` free slots of the voucher, all in `1..=limit`; an empty
    /// batch means no free slot is left in the pool (some may still be held by
    /// in-flight claims). Fresh slots come as ranges, so a batch costs memory by
    /// its number of ranges, not of slots.
    fn lease(
        &self,
        code: &VoucherCode,
        limit: u32,
        max: u32,
    ) -> BoxFuture<'static, Result<SlotBatch>>;

    /// Puts slots that were leased but not claimed back in the pool.
    fn give_back(&self, code: &VoucherCode, slots: SlotBatch) -> BoxFuture<'static, Result<()>>;

    /// Forgets the pool of the voucher, so the next lease rebuilds it from the ledger.
    /// A restarted shard calls this: the slots its predecessor held are free again.
    fn reset(&self, code: &VoucherCode) -> BoxFuture<'static, Result<()>>;

    /// A claim found a slot this source handed out already taken in the ledger: the
    /// pool is behind the ledger (a Redis that failed over to a replica missing the
    /// last writes, or another instance sharing the ledger took it). `rest` is what
    /// the shard still held of the leases that slot came from: likely taken too, so it
    /// comes back here rather than through [`SlotSource::give_back`]. The source
    /// realigns the pool with what the ledger shows taken (at most once per
    /// [`RECONCILE_INTERVAL_MS`](voucherd_core::limits::RECONCILE_INTERVAL_MS) per
    /// voucher) and keeps of `rest` only what the ledger shows free, so the next lease
    /// hands out free slots.
    fn taken_elsewhere(
        &self,
        code: &VoucherCode,
        limit: u32,
        rest: SlotBatch,
    ) -> BoxFuture<'static, Result<()>>;
}
