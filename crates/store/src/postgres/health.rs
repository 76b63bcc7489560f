//! The database probe behind readiness.
//!
//! A task asks the database `SELECT 1` every second on a connection of its
//! own; while it gets no answer, the ledger reports itself unreachable and
//! readiness says `database_unreachable`, so load balancers send the traffic
//! elsewhere until the database is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::NoTls;
use voucherd_core::error::Result;
use voucherd_core::limits::{DATABASE_PROBE_INTERVAL_MS, DATABASE_PROBE_TIMEOUT_MS};

use super::errors::describe;

/// Checks every [`DATABASE_PROBE_INTERVAL_MS`] that the database answers
/// `SELECT 1` and records the answer in `reachable`, which feeds readiness.
/// The probe has a connection of its own, so a pool busy with writes never makes
/// a healthy database look down; a connection broken by a database restart
/// fails once, so a failed probe is tried again at once on a fresh connection
/// before the database counts as unreachable. Ends when `stopped` resolves (the
/// ledger was dropped).
pub(super) async fn watch_database(
    config: tokio_postgres::Config,
    reachable: Arc<AtomicBool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut client = None;
    let mut down_since: Option<Instant> = None;
    let mut ticks = tokio::time::interval(Duration::from_millis(DATABASE_PROBE_INTERVAL_MS));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = ticks.tick() => {}
        }
        let mut answer = select_one(&config, &mut client).await;
        if answer.is_err() {
            answer = select_one(&config, &mut client).await;
        }
        match (answer, down_since) {
            (Ok(()), Some(since)) => {
                tracing::info!(
                    unreachable_ms = since.elapsed().as_millis() as u64,
                    "the ledger database answers again"
                );
                reachable.store(true, Ordering::Release);
                down_since = None;
            }
            (Err(error), None) => {
                tracing::warn!(%error, "the ledger database does not answer");
                reachable.store(false, Ordering::Release);
                down_since = Some(Instant::now());
            }
            _ => {}
        }
    }
}

/// One bounded `SELECT 1` on the probe's connection, connecting first if it
/// has none or it closed; a failed probe drops the connection.
async fn select_one(
    config: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<(), String> {
    let open = client.take().filter(|current| !current.is_closed());
    let attempt = async move {
        let current = match open {
            Some(current) => current,
            None => {
                let (fresh, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
                tokio::spawn(connection);
                fresh
            }
        };
        current
            .simple_query("SELECT 1")
            .await
            .map_err(|e| describe(&e))?;
        Ok::<_, String>(current)
    };
    let limit = Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS);
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok(current)) => {
            *client = Some(current);
            Ok(())
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {DATABASE_PROBE_TIMEOUT_MS} ms")),
    }
}
