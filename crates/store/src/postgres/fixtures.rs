//! Requests the PostgreSQL ledger's unit tests build (wave planning, probes).

use voucherd_core::domain::{PhoneNumber, Timestamp, VoucherCode};
use voucherd_core::ledger::Claim;

use crate::queue::Request;

pub(super) fn code() -> VoucherCode {
    VoucherCode::parse("GOAL").expect("a valid code")
}

pub(super) fn phone(n: u64) -> PhoneNumber {
    PhoneNumber::from_stored(989_120_000_000 + n)
}

/// User `n` claims `slot` of GOAL, at a time that orders claims by slot.
pub(super) fn claim(n: u64, slot: u32) -> Request {
    Request::Claim(Claim {
        code: code(),
        phone: phone(n),
        slot,
        at: Timestamp(i64::from(slot) * 1_000 + n as i64),
    })
}
