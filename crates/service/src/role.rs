//! The roles of one binary: which halves of the system an instance runs.
//!
//! - `all` (the default): one process, one store holding both halves; a
//!   redemption is one atomic write (claim and credit).
//! - `voucher`: the voucher API over the voucher half of a store; credits go to
//!   the wallet service over HTTP (see [`voucherd_core::redemption`]).
//! - `wallet`: profiles and transactions over the wallet half of a store, and
//!   the credit endpoint the voucher service calls.
//!
//! Which store a role opens is a type ([`voucherd_core::ledger::HalfKind`],
//! chosen in the binary's wiring), not a value of this enum.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    All,
    Voucher,
    Wallet,
}

/// Which part of the system a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serves {
    Vouchers,
    Wallets,
    /// Health, readiness, metrics: every role.
    Any,
}

impl Role {
    pub fn serves(self, part: Serves) -> bool {
        match (self, part) {
            (Role::All, _) | (_, Serves::Any) => true,
            (Role::Voucher, Serves::Vouchers) | (Role::Wallet, Serves::Wallets) => true,
            (Role::Voucher, Serves::Wallets) | (Role::Wallet, Serves::Vouchers) => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Voucher => "voucher",
            Role::Wallet => "wallet",
        }
    }
}
