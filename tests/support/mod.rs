//! What `tests/common` (one instance per test) and `tests/cluster` (several instances
//! per test) share: starting the binary, whole HTTP answers and paged reads, the
//! deterministic RNG, the bridge to the one invariant checker, `stress::verify`, a
//! throwaway PostgreSQL database, the Cassandra clusters and their fresh keyspaces, a
//! TCP proxy the test controls, and newman.
//! Loaded by `#[path]` from both; no test binary loads both, so each test crate holds
//! this module once.

pub mod binary;
pub mod cql;
pub mod database;
pub mod http;
pub mod invariants;
pub mod newman;
pub mod proxy;
pub mod rng;
