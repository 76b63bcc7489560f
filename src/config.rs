//! Command line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};

use crate::limits::{ACTOR_RESTART_BUDGET_MS, DEFAULT_SHARDS};
pub use crate::slots::redis::RedisTarget;

#[derive(Debug, Parser)]
#[command(
    name = "voucherd",
    version,
    about = "Flash-crowd voucher redemption with an exactly-once wallet credit"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Apply the SQL schema (`migrations/`) to a PostgreSQL/CockroachDB ledger and
    /// exit. `serve` also applies it on start; this lets a deployment do it once,
    /// before instances start.
    Migrate(MigrateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The ledger to migrate: a `postgres://` URL.
    #[arg(long, env = "VOUCHERD_STORE")]
    pub store: StoreLocation,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "VOUCHERD_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Where the ledger lives: a directory path for the embedded store.
    #[arg(long, env = "VOUCHERD_STORE", default_value = "./data")]
    pub store: StoreLocation,

    /// Redis for slot leases, shared by every instance: `redis://host:port` or
    /// `redis+sentinel://host:port,host:port/master_name`. Without it, slots come
    /// from the ledger directly.
    #[arg(long, env = "VOUCHERD_REDIS")]
    pub redis: Option<RedisTarget>,

    /// Number of voucher shard actors (vouchers are spread over them by code).
    #[arg(long, env = "VOUCHERD_VOUCHER_SHARDS", default_value_t = DEFAULT_SHARDS as u16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub voucher_shards: u16,

    /// Number of wallet actors (wallets are spread over them by phone number).
    #[arg(long, env = "VOUCHERD_WALLET_ACTORS", default_value_t = DEFAULT_SHARDS as u16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub wallet_actors: u16,
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            store: self.store.clone(),
            redis: self.redis.clone(),
            voucher_shards: usize::from(self.voucher_shards),
            wallet_actors: usize::from(self.wallet_actors),
            actor_restart_budget_ms: ACTOR_RESTART_BUDGET_MS,
        }
    }
}

/// What the application is built from (the listener is passed separately).
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreLocation,
    pub redis: Option<RedisTarget>,
    pub voucher_shards: usize,
    pub wallet_actors: usize,
    /// How long a failed actor may stay down before the app stops with an error
    /// ([`ACTOR_RESTART_BUDGET_MS`]; tests shorten it).
    pub actor_restart_budget_ms: u64,
}

impl Settings {
    /// Defaults with an embedded store at `path`: what tests and embedders use.
    pub fn embedded(path: impl Into<PathBuf>) -> Self {
        Self {
            store: StoreLocation::Embedded(path.into()),
            redis: None,
            voucher_shards: DEFAULT_SHARDS,
            wallet_actors: DEFAULT_SHARDS,
            actor_restart_budget_ms: ACTOR_RESTART_BUDGET_MS,
        }
    }
}

/// The `--store` value. Its `Debug` and `Display` hide a URL's password, so it
/// can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory holding the embedded redb ledger.
    Embedded(PathBuf),
    /// A PostgreSQL or CockroachDB URL, `postgres://user@host:port/db`.
    Postgres(String),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Embedded(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

impl StoreLocation {
    /// True when other instances may write the same ledger, so this instance's
    /// memory is not the whole truth (unknown codes must be looked up).
    pub fn is_shared(&self) -> bool {
        !matches!(self, StoreLocation::Embedded(_))
    }
}

impl FromStr for StoreLocation {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.is_empty() {
            return Err("the store location is empty".into());
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(raw.to_owned()));
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(format!(
                "store scheme {scheme}:// is not supported by this build; give a directory path for the embedded store"
            ));
        }
        Ok(StoreLocation::Embedded(PathBuf::from(raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_log() {
        let store: StoreLocation = "postgres://app:s3cret@db:5432/voucherd".parse().unwrap();
        assert_eq!(store.to_string(), "postgres://app:***@db:5432/voucherd");
        assert_eq!(format!("{store:?}"), "postgres://app:***@db:5432/voucherd");
        let plain: StoreLocation = "postgres://app@db/voucherd".parse().unwrap();
        assert_eq!(plain.to_string(), "postgres://app@db/voucherd");
    }
}
