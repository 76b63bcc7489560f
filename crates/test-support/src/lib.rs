//! What the integration tests in `tests/` share, as one library they take as a
//! dev-dependency (so each helper is compiled once, and a test uses what it needs):
//!
//! - [`binary`]: starting the real `voucherd` binary (whose path the test crate
//!   gives, see [`binary::Binary`]) and learning its address;
//! - [`server`]: one instance per test ([`server::TestServer`]) and the checks
//!   the single-instance tests share;
//! - [`cluster`]: several instances per test, with private Redis, PostgreSQL and
//!   Sentinel servers, crowds, faults, split mode behind a [`proxy`];
//! - [`http`]: whole HTTP answers and paged reads; [`invariants`]: the bridge to
//!   the one invariant checker, `stress::verify::check`;
//! - [`database`]: a throwaway PostgreSQL database; [`cql`]: the Cassandra
//!   clusters and their fresh keyspaces;
//! - [`in_process`]: the app run inside the test, through the library;
//! - [`newman`]: the seed's Postman collection; [`proxy`]: a TCP proxy the test
//!   controls; [`rng`]: the deterministic RNG;
//! - [`sim`]: the deterministic simulations' world, fault knobs and runner
//!   (`tests/simulation` and `tests/cas_simulation` hold their own models).

pub mod binary;
pub mod cluster;
pub mod cql;
pub mod database;
pub mod http;
pub mod in_process;
pub mod invariants;
pub mod newman;
pub mod proxy;
pub mod rng;
pub mod server;
pub mod sim;
