//! The ledger-backed slot source: a pool per voucher, rebuilt from the ledger's
//! taken slots.
//!
//! The pool of a voucher is a range of never-handed-out slots plus the ranges of
//! slots given back (and the ledger's gaps); it is built from the ledger on first
//! use, so it costs O(gaps) memory, not O(limit), and a lease of fresh slots is at
//! most two ranges whatever its size. Alone, it is the whole slot source of a single
//! instance. Behind Redis it is the fallback of a degraded instance: then several
//! instances build the same pool, so each starts handing out fresh slots at a
//! random point of the range to make collisions (one retry each, never an
//! over-redemption: the ledger refuses a taken slot) rare.
//!
//! A shared pool is rebuilt from the ledger (at most once per
//! [`RECONCILE_INTERVAL_MS`] per voucher) when a claim finds one of its slots taken
//! (another instance got there: the rebuilt pool leaves out every slot taken so far
//! and starts at a new random point) and when it runs dry while the ledger shows
//! slots free (voids and lost claims of other instances). So no instance sweeps the
//! whole range through other instances' slots, and no free slot stays stranded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{SlotBatch, SlotSource};
use voucherd_core::domain::VoucherCode;
use voucherd_core::error::Result;
use voucherd_core::ledger::{SlotUsage, VoucherLedger};
use voucherd_core::limits::RECONCILE_INTERVAL_MS;

#[derive(Debug)]
struct Pool {
    /// Fresh slots are `fresh_first .. fresh_first + fresh_count`, handed out in
    /// the order `fresh_first + (start + i) % fresh_count` for i = 0, 1, ...: a
    /// lease of fresh slots is at most two ranges, whatever its size.
    fresh_first: u32,
    fresh_count: u32,
    start: u32,
    fresh_handed: u32,
    /// Free slots below the fresh ones: the ledger's gaps and slots given back.
    returned: SlotBatch,
    /// Slots currently handed out and not given back (for accounting assertions).
    outstanding: u32,
    /// When it was built from the ledger.
    built: Instant,
    /// A claim found one of its slots taken: rebuild it once that is allowed.
    stale: bool,
}

impl Pool {
    /// The pool of what `usage` shows free below `limit`; fresh slots go out from
    /// `start` on (0: lowest first).
    fn from_ledger(usage: SlotUsage, limit: u32, random_start: bool) -> Self {
        let fresh_count = limit.saturating_sub(usage.highest_taken);
        let start = if random_start && fresh_count > 0 {
            uuid::Uuid::new_v4().as_u128() as u32 % fresh_count
        } else {
            0
        };
        Pool {
            fresh_first: usage.highest_taken + 1,
            fresh_count,
            start,
            fresh_handed: 0,
            returned: usage.gaps.into_iter().collect(),
            outstanding: 0,
            built: Instant::now(),
            stale: false,
        }
    }

    /// Slots it can still hand out.
    fn left(&self) -> u32 {
        self.returned.len() as u32 + (self.fresh_count - self.fresh_handed)
    }

    /// One lease of up to `max` slots: for a single instance that many; for one of
    /// several instances at most an eighth of what is left (at least one), as Redis
    /// leases, so no shard hoards the range the others then sweep through. Shared, fresh
    /// slots go first: the ledger's gaps are where other instances' leases are (their
    /// claims in flight, their Redis leases before an outage), so they are tried last.
    fn lease(&mut self, max: u32, shared: bool) -> SlotBatch {
        if shared {
            self.take_fresh_first(max.min((self.left() / 8).max(1)))
        } else {
            self.take(max)
        }
    }

    fn is_dry(&self) -> bool {
        self.returned.is_empty() && self.fresh_handed == self.fresh_count
    }

    /// Whether a shared pool should be read again from the ledger before this lease.
    fn rebuild_due(&self, now: Instant) -> bool {
        (self.stale || self.is_dry())
            && now.duration_since(self.built) >= Duration::from_millis(RECONCILE_INTERVAL_MS)
    }

    /// Up to `max` slots: returned ones first, then fresh ones.
    fn take(&mut self, max: u32) -> SlotBatch {
        let mut batch = self.returned.take_lowest(max as usize);
        self.take_fresh(max - batch.len() as u32, &mut batch);
        self.hand_out(batch, max)
    }

    /// Up to `max` slots: fresh ones first, then returned ones.
    fn take_fresh_first(&mut self, max: u32) -> SlotBatch {
        let mut batch = SlotBatch::new();
        self.take_fresh(max, &mut batch);
        batch.append(self.returned.take_lowest((max as usize) - batch.len()));
        self.hand_out(batch, max)
    }

    /// Adds up to `wanted` fresh slots to `batch`.
    fn take_fresh(&mut self, wanted: u32, batch: &mut SlotBatch) {
        let fresh = wanted.min(self.fresh_count - self.fresh_handed);
        if fresh > 0 {
            // Up to the end of the fresh range, then from its start (random start).
            let offset = (self.start + self.fresh_handed) % self.fresh_count;
            let until_end = fresh.min(self.fresh_count - offset);
            let first = self.fresh_first + offset;
            batch.insert_range(first, first + until_end - 1);
            let wrapped = fresh - until_end;
            if wrapped > 0 {
                batch.insert_range(self.fresh_first, self.fresh_first + wrapped - 1);
            }
            self.fresh_handed += fresh;
        }
    }

    /// Counts `batch` out of the pool.
    fn hand_out(&mut self, batch: SlotBatch, max: u32) -> SlotBatch {
        let count = batch.len() as u32;
        // Slot accounting: a lease never exceeds what was asked, and every slot
        // out is counted until it comes back.
        assert!(count <= max, "a lease of {max} handed out {count} slots");
        self.outstanding += count;
        assert!(
            self.outstanding <= self.fresh_handed + self.gaps_handed_bound(),
            "more slots outstanding than were ever handed out"
        );
        batch
    }

    /// How many slots other than fresh ones can be out at once: the ledger's
    /// gaps, which all lie in `1..fresh_first` (a slot given back and taken
    /// again was counted out once and back once).
    fn gaps_handed_bound(&self) -> u32 {
        self.fresh_first - 1
    }
}

/// A slot source local to this process, fed by the ledger.
pub struct LocalSlots {
    ledger: Arc<dyn VoucherLedger>,
    pools: Arc<Mutex<HashMap<VoucherCode, Pool>>>,
    /// Several instances share the ledger: fresh slots go out from a random point,
    /// and the pool is rebuilt from the ledger when it falls behind it.
    shared: bool,
}

impl LocalSlots {
    /// The source of a single instance: slots go out lowest first.
    pub fn new(ledger: Arc<dyn VoucherLedger>) -> Self {
        Self {
            ledger,
            pools: Arc::default(),
            shared: false,
        }
    }

    /// The fallback of one of several instances sharing a ledger: fresh slots go
    /// out from a random point, so instances rarely pick the same ones.
    pub fn shared(ledger: Arc<dyn VoucherLedger>) -> Self {
        Self {
            shared: true,
            ..Self::new(ledger)
        }
    }

    /// Forgets every pool (when another source takes over again).
    pub fn forget_all(&self) {
        self.pools.lock().clear();
    }
}

impl SlotSource for LocalSlots {
    fn lease(
        &self,
        code: &VoucherCode,
        limit: u32,
        max: u32,
    ) -> BoxFuture<'static, Result<SlotBatch>> {
        let pools = self.pools.clone();
        let ledger = self.ledger.clone();
        let code = code.clone();
        let shared = self.shared;
        Box::pin(async move {
            let rebuild = match pools.lock().get_mut(&code) {
                // A single instance's pool is the ledger's whole truth: never reread.
                Some(pool) if !(shared && pool.rebuild_due(Instant::now())) => {
                    return Ok(pool.lease(max, shared));
                }
                Some(_) => true,
                None => false,
            };
            let usage = ledger.slot_usage(code.clone()).await?;
            let mut pools = pools.lock();
            let pool = if rebuild {
                let pool = Pool::from_ledger(usage, limit, shared);
                tracing::debug!(%code, fresh = pool.fresh_count, gaps = pool.returned.len(), "shared slot pool rebuilt from the ledger");
                pools.entry(code).insert_entry(pool).into_mut()
            } else {
                pools
                    .entry(code)
                    .or_insert_with(|| Pool::from_ledger(usage, limit, shared))
            };
            Ok(pool.lease(max, shared))
        })
    }

    fn give_back(&self, code: &VoucherCode, slots: SlotBatch) -> BoxFuture<'static, Result<()>> {
        if let Some(pool) = self.pools.lock().get_mut(code) {
            // Slot accounting: only slots that were handed out can come back. A
            // pool rebuilt meanwhile (after a reset) no longer counts them, and
            // already holds them as free, so they are dropped instead.
            let count = slots.len() as u32;
            if count <= pool.outstanding {
                pool.outstanding -= count;
                pool.returned.append(slots);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&self, code: &VoucherCode) -> BoxFuture<'static, Result<()>> {
        self.pools.lock().remove(code);
        Box::pin(async { Ok(()) })
    }

    fn taken_elsewhere(
        &self,
        code: &VoucherCode,
        _limit: u32,
        rest: SlotBatch,
    ) -> BoxFuture<'static, Result<()>> {
        // Alone on its ledger, a taken slot means a predecessor's claim landed late
        // (a restarted shard): nothing to realign, and the rest is free. Shared, the
        // rest is likely taken too (other instances lease there): it goes back among
        // the returned slots, which a shared pool hands out after its fresh ones, and
        // the next lease rebuilds the pool from the ledger once allowed. (Dropping it
        // instead drains a pool that collides often within one interval, and a dry
        // pool answers "leased elsewhere" until it may be rebuilt.)
        if self.shared {
            if let Some(pool) = self.pools.lock().get_mut(code) {
                pool.stale = true;
            }
        }
        self.give_back(code, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(fresh_first: u32, fresh_count: u32, start: u32, returned: Vec<u32>) -> Pool {
        Pool {
            fresh_first,
            fresh_count,
            start,
            fresh_handed: 0,
            returned: returned.into_iter().collect(),
            outstanding: 0,
            built: Instant::now(),
            stale: false,
        }
    }

    fn slots(batch: &SlotBatch) -> Vec<u32> {
        batch.iter().collect()
    }

    #[test]
    fn returned_slots_go_first_then_fresh_ones_each_once() {
        let mut p = pool(5, 4, 0, vec![3, 1]);
        assert_eq!(slots(&p.take(3)), vec![1, 3, 5]);
        assert_eq!(slots(&p.take(10)), vec![6, 7, 8]);
        assert!(p.take(1).is_empty());
        assert_eq!(p.outstanding, 6);
    }

    #[test]
    fn shared_fresh_slots_go_first_then_the_gaps() {
        let mut p = pool(5, 4, 0, vec![3, 1]);
        assert_eq!(slots(&p.take_fresh_first(5)), vec![1, 5, 6, 7, 8]);
        assert_eq!(slots(&p.take_fresh_first(5)), vec![3]);
        assert!(p.take_fresh_first(1).is_empty());
        assert_eq!(p.outstanding, 6);
    }

    #[test]
    fn a_random_start_still_covers_the_range_once() {
        let mut p = pool(1, 10, 7, Vec::new());
        let first = p.take(2);
        assert_eq!(
            slots(&first),
            vec![8, 9],
            "fresh slots start at the random point"
        );
        let rest = p.take(100);
        assert_eq!(rest.range_count(), 2, "the rest wraps around: two ranges");
        let mut all = slots(&first);
        all.extend(rest.iter());
        all.sort_unstable();
        assert_eq!(all, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn only_a_stale_or_dry_pool_is_rebuilt_and_not_more_than_once_an_interval() {
        let interval = Duration::from_millis(RECONCILE_INTERVAL_MS);
        let mut p = pool(1, 4, 0, Vec::new());
        let later = p.built + interval;
        assert!(!p.rebuild_due(later), "a pool with free slots is kept");
        p.stale = true;
        assert!(!p.rebuild_due(p.built), "not before the interval");
        assert!(p.rebuild_due(later));
        p.stale = false;
        let _ = p.take(4);
        assert!(p.is_dry());
        assert!(p.rebuild_due(later), "a dry pool is read again");
    }

    mod with_a_ledger {
        use super::super::*;
        use voucherd_core::domain::{PhoneNumber, Timestamp, Voucher};
        use voucherd_core::ledger::Claim;
        use voucherd_store::cas::memory::MemoryStore;
        use voucherd_store::cas::CasLedger;

        async fn voucher(ledger: &Arc<dyn VoucherLedger>, limit: u32) -> VoucherCode {
            let code = VoucherCode::parse("SHARED").expect("a valid code");
            let voucher = Voucher {
                code: code.clone(),
                amount: 100,
                limit,
                starts_at: None,
                expires_at: None,
                created_at: Timestamp::now(),
            };
            ledger.create_voucher(voucher).await.expect("created");
            code
        }

        async fn claim(ledger: &Arc<dyn VoucherLedger>, code: &VoucherCode, slot: u32) {
            let phone = PhoneNumber::parse(&format!("+98912{slot:07}")).expect("a phone");
            let claim = Claim {
                code: code.clone(),
                phone,
                slot,
                at: Timestamp::now(),
            };
            ledger.claim(claim).await.expect("claimed");
        }

        #[tokio::test]
        async fn a_shared_pool_that_lost_a_slot_is_rebuilt_without_the_taken_ones() {
            let ledger: Arc<dyn VoucherLedger> = Arc::new(CasLedger::open(MemoryStore::new()));
            let code = voucher(&ledger, 6).await;
            let source = LocalSlots::shared(ledger.clone());
            let mut first = SlotBatch::new();
            while first.len() < 6 {
                let batch = source.lease(&code, 6, 6).await.expect("leased");
                assert_eq!(
                    batch.len(),
                    1,
                    "shared: an eighth of what is left, at least one"
                );
                first.append(batch);
            }
            // Another instance sharing the ledger takes slots 2 and 5 meanwhile.
            claim(&ledger, &code, 2).await;
            claim(&ledger, &code, 5).await;
            source.give_back(&code, first).await.expect("given back");
            source
                .taken_elsewhere(&code, 6, SlotBatch::new())
                .await
                .expect("noted");
            tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS + 50)).await;
            let mut slots: Vec<u32> = Vec::new();
            loop {
                let batch = source.lease(&code, 6, 6).await.expect("leased");
                if batch.is_empty() {
                    break;
                }
                slots.extend(batch.iter());
            }
            slots.sort_unstable();
            assert_eq!(
                slots,
                vec![1, 3, 4, 6],
                "the rebuilt pool leaves the taken slots out"
            );
        }

        #[tokio::test]
        async fn a_shared_pool_leases_the_rest_of_a_lost_batch_last() {
            // Goal: after a claim finds a slot taken, the rest of its batch (likely taken
            // too) is handed out only after every fresh slot, not again at once; after
            // the rebuild, the free slots come back and the taken ones do not.
            let ledger: Arc<dyn VoucherLedger> = Arc::new(CasLedger::open(MemoryStore::new()));
            let code = voucher(&ledger, 64).await;
            let source = LocalSlots::shared(ledger.clone());
            let batch = source.lease(&code, 64, 64).await.expect("leased");
            assert_eq!(batch.len(), 8, "shared: an eighth of 64");
            // Another instance took the first slot of the batch, and the next two.
            let mut rest = batch.clone();
            for _ in 0..3 {
                let slot = rest.pop_lowest().expect("a slot");
                claim(&ledger, &code, slot).await;
            }
            source
                .taken_elsewhere(&code, 64, rest.clone())
                .await
                .expect("noted");
            // Everything the pool hands out before it may be rebuilt (within the interval).
            let mut order = Vec::new();
            loop {
                let leased = source.lease(&code, 64, 64).await.expect("leased");
                if leased.is_empty() {
                    break;
                }
                order.extend(leased.iter());
            }
            let first_of_rest = order.iter().position(|slot| rest.contains(*slot));
            assert_eq!(
                first_of_rest,
                Some(64 - 8),
                "the 56 fresh slots go out before the rest of the lost batch ({order:?})"
            );
            tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS + 50)).await;
            let mut after = SlotBatch::new();
            loop {
                let leased = source.lease(&code, 64, 64).await.expect("leased");
                if leased.is_empty() {
                    break;
                }
                after.append(leased);
            }
            assert!(
                rest.iter().all(|slot| after.contains(slot)),
                "the free slots of the dropped rest come back with the rebuild"
            );
            assert_eq!(
                after.len() + 3,
                64,
                "the rebuilt pool holds every slot but the three taken"
            );
        }

        #[tokio::test]
        async fn a_dry_shared_pool_finds_slots_freed_elsewhere() {
            let ledger: Arc<dyn VoucherLedger> = Arc::new(CasLedger::open(MemoryStore::new()));
            let code = voucher(&ledger, 3).await;
            let source = LocalSlots::shared(ledger.clone());
            for _ in 0..3 {
                assert_eq!(source.lease(&code, 3, 3).await.expect("leased").len(), 1);
            }
            // This instance's claims of them were lost (the slots stay free in the
            // ledger) and their batch is gone: the pool is dry.
            assert!(source.lease(&code, 3, 3).await.expect("leased").is_empty());
            tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS + 50)).await;
            let found = source.lease(&code, 3, 3).await.expect("leased");
            assert_eq!(
                found.len(),
                1,
                "the ledger shows them free, so they come back (an eighth at a time)"
            );
        }

        #[tokio::test]
        async fn a_single_instance_pool_is_never_reread() {
            let ledger: Arc<dyn VoucherLedger> = Arc::new(CasLedger::open(MemoryStore::new()));
            let code = voucher(&ledger, 2).await;
            let source = LocalSlots::new(ledger.clone());
            assert_eq!(source.lease(&code, 2, 2).await.expect("leased").len(), 2);
            source
                .taken_elsewhere(&code, 2, SlotBatch::new())
                .await
                .expect("noted");
            tokio::time::sleep(Duration::from_millis(RECONCILE_INTERVAL_MS + 50)).await;
            assert!(
                source.lease(&code, 2, 2).await.expect("leased").is_empty(),
                "alone on its ledger, what it handed out is out until given back"
            );
        }
    }

    #[test]
    fn a_lease_of_fresh_slots_costs_at_most_two_ranges() {
        let mut p = pool(1, 10_000_000, 9_999_000, Vec::new());
        let batch = p.take(4_096);
        assert_eq!(batch.len(), 4_096);
        assert_eq!(batch.range_count(), 2);
        assert_eq!(p.outstanding, 4_096);
    }
}
