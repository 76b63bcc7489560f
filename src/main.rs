//! The `voucherd` binary: parses the command line and runs the app.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use voucherd::config::{Cli, Command, MigrateArgs, ServeArgs, StoreLocation};
use voucherd::App;

/// The ledger writer allocates and frees B-tree pages at a high rate; mimalloc
/// measured markedly faster than the system allocator for it (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let app = App::build(args.settings(), listener).await?;
    let address = app.local_addr()?;
    // The one line on stdout: scripts and tests wait for it.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "voucherd listening on http://{address}")?;
    stdout.flush()?;
    tracing::info!(%address, store = %args.store, redis = args.redis.is_some(), "serving");
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
