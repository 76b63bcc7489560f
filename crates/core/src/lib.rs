//! voucherd's bottom layer: what every other crate speaks, and nothing that
//! reaches a server. No backend's driver, no HTTP, no actor is a dependency
//! here (as TiKV keeps `engine_traits` free of RocksDB), so the ledger traits
//! and the protocol cannot lean on any one backend or transport.
//!
//! - [`domain`], [`error`], [`clock`], [`limits`]: validated values and shared
//!   rules (the wallet's in [`domain::wallet`]), the closed error enum and
//!   its stable codes, the injected time, every bound with its reason.
//! - [`ledger`]: the ledger seam in two halves ([`ledger::VoucherLedger`],
//!   [`ledger::WalletLedger`]; [`ledger::Ledger`] is both), with the voucher
//!   half's part of the protocol ([`ledger::PendingLedger`]).
//! - [`redemption`]: the split-mode protocol (claim → credit → settle,
//!   recovery), independent of backends and transport, and simulated in
//!   `tests/simulation/`.
//! - [`catalog`]: the in-memory view of vouchers the fast path rejects from.

pub mod catalog;
pub mod clock;
pub mod domain;
pub mod error;
pub mod ledger;
pub mod limits;
pub mod redemption;
