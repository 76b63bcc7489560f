//! The schema: the migrations embedded in the binary and applying them, also
//! from several instances at once (each migration is idempotent).

use std::time::Duration;

use backon::ExponentialBuilder;
use backon::Retryable;
use tokio_postgres::NoTls;

use super::errors::{describe, Failure};
use super::parse_url;
use super::writer::RETRY_MIN_DELAY_MS;

/// The schema, applied in order at every open; each file is idempotent.
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "0001_initial",
        include_str!("../../../../migrations/0001_initial.sql"),
    ),
    (
        "0002_redemption_states",
        include_str!("../../../../migrations/0002_redemption_states.sql"),
    ),
    (
        "0003_redemption_state_indexes",
        include_str!("../../../../migrations/0003_redemption_state_indexes.sql"),
    ),
];

/// Attempts at applying the schema when instances migrate one database at once.
const MAX_MIGRATION_RETRIES: usize = 5;

/// Applies the schema to the database `url` names: what `voucherd migrate` runs.
/// Safe to run any number of times, also from several instances at once.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    migrate_database(&parse_url(url)?).await
}

pub(super) async fn migrate_database(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let (client, connection) = config.connect(NoTls).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot connect to the PostgreSQL store: {}",
            describe(&error)
        )
    })?;
    let connection = tokio::spawn(connection);
    for (name, sql) in MIGRATIONS {
        // Instances starting together may race on CREATE … IF NOT EXISTS, which
        // PostgreSQL reports as a unique violation in its catalog: try again.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(RETRY_MIN_DELAY_MS))
            .with_max_times(MAX_MIGRATION_RETRIES)
            .with_jitter();
        (|| client.batch_execute(sql))
            .retry(backoff)
            .when(|error| Failure::from(error).is_transient())
            .await
            .map_err(|error| {
                anyhow::anyhow!("applying migration {name} failed: {}", describe(&error))
            })?;
        tracing::debug!(migration = name, "schema applied");
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}
