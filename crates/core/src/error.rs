//! The service's closed error enum.
//!
//! Backends and actors turn whatever went wrong into one of these variants; the one
//! mapping to HTTP lives in `http::error`. Variants that carry a `cause` keep it for
//! the log only: it never reaches a client.

/// Everything an operation of voucherd can fail with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Input failed validation; `code` is a stable machine-readable reason.
    #[error("{message}")]
    Invalid {
        /// Stable error code, e.g. `invalid_phone_number`.
        code: &'static str,
        /// Human-readable explanation, safe to show.
        message: String,
    },
    #[error("voucher not found")]
    VoucherNotFound,
    #[error("a voucher with this code already exists")]
    VoucherExists,
    #[error("this user already redeemed this voucher")]
    AlreadyRedeemed,
    #[error("all of this voucher's redemptions are taken")]
    VoucherExhausted,
    #[error("this voucher is not active now")]
    VoucherNotActive,
    #[error("redemption not found")]
    RedemptionNotFound,
    #[error("profile not found")]
    ProfileNotFound,
    #[error("a profile with this phone number already exists")]
    ProfileExists,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("this idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The wallet refused this credit before, for good: a credit's answer is
    /// final, so the same id is refused again.
    #[error("this credit was refused: {reason}")]
    CreditRefused { reason: String },
    /// The ledger refused a slot another claim already holds. Internal: a voucher
    /// shard retries with another slot and never shows this to a client.
    #[error("slot already taken")]
    SlotTaken,
    /// The phone number made more redemption attempts than its rate allows.
    #[error("rate limited")]
    RateLimited {
        /// Whole seconds until the next attempt is allowed (at least 1).
        retry_after_secs: u64,
    },
    /// An admission limit was reached; the client should retry later.
    #[error("overloaded")]
    Overloaded,
    /// A bounded wait ran out or a component is restarting; retry later.
    #[error("temporarily unavailable: {cause}")]
    Unavailable { cause: String },
    /// The ledger cannot write now (a full disk, an I/O error) and applied
    /// nothing of this write; it recovers by itself, so retry later.
    #[error("not written: {cause}")]
    NotWritten { cause: String },
    /// The ledger failed; the outcome of a write is unknown to the caller.
    #[error("storage failure: {cause}")]
    Storage { cause: String },
}

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        Error::Unavailable {
            cause: cause.to_string(),
        }
    }

    pub fn not_written(cause: impl std::fmt::Display) -> Self {
        Error::NotWritten {
            cause: cause.to_string(),
        }
    }

    pub fn storage(cause: impl std::fmt::Display) -> Self {
        Error::Storage {
            cause: cause.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
