//! The `voucherd` binary: parses the command line and runs the app.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use voucherd::config::{Cli, Command, LogFormat, MigrateArgs, ServeArgs, StoreLocation};
use voucherd::App;

/// The ledger writer allocates and frees B-tree pages at a high rate; mimalloc
/// measured markedly faster than the system allocator for it (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exits non-zero whenever the service stops without being asked to (an error
/// from `serve`), so a restart-on-failure supervisor restarts it.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Openapi => {
            let mut stdout = std::io::stdout();
            stdout.write_all(voucherd::http::openapi::to_json().as_bytes())?;
            stdout.flush()?;
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Colour codes only for a person at a terminal, never in files or journals.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Client connections are bounded by the open-file limit: use all the kernel allows.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "could not raise the open-file limit");
    }
    let stop_requested = shutdown_signal()?;
    let settings = args.settings()?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let edge = settings.edge;
    let app = App::build(settings, listener).await?;
    let address = app.local_addr()?;
    // The listening line on stdout: scripts and tests wait for it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "voucherd listening on http://{address}")?;
    if let Some(metrics_address) = app.metrics_addr() {
        writeln!(
            stdout,
            "voucherd metrics on http://{metrics_address}/metrics"
        )?;
    }
    stdout.flush()?;
    tracing::info!(
        %address,
        store = %args.store,
        redis = args.redis.is_some(),
        max_connections = edge.max_connections,
        header_timeout_secs = edge.header_read_timeout.as_secs(),
        body_timeout_secs = edge.body_read_timeout.as_secs(),
        idle_timeout_secs = edge.idle_timeout.as_secs(),
        drain_delay_ms = args.drain_delay_ms,
        "serving"
    );
    let StopSignals { first, second } = stop_requested;
    app.run_until_stopped_or_hurried(
        async move {
            let _ = first.await;
        },
        async move {
            let _ = second.await;
        },
    )
    .await
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match &args.store {
        StoreLocation::Postgres(url) => {
            voucherd_store::postgres::migrate(url).await?;
            tracing::info!(store = %args.store, "schema applied");
            Ok(())
        }
        StoreLocation::Scylla {
            hosts,
            keyspace,
            options,
        } => {
            voucherd_store::scylla::migrate(hosts, keyspace, options).await?;
            tracing::info!(store = %args.store, "schema applied");
            Ok(())
        }
        StoreLocation::Embedded(_) => {
            anyhow::bail!(
                "the embedded store needs no migration; give a postgres:// or scylla:// URL"
            )
        }
    }
}

/// The futures a stop signal resolves: the first SIGTERM or SIGINT (stop, after
/// the drain delay), then a second one (stop now).
struct StopSignals {
    first: tokio::sync::oneshot::Receiver<()>,
    second: tokio::sync::oneshot::Receiver<()>,
}

/// Installs the SIGTERM and SIGINT handlers now. Installed before the listening
/// line is printed, so a supervisor's SIGTERM right after start is a clean stop,
/// never a kill.
fn shutdown_signal() -> anyhow::Result<StopSignals> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let (first_sender, first) = tokio::sync::oneshot::channel();
    let (second_sender, second) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        for sender in [first_sender, second_sender] {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            let _ = sender.send(());
        }
    });
    Ok(StopSignals { first, second })
}
