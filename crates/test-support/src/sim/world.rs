//! What every model shares: the one seeded RNG, virtual time, the fault switch,
//! the count of network deliveries still travelling, and the event trace whose
//! hash fingerprints a run.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fnv::FnvHasher;
use parking_lot::Mutex;
use tokio::time::Instant;
use voucherd_core::domain::{PhoneNumber, Timestamp};

use super::knobs::Knobs;
use crate::rng::Rng;

/// Virtual time 0 as a ledger timestamp.
const EPOCH_MICROS: i64 = 1_780_000_000_000_000;
/// User `i` has phone number `PHONE_BASE + i`.
pub const PHONE_BASE: u64 = 989_120_000_000;

pub fn phone(user: u64) -> PhoneNumber {
    PhoneNumber::from_stored(PHONE_BASE + user)
}

pub fn user(phone: PhoneNumber) -> u64 {
    phone.stored() - PHONE_BASE
}

/// What a run leaves behind besides its verdict.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Trace {
    /// FNV-1a over every event (time, kind, subject, value), in order.
    pub fingerprint: u64,
    pub events: u64,
    /// Events by kind: the coverage of a run.
    pub kinds: BTreeMap<&'static str, u64>,
    /// The readable event log, when asked for.
    pub log: Option<Vec<String>>,
}

pub struct World {
    rng: Mutex<Rng>,
    trace: Mutex<Trace>,
    faulty: AtomicBool,
    travelling: Arc<AtomicUsize>,
    start: Instant,
    pub knobs: Knobs,
}

impl World {
    /// A world for `seed`; call inside the schedule's runtime (virtual time).
    pub fn new(seed: u64, log: bool) -> Arc<World> {
        let mut rng = Rng::seeded(seed);
        let knobs = Knobs::draw(&mut rng);
        let trace = Trace {
            log: log.then(Vec::new),
            ..Trace::default()
        };
        Arc::new(World {
            rng: Mutex::new(rng),
            trace: Mutex::new(trace),
            faulty: AtomicBool::new(true),
            travelling: Arc::new(AtomicUsize::new(0)),
            start: Instant::now(),
            knobs,
        })
    }

    pub fn now(&self) -> Timestamp {
        Timestamp(EPOCH_MICROS + self.start.elapsed().as_micros() as i64)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        lo + self.rng.lock().below(hi - lo + 1)
    }

    pub fn chance(&self, per_mille: u64) -> bool {
        per_mille > 0 && self.range(0, 999) < per_mille
    }

    /// A fault with probability `per_mille`, only while faults are on.
    pub fn fault(&self, per_mille: u64) -> bool {
        self.faulty() && self.chance(per_mille)
    }

    pub fn faulty(&self) -> bool {
        self.faulty.load(Ordering::Relaxed)
    }

    /// Stops every fault from now on (the heal phase).
    pub fn heal(&self) {
        self.faulty.store(false, Ordering::Relaxed);
        self.event("heal", 0, 0);
    }

    pub fn millis(&self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    /// Sleeps `lo..=hi` virtual milliseconds.
    pub async fn pause(&self, lo: u64, hi: u64) {
        tokio::time::sleep(self.millis(lo, hi)).await;
    }

    /// Records an event: `subject` is usually a user number.
    pub fn event(&self, kind: &'static str, subject: u64, value: i64) {
        let at = self.start.elapsed().as_micros() as u64;
        let mut trace = self.trace.lock();
        let mut hasher = FnvHasher::with_key(trace.fingerprint);
        (at, kind, subject, value).hash(&mut hasher);
        trace.fingerprint = hasher.finish();
        trace.events += 1;
        *trace.kinds.entry(kind).or_default() += 1;
        if let Some(log) = &mut trace.log {
            log.push(format!(
                "{:>9.3}s {kind} user={subject} {value}",
                at as f64 / 1e6
            ));
        }
    }

    /// Spawns a network delivery; [`World::travelling`] counts it until it ends.
    pub fn spawn_net(&self, delivery: impl Future<Output = ()> + Send + 'static) {
        let guard = Travelling::new(&self.travelling);
        tokio::spawn(async move {
            let _guard = guard;
            delivery.await;
        });
    }

    pub fn travelling(&self) -> usize {
        self.travelling.load(Ordering::Relaxed)
    }

    pub fn trace(&self) -> Trace {
        self.trace.lock().clone()
    }
}

/// Counts one delivery in flight until dropped (finished or dropped unpolled).
struct Travelling(Arc<AtomicUsize>);

impl Travelling {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Travelling(count.clone())
    }
}

impl Drop for Travelling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
