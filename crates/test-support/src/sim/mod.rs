//! What both deterministic simulations (`tests/simulation`, the split-mode
//! redemption protocol, and `tests/cas_simulation`, the CAS ledger's
//! protocols) run on: the world (seeded RNG, virtual time, the event trace),
//! the fault knobs it draws, and the runner.

pub mod knobs;
pub mod runner;
pub mod world;
