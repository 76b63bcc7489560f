//! The local slot source: one instance owns the whole pool, rebuilt from the ledger.
//!
//! The pool of a voucher is the counter of never-handed-out slots plus a stack of
//! slots given back; it is built from the ledger's taken slots on first use, so
//! it costs O(gaps) memory, not O(limit).

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;

use super::SlotSource;
use crate::domain::VoucherCode;
use crate::error::Result;
use crate::store::Ledger;

#[derive(Debug)]
struct Pool {
    /// The lowest slot never handed out since the pool was built.
    next_fresh: u32,
    limit: u32,
    returned: Vec<u32>,
    /// Slots currently handed out and not given back (for accounting assertions).
    outstanding: u32,
}

impl Pool {
    fn take(&mut self, max: u32) -> Vec<u32> {
        let mut batch = Vec::with_capacity(max.min(self.free()) as usize);
        while batch.len() < max as usize {
            if let Some(slot) = self.returned.pop() {
                batch.push(slot);
            } else if self.next_fresh <= self.limit {
                batch.push(self.next_fresh);
                self.next_fresh += 1;
            } else {
                break;
            }
        }
        self.outstanding += batch.len() as u32;
        batch
    }

    fn free(&self) -> u32 {
        (self.limit + 1 - self.next_fresh) + self.returned.len() as u32
    }
}

/// A slot source local to this process.
pub struct LocalSlots {
    ledger: Arc<dyn Ledger>,
    pools: Arc<Mutex<HashMap<VoucherCode, Pool>>>,
}

impl LocalSlots {
    pub fn new(ledger: Arc<dyn Ledger>) -> Self {
        Self {
            ledger,
            pools: Arc::default(),
        }
    }
}

impl SlotSource for LocalSlots {
    fn lease(
        &self,
        code: &VoucherCode,
        limit: u32,
        max: u32,
    ) -> BoxFuture<'static, Result<Vec<u32>>> {
        let pools = self.pools.clone();
        let ledger = self.ledger.clone();
        let code = code.clone();
        Box::pin(async move {
            if let Some(pool) = pools.lock().get_mut(&code) {
                return Ok(pool.take(max));
            }
            let usage = ledger.slot_usage(code.clone()).await?;
            let mut pools = pools.lock();
            let pool = pools.entry(code).or_insert_with(|| Pool {
                next_fresh: usage.highest_taken + 1,
                limit,
                returned: usage.gaps.into_iter().rev().collect(),
                outstanding: 0,
            });
            Ok(pool.take(max))
        })
    }

    fn give_back(&self, code: &VoucherCode, slots: Vec<u32>) -> BoxFuture<'static, Result<()>> {
        if let Some(pool) = self.pools.lock().get_mut(code) {
            let count = slots.len() as u32;
            // Slot accounting: only slots that were handed out can come back.
            assert!(
                count <= pool.outstanding,
                "slot pool of {code} got back more than it handed out"
            );
            pool.outstanding -= count;
            pool.returned.extend(slots);
            assert!(
                pool.free() <= pool.limit,
                "slot pool of {code} holds more than its limit"
            );
        }
        Box::pin(async { Ok(()) })
    }

    fn reset(&self, code: &VoucherCode) -> BoxFuture<'static, Result<()>> {
        self.pools.lock().remove(code);
        Box::pin(async { Ok(()) })
    }
}
