//! The deterministic simulation's models and driver; see `tests/simulation.rs`.

pub mod check;
pub mod knobs;
pub mod ledger;
pub mod network;
pub mod runner;
pub mod schedule;
pub mod service;
pub mod wallet;
pub mod world;

/// The tests' SplitMix64 (no new dependency; its stream never changes with a
/// crate upgrade, so a seed replays the same schedule for good).
#[path = "../support/rng.rs"]
#[allow(dead_code)]
mod rng;

use std::sync::Arc;

use voucherd_core::redemption::CreditPort;

use network::{AppliedBeforeAnswer, SimPort, TimeoutAsRefusal};
use runner::{run_seeded, Run};
use world::World;

/// A bug planted in the test's models (never in `src/`), which the simulation
/// must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    Nothing,
    /// (a) The port answers `Applied` at once; the real credit goes out in the
    /// background and may be lost or refused.
    AppliedBeforeAnswer,
    /// (b) The port turns `Unknown` (timeout, lost reply, wallet down) into
    /// `Refused`.
    TimeoutAsRefusal,
    /// (c) The wallet forgets its refusals: a refused credit id may be applied
    /// by a later delivery.
    NoRefusalTombstone,
}

impl Planted {
    fn port(self, world: &Arc<World>, port: SimPort) -> Arc<dyn CreditPort> {
        let port: Arc<dyn CreditPort> = Arc::new(port);
        match self {
            Planted::AppliedBeforeAnswer => Arc::new(AppliedBeforeAnswer {
                world: world.clone(),
                inner: port,
            }),
            Planted::TimeoutAsRefusal => Arc::new(TimeoutAsRefusal { inner: port }),
            Planted::Nothing | Planted::NoRefusalTombstone => port,
        }
    }
}

/// Runs schedule `seed` on its own single-threaded runtime with virtual time.
/// `log` keeps the readable event log.
pub fn run_schedule(seed: u64, planted: Planted, log: bool) -> Run {
    run_seeded(seed, log, |world| schedule::run(world, planted))
}
