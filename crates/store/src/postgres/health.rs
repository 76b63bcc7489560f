//! The database probe behind readiness.
//!
//! A task asks the database `SELECT 1` every second on a connection of its
//! own; while it gets no answer, the ledger reports itself unreachable and
//! readiness says `database_unreachable`, so load balancers send the traffic
//! elsewhere until the database is back.
//!
//! With `target_session_attrs=read-write` (a multi-host URL naming a primary
//! and its standbys) the probe asks `SHOW transaction_read_only` instead and
//! counts a read-only answer as unreachable, and its connections are opened
//! like the pools' (the first host that accepts writes): during a failover,
//! while the old primary is gone and the standby not yet promoted, readiness
//! says `database_unreachable`, and it says ready again once writes would
//! succeed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use voucherd_core::error::Result;
use voucherd_core::limits::{DATABASE_PROBE_INTERVAL_MS, DATABASE_PROBE_TIMEOUT_MS};

use super::errors::describe;
use super::{host_count, per_host};

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
    let config = probe_config(config);
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
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
            let answer = current
                .simple_query("SHOW transaction_read_only")
                .await
                .map_err(|e| describe(&e))?;
            if read_only(&answer) {
                return Err("the database does not accept writes (read-only)".to_owned());
            }
        } else {
            current
                .simple_query("SELECT 1")
                .await
                .map_err(|e| describe(&e))?;
        }
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

/// The pools' settings, with TCP connects short enough that trying every host
/// leaves part of the probe's [`DATABASE_PROBE_TIMEOUT_MS`] for the query: a
/// lost first host that swallows packets must not hide a second that answers.
fn probe_config(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    let hosts = host_count(&config);
    let share = per_host(Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS), hosts + 1);
    if config.get_connect_timeout().is_none_or(|own| *own > share) {
        config.connect_timeout(share);
    }
    config
}

/// True when `SHOW transaction_read_only` answered `on`.
fn read_only(answer: &[SimpleQueryMessage]) -> bool {
    answer.iter().any(|message| match message {
        SimpleQueryMessage::Row(row) => row.get(0) == Some("on"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn probe_connects_leave_room_for_every_host_and_the_query() {
        let url = "postgres://postgres@h1:5441,h2:5442/postgres?target_session_attrs=read-write";
        let config = probe_config(super::super::parse_url(url).expect("a valid URL"));
        // Two hosts and the query share the probe's second.
        assert_eq!(
            config.get_connect_timeout(),
            Some(&(Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS) / 3))
        );
        assert_eq!(
            config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        let single = tokio_postgres::Config::from_str("postgres://postgres@h1/postgres")
            .expect("a valid URL");
        assert_eq!(
            probe_config(single).get_connect_timeout(),
            Some(&(Duration::from_millis(DATABASE_PROBE_TIMEOUT_MS) / 2))
        );
        // A shorter timeout of the URL's own is kept.
        let mut short = tokio_postgres::Config::from_str("host=h1").expect("a valid configuration");
        short.connect_timeout(Duration::from_millis(100));
        assert_eq!(
            probe_config(short).get_connect_timeout(),
            Some(&Duration::from_millis(100))
        );
    }
}
