//! The in-memory view of every voucher that makes rejections nearly free.
//!
//! HTTP handlers read it without any actor round trip or ledger read: an unknown
//! code, an exhausted voucher or a user who already won is answered from here.
//! Only voucher shard claim tasks write winners and counts, and only after the
//! ledger committed them, so the view never claims more than the ledger holds.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::domain::{PhoneNumber, Voucher, VoucherStatus};

/// What this instance knows of one voucher.
#[derive(Debug)]
pub struct VoucherView {
    pub voucher: Voucher,
    redeemed: AtomicU32,
    exhausted: AtomicBool,
    /// Users known to hold a redemption (as u64 digits: 8 bytes each, so even a
    /// 10M-slot voucher stays in the low hundreds of MiB).
    winners: RwLock<HashSet<u64>>,
}

impl VoucherView {
    pub fn new(status: VoucherStatus, winners: impl IntoIterator<Item = PhoneNumber>) -> Self {
        let view = Self {
            redeemed: AtomicU32::new(0),
            exhausted: AtomicBool::new(false),
            winners: RwLock::new(winners.into_iter().map(PhoneNumber::stored).collect()),
            voucher: status.voucher,
        };
        view.set_redeemed(status.redeemed);
        view
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }

    pub fn has_winner(&self, phone: PhoneNumber) -> bool {
        self.winners.read().contains(&phone.stored())
    }

    pub fn redeemed(&self) -> u32 {
        self.redeemed.load(Ordering::Acquire)
    }

    pub fn remaining(&self) -> u32 {
        self.voucher.limit.saturating_sub(self.redeemed())
    }

    /// Records a redemption the ledger committed.
    pub fn record_win(&self, phone: PhoneNumber) {
        if self.winners.write().insert(phone.stored()) {
            let redeemed = self.redeemed.fetch_add(1, Ordering::AcqRel) + 1;
            // I1 as this instance sees it: the ledger never commits past the limit.
            assert!(
                redeemed <= self.voucher.limit,
                "I1: {} won {redeemed} of {}",
                self.voucher.code,
                self.voucher.limit
            );
            if redeemed == self.voucher.limit {
                self.exhausted.store(true, Ordering::Release);
            }
        }
    }

    /// Remembers a user the ledger says already holds a redemption.
    pub fn remember_winner(&self, phone: PhoneNumber) {
        self.winners.write().insert(phone.stored());
    }

    /// Replaces the count with the ledger's (after a shard restart).
    pub fn set_redeemed(&self, redeemed: u32) {
        self.redeemed.store(redeemed, Ordering::Release);
        self.exhausted
            .store(redeemed >= self.voucher.limit, Ordering::Release);
    }
}

/// Every voucher this instance knows, by code.
#[derive(Debug, Default)]
pub struct Catalog {
    vouchers: RwLock<HashMap<String, Arc<VoucherView>>>,
}

impl Catalog {
    pub fn get(&self, code: &str) -> Option<Arc<VoucherView>> {
        self.vouchers.read().get(code).cloned()
    }

    pub fn insert(&self, view: VoucherView) -> Arc<VoucherView> {
        let view = Arc::new(view);
        self.vouchers
            .write()
            .insert(view.voucher.code.as_str().to_owned(), view.clone());
        view
    }

    pub fn all(&self) -> Vec<Arc<VoucherView>> {
        self.vouchers.read().values().cloned().collect()
    }
}
