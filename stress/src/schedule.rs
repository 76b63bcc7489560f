//! Open-loop arrival schedule, modelled on k6's `ramping-arrival-rate`.
//!
//! The rate is piecewise linear: it starts at `start_rate` and each stage ramps
//! linearly to its target over its duration. Arrival `n` (0-based) is due at the
//! instant where the integral of the rate reaches `n`, so the schedule is a pure
//! function of `n`: the sender never accumulates rounding drift, and a late
//! sender still knows exactly when each request *should* have gone out.

use std::time::Duration;

/// One `duration:target` entry of `--stages`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    /// Requests per second reached at the end of the stage.
    pub target: f64,
}

/// Parses `250us`, `500ms`, `20s`, `2m`, `1h` and compounds such as `1m30s`.
/// A bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs_to_duration(secs, s);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?}: missing unit (us, ms, s, m or h)"))?;
        if num_len == 0 {
            return Err(format!("duration {s:?}: expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("duration {s:?}: bad number {:?}", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "us" => 0.000_001,
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration {s:?}: unknown unit {other:?}")),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    secs_to_duration(total, s)
}

fn secs_to_duration(secs: f64, original: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("duration {original:?} must be finite and >= 0"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a non-negative, finite rate in requests per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("rate {s:?} is not a number"))?;
    if !r.is_finite() || r < 0.0 {
        return Err(format!("rate {s:?} must be finite and >= 0"));
    }
    Ok(r)
}

/// Parses `--stages 20s:1000,10s:50000,...`.
pub fn parse_stages(s: &str) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("stages {s:?}: empty stage"));
        }
        let (d, r) = part
            .split_once(':')
            .ok_or_else(|| format!("stage {part:?}: expected DURATION:RATE, e.g. 20s:1000"))?;
        stages.push(Stage {
            duration: parse_duration(d)?,
            target: parse_rate(r)?,
        });
    }
    if stages.iter().all(|st| st.duration.is_zero()) {
        return Err(format!("stages {s:?}: total duration is zero"));
    }
    Ok(stages)
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Seconds since the schedule began.
    start: f64,
    dur: f64,
    r0: f64,
    r1: f64,
    /// Arrivals due before this segment.
    n0: f64,
    /// Arrivals due within this segment.
    n: f64,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    segments: Vec<Segment>,
    total_secs: f64,
    total_arrivals: f64,
}

impl Schedule {
    pub fn new(start_rate: f64, stages: &[Stage]) -> Self {
        let mut segments = Vec::with_capacity(stages.len());
        let (mut t, mut n0, mut r0) = (0.0, 0.0, start_rate);
        for st in stages {
            let dur = st.duration.as_secs_f64();
            let n = dur * (r0 + st.target) / 2.0;
            segments.push(Segment {
                start: t,
                dur,
                r0,
                r1: st.target,
                n0,
                n,
            });
            t += dur;
            n0 += n;
            r0 = st.target;
        }
        Schedule {
            segments,
            total_secs: t,
            total_arrivals: n0,
        }
    }

    pub fn constant(rate: f64, duration: Duration) -> Self {
        Self::new(
            rate,
            &[Stage {
                duration,
                target: rate,
            }],
        )
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.total_secs)
    }

    /// Number of arrivals the whole schedule produces.
    pub fn total_arrivals(&self) -> u64 {
        // Arrival n is due while the integral is still below the total, so
        // there are ceil(total) of them; the epsilon absorbs float noise such
        // as 1000.0000000001 for a 1 s stage at 1000/s.
        (self.total_arrivals - 1e-6).ceil().max(0.0) as u64
    }

    /// The rate the schedule asks for at `t` seconds (for the report's target line).
    pub fn rate_at(&self, t: f64) -> f64 {
        match self.segments.iter().find(|s| t < s.start + s.dur) {
            Some(s) if s.dur > 0.0 => s.r0 + (s.r1 - s.r0) * ((t - s.start) / s.dur).max(0.0),
            Some(s) => s.r1,
            None => self.segments.last().map_or(0.0, |s| s.r1),
        }
    }

    /// When arrival `n` is due, or `None` once the schedule is over.
    pub fn arrival_time(&self, n: u64) -> Option<Duration> {
        let x = n as f64;
        if x >= self.total_arrivals - 1e-6 {
            return None;
        }
        // First segment whose end lies beyond x; zero-length segments (n == 0)
        // are skipped naturally because their end equals their start.
        let idx = self.segments.partition_point(|s| s.n0 + s.n <= x);
        let s = self.segments.get(idx)?;
        let c = x - s.n0;
        // Solve  r0*t + a*t^2 = c  with a = (r1 - r0) / (2*dur). The form
        // 2c / (b + sqrt(b^2 + 4ac)) stays exact when a == 0 and avoids the
        // cancellation of the textbook formula.
        let a = (s.r1 - s.r0) / (2.0 * s.dur);
        let disc = (s.r0 * s.r0 + 4.0 * a * c).max(0.0);
        let denom = s.r0 + disc.sqrt();
        let t = if c <= 0.0 {
            0.0
        } else if denom > 0.0 {
            (2.0 * c / denom).min(s.dur)
        } else {
            0.0
        };
        Some(Duration::from_secs_f64(s.start + t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let s = Schedule::constant(1000.0, Duration::from_secs(2));
        assert_eq!(s.total_arrivals(), 2000);
        for n in [0u64, 1, 2, 500, 1999] {
            let t = secs(s.arrival_time(n).unwrap());
            assert!((t - n as f64 / 1000.0).abs() < 1e-9, "n={n} t={t}");
        }
        assert_eq!(s.arrival_time(2000), None);
        assert_eq!(s.duration(), Duration::from_secs(2));
    }

    #[test]
    fn linear_ramp_from_zero() {
        // Ramp 0 -> 100/s over 10 s: N(t) = 5 t^2, so arrival n is at sqrt(n/5).
        let s = Schedule::new(
            0.0,
            &[Stage {
                duration: Duration::from_secs(10),
                target: 100.0,
            }],
        );
        assert_eq!(s.total_arrivals(), 500);
        for n in [0u64, 5, 20, 125, 499] {
            let t = secs(s.arrival_time(n).unwrap());
            assert!((t - (n as f64 / 5.0).sqrt()).abs() < 1e-9, "n={n} t={t}");
        }
        assert!((s.rate_at(5.0) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn stages_chain_and_ramp_down() {
        // 1 s at 100/s, then 100 -> 300 over 2 s (400 arrivals), then 300 -> 0 over 1 s (150).
        let s = Schedule::new(
            100.0,
            &parse_stages("1s:100,2s:300,1s:0").expect("valid stages"),
        );
        assert_eq!(s.total_arrivals(), 100 + 400 + 150);
        assert!((secs(s.arrival_time(100).unwrap()) - 1.0).abs() < 1e-9);
        // Within the ramp (t' = t - 1): N(t') = 100 t' + 50 t'^2, so N = 150 at t' = 1 and
        // N = 250 at t' = sqrt(6) - 1.
        assert!((secs(s.arrival_time(250).unwrap()) - 2.0).abs() < 1e-9);
        assert!((secs(s.arrival_time(350).unwrap()) - 6f64.sqrt()).abs() < 1e-9);
        assert!((secs(s.arrival_time(500).unwrap()) - 3.0).abs() < 1e-9);
        // Times never go backwards and stay inside the schedule.
        let mut prev = 0.0;
        for n in 0..s.total_arrivals() {
            let t = secs(s.arrival_time(n).unwrap());
            assert!(t >= prev && t <= 4.0, "n={n} t={t} prev={prev}");
            prev = t;
        }
        assert_eq!(s.arrival_time(650), None);
    }

    #[test]
    fn zero_length_stage_is_a_step() {
        let s = Schedule::new(10.0, &parse_stages("0s:1000,1s:1000").expect("valid"));
        assert_eq!(s.total_arrivals(), 1000);
        assert!((secs(s.arrival_time(10).unwrap()) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn parses_stages_and_rejects_bad_ones() {
        let st = parse_stages("20s:1000, 10s:50000").expect("valid");
        assert_eq!(
            st,
            vec![
                Stage {
                    duration: Duration::from_secs(20),
                    target: 1000.0
                },
                Stage {
                    duration: Duration::from_secs(10),
                    target: 50000.0
                },
            ]
        );
        for bad in [
            "", "20s", "20s:", ":100", "20s:abc", "20s:-5", "20q:10", "20s:10,", "0s:10", "20s:inf",
        ] {
            assert!(parse_stages(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
