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
use voucherd_core::ledger::{
    AllInOne, Durable, HalfKind, Ledger, VoucherHalf, VoucherLedger, WalletHalf, WalletLedger,
};
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
    Ok(open_store::<AllInOne>(store, metrics).await?.into_ledger())
}

/// The store a `--store` value names, opened for half `H`: a concrete type,
/// so that it can be handed out as exactly the ledger traits `H` has.
enum Store<H: HalfKind> {
    Embedded(EmbeddedLedger<H>),
    Postgres(PostgresLedger<H>),
    Scylla(CasLedger<Observed<ScyllaStore>, H>),
}

/// Opens the store a `--store` value names, holding half `H`.
async fn open_store<H: HalfKind>(
    store: &StoreLocation,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Store<H>> {
    tracing::debug!(half = H::NAME, "opening the ledger");
    match store {
        StoreLocation::Embedded(path) => {
            let ledger = EmbeddedLedger::open_half(path, metrics)
                .map_err(|error| explain_embedded_open_error(path, error))?;
            Ok(Store::Embedded(ledger))
        }
        StoreLocation::Postgres(url) => Ok(Store::Postgres(
            PostgresLedger::open_half(url, metrics).await?,
        )),
        StoreLocation::Scylla {
            hosts,
            keyspace,
            options,
        } => {
            let store = ScyllaStore::open(hosts, keyspace, options).await?;
            Ok(Store::Scylla(CasLedger::open_half(Observed::new(
                store, metrics,
            ))))
        }
    }
}

impl Store<AllInOne> {
    /// Both halves in one ledger (role `all`).
    fn into_ledger(self) -> Arc<dyn Ledger> {
        match self {
            Store::Embedded(ledger) => Arc::new(ledger),
            Store::Postgres(ledger) => Arc::new(ledger),
            Store::Scylla(ledger) => Arc::new(ledger),
        }
    }
}

impl Store<VoucherHalf> {
    /// The voucher half (role `voucher`): no wallet to hand out.
    fn into_vouchers(self) -> Arc<dyn VoucherLedger> {
        match self {
            Store::Embedded(ledger) => Arc::new(ledger),
            Store::Postgres(ledger) => Arc::new(ledger),
            Store::Scylla(ledger) => Arc::new(ledger),
        }
    }
}

impl Store<WalletHalf> {
    /// The wallet half (role `wallet`): no voucher to hand out.
    fn into_wallets(self) -> Arc<dyn WalletLedger> {
        match self {
            Store::Embedded(ledger) => Arc::new(ledger),
            Store::Postgres(ledger) => Arc::new(ledger),
            Store::Scylla(ledger) => Arc::new(ledger),
        }
    }
}

/// What the settings' role runs: its halves of the ledger, and for a voucher
/// service its client of the wallet service. Also the store to flush on stop.
pub async fn open_parts(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Parts, Arc<dyn Durable>)> {
    match settings.role {
        Role::All => {
            let ledger = open_ledger(&settings.store, metrics).await?;
            Ok((Parts::all(ledger.clone()), ledger))
        }
        Role::Voucher => {
            let store = open_store::<VoucherHalf>(&settings.store, metrics.clone()).await?;
            let vouchers = store.into_vouchers();
            let token = settings.service_token.as_ref().map(|t| t.0.clone());
            let client = HttpWalletClient::start(settings.wallet_urls.clone(), token, metrics)?;
            let parts = Parts {
                vouchers: Some(vouchers.clone()),
                wallets: None,
                credits: Some(Arc::new(client)),
            };
            Ok((parts, vouchers))
        }
        Role::Wallet => {
            let store = open_store::<WalletHalf>(&settings.store, metrics).await?;
            let wallets = store.into_wallets();
            let parts = Parts {
                vouchers: None,
                wallets: Some(wallets.clone()),
                credits: None,
            };
            Ok((parts, wallets))
        }
    }
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
