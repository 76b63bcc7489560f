//! Runs one phase of load: open loop (arrival schedule) or closed loop (as fast as possible).
//!
//! Open loop: a dedicated OS thread walks the schedule and, at each arrival's
//! intended time, either hands the request to the queue of its target (request
//! n goes to URL n mod k) or, when `--max-in-flight` requests are already
//! outstanding, counts it as dropped, as k6 does when it runs out of VUs. The
//! scheduler lives on its own thread because tokio's timer has 1 ms
//! granularity, too coarse for tens of thousands of arrivals per second; a
//! plain `thread::sleep` wakes within tens of microseconds. It wakes at most
//! once per `--tick` and then sends everything due within that tick. Latency
//! runs from the intended time (or from the actual send, for an arrival sent
//! up to one tick early), so a late scheduler, a full queue or a slow
//! connection all show up in it: there is no coordinated omission.
//!
//! Closed loop: each worker sends its next request as soon as the previous one
//! is answered; latency then runs from the actual send.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::client::{Conn, Failure, Target};
use crate::scenarios::Workload;
use crate::schedule::Schedule;
use crate::stats::{Outcome, Recorder, Summary};

pub enum Load {
    Open {
        schedule: Schedule,
        cap: Option<u64>,
    },
    Closed {
        concurrency: usize,
        duration: Duration,
        cap: Option<u64>,
    },
}

impl Load {
    pub fn duration(&self) -> Duration {
        match self {
            Load::Open { schedule, .. } => schedule.duration(),
            Load::Closed { duration, .. } => *duration,
        }
    }
}

pub struct ExecOpts {
    pub connections: usize,
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Open loop: arrivals due within this much are dispatched together.
    pub tick: Duration,
    pub progress: bool,
    pub server_pids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUsage {
    /// CPU seconds (user + system) used during the phase.
    pub cpu_s: f64,
    /// Average cores busy: cpu_s / wall seconds.
    pub cores: f64,
    /// CPU microseconds per completed request.
    pub us_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub name: String,
    /// "open" or "closed".
    pub mode: &'static str,
    pub connections: usize,
    /// Completed requests per second over the phase.
    pub achieved_rate: f64,
    /// Arrivals the schedule planned, after --requests (open loop).
    pub planned: Option<u64>,
    /// Mean arrival rate the schedule asked for (open loop).
    pub target_rate: Option<f64>,
    /// achieved_rate / baseline rate, when a baseline ran.
    pub ratio_to_baseline: Option<f64>,
    pub harness_cpu: CpuUsage,
    pub server_cpu: Option<CpuUsage>,
    #[serde(flatten)]
    pub summary: Summary,
}

struct Job {
    n: u64,
    due: Instant,
}

/// CPU time this process has used so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of another process (Linux /proc), or None if it cannot be read.
pub fn pid_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn servers_cpu(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| pid_cpu(p)).sum()
}

fn usage(cpu: Duration, wall: f64, requests: u64) -> CpuUsage {
    let cpu_s = cpu.as_secs_f64();
    CpuUsage {
        cpu_s,
        cores: if wall > 0.0 { cpu_s / wall } else { 0.0 },
        us_per_request: if requests > 0 {
            cpu_s * 1e6 / requests as f64
        } else {
            0.0
        },
    }
}

/// One request/response exchange, recorded against `intended`; returns the
/// transport failure, if any.
async fn exchange(
    conn: &mut Conn,
    wl: &Workload,
    rec: &Recorder,
    n: u64,
    intended: Instant,
    timeout: Duration,
) -> Option<Failure> {
    let op = wl.op(n);
    let req = wl.request(conn.target(), &op);
    rec.sent();
    // Late sends count from the intended time (no coordinated omission);
    // sends a tick early count from the actual send, so neither flatters.
    let from = intended.min(Instant::now());
    match conn.send(req, timeout).await {
        Ok((status, body)) => {
            let latency = from.elapsed();
            if status.is_success() {
                wl.on_success(&op, &body);
            }
            rec.record(latency, Outcome::Http(status, &body));
            None
        }
        Err(f) => {
            rec.record(from.elapsed(), Outcome::Failed(f));
            Some(f)
        }
    }
}

/// Opens every connection before the clock starts, so the first arrivals do
/// not pay for the TCP handshakes.
async fn connect_all(targets: &[Arc<Target>], count: usize) -> Vec<Conn> {
    let mut set = JoinSet::new();
    for i in 0..count {
        let mut conn = Conn::new(targets[i % targets.len()].clone());
        set.spawn(async move {
            conn.warm_up().await;
            (i, conn)
        });
    }
    let mut conns: Vec<(usize, Conn)> = set.join_all().await;
    conns.sort_by_key(|(i, _)| *i);
    conns.into_iter().map(|(_, c)| c).collect()
}

fn progress_bar(name: &str, duration: Duration, enabled: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(duration.as_secs().max(1)),
        if enabled {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:24}] {pos:>4}/{len}s {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

pub async fn run_phase(
    name: &str,
    targets: &[Arc<Target>],
    load: &Load,
    wl: Arc<Workload>,
    opts: &ExecOpts,
) -> PhaseReport {
    // Every target needs at least one connection, or its queue would never drain.
    let workers = match load {
        Load::Open { .. } => opts.connections,
        Load::Closed { concurrency, .. } => *concurrency,
    }
    .max(targets.len());
    let conns = connect_all(targets, workers).await;

    let cpu0 = process_cpu();
    let server0 = servers_cpu(&opts.server_pids);
    let rec = Arc::new(Recorder::new(Instant::now()));
    let bar = progress_bar(name, load.duration(), opts.progress);
    let in_flight = Arc::new(AtomicUsize::new(0));

    let mut tasks = JoinSet::new();
    let mut scheduler = None;
    match load {
        Load::Open { schedule, cap } => {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..targets.len())
                .map(|_| async_channel::unbounded::<Job>())
                .unzip();
            for (i, mut conn) in conns.into_iter().enumerate() {
                let rx = rxs[i % targets.len()].clone();
                let (wl, rec, in_flight) = (wl.clone(), rec.clone(), in_flight.clone());
                let timeout = opts.timeout;
                tasks.spawn(async move {
                    while let Ok(job) = rx.recv().await {
                        exchange(&mut conn, &wl, &rec, job.n, job.due, timeout).await;
                        in_flight.fetch_sub(1, Relaxed);
                    }
                });
            }
            let (schedule, cap, rec, in_flight) =
                (schedule.clone(), *cap, rec.clone(), in_flight.clone());
            let max_in_flight = opts.max_in_flight;
            let tick = opts.tick;
            scheduler = Some(std::thread::spawn(move || {
                let epoch = rec.epoch();
                let cap = cap.unwrap_or(u64::MAX);
                let mut n = 0u64;
                let mut next_due = schedule.arrival_time(0).map(|at| epoch + at);
                while let Some(due) = next_due.filter(|_| n < cap) {
                    let now = Instant::now();
                    // Arrivals due within one tick go out now, a little early
                    // (their latency then runs from the actual send): one
                    // wake-up per tick instead of one per arrival, which at a
                    // few thousand requests per second is most of the
                    // harness's CPU time.
                    if due >= now + tick {
                        std::thread::sleep(due - now);
                        continue;
                    }
                    if due < now {
                        rec.dispatch_lag(now - due);
                    }
                    rec.scheduled();
                    if in_flight.load(Relaxed) >= max_in_flight {
                        rec.dropped();
                    } else {
                        in_flight.fetch_add(1, Relaxed);
                        let q = &txs[(n % txs.len() as u64) as usize];
                        if q.try_send(Job { n, due }).is_err() {
                            in_flight.fetch_sub(1, Relaxed);
                            rec.dropped();
                        }
                    }
                    n += 1;
                    next_due = schedule.arrival_time(n).map(|at| epoch + at);
                }
                // Dropping the senders closes the queues: workers drain and stop.
            }));
        }
        Load::Closed { duration, cap, .. } => {
            let deadline = rec.epoch() + *duration;
            let next = Arc::new(AtomicU64::new(0));
            let cap = cap.unwrap_or(u64::MAX);
            for mut conn in conns {
                let (wl, rec, next) = (wl.clone(), rec.clone(), next.clone());
                let timeout = opts.timeout;
                tasks.spawn(async move {
                    loop {
                        let now = Instant::now();
                        let n = next.fetch_add(1, Relaxed);
                        if n >= cap || now >= deadline {
                            break;
                        }
                        rec.scheduled();
                        let failed = exchange(&mut conn, &wl, &rec, n, now, timeout).await;
                        if failed == Some(Failure::Connect) {
                            // A refused connection fails in microseconds; without
                            // a pause the closed loop would spin on it. (The open
                            // loop is paced by its schedule already.)
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                });
            }
        }
    }

    // Timeline and progress: a 1 s interval closes on every 4th 250 ms tick.
    let ticker = {
        let (rec, bar, in_flight) = (rec.clone(), bar.clone(), in_flight.clone());
        let rate_at = match load {
            Load::Open { schedule, .. } => Some(schedule.clone()),
            Load::Closed { .. } => None,
        };
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(250));
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            iv.tick().await;
            let mut ticks = 0u64;
            loop {
                iv.tick().await;
                ticks += 1;
                let t = rec.epoch().elapsed().as_secs_f64();
                bar.set_position(t as u64);
                if ticks.is_multiple_of(4) {
                    let target = rate_at.as_ref().map_or(0.0, |s| s.rate_at(t - 0.5));
                    rec.tick(target);
                    let l = rec.live();
                    bar.set_message(format!(
                        "{:>8.0} req/s  done {}  err {}  drop {}  in-flight {}  p99 {:.2} ms",
                        l.rate,
                        l.completed,
                        l.errors,
                        l.dropped,
                        in_flight.load(Relaxed),
                        l.p99_ms
                    ));
                }
            }
        })
    };

    while tasks.join_next().await.is_some() {}
    if let Some(s) = scheduler {
        // The queues only close when the scheduler has returned, so it is done.
        let _ = s.join();
    }
    // Stop the ticker now rather than at its next tick, so the final interval
    // (and with it the phase's elapsed time) ends when the last answer came.
    ticker.abort();
    let _ = ticker.await;
    let last_target = match load {
        Load::Open { schedule, .. } => schedule.rate_at(rec.epoch().elapsed().as_secs_f64()),
        Load::Closed { .. } => 0.0,
    };
    rec.tick(last_target);
    bar.finish_and_clear();

    let summary = rec.summary();
    let wall = summary.elapsed_s;
    let cpu = usage(process_cpu().saturating_sub(cpu0), wall, summary.completed);
    let server_cpu = match (server0, servers_cpu(&opts.server_pids)) {
        (Some(a), Some(b)) => Some(usage(b.saturating_sub(a), wall, summary.completed)),
        _ => None,
    };
    let (mode, planned, target_rate) = match load {
        Load::Open { schedule, cap } => {
            let planned = schedule.total_arrivals().min(cap.unwrap_or(u64::MAX));
            let secs = schedule.duration().as_secs_f64();
            (
                "open",
                Some(planned),
                (secs > 0.0).then(|| schedule.total_arrivals() as f64 / secs),
            )
        }
        Load::Closed { .. } => ("closed", None, None),
    };
    PhaseReport {
        name: name.to_string(),
        mode,
        connections: workers,
        achieved_rate: if wall > 0.0 {
            summary.completed as f64 / wall
        } else {
            0.0
        },
        planned,
        target_rate,
        ratio_to_baseline: None,
        harness_cpu: cpu,
        server_cpu,
        summary,
    }
}
