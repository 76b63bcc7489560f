//! What `tests/common` (one instance per test) and `tests/cluster` (several instances
//! per test) share: starting the binary, whole HTTP answers and paged reads, the
//! deterministic RNG, and the bridge to the one invariant checker, `stress::verify`.
//! Loaded by `#[path]` from both; no test binary loads both, so each test crate holds
//! this module once.

pub mod binary;
pub mod http;
pub mod invariants;
pub mod rng;
