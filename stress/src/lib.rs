//! `stress`: load generator and invariant checker for voucherd.
//!
//! A run is: optional bare-HTTP baseline (GET /healthz, closed loop), setup
//! (vouchers), the scenario's load phase, then verification of I1–I5 from the
//! service's own API. Exit code 0 = ran and verified (or verification off),
//! 1 = could not run, 2 = bad command line (clap's code), 3 = an invariant
//! was violated or could not be checked.

mod cli;
mod client;
mod exec;
mod html;
mod report;
mod scenarios;
mod schedule;
mod stats;
mod users;
pub mod verify;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cli::{Cli, RunArgs, Scenario, VerifyArgs, VoucherArgs};
use exec::{ExecOpts, Load};
use report::RunReport;
use scenarios::{check_code_prefix, default_code_prefix, Kind, Workload};
use schedule::Schedule;
use users::{Crowd, UserSpace};

/// Runs the harness as the `stress` command would with these arguments (the
/// first is the program name) and returns its exit code. Blocking: it owns its
/// runtime, so call it from a plain thread or test, not from inside tokio.
pub fn main_from_args<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let threads = run_args(&cli.scenario).threads.max(1);
    // One thread by default: the harness shares the machine with the server
    // under test, and a single core of hyper client is enough for tens of
    // thousands of requests per second.
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stress: cannot start runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stress: {e:#}");
            1
        }
    }
}

fn run_args(s: &Scenario) -> &RunArgs {
    match s {
        Scenario::Flash { run, .. }
        | Scenario::Profiles { run, .. }
        | Scenario::Mixed { run, .. } => run,
    }
}

/// The main phase's load from --max / --rate / --stages (default: 1000/s for --duration).
fn main_load(run: &RunArgs) -> Load {
    if run.max {
        return Load::Closed {
            concurrency: run.concurrency.unwrap_or(run.connections),
            duration: run.duration,
            cap: run.requests,
        };
    }
    let schedule = match (&run.stages, run.rate) {
        (Some(stages), _) => Schedule::new(run.start_rate, &stages.0),
        (None, Some(rate)) => Schedule::constant(rate, run.duration),
        (None, None) => Schedule::constant(1000.0, run.duration),
    };
    Load::Open {
        schedule,
        cap: run.requests,
    }
}

/// The admin token the harness sends on admin routes: the file `--admin-token-file`
/// names (surrounding whitespace ignored, as voucherd reads it), or `VOUCHERD_ADMIN_TOKEN`;
/// one way, not both, as for voucherd itself.
fn admin_token(file: Option<&std::path::Path>) -> Result<Option<String>> {
    let from_env = std::env::var("VOUCHERD_ADMIN_TOKEN")
        .ok()
        .filter(|token| !token.is_empty());
    let token = match (file, from_env) {
        (Some(_), Some(_)) => {
            bail!("give the admin token one way: --admin-token-file or VOUCHERD_ADMIN_TOKEN, not both")
        }
        (Some(path), None) => {
            let raw = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token from {}", path.display()))?;
            let token = raw.trim().to_owned();
            if token.is_empty() {
                bail!("{} holds no admin token", path.display());
            }
            Some(token)
        }
        (None, from_env) => from_env,
    };
    Ok(token)
}

async fn run(cli: Cli) -> Result<u8> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (name, run, kind, vouchers, verify): (
        &str,
        &RunArgs,
        Kind,
        Option<&VoucherArgs>,
        Option<&VerifyArgs>,
    ) = match &cli.scenario {
        Scenario::Flash {
            run,
            vouchers,
            verify,
        } => ("flash", run, Kind::Flash, Some(vouchers), Some(verify)),
        Scenario::Profiles { run, balance } => {
            if *balance < 0 {
                bail!("--balance must be >= 0");
            }
            (
                "profiles",
                run,
                Kind::Profiles { balance: *balance },
                None,
                None,
            )
        }
        Scenario::Mixed {
            run,
            vouchers,
            verify,
            mix,
            tx_amount,
            debit_share,
        } => {
            if *tx_amount <= 0 || !(0.0..=1.0).contains(debit_share) {
                bail!("--tx-amount must be > 0 and --debit-share within 0..=1");
            }
            (
                "mixed",
                run,
                Workload::mixed_kind(*mix, *tx_amount, *debit_share),
                Some(vouchers),
                Some(verify),
            )
        }
    };
    if run.connections == 0 || run.max_in_flight == 0 {
        bail!("--connections and --max-in-flight must be at least 1");
    }

    let admin_token = admin_token(run.admin_token_file.as_deref())?;
    let mut targets = Vec::new();
    for url in &run.urls {
        targets.push(client::Target::resolve(url, admin_token.as_deref()).await?);
    }
    let users =
        UserSpace::new(run.users, run.seed, &run.phone_prefix).map_err(anyhow::Error::msg)?;
    let crowd = Crowd::new(run.seed, run.repeat_share).map_err(anyhow::Error::msg)?;
    let load = main_load(run);
    let opts = ExecOpts {
        connections: run.connections,
        max_in_flight: run.max_in_flight,
        timeout: run.timeout,
        tick: run.tick,
        progress: !run.quiet && std::io::stderr().is_terminal(),
        server_pids: run.server_pids.clone(),
    };

    let baseline = if run.baseline {
        let wl = Arc::new(Workload::healthz(crowd.clone(), users.clone()));
        let load = Load::Closed {
            concurrency: run.concurrency.unwrap_or(run.connections),
            duration: run.baseline_secs.unwrap_or_else(|| load.duration()),
            cap: None,
        };
        let b = exec::run_phase("baseline", &targets, &load, wl, &opts).await;
        eprintln!(
            "baseline: {:.0} req/s on GET /healthz, p99 {:.2} ms",
            b.achieved_rate, b.summary.latency.p99_ms
        );
        Some(b)
    } else {
        None
    };

    let mut wl = Workload::new(kind, crowd, users, run.seed, started_unix.to_string());
    if let Some(v) = vouchers {
        if v.vouchers == 0 || v.limit == 0 || v.amount <= 0 {
            bail!("--vouchers, --limit and --amount must be positive");
        }
        let prefix = v.code_prefix.clone().unwrap_or_else(default_code_prefix);
        check_code_prefix(&prefix)?;
        wl.create_vouchers(&targets[0], &prefix, v.vouchers, v.amount, v.limit)
            .await
            .context("setup")?;
        eprintln!(
            "created {} voucher(s) {prefix}-0.. limit {} amount {}",
            v.vouchers, v.limit, v.amount
        );
    }
    let wl = Arc::new(wl);

    let mut phase = exec::run_phase(name, &targets, &load, wl.clone(), &opts).await;
    if let Some(b) = &baseline {
        if b.achieved_rate > 0.0 {
            phase.ratio_to_baseline = Some(phase.achieved_rate / b.achieved_rate);
        }
    }

    let (mut verify_report, mut verify_error) = (None, None);
    if let Some(v) = verify.filter(|v| v.enabled()) {
        eprintln!("verifying...");
        let mut wallet_targets = Vec::new();
        for url in &v.wallet_urls {
            wallet_targets.push(client::Target::resolve(url, admin_token.as_deref()).await?);
        }
        if wallet_targets.is_empty() {
            wallet_targets = targets.clone();
        }
        match verify::verify(
            &targets,
            &wallet_targets,
            &wl.vouchers,
            &wl.winners(),
            wl.tx_wallets(),
            wl.anomalies(),
            v.verify_concurrency,
        )
        .await
        {
            Ok(r) => verify_report = Some(r),
            Err(e) => verify_error = Some(format!("{e:#}")),
        }
    }

    let report = RunReport {
        scenario: name.to_string(),
        command_line: std::env::args().collect(),
        started_unix,
        urls: targets.iter().map(|t| t.base.clone()).collect(),
        seed: run.seed,
        users: run.users,
        repeat_share: run.repeat_share,
        vouchers: wl.vouchers.clone(),
        baseline,
        phase,
        verify: verify_report,
        verify_error,
    };
    print!("{}", report::format_run(&report));
    if let Some(path) = &run.out {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &run.html {
        std::fs::write(path, html::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let failed = report.verify_error.is_some() || report.verify.as_ref().is_some_and(|v| !v.passed);
    Ok(if failed { 3 } else { 0 })
}
