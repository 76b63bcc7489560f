//! The run's result: the end-of-run table and the JSON file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::exec::{CpuUsage, PhaseReport};
use crate::scenarios::VoucherSpec;
use crate::verify::VerifyReport;

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub command_line: Vec<String>,
    pub started_unix: u64,
    pub urls: Vec<String>,
    pub seed: u64,
    pub users: u64,
    pub repeat_share: f64,
    pub vouchers: Vec<VoucherSpec>,
    pub baseline: Option<PhaseReport>,
    pub phase: PhaseReport,
    pub verify: Option<VerifyReport>,
    /// Set when verification could not fetch what it needed.
    pub verify_error: Option<String>,
}

impl RunReport {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }
}

fn cpu_line(label: &str, c: &CpuUsage) -> String {
    format!(
        "  {label:<14}{:.2} CPU s, {:.2} cores, {:.1} us/request\n",
        c.cpu_s, c.cores, c.us_per_request
    )
}

pub fn format_phase(p: &PhaseReport) -> String {
    let s = &p.summary;
    let mut out = String::new();
    let vs_baseline = |rate: f64| match (p.ratio_to_baseline, p.achieved_rate) {
        (Some(ratio), achieved) if achieved > 0.0 => {
            format!(" ({:.3} x baseline)", rate * ratio / achieved)
        }
        _ => String::new(),
    };
    let target = p
        .target_rate
        .map(|r| format!(", target mean {r:.0}/s{}", vs_baseline(r)))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "== {}: {} loop, {} connections, {:.1} s{target}",
        p.name, p.mode, p.connections, s.elapsed_s
    );
    let planned = p
        .planned
        .map(|n| format!(" of {n} planned"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  {:<14}scheduled {}{planned}  sent {}  completed {}  dropped {}",
        "requests", s.scheduled, s.sent, s.completed, s.dropped
    );
    let _ = writeln!(
        out,
        "  {:<14}{:.1} req/s{}",
        "achieved",
        p.achieved_rate,
        vs_baseline(p.achieved_rate)
    );
    if p.mode == "open" {
        let _ = writeln!(
            out,
            "  {:<14}max {:.2} ms, {} arrivals dispatched over 1 ms late",
            "harness lag", s.dispatch_lag_max_ms, s.dispatched_late_1ms
        );
    }
    let _ = writeln!(out, "  {:<14}ok {}  errors {}", "outcome", s.ok, s.errors);
    for st in &s.statuses {
        let status = if st.status == 0 {
            "---".to_string()
        } else {
            st.status.to_string()
        };
        let pct = 100.0 * st.count as f64 / s.completed.max(1) as f64;
        let _ = writeln!(
            out,
            "    {status} {:<28}{:>10}  {pct:5.1}%",
            st.code, st.count
        );
    }
    let l = &s.latency;
    let _ = writeln!(
        out,
        "  {:<14}p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  (mean {:.2})",
        "latency ms", l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    );
    out.push_str(&cpu_line("harness cpu", &p.harness_cpu));
    if let Some(c) = &p.server_cpu {
        out.push_str(&cpu_line("server cpu", c));
    }
    out
}

pub fn format_verify(v: &VerifyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== verify: {}  ({} vouchers, {} redemptions, {} wallets, {} 200s seen, {:.1} s)",
        if v.passed { "PASSED" } else { "FAILED" },
        v.vouchers,
        v.redemptions,
        v.wallets,
        v.seen_200,
        v.elapsed_s
    );
    for inv in ["I1", "I2", "I3", "I4", "I5", "REPORT"] {
        let found: Vec<_> = v.violations.iter().filter(|x| x.invariant == inv).collect();
        let _ = writeln!(
            out,
            "  {inv:<7}{}",
            if found.is_empty() {
                "ok".to_string()
            } else {
                format!("{} violation(s)", found.len())
            }
        );
        // The JSON file has them all; the terminal gets enough to start on.
        for x in found.iter().take(20) {
            let _ = writeln!(
                out,
                "      {} code={} phone={} ids=[{}]",
                x.detail,
                x.code.as_deref().unwrap_or("-"),
                x.phone.as_deref().unwrap_or("-"),
                x.ids.join(", ")
            );
        }
        if found.len() > 20 {
            let _ = writeln!(
                out,
                "      ... {} more in the JSON result",
                found.len() - 20
            );
        }
    }
    if !v.anomalies.is_empty() {
        let _ = writeln!(out, "  {} odd 200 answer(s):", v.anomalies.len());
        for a in v.anomalies.iter().take(20) {
            let _ = writeln!(out, "      {a}");
        }
    }
    out
}

pub fn format_run(r: &RunReport) -> String {
    let mut out = String::new();
    if let Some(b) = &r.baseline {
        out.push_str(&format_phase(b));
    }
    out.push_str(&format_phase(&r.phase));
    if let Some(v) = &r.verify {
        out.push_str(&format_verify(v));
    }
    if let Some(e) = &r.verify_error {
        let _ = writeln!(out, "== verify: ERROR {e}");
    }
    out
}
