//! Wave planning: cutting a batch so that its set-based statements stay
//! equivalent to applying it one operation at a time.
//!
//! To keep set-based statements equivalent to applying the batch one operation
//! at a time, a batch is cut into waves: an operation waits for a later wave
//! when it competes with an earlier operation of the current wave for a slot or
//! a user's key, or when statement order within a wave (vouchers, then claims,
//! then wallet operations, then settles) would otherwise apply it before an
//! earlier operation on the same voucher, wallet or redemption. Almost every
//! batch is a single wave.

use std::collections::HashSet;

use uuid::Uuid;
use voucherd_core::domain::redemption_id;
use voucherd_core::ledger::Resolution;

use crate::queue::Request;

/// What two operations of one batch may compete for, besides a voucher's
/// code (which only orders claims against the voucher's creation).
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    /// A user's key for a voucher (I2).
    User(&'a str, u64),
    /// A slot of a voucher (I1).
    Slot(&'a str, u32),
    /// A wallet's head (I5).
    Wallet(u64),
    /// A transaction's id, an idempotency key when replayable.
    TransactionId(Uuid),
    /// A redemption being settled.
    Redemption(Uuid),
}

fn keys(request: &Request) -> Vec<Key<'_>> {
    match request {
        Request::CreateVoucher(_) => Vec::new(),
        Request::Claim(claim) => {
            let code = claim.code.as_str();
            vec![
                Key::User(code, claim.phone.stored()),
                Key::Slot(code, claim.slot),
                Key::Wallet(claim.phone.stored()),
                // A settle of the redemption the claim makes stays behind it.
                Key::Redemption(redemption_id(&claim.code, claim.phone)),
            ]
        }
        Request::CreateProfile(profile) => vec![Key::Wallet(profile.phone.stored())],
        Request::Settle(id, _) => vec![Key::Redemption(*id)],
        Request::Transact(transaction) => vec![
            Key::Wallet(transaction.phone.stored()),
            Key::TransactionId(transaction.id),
        ],
    }
}

/// Splits `pending` (in submission order) into the next wave and the rest.
///
/// Within a wave, vouchers are created first, then claims are applied, then
/// wallet operations in order, then settles in order, so the wave gives the
/// same answers as applying its operations one by one exactly when no claim
/// competes with another for a slot or a user's key, no claim follows a wallet
/// operation on its wallet, no voucher creation follows a claim of its code,
/// and no claim follows a settle of its own redemption or a void (which may
/// free the slot or the user's key it wants). An operation breaking that rule
/// waits, and so does every later operation that must stay behind a waiting
/// one: one sharing a key with it (a settle shares its redemption's id with
/// the claim that makes it), a claim of a voucher whose creation waits, a
/// creation of a voucher one of whose claims waits.
pub(super) fn plan_wave(requests: &[Request], pending: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut plan = Plan::default();
    let mut wave = Vec::with_capacity(pending.len());
    let mut deferred = Vec::new();
    for &index in pending {
        let request = &requests[index];
        let request_keys = keys(request);
        if plan.waits(request, &request_keys) {
            plan.defer(request, request_keys);
            deferred.push(index);
        } else {
            plan.join(request);
            wave.push(index);
        }
    }
    (wave, deferred)
}

/// What the wave being planned holds, and what the operations left waiting hold.
#[derive(Default)]
struct Plan<'a> {
    deferred_keys: HashSet<Key<'a>>,
    deferred_creations: HashSet<&'a str>,
    deferred_claim_codes: HashSet<&'a str>,
    claimed: HashSet<Key<'a>>,
    claimed_codes: HashSet<&'a str>,
    wallet_phones: HashSet<u64>,
    /// Redemptions the wave settles.
    settled: HashSet<Uuid>,
    /// Whether a void came earlier, in the wave or waiting.
    void_before: bool,
}

impl<'a> Plan<'a> {
    fn waits(&self, request: &'a Request, request_keys: &[Key<'a>]) -> bool {
        let behind_waiting = request_keys
            .iter()
            .any(|key| self.deferred_keys.contains(key));
        match request {
            Request::CreateVoucher(voucher) => {
                let code = voucher.code.as_str();
                self.claimed_codes.contains(code)
                    || self.deferred_claim_codes.contains(code)
                    || self.deferred_creations.contains(code)
            }
            Request::Claim(claim) => {
                let code = claim.code.as_str();
                let settled_before = request_keys
                    .iter()
                    .any(|key| matches!(key, Key::Redemption(id) if self.settled.contains(id)));
                behind_waiting
                    || settled_before
                    || self.void_before
                    || self.deferred_creations.contains(code)
                    || self
                        .claimed
                        .contains(&Key::User(code, claim.phone.stored()))
                    || self.claimed.contains(&Key::Slot(code, claim.slot))
                    || self.wallet_phones.contains(&claim.phone.stored())
            }
            Request::CreateProfile(_) | Request::Transact(_) | Request::Settle(..) => {
                behind_waiting
            }
        }
    }

    fn defer(&mut self, request: &'a Request, request_keys: Vec<Key<'a>>) {
        self.deferred_keys.extend(request_keys);
        match request {
            Request::CreateVoucher(voucher) => {
                self.deferred_creations.insert(voucher.code.as_str());
            }
            Request::Claim(claim) => {
                self.deferred_claim_codes.insert(claim.code.as_str());
            }
            Request::Settle(_, resolution) => self.note_void(resolution),
            Request::CreateProfile(_) | Request::Transact(_) => {}
        }
    }

    fn join(&mut self, request: &'a Request) {
        match request {
            Request::CreateVoucher(_) => {}
            Request::Claim(claim) => {
                let code = claim.code.as_str();
                self.claimed.insert(Key::User(code, claim.phone.stored()));
                self.claimed.insert(Key::Slot(code, claim.slot));
                self.claimed_codes.insert(code);
            }
            Request::CreateProfile(profile) => {
                self.wallet_phones.insert(profile.phone.stored());
            }
            Request::Transact(transaction) => {
                self.wallet_phones.insert(transaction.phone.stored());
            }
            Request::Settle(id, resolution) => {
                self.settled.insert(*id);
                self.note_void(resolution);
            }
        }
    }

    fn note_void(&mut self, resolution: &Resolution) {
        self.void_before |= matches!(resolution, Resolution::Void { .. });
    }
}

#[cfg(test)]
mod tests {
    use voucherd_core::domain::{Timestamp, Voucher};
    use voucherd_core::ledger::NewTransaction;

    use super::super::fixtures::{claim, code, phone};
    use super::*;

    fn transact(n: u64) -> Request {
        Request::Transact(NewTransaction {
            id: Uuid::new_v4(),
            replayable: false,
            phone: phone(n),
            amount: 1,
            reference: String::new(),
            at: Timestamp(1),
            refusal_is_final: false,
        })
    }

    fn settle(n: u64, resolution: Resolution) -> Request {
        Request::Settle(redemption_id(&code(), phone(n)), resolution)
    }

    fn credited() -> Resolution {
        Resolution::Credited { balance: 1 }
    }

    fn void() -> Resolution {
        Resolution::Void {
            reason: "refused".to_owned(),
        }
    }

    fn waves(requests: &[Request]) -> Vec<Vec<usize>> {
        let mut pending: Vec<usize> = (0..requests.len()).collect();
        let mut waves = Vec::new();
        while !pending.is_empty() {
            let (wave, deferred) = plan_wave(requests, &pending);
            assert!(!wave.is_empty(), "every wave makes progress");
            waves.push(wave);
            pending = deferred;
        }
        waves
    }

    #[test]
    fn independent_claims_form_one_wave() {
        let requests: Vec<Request> = (0..100).map(|n| claim(n, n as u32 + 1)).collect();
        assert_eq!(waves(&requests), vec![(0..100).collect::<Vec<_>>()]);
    }

    #[test]
    fn competing_claims_wait_and_keep_their_order() {
        // 1 competes with 0 for slot 1, 2 with 0 for the user's key, and 3
        // shares its wallet with the waiting 1, so it waits behind it.
        let requests = [
            claim(1, 1),
            claim(2, 1),
            claim(1, 2),
            transact(2),
            claim(3, 3),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 4], vec![1, 2, 3]]);
    }

    #[test]
    fn a_claim_after_a_wallet_operation_on_its_wallet_waits() {
        // Within a wave claims apply before wallet operations, so a claim may
        // join only if no wallet operation on its wallet came before it.
        let requests = [claim(1, 1), transact(1), claim(2, 2), transact(2)];
        assert_eq!(waves(&requests), vec![vec![0, 1, 2, 3]]);
        let requests = [transact(1), claim(1, 1), transact(1)];
        assert_eq!(waves(&requests), vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn a_waiting_claim_holds_back_only_what_shares_its_keys() {
        // Claims of other slots and users of the same voucher still join.
        let requests = [claim(1, 1), claim(2, 1), claim(3, 2), claim(2, 3)];
        assert_eq!(waves(&requests), vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn a_voucher_created_after_a_claim_of_it_waits() {
        let voucher = Voucher::new(code(), 1, 10, None, None, Timestamp(1)).expect("valid");
        let requests = [
            Request::CreateVoucher(voucher.clone()),
            claim(1, 1),
            Request::CreateVoucher(voucher),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 1], vec![2]]);
        // A claim submitted after a creation that waits waits for it too.
        let voucher = Voucher::new(code(), 1, 10, None, None, Timestamp(1)).expect("valid");
        let requests = [claim(1, 1), Request::CreateVoucher(voucher), claim(2, 2)];
        assert_eq!(waves(&requests), vec![vec![0], vec![1, 2]]);
    }

    #[test]
    fn a_settle_joins_the_wave_of_its_claim() {
        // Settles apply after claims within a wave, so a claim and its settle
        // submitted together take one wave, as do settles of other redemptions.
        let requests = [
            claim(1, 1),
            settle(1, credited()),
            claim(2, 2),
            settle(3, void()),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn a_settle_waits_behind_its_waiting_claim() {
        // 1 waits (slot 1 is the wave's), so the settle of its redemption must
        // wait too, or it would find no redemption (or an older one).
        let requests = [claim(1, 1), claim(2, 1), settle(2, credited()), claim(3, 2)];
        assert_eq!(waves(&requests), vec![vec![0, 3], vec![1, 2]]);
    }

    #[test]
    fn a_claim_after_a_settle_of_its_redemption_or_a_void_waits() {
        // A void frees the slot and the user's key: a claim submitted after it
        // (the same user again, or another user for the freed slot) must see
        // it, but claims apply before settles within a wave.
        let requests = [settle(1, void()), claim(1, 5), claim(2, 6)];
        assert_eq!(waves(&requests), vec![vec![0], vec![1, 2]]);
        // A waiting void holds back later claims too.
        let requests = [
            claim(1, 1),
            claim(2, 1),
            settle(2, void()),
            claim(3, 2),
            transact(4),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 4], vec![1, 2], vec![3]]);
        // A credit frees nothing: only the claim of the same redemption waits.
        let requests = [settle(1, credited()), claim(1, 5), claim(2, 6)];
        assert_eq!(waves(&requests), vec![vec![0, 2], vec![1]]);
    }

    #[test]
    fn settles_of_one_redemption_share_a_wave_in_order() {
        // They are decided one by one in submission order within the wave.
        let requests = [
            settle(1, credited()),
            settle(1, void()),
            settle(1, credited()),
        ];
        assert_eq!(waves(&requests), vec![vec![0, 1, 2]]);
    }
}
