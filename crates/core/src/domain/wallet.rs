//! The wallet rules every ledger backend shares: when a transaction under an id
//! already stored is a replay, and what a transaction does to a balance.
//!
//! Invariant protected: I5 (balance): a balance never goes below zero and never
//! wraps; and an idempotency key answers only the request it was first used for.
//! Backends call these functions wherever they decide in Rust, so the embedded
//! and the SQL ledger cannot drift apart on these answers.

use super::{PhoneNumber, WalletTransaction};
use crate::error::{Error, ErrorCode, Result};

/// Answers a request whose id matches the stored transaction `first`: the same
/// request (phone, amount and reference) replays `first`; anything else under
/// that id is `IdempotencyKeyReused`.
pub fn replay(
    first: WalletTransaction,
    phone: PhoneNumber,
    amount: i64,
    reference: &str,
) -> Result<WalletTransaction> {
    let same_request =
        first.phone == phone && first.amount == amount && first.reference == reference;
    if same_request {
        Ok(first)
    } else {
        Err(Error::IdempotencyKeyReused)
    }
}

/// The balance after applying `amount` (a credit > 0, a debit < 0) to
/// `balance`: `invalid_amount` if it would overflow, `InsufficientFunds` if it
/// would go below zero.
pub fn balance_after(balance: i64, amount: i64) -> Result<i64> {
    let new_balance = balance
        .checked_add(amount)
        .ok_or_else(|| Error::invalid(ErrorCode::InvalidAmount, "the balance would overflow"))?;
    if new_balance < 0 {
        return Err(Error::InsufficientFunds);
    }
    Ok(new_balance)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::Timestamp;

    fn first() -> WalletTransaction {
        WalletTransaction {
            id: Uuid::from_u128(7),
            phone: PhoneNumber::from_stored(989_120_000_001),
            sequence: 3,
            amount: 500,
            reference: "order-1".to_owned(),
            created_at: Timestamp(1),
            balance_after: 800,
        }
    }

    #[test]
    fn the_same_request_replays_the_first_transaction() {
        let first = first();
        let replayed = replay(first.clone(), first.phone, 500, "order-1");
        assert_eq!(replayed, Ok(first));
    }

    #[test]
    fn another_request_under_the_same_id_is_refused() {
        let other_phone = PhoneNumber::from_stored(989_120_000_002);
        let cases = [
            (other_phone, 500, "order-1"),
            (first().phone, 501, "order-1"),
            (first().phone, 500, "order-2"),
        ];
        for (phone, amount, reference) in cases {
            assert_eq!(
                replay(first(), phone, amount, reference),
                Err(Error::IdempotencyKeyReused),
                "{phone} {amount} {reference}"
            );
        }
    }

    #[test]
    fn credits_and_debits_move_the_balance() {
        assert_eq!(balance_after(100, 50), Ok(150));
        assert_eq!(balance_after(100, -100), Ok(0));
    }

    #[test]
    fn a_debit_below_zero_is_insufficient_funds() {
        assert_eq!(balance_after(100, -101), Err(Error::InsufficientFunds));
        assert_eq!(balance_after(0, i64::MIN), Err(Error::InsufficientFunds));
    }

    #[test]
    fn an_overflowing_credit_is_an_invalid_amount() {
        match balance_after(i64::MAX, 1) {
            Err(Error::Invalid { code, .. }) => assert_eq!(code, ErrorCode::InvalidAmount),
            other => panic!("an overflow must be invalid_amount, got {other:?}"),
        }
    }
}
