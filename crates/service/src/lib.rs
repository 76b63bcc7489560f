//! voucherd's use cases, above the ledgers and below the HTTP edge:
//!
//! - [`service`]: one function per use case; the per-phone rate limit
//!   ([`rate_limit`]) and the fast path that rejects from the in-memory
//!   catalog;
//! - [`actors`]: voucher shards (own leased slots, hand one to each
//!   contender), wallet actors (one user's writes in order), and their
//!   supervisor (restarts with a budget, then stops the process);
//! - [`slots`]: the [`slots::SlotSource`] seam (local pool, Redis leases),
//!   each passing `tests/slot_conformance.rs`;
//! - [`recovery`]: the task that finishes pending redemptions;
//! - [`role`]: which halves, actors and routes a process has;
//! - [`readiness`]: `/readyz` reasons.
//!
//! It speaks domain and protocol types only: the wire types are the HTTP
//! edge's (the `voucherd` crate), which this crate cannot see.

pub mod actors;
pub mod rate_limit;
pub mod readiness;
pub mod recovery;
pub mod role;
pub mod service;
pub mod slots;
