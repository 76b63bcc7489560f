//! The deterministic simulation's models and driver; see `tests/simulation.rs`.

pub mod check;
pub mod knobs;
pub mod ledger;
pub mod network;
pub mod schedule;
pub mod service;
pub mod wallet;
pub mod world;

/// The tests' SplitMix64 (no new dependency; its stream never changes with a
/// crate upgrade, so a seed replays the same schedule for good).
#[path = "../support/rng.rs"]
#[allow(dead_code)]
mod rng;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use voucherd::redemption::CreditPort;

use check::{violation, Violation};
use network::{AppliedBeforeAnswer, SimPort, TimeoutAsRefusal};
use world::{Trace, World};

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

/// One schedule's trace and verdict.
pub struct Run {
    pub trace: Trace,
    pub verdict: Result<(), Violation>,
}

/// Runs schedule `seed` on its own single-threaded runtime with virtual time.
/// `log` keeps the readable event log.
pub fn run_schedule(seed: u64, planted: Planted, log: bool) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let world = World::new(seed, log);
            let verdict = schedule::run(world.clone(), planted).await;
            Run {
                trace: world.trace(),
                verdict,
            }
        })
    }));
    ran.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Run {
            trace: Trace::default(),
            verdict: Err(violation("panic", message)),
        }
    })
}
