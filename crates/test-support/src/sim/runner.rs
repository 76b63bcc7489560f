//! What every deterministic simulation shares: a violation and a run's
//! verdict, one schedule on its own current-thread runtime with virtual time,
//! many schedules on a few threads, the environment knobs (`SIM_SEED`,
//! `SIM_SCHEDULES`, `SIM_TRACE`) and the replay of a failing seed.
//! `tests/simulation` and `tests/cas_simulation` both run on it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::world::{Trace, World};

/// A broken invariant: which one, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated: {}", self.invariant, self.detail)
    }
}

pub fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// One schedule's trace and verdict.
pub struct Run {
    pub trace: Trace,
    pub verdict: Result<(), Violation>,
}

/// Runs schedule `seed` on its own single-threaded runtime with virtual time;
/// a panic is a violation. `log` keeps the readable event log.
pub fn run_seeded<F, Fut>(seed: u64, log: bool, schedule: F) -> Run
where
    F: FnOnce(Arc<World>) -> Fut,
    Fut: Future<Output = Result<(), Violation>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let world = World::new(seed, log);
            let verdict = schedule(world.clone()).await;
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

pub fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={raw} is not a number")))
}

/// Totals over many schedules.
#[derive(Default)]
pub struct Totals {
    pub schedules: u64,
    pub events: u64,
    /// Order-independent sum of the schedules' fingerprints.
    pub fingerprint: u64,
    pub kinds: BTreeMap<&'static str, u64>,
    pub violation: Option<(u64, Violation)>,
}

/// Runs `count` schedules from `base` on a few threads (each schedule is
/// independent and single-threaded), stopping at the first violation.
pub fn run_many(base: u64, count: u64, run: impl Fn(u64) -> Run + Sync) -> Totals {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4)) as u64;
    let totals = Mutex::new(Totals::default());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for first in 0..threads {
            let (totals, stop, run) = (&totals, &stop, &run);
            scope.spawn(move || {
                for offset in (first..count).step_by(threads as usize) {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let seed = base.wrapping_add(offset);
                    let ran = run(seed);
                    let mut totals = totals.lock().unwrap();
                    totals.schedules += 1;
                    totals.events += ran.trace.events;
                    totals.fingerprint = totals.fingerprint.wrapping_add(ran.trace.fingerprint);
                    for (kind, n) in ran.trace.kinds {
                        *totals.kinds.entry(kind).or_default() += n;
                    }
                    if let Err(violation) = ran.verdict {
                        stop.store(true, Ordering::Relaxed);
                        totals.violation.get_or_insert((seed, violation));
                    }
                }
            });
        }
    });
    totals.into_inner().unwrap()
}

/// Replays `seed` with its event log (`replay` runs it with the log kept),
/// prints the log's tail (all of it with `SIM_TRACE`), and fails, naming the
/// command that replays the seed alone.
pub fn fail(seed: u64, violation: &Violation, test: &str, replay: impl Fn(u64) -> Run) -> ! {
    let log = replay(seed).trace.log.unwrap_or_default();
    let shown = if std::env::var_os("SIM_TRACE").is_some() {
        log.len()
    } else {
        60
    };
    eprintln!("--- last {shown} events of seed {seed} ---");
    for line in &log[log.len().saturating_sub(shown)..] {
        eprintln!("{line}");
    }
    panic!("seed {seed}: {violation}\nreplay: SIM_SEED={seed} SIM_SCHEDULES=1 cargo test --test {test}");
}

/// Asserts every kind in `must` happened somewhere in `totals`.
pub fn assert_coverage(totals: &Totals, must: &[&str]) {
    for kind in must {
        assert!(
            totals.kinds.contains_key(kind),
            "no {kind} in {} schedules",
            totals.schedules
        );
    }
}

/// The default run of a simulation test: `SIM_SCHEDULES` (else
/// `default_count`) schedules from `SIM_SEED` (else `default_seed`), printing
/// totals and failing with the replay command at the first violation; at
/// 1,000 schedules or more every kind in `must` must have happened.
/// `run(seed, log)` runs one schedule.
pub fn run_default(
    test: &str,
    default_seed: u64,
    default_count: u64,
    must: &[&str],
    run: impl Fn(u64, bool) -> Run + Sync,
) {
    let base = env_u64("SIM_SEED").unwrap_or(default_seed);
    let count = env_u64("SIM_SCHEDULES").unwrap_or(default_count);
    println!("{test}: {count} schedules from seed {base}");
    let started = std::time::Instant::now();
    let totals = run_many(base, count, |seed| run(seed, false));
    if let Some((seed, violation)) = &totals.violation {
        fail(*seed, violation, test, |seed| run(seed, true));
    }
    println!(
        "{test}: {} schedules, {} simulated events, wall time {:.1?}, fingerprint {:016x}",
        totals.schedules,
        totals.events,
        started.elapsed(),
        totals.fingerprint
    );
    println!("events by kind: {:?}", totals.kinds);
    assert_eq!(totals.schedules, count);
    if count >= 1_000 {
        assert_coverage(&totals, must);
    }
}

/// Asserts that each of `seeds` seeds from `first` replays exactly (same
/// trace, same verdict) and that different seeds give different schedules.
pub fn assert_seeds_replay(first: u64, seeds: u64, run: impl Fn(u64) -> Run) {
    let mut fingerprints = Vec::new();
    for seed in first..first + seeds {
        let once = run(seed);
        let again = run(seed);
        assert!(once.trace.events > 0, "seed {seed} did nothing");
        assert_eq!(once.trace, again.trace, "seed {seed} is not deterministic");
        assert_eq!(once.verdict, again.verdict);
        fingerprints.push(once.trace.fingerprint);
    }
    fingerprints.sort_unstable();
    fingerprints.dedup();
    assert_eq!(
        fingerprints.len() as u64,
        seeds,
        "different seeds must differ"
    );
}

/// Asserts that a planted bug (`planted(seed)` runs a schedule with it) is
/// caught within `seeds` seeds from `first` by a violation `expected` accepts,
/// on a seed that holds without the bug (`clean(seed)`).
pub fn assert_caught(
    name: &str,
    first: u64,
    seeds: u64,
    expected: impl Fn(&Violation) -> bool,
    planted: impl Fn(u64) -> Run,
    clean: impl Fn(u64) -> Run,
) {
    let started = std::time::Instant::now();
    for offset in 0..seeds {
        let seed = first + offset;
        let Err(violation) = planted(seed).verdict else {
            continue;
        };
        assert!(
            expected(&violation),
            "{name}: seed {seed}: not the violation expected: {violation}"
        );
        assert_eq!(
            clean(seed).verdict,
            Ok(()),
            "seed {seed} must hold without the bug"
        );
        println!(
            "{name} caught after {} seeds ({:.1?}): seed {seed}: {violation}",
            offset + 1,
            started.elapsed()
        );
        return;
    }
    panic!("{name} not caught within {seeds} seeds");
}
