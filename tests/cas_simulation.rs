//! Deterministic simulation of the CAS ledger's protocols (`src/store/cas/`,
//! the protocol a ScyllaDB ledger runs over lightweight transactions).
//!
//! # What runs
//! The real `CasLedger` over the in-memory compare-and-set store
//! (`store::cas::memory`) with its seeded fault injector, and the real
//! drivers `redemption::{complete_and_tell, recover_once, answer_of}`:
//! - one to three voucher instances (voucher half), each handling redemption
//!   attempts (claims of random slots, the next slot on `SlotTaken`, then
//!   `complete_and_tell`) and running a recovery loop (`recover_claims`, then
//!   `recover_once`) whose threshold is sometimes zero, so recovery races
//!   live claims;
//! - one or two wallet instances (wallet half) applying the voucher
//!   service's credits (final refusals) and clients' own transactions, keyed
//!   from a small pool of idempotency keys (so keys come again, for other
//!   phones), retried after an unknown outcome;
//! - a crowd larger than the voucher's small limit, some users twice; some
//!   wallets hold a balance near `i64::MAX`, so their credit is refused for
//!   good, the redemption voided, its slot freed and taken again.
//!
//! # Faults (while the fault phase lasts; each schedule draws its rates)
//! - store: delays before and after each operation; a conditional write
//!   answered `Unknown` while applied, while dropped, or left undecided until
//!   the next round on its partition decides it; reads that fail; plain
//!   writes lost or applied unanswered;
//! - instances: crashes that halt every write in flight between two store
//!   operations (before or after one applies) and abort handlers and
//!   recovery loops; restarts open fresh ledgers.
//!
//! # What is checked (`cas_sim/check.rs`), after heal
//! Faults stop, undecided writes are decided, recovery passes run until no
//! claim is in flight, nothing is pending and the claim log is empty
//! (bounded: otherwise a liveness violation). Then, on everything the store
//! holds: no key left claiming; I1 (held slots in range, each held by the
//! attempt that made a live redemption recorded on that slot, none by two);
//! keys and slots agree both ways; I2 (one live redemption per phone); each
//! bucket's count equals its held slots and their sum the live redemptions;
//! I5 (each wallet's transactions are 1..=version, running sums, never
//! negative, the balance their sum) and exactly-once per transaction id
//! (one transaction per id across all wallets, each with its marker); I3 (a
//! credited redemption has exactly its credit, with the balance it recorded,
//! a void one none, every voucher credit backs a credited redemption); an
//! applied keyed transaction is the request its key is bound to; I4 (a client
//! told credited finds it credited, told pending or void finds it); every
//! transaction a client was told applied is the stored one.
//!
//! # Determinism and replay
//! As `tests/simulation.rs` (whose world and runner this reuses): one
//! current-thread runtime with virtual time per schedule, every random choice
//! (fault fates, nonces) from the schedule's seed. `SIM_SEED`,
//! `SIM_SCHEDULES` (default 10,000); a violation prints
//! `SIM_SEED=<seed> SIM_SCHEDULES=1 cargo test --test cas_simulation`.
//!
//! # Planted bugs
//! Tests plant a bug in the store wrapper the ledgers run on
//! (`cas_sim/planted.rs`, never in `src/`) and assert the simulation finds a
//! violation within a bounded number of seeds, on a seed that holds
//! without the bug.

mod cas_sim;

use cas_sim::runner::{assert_caught, assert_seeds_replay, run_default};
use cas_sim::{run_schedule, Planted};

const DEFAULT_SEED: u64 = 0xCA5_2026;
const DEFAULT_SCHEDULES: u64 = 10_000;
/// Seeds a planted bug may take before the simulation is said to miss it.
const PLANTED_SEEDS: u64 = 1_000;

/// Event kinds a long enough run must have seen, or the faults and
/// protocol paths are not really exercised.
const MUST_HAPPEN: &[&str] = &[
    "store.cas_applied_unknown",
    "store.cas_lost",
    "store.cas_undecided",
    "store.read_failed",
    "store.write_failed",
    "voucher.crash",
    "wallet.crash",
    "claim.won",
    "claim.slot_taken",
    "claim.already_redeemed",
    "claim.failed",
    "client.credited",
    "client.pending",
    "client.void",
    "port.refused",
    "port.unknown",
    "recovery.finished",
    "recovery.abandoned",
    "recovery.released",
    "recovery.cleaned",
    "tx.applied",
    "tx.key_reused",
    "tx.insufficient",
    "tx.unknown",
];

#[test]
fn cas_claims_keep_every_invariant_under_faults() {
    run_default(
        "cas_simulation",
        DEFAULT_SEED,
        DEFAULT_SCHEDULES,
        MUST_HAPPEN,
        |seed, log| run_schedule(seed, Planted::Nothing, log),
    );
}

#[test]
fn a_seed_replays_the_same_schedule() {
    assert_seeds_replay(DEFAULT_SEED, 16, |seed| {
        run_schedule(seed, Planted::Nothing, true)
    });
}

/// Asserts that `planted` is caught within [`PLANTED_SEEDS`] seeds as one of
/// `invariants`, on a seed that holds without the bug.
fn caught(planted: Planted, invariants: &[&str]) {
    assert_caught(
        &format!("{planted:?}"),
        DEFAULT_SEED,
        PLANTED_SEEDS,
        |violation| invariants.contains(&violation.invariant),
        |seed| run_schedule(seed, planted, false),
        |seed| run_schedule(seed, Planted::Nothing, false),
    );
}

#[test]
fn catches_an_unknown_slot_take_treated_as_lost() {
    caught(
        Planted::UnknownAsLost,
        &["I1 limit (orphan slot)", "keys and slots", "count"],
    );
}

#[test]
fn catches_recovery_undoing_a_claim_without_its_condition() {
    caught(
        Planted::UnconditionalUndo,
        &[
            "I1 limit (orphan slot)",
            "keys and slots",
            "count",
            "claiming",
            "I2 unique",
        ],
    );
}
