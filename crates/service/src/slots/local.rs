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

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::{SlotBatch, SlotSource};
use voucherd_core::domain::VoucherCode;
use voucherd_core::error::Result;
use voucherd_core::ledger::VoucherLedger;

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
}

impl Pool {
    fn take(&mut self, max: u32) -> SlotBatch {
        let mut batch = self.returned.take_lowest(max as usize);
        let wanted = max - batch.len() as u32;
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
    random_start: bool,
}

impl LocalSlots {
    /// The source of a single instance: slots go out lowest first.
    pub fn new(ledger: Arc<dyn VoucherLedger>) -> Self {
        Self {
            ledger,
            pools: Arc::default(),
            random_start: false,
        }
    }

    /// The fallback of one of several instances sharing a ledger: fresh slots go
    /// out from a random point, so instances rarely pick the same ones.
    pub fn shared(ledger: Arc<dyn VoucherLedger>) -> Self {
        Self {
            random_start: true,
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
        let random_start = self.random_start;
        Box::pin(async move {
            if let Some(pool) = pools.lock().get_mut(&code) {
                return Ok(pool.take(max));
            }
            let usage = ledger.slot_usage(code.clone()).await?;
            let fresh_count = limit.saturating_sub(usage.highest_taken);
            let start = if random_start && fresh_count > 0 {
                uuid::Uuid::new_v4().as_u128() as u32 % fresh_count
            } else {
                0
            };
            let mut pools = pools.lock();
            let pool = pools.entry(code).or_insert_with(|| Pool {
                fresh_first: usage.highest_taken + 1,
                fresh_count,
                start,
                fresh_handed: 0,
                returned: usage.gaps.into_iter().collect(),
                outstanding: 0,
            });
            Ok(pool.take(max))
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
    fn a_lease_of_fresh_slots_costs_at_most_two_ranges() {
        let mut p = pool(1, 10_000_000, 9_999_000, Vec::new());
        let batch = p.take(4_096);
        assert_eq!(batch.len(), 4_096);
        assert_eq!(batch.range_count(), 2);
        assert_eq!(p.outstanding, 4_096);
    }
}
