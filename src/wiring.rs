//! Wiring from configuration to the seams: which ledger halves a `--role` and
//! `--store` open (and for a voucher service, its wallet client), and which
//! slot source a `--redis` value (or its absence) starts.
//!
//! This is the one place that knows both `config` and the backends, so that
//! `store` and `slots` depend on the domain, errors, metrics and limits only.
//! Invariant protected: one ledger per instance, opened from exactly what the
//! operator named, with an error that says why when it cannot be.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Settings, StoreLocation};
use crate::wallet_client::HttpWalletClient;
use voucherd_core::ledger::{Durable, Half, Ledger, VoucherLedger};
use voucherd_metrics::Metrics;
use voucherd_service::role::Role;
use voucherd_service::service::Parts;
use voucherd_service::slots::local::LocalSlots;
use voucherd_service::slots::redis::RedisSlots;
use voucherd_service::slots::SlotSource;
use voucherd_store::cas::{CasLedger, Observed};
use voucherd_store::embedded::EmbeddedLedger;
use voucherd_store::postgres::PostgresLedger;
use voucherd_store::scylla::ScyllaStore;

/// Opens the ledger a `--store` value names, holding both halves (role `all`).
pub async fn open_ledger(
    store: &StoreLocation,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Ledger>> {
    open_store(store, Half::Both, metrics).await
}

/// Opens the store a `--store` value names, holding `half`.
async fn open_store(
    store: &StoreLocation,
    half: Half,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Ledger>> {
    match store {
        StoreLocation::Embedded(path) => {
            let ledger = EmbeddedLedger::open_half(path, half, metrics)
                .map_err(|error| explain_embedded_open_error(path, error))?;
            Ok(Arc::new(ledger))
        }
        StoreLocation::Postgres(url) => {
            let ledger = PostgresLedger::open_half(url, half, metrics).await?;
            Ok(Arc::new(ledger))
        }
        StoreLocation::Scylla {
            hosts,
            keyspace,
            options,
        } => {
            let store = ScyllaStore::open(hosts, keyspace, options).await?;
            Ok(Arc::new(CasLedger::open(
                Observed::new(store, metrics),
                half,
            )))
        }
    }
}

/// What the settings' role runs: its halves of the ledger, and for a voucher
/// service its client of the wallet service. Also the store to flush on stop.
pub async fn open_parts(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Parts, Arc<dyn Durable>)> {
    let ledger = open_store(&settings.store, settings.role.half(), metrics.clone()).await?;
    let parts = match settings.role {
        Role::All => Parts::all(ledger.clone()),
        Role::Voucher => {
            let token = settings.service_token.as_ref().map(|t| t.0.clone());
            let client = HttpWalletClient::start(settings.wallet_urls.clone(), token, metrics)?;
            Parts {
                vouchers: Some(ledger.clone()),
                wallets: None,
                credits: Some(Arc::new(client)),
            }
        }
        Role::Wallet => Parts {
            vouchers: None,
            wallets: Some(ledger.clone()),
            credits: None,
        },
    };
    Ok((parts, ledger))
}

/// Names the directory and the likely cause when the embedded store cannot be
/// opened, instead of redb's bare "Database already open".
fn explain_embedded_open_error(path: &Path, error: anyhow::Error) -> anyhow::Error {
    let already_open = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<redb::DatabaseError>(),
            Some(redb::DatabaseError::DatabaseAlreadyOpen)
        )
    });
    if already_open {
        return anyhow::anyhow!(
            "the embedded store in {} is already open in another process (another voucherd \
             with the same --store?). The embedded store serves one instance: stop the other \
             one, give this one its own --store directory, or share a postgres:// ledger \
             between instances",
            path.display()
        );
    }
    error.context(format!("opening the embedded store in {}", path.display()))
}

/// The slot source the settings ask for: Redis leases when `--redis` is given,
/// else slots claimed from the ledger directly.
pub fn slot_source(
    settings: &Settings,
    ledger: Arc<dyn VoucherLedger>,
    metrics: Arc<Metrics>,
) -> Arc<dyn SlotSource> {
    match &settings.redis {
        Some(target) => Arc::new(RedisSlots::start(target.clone(), ledger, metrics)),
        // Instances sharing a ledger without Redis start at random points of
        // the slot range, so they rarely contend for the same slot.
        None if settings.store.is_shared() => Arc::new(LocalSlots::shared(ledger)),
        None => Arc::new(LocalSlots::new(ledger)),
    }
}
