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
    /// 10M-slot voucher stays in the low hundreds of MiB). Sized by its winners
    /// only: empty it allocates nothing, so an unredeemed voucher costs no set.
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

    /// Records a redemption the ledger committed. Every committed win spends a
    /// distinct slot, so it always counts, even when the user is already in the
    /// set (a concurrent duplicate request, answered `AlreadyRedeemed`, may have
    /// put them there first). The count is this instance's view: after a refresh
    /// from a ledger shared with other instances it may already include this win,
    /// so it saturates at the limit (the ledger, not this counter, enforces I1).
    pub fn record_win(&self, phone: PhoneNumber) {
        self.winners.write().insert(phone.stored());
        let limit = self.voucher.limit;
        let previous = self
            .redeemed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some((n + 1).min(limit))
            })
            .unwrap_or(limit);
        if previous + 1 >= limit {
            self.exhausted.store(true, Ordering::Release);
        }
    }

    /// Forgets a redemption the ledger voided (the wallet refused its credit for
    /// good): the user may claim again and the slot is free again.
    pub fn record_release(&self, phone: PhoneNumber) {
        self.winners.write().remove(&phone.stored());
        let _ = self
            .redeemed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
        self.exhausted.store(false, Ordering::Release);
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

    /// Adds the view unless the code is already known; returns the one kept.
    pub fn insert_if_absent(&self, view: VoucherView) -> Arc<VoucherView> {
        let mut vouchers = self.vouchers.write();
        vouchers
            .entry(view.voucher.code.as_str().to_owned())
            .or_insert_with(|| Arc::new(view))
            .clone()
    }

    pub fn all(&self) -> Vec<Arc<VoucherView>> {
        self.vouchers.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Timestamp, VoucherCode};

    fn view(limit: u32) -> VoucherView {
        let voucher = Voucher::new(
            VoucherCode::parse("V").unwrap(),
            10,
            limit,
            None,
            None,
            Timestamp(0),
        )
        .unwrap();
        VoucherView::new(
            VoucherStatus {
                voucher,
                redeemed: 0,
            },
            [],
        )
    }

    #[test]
    fn a_win_counts_even_if_a_duplicate_request_remembered_the_user_first() {
        // A concurrent duplicate request answered AlreadyRedeemed may insert the
        // user before the winning claim's task records the win.
        let view = view(2);
        let phone = PhoneNumber::parse("+4915100000001").unwrap();
        view.remember_winner(phone);
        view.record_win(phone);
        assert_eq!(view.redeemed(), 1);
        view.record_win(PhoneNumber::parse("+4915100000002").unwrap());
        assert!(
            view.is_exhausted(),
            "the voucher is sold out after `limit` wins"
        );
    }

    #[test]
    fn the_winner_set_grows_with_winners_not_with_the_limit() {
        let view = view(10_000_000);
        assert_eq!(
            view.winners.read().capacity(),
            0,
            "no winner, no allocation"
        );
        view.record_win(PhoneNumber::parse("+4915100000001").unwrap());
        assert!(
            view.winners.read().capacity() <= 4,
            "one winner takes the smallest table"
        );
    }

    #[test]
    fn the_count_saturates_at_the_limit() {
        let view = view(1);
        view.set_redeemed(1);
        view.record_win(PhoneNumber::parse("+4915100000001").unwrap());
        assert_eq!(view.redeemed(), 1);
        assert!(view.is_exhausted());
    }
}
