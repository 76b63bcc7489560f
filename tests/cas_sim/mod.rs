//! The CAS simulation's models and driver; see `tests/cas_simulation.rs`.
//! The world (seeded RNG, virtual time, trace), the runner and the RNG are
//! the redemption simulation's own (`tests/sim/`), included here.

#[allow(dead_code)]
#[path = "../sim/knobs.rs"]
pub mod knobs;
#[allow(dead_code)]
#[path = "../support/rng.rs"]
mod rng;
#[allow(dead_code)]
#[path = "../sim/runner.rs"]
pub mod runner;
#[allow(dead_code)]
#[path = "../sim/world.rs"]
pub mod world;

pub mod check;
pub mod clients;
pub mod cluster;
pub mod planted;
pub mod schedule;
pub mod setup;

use runner::{run_seeded, Run};

/// A bug planted in the simulation's store wrapper (never in `src/`, but for
/// one test-only switch of the ledger's options), which the simulation must
/// catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    Nothing,
    /// (a) A slot write whose answer is `Unknown` is taken as lost to
    /// another holder (`NotApplied`), though it may have applied.
    UnknownAsLost,
    /// (b) Recovery undoes a claim (clears the key's attempt) without the
    /// condition on the key's state.
    UnconditionalUndo,
    /// (c) Role `all` voids on a refusal its wallet did not record: the
    /// refusal marker of an instance of role `all` is dropped from the
    /// wallet's batch, so the credit's refusal is answered but not final
    /// (as when the credit was sent with `refusal_is_final: false`).
    NonFinalRefusal,
    /// (d) A settle of one claim attempt's redemption settles whatever the
    /// key holds, a newer attempt's too (the ledger's test-only switch
    /// `CasOptions::planted`).
    SettleAnyAttempt,
    /// (e) The ledger takes a wallet's (a slot bucket's) statics from the
    /// read of a clustering row that does not exist, so it sees none: a
    /// funded wallet reads as empty (the ledger's test-only switch).
    StaticsFromRowRead,
}

/// Runs schedule `seed` on its own single-threaded runtime with virtual time.
pub fn run_schedule(seed: u64, planted: Planted, log: bool) -> Run {
    run_seeded(seed, log, |world| schedule::run(world, planted, false))
}

/// [`run_schedule`] with contention timeouts as the store's only unknown
/// outcomes (`Setup::contention_only`).
pub fn run_contended(seed: u64, planted: Planted) -> Run {
    run_seeded(seed, false, |world| schedule::run(world, planted, true))
}
