//! A self-contained HTML report: inline SVG charts, no scripts, no external assets,
//! so it can be attached to an issue or opened offline.

use std::fmt::Write as _;

use crate::exec::PhaseReport;
use crate::report::{format_run, RunReport};
use crate::stats::TimelinePoint;

const W: f64 = 980.0;
const H: f64 = 300.0;
const ML: f64 = 70.0;
const MR: f64 = 210.0;
const MT: f64 = 30.0;
const MB: f64 = 40.0;

pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` ticks.
fn nice_step(span: f64, n: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 1000.0 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line chart. `log_y` plots on a log10 axis (values <= 0 are skipped).
/// With `per_baseline`, a right-hand axis shows each y value divided by it.
pub fn chart(
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    log_y: bool,
    per_baseline: Option<f64>,
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(0.0f64, f64::max).max(1.0);
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite() && (!log_y || *y > 0.0))
        .collect();
    let (y_lo, y_hi) = if log_y {
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(0.0f64, f64::max);
        if ys.is_empty() {
            (0.0, 1.0)
        } else {
            (
                lo.log10().floor(),
                hi.log10().ceil().max(lo.log10().floor() + 1.0),
            )
        }
    } else {
        let hi = ys.iter().copied().fold(0.0f64, f64::max);
        let step = nice_step(hi.max(1e-9), 5.0);
        (0.0, ((hi / step).ceil() * step).max(step))
    };
    let pw = W - ML - MR;
    let ph = H - MT - MB;
    let px = |x: f64| ML + x / x_max * pw;
    let py = |y: f64| {
        let v = if log_y { y.log10() } else { y };
        MT + ph - (v - y_lo) / (y_hi - y_lo) * ph
    };

    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(
        svg,
        r##"<text x="{ML}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    // Grid and y ticks.
    let y_ticks: Vec<f64> = if log_y {
        (y_lo as i32..=y_hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        let step = nice_step(y_hi, 5.0);
        (0..)
            .map(|i| i as f64 * step)
            .take_while(|v| *v <= y_hi + step * 1e-9)
            .collect()
    };
    for t in y_ticks {
        let y = py(t);
        let _ = write!(
            svg,
            r##"<line x1="{ML}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ML + pw,
            ML - 6.0,
            y + 4.0,
            fmt_num(t)
        );
        if let Some(b) = per_baseline.filter(|b| *b > 0.0) {
            let _ = write!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" fill="#2ca02c">{:.3}x</text>"##,
                ML + pw + 4.0,
                y + 4.0,
                t / b
            );
        }
    }
    let x_step = nice_step(x_max, 10.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let x = px(t);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            MT + ph,
            MT + ph + 15.0,
            fmt_num(t)
        );
        t += x_step;
    }
    let _ = write!(
        svg,
        r##"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text><text transform="translate(14,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
        ML + pw / 2.0,
        H - 6.0,
        MT + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        if !pts.is_empty() {
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{}" stroke-width="1.6"{dash} points="{}"/>"##,
                s.color,
                pts.join(" ")
            );
        }
        let ly = MT + 12.0 + i as f64 * 16.0;
        let lx = ML + pw + 60.0;
        let _ = write!(
            svg,
            r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"##,
            lx + 18.0,
            s.color,
            lx + 24.0,
            ly + 4.0,
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn points(tl: &[TimelinePoint], f: impl Fn(&TimelinePoint) -> f64) -> Vec<(f64, f64)> {
    // A sliver of an interval at the very end (the drain) makes per-second
    // rates jump; the JSON keeps it, the picture leaves it out.
    tl.iter()
        .filter(|p| p.secs >= 0.25)
        .map(|p| (p.t, f(p)))
        .collect()
}

fn per_sec(p: &TimelinePoint, v: u64) -> f64 {
    if p.secs > 0.0 {
        v as f64 / p.secs
    } else {
        0.0
    }
}

fn phase_charts(p: &PhaseReport, baseline_rate: Option<f64>) -> String {
    let tl = &p.summary.timeline;
    let mut rate = Vec::new();
    if p.mode == "open" {
        rate.push(Series {
            name: "target/s",
            color: "#7f7f7f",
            dashed: true,
            points: points(tl, |x| x.target_rate),
        });
        rate.push(Series {
            name: "dropped/s",
            color: "#ff7f0e",
            dashed: false,
            points: points(tl, |x| per_sec(x, x.dropped)),
        });
    }
    rate.push(Series {
        name: "non-2xx/s",
        color: "#d62728",
        dashed: false,
        points: points(tl, |x| per_sec(x, x.errors)),
    });
    // Last, so it is drawn on top of the error curve it often coincides with.
    rate.push(Series {
        name: "completed/s",
        color: "#1f77b4",
        dashed: false,
        points: points(tl, TimelinePoint::rate),
    });
    let peak = rate
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let mut title = format!("{}: request rate", p.name);
    if let Some(b) = baseline_rate {
        let _ = write!(title, " (baseline GET /healthz {b:.0}/s)");
        // A baseline far above the phase's rates would flatten its curves to
        // the axis; then the title carries the number instead of a line.
        if b <= 3.0 * peak {
            let end = tl.last().map_or(1.0, |x| x.t);
            rate.push(Series {
                name: "baseline /healthz",
                color: "#2ca02c",
                dashed: true,
                points: vec![(0.0, b), (end, b)],
            });
        }
    }
    let lat = [
        Series {
            name: "p50",
            color: "#1f77b4",
            dashed: false,
            points: points(tl, |x| x.p50_ms),
        },
        Series {
            name: "p99",
            color: "#d62728",
            dashed: false,
            points: points(tl, |x| x.p99_ms),
        },
        Series {
            name: "max",
            color: "#bbbbbb",
            dashed: true,
            points: points(tl, |x| x.max_ms),
        },
    ];
    format!(
        "{}\n{}",
        chart(&title, "requests / s", &rate, false, baseline_rate),
        chart(
            &format!("{}: latency per second (from intended send time)", p.name),
            "ms (log)",
            &lat,
            true,
            None
        )
    )
}

pub fn render(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html><head><meta charset="utf-8"><title>stress {}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222}}pre{{background:#f6f6f6;padding:12px;font-size:12px}}svg{{display:block;margin:12px 0}}</style>
</head><body><h1>voucherd stress: {}</h1><p><code>{}</code></p>"#,
        escape(&r.scenario),
        escape(&r.scenario),
        escape(&r.command_line.join(" "))
    );
    let baseline_rate = r.baseline.as_ref().map(|b| b.achieved_rate);
    out.push_str(&phase_charts(&r.phase, baseline_rate));
    if let Some(b) = &r.baseline {
        out.push_str(&phase_charts(b, None));
    }
    let _ = write!(out, "<h2>Summary</h2><pre>{}</pre>", escape(&format_run(r)));
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg() {
        let s = chart(
            "t<1>",
            "ms",
            &[Series {
                name: "p99",
                color: "red",
                dashed: false,
                points: vec![(1.0, 0.5), (2.0, 12.0), (3.0, 0.0)],
            }],
            true,
            None,
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("t&lt;1&gt;"));
        assert!(s.contains("<polyline"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }

    #[test]
    fn empty_chart_has_no_nan() {
        let s = chart("empty", "x", &[], false, Some(0.0));
        assert!(!s.contains("NaN"));
    }

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 10.0), 1.0);
        assert_eq!(nice_step(45_000.0, 5.0), 10_000.0);
    }
}
