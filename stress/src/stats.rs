//! Counting and latency recording for one phase of a run.
//!
//! Counters the scheduler thread touches are atomics; everything a completed
//! request records goes under one short mutex (an uncontended lock is a few
//! nanoseconds, far below the cost of the request itself). Latency is kept in
//! microseconds in an HDR histogram for the whole phase and in a coarser one
//! per one-second interval for the timeline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::StatusCode;
use parking_lot::Mutex;
use serde::Serialize;

use crate::client::Failure;

/// One hour in microseconds: anything slower is clamped (and is a timeout anyway).
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub enum Outcome<'a> {
    Http(StatusCode, &'a [u8]),
    Failed(Failure),
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds since the phase began.
    pub t: f64,
    /// Interval length in seconds (the last one is usually shorter).
    pub secs: f64,
    pub target_rate: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl TimelinePoint {
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.completed as f64 / self.secs
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusCount {
    /// HTTP status, or 0 when no response arrived (see `code`).
    pub status: u16,
    /// The JSON `error` code, `ok` for 2xx, or a transport failure.
    pub code: String,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub scheduled: u64,
    pub sent: u64,
    pub completed: u64,
    pub ok: u64,
    pub errors: u64,
    pub dropped: u64,
    /// Open loop: how late the harness itself dispatched arrivals. If these
    /// grow, the harness (not the server) is the bottleneck.
    pub dispatch_lag_max_ms: f64,
    pub dispatched_late_1ms: u64,
    pub statuses: Vec<StatusCount>,
    pub latency: LatencySummary,
    pub timeline: Vec<TimelinePoint>,
}

/// What the progress bar shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub rate: f64,
    pub completed: u64,
    pub errors: u64,
    pub dropped: u64,
    pub p99_ms: f64,
}

struct Inner {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    /// Interned `error` codes; statuses refer to them by index.
    codes: Vec<Box<[u8]>>,
    statuses: HashMap<(u16, u16), u64>,
    completed: u64,
    ok: u64,
    errors: u64,
    iv_completed: u64,
    iv_ok: u64,
    iv_errors: u64,
    scheduled: u64,
    sent: u64,
    dropped: u64,
    timeline: Vec<TimelinePoint>,
    last_tick: Duration,
}

pub struct Recorder {
    epoch: Instant,
    iv_scheduled: AtomicU64,
    iv_sent: AtomicU64,
    iv_dropped: AtomicU64,
    lag_max_us: AtomicU64,
    late_1ms: AtomicU64,
    inner: Mutex<Inner>,
}

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("static histogram bounds")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Finds the value of the top-level `"error"` string in an error body without
/// parsing the whole JSON: rejections dominate a flash crowd, so this is hot.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"error\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut rest = &body[at..];
    let skip_ws = |r: &mut &[u8]| {
        while let Some((b, tail)) = r.split_first() {
            if b.is_ascii_whitespace() {
                *r = tail;
            } else {
                break;
            }
        }
    };
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b":")?;
    skip_ws(&mut rest);
    rest = rest.strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

impl Recorder {
    pub fn new(epoch: Instant) -> Self {
        Recorder {
            epoch,
            iv_scheduled: AtomicU64::new(0),
            iv_sent: AtomicU64::new(0),
            iv_dropped: AtomicU64::new(0),
            lag_max_us: AtomicU64::new(0),
            late_1ms: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                total: histogram(3),
                interval: histogram(2),
                codes: vec![Box::from(&b"ok"[..])],
                statuses: HashMap::new(),
                completed: 0,
                ok: 0,
                errors: 0,
                iv_completed: 0,
                iv_ok: 0,
                iv_errors: 0,
                scheduled: 0,
                sent: 0,
                dropped: 0,
                timeline: Vec::new(),
                last_tick: Duration::ZERO,
            }),
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn scheduled(&self) {
        self.iv_scheduled.fetch_add(1, Relaxed);
    }

    /// How late the scheduler handed out an arrival.
    pub fn dispatch_lag(&self, lag: Duration) {
        let us = lag.as_micros() as u64;
        if us > 1000 {
            self.late_1ms.fetch_add(1, Relaxed);
        }
        self.lag_max_us.fetch_max(us, Relaxed);
    }

    pub fn dropped(&self) {
        self.iv_dropped.fetch_add(1, Relaxed);
    }

    pub fn sent(&self) {
        self.iv_sent.fetch_add(1, Relaxed);
    }

    pub fn record(&self, latency: Duration, outcome: Outcome<'_>) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.total.saturating_record(us);
        inner.interval.saturating_record(us);
        inner.completed += 1;
        inner.iv_completed += 1;
        let key = match outcome {
            Outcome::Http(status, _) if status.is_success() => {
                inner.ok += 1;
                inner.iv_ok += 1;
                (status.as_u16(), 0)
            }
            Outcome::Http(status, body) => {
                inner.errors += 1;
                inner.iv_errors += 1;
                let code = error_code(body).unwrap_or(b"-");
                (status.as_u16(), intern(&mut inner.codes, code))
            }
            Outcome::Failed(f) => {
                inner.errors += 1;
                inner.iv_errors += 1;
                (0, intern(&mut inner.codes, f.code().as_bytes()))
            }
        };
        *inner.statuses.entry(key).or_insert(0) += 1;
    }

    /// Closes the current interval and appends it to the timeline.
    pub fn tick(&self, target_rate: f64) -> TimelinePoint {
        let now = self.epoch.elapsed();
        let scheduled = self.iv_scheduled.swap(0, Relaxed);
        let sent = self.iv_sent.swap(0, Relaxed);
        let dropped = self.iv_dropped.swap(0, Relaxed);
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let secs = (now - inner.last_tick).as_secs_f64();
        let h = &inner.interval;
        let point = TimelinePoint {
            t: now.as_secs_f64(),
            secs,
            target_rate,
            scheduled,
            sent,
            completed: inner.iv_completed,
            ok: inner.iv_ok,
            errors: inner.iv_errors,
            dropped,
            p50_ms: if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(0.5))
            },
            p99_ms: if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(0.99))
            },
            max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
        };
        inner.interval.reset();
        inner.iv_completed = 0;
        inner.iv_ok = 0;
        inner.iv_errors = 0;
        inner.scheduled += scheduled;
        inner.sent += sent;
        inner.dropped += dropped;
        inner.last_tick = now;
        inner.timeline.push(point);
        point
    }

    /// Totals so far plus the last interval's rate and p99, for the progress bar.
    pub fn live(&self) -> Live {
        let g = self.inner.lock();
        let last = g.timeline.last().copied().unwrap_or_default();
        Live {
            rate: last.rate(),
            completed: g.completed,
            errors: g.errors,
            dropped: g.dropped + self.iv_dropped.load(Relaxed),
            p99_ms: last.p99_ms,
        }
    }

    pub fn summary(&self) -> Summary {
        let g = self.inner.lock();
        let h = &g.total;
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_quantile(p))
            }
        };
        let mut statuses: Vec<StatusCount> = g
            .statuses
            .iter()
            .map(|(&(status, code), &count)| StatusCount {
                status,
                code: String::from_utf8_lossy(&g.codes[code as usize]).into_owned(),
                count,
            })
            .collect();
        statuses.sort_by(|a, b| (a.status, &a.code).cmp(&(b.status, &b.code)));
        Summary {
            elapsed_s: g.last_tick.as_secs_f64(),
            scheduled: g.scheduled,
            sent: g.sent,
            completed: g.completed,
            ok: g.ok,
            errors: g.errors,
            dropped: g.dropped,
            dispatch_lag_max_ms: ms(self.lag_max_us.load(Relaxed)),
            dispatched_late_1ms: self.late_1ms.load(Relaxed),
            statuses,
            latency: LatencySummary {
                count: h.len(),
                mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
                p50_ms: q(0.5),
                p90_ms: q(0.9),
                p99_ms: q(0.99),
                p999_ms: q(0.999),
                max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
            },
            timeline: g.timeline.clone(),
        }
    }
}

fn intern(codes: &mut Vec<Box<[u8]>>, code: &[u8]) -> u16 {
    if let Some(i) = codes.iter().position(|c| &**c == code) {
        return i as u16;
    }
    // A misbehaving server could invent codes without end; past a bound they
    // share one bucket so the table stays small.
    if codes.len() >= 200 {
        return intern(codes, b"(other)");
    }
    codes.push(Box::from(code));
    (codes.len() - 1) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_error_codes() {
        assert_eq!(
            error_code(br#"{"error":"voucher_exhausted","message":"x"}"#),
            Some(&b"voucher_exhausted"[..])
        );
        assert_eq!(
            error_code(br#"{ "message": "m", "error" : "already_redeemed" }"#),
            Some(&b"already_redeemed"[..])
        );
        assert_eq!(error_code(b"not json"), None);
    }

    #[test]
    fn records_statuses_and_latency() {
        let r = Recorder::new(Instant::now());
        for _ in 0..3 {
            r.scheduled();
            r.sent();
        }
        r.dropped();
        r.record(
            Duration::from_millis(1),
            Outcome::Http(StatusCode::OK, b"{}"),
        );
        r.record(
            Duration::from_millis(2),
            Outcome::Http(StatusCode::GONE, br#"{"error":"voucher_exhausted"}"#),
        );
        r.record(Duration::from_millis(3), Outcome::Failed(Failure::Timeout));
        let p = r.tick(10.0);
        assert_eq!((p.completed, p.ok, p.errors, p.dropped), (3, 1, 2, 1));
        let s = r.summary();
        assert_eq!((s.scheduled, s.sent, s.dropped), (3, 3, 1));
        let codes: Vec<(u16, &str, u64)> = s
            .statuses
            .iter()
            .map(|c| (c.status, c.code.as_str(), c.count))
            .collect();
        assert_eq!(
            codes,
            vec![
                (0, "timeout", 1),
                (200, "ok", 1),
                (410, "voucher_exhausted", 1)
            ]
        );
        assert!((s.latency.max_ms - 3.0).abs() < 0.01);
    }
}
