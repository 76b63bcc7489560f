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
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
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
        "serving"
    );
    app.run_until_stopped(shutdown_signal()).await
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match &args.store {
        StoreLocation::Postgres(url) => {
            voucherd::store::postgres::migrate(url).await?;
            tracing::info!(store = %args.store, "schema applied");
            Ok(())
        }
        StoreLocation::Embedded(_) => {
            anyhow::bail!("the embedded store needs no migration; give a postgres:// URL")
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
