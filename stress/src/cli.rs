//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scenarios::MixWeights;
use crate::schedule::{parse_duration, parse_rate, parse_stages, Stage};

/// `--stages` as one value (clap would read `Vec<Stage>` as a repeatable flag).
#[derive(Debug, Clone, PartialEq)]
pub struct Stages(pub Vec<Stage>);

fn stages_arg(s: &str) -> Result<Stages, String> {
    parse_stages(s).map(Stages)
}

#[derive(Debug, Parser)]
#[command(
    name = "stress",
    version,
    about = "Open-loop load generator and invariant checker for voucherd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Flash crowd: create vouchers, then a crowd of redeem requests, then verify I1-I5.
    Flash {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        vouchers: VoucherArgs,
        #[command(flatten)]
        verify: VerifyArgs,
    },
    /// Wallet creation: POST /api/profiles for users of the crowd.
    Profiles {
        #[command(flatten)]
        run: RunArgs,
        /// Opening balance of each created wallet (minor units).
        #[arg(long, default_value_t = 0)]
        balance: i64,
    },
    /// Mixed traffic: redeem, GET profile and POST transactions in chosen shares.
    Mixed {
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        vouchers: VoucherArgs,
        #[command(flatten)]
        verify: VerifyArgs,
        /// Shares of each operation, e.g. redeem=50,profile=30,tx=20.
        #[arg(long, default_value = "redeem=50,profile=30,tx=20", value_parser = MixWeights::parse)]
        mix: MixWeights,
        /// Size of each transaction (credit, or debit for --debit-share of them).
        #[arg(long, default_value_t = 100)]
        tx_amount: i64,
        /// Share of transactions that are debits (some will be insufficient_funds).
        #[arg(long, default_value_t = 0.2)]
        debit_share: f64,
    },
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// voucherd base URL; repeat to spread requests round-robin over instances.
    #[arg(long = "url", default_value = "http://127.0.0.1:8000")]
    pub urls: Vec<String>,

    /// Seed of the user permutation and of every per-request coin.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Size of the user space (distinct phone numbers).
    #[arg(long, default_value_t = 40_000_000)]
    pub users: u64,

    /// Share of requests that repeat an earlier attempt by the same user.
    #[arg(long, default_value_t = 0.1)]
    pub repeat_share: f64,

    /// Phones are this prefix followed by a zero-padded user number.
    #[arg(long, default_value = "+98912")]
    pub phone_prefix: String,

    /// Open-loop ramp: DURATION:RATE,... each ramping linearly to RATE req/s.
    #[arg(long, value_parser = stages_arg, conflicts_with_all = ["rate", "max"])]
    pub stages: Option<Stages>,

    /// Rate at the start of the first stage (req/s).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub start_rate: f64,

    /// Open loop at a constant rate for --duration (instead of --stages).
    #[arg(long, value_parser = parse_rate, conflicts_with = "max")]
    pub rate: Option<f64>,

    /// Length of a --rate or --max run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after this many requests (sent or dropped).
    #[arg(long)]
    pub requests: Option<u64>,

    /// Closed loop: --concurrency workers send back-to-back to find saturation.
    #[arg(long)]
    pub max: bool,

    /// Closed-loop workers (default: --connections).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// Keep-alive connections, spread over the --url targets.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,

    /// Open loop: an arrival finding this many requests outstanding is dropped.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,

    /// Open loop: arrivals due within this window are sent together, bounding
    /// the scheduler's wake-ups; 0 wakes for every arrival (costs CPU).
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub tick: Duration,

    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Runtime threads: 1 = current-thread runtime (lightest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,

    /// First drive GET /healthz closed-loop to get the bare-HTTP rate.
    #[arg(long)]
    pub baseline: bool,

    /// Baseline length (default: the main phase's length).
    #[arg(long, value_parser = parse_duration)]
    pub baseline_secs: Option<Duration>,

    /// Write the full result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Write a self-contained HTML report (inline SVG charts) here.
    #[arg(long)]
    pub html: Option<PathBuf>,

    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,

    /// Also report the CPU time of these processes (e.g. the voucherd under test).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,

    /// File holding the admin token of a deployment with access control (what its
    /// `--admin-token-file` names): sent on the admin routes the harness uses
    /// (voucher creation, profiles, transactions, the report and wallet reads of
    /// verification), never on redeem or `/healthz`. Or `VOUCHERD_ADMIN_TOKEN`.
    #[arg(long, env = "VOUCHERD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct VoucherArgs {
    /// Number of vouchers to create; request n targets voucher n mod V.
    #[arg(long, default_value_t = 1)]
    pub vouchers: u32,

    /// Redemption limit of each voucher.
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,

    /// Credit of each redemption (minor units).
    #[arg(long, default_value_t = 50_000)]
    pub amount: i64,

    /// Voucher code prefix (default: FLASH<unix time, base 36>-<pid>, fresh per run).
    #[arg(long)]
    pub code_prefix: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct VerifyArgs {
    /// Verify I1-I5 from the service's API after the crowd (the default).
    #[arg(long, overrides_with = "no_verify")]
    pub verify: bool,

    /// Skip verification.
    #[arg(long)]
    pub no_verify: bool,

    /// Concurrent requests while verifying.
    #[arg(long, default_value_t = 16)]
    pub verify_concurrency: usize,

    /// Where verification reads wallets: the wallet service of a split
    /// deployment (repeatable). Default: the --url targets.
    #[arg(long = "wallet-url")]
    pub wallet_urls: Vec<String>,
}

impl VerifyArgs {
    pub fn enabled(&self) -> bool {
        !self.no_verify
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_a_flash_run() {
        let cli = Cli::try_parse_from([
            "stress",
            "flash",
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:2",
            "--stages",
            "20s:1000,10s:50000",
            "--limit",
            "100",
            "--no-verify",
        ])
        .expect("valid");
        let Scenario::Flash {
            run,
            vouchers,
            verify,
        } = cli.scenario
        else {
            panic!("flash expected");
        };
        assert_eq!(run.urls.len(), 2);
        assert_eq!(run.stages.expect("stages").0.len(), 2);
        assert_eq!(vouchers.limit, 100);
        assert!(!verify.enabled());
        assert!(Cli::try_parse_from(["stress", "flash", "--stages", "20s"]).is_err());
        assert!(Cli::try_parse_from(["stress", "flash", "--rate", "5", "--max"]).is_err());
    }
}
