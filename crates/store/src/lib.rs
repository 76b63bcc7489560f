//! voucherd's ledger backends, each implementing the traits of
//! `voucherd_core::ledger` and passing `tests/ledger_conformance/`:
//!
//! - [`embedded`]: redb, the default, in one process;
//! - [`postgres`]: PostgreSQL (and CockroachDB's dialect of it);
//! - [`cas`]: the ledger over lightweight transactions, on the abstract
//!   compare-and-set store of [`cas::store`], with an in-memory model of it
//!   ([`cas::memory`]) and its LWT metrics ([`cas::observed`]);
//! - [`scylla`]: that store over CQL (ScyllaDB, and Apache Cassandra in the
//!   tests).
//!
//! This crate sees the layer below (`voucherd_core`, `voucherd_metrics`) and
//! nothing above: no actor, service or HTTP type.

pub mod cas;
pub mod embedded;
pub mod postgres;
mod queue;
pub mod scylla;
