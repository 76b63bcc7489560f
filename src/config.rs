//! Command line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use voucherd_core::clock::{Clock, SystemClock};
use voucherd_core::limits::{
    ACTOR_RESTART_BUDGET_MS, BODY_READ_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_REDEEM_BURST_PER_PHONE, DEFAULT_REDEEM_RATE_PER_PHONE, DEFAULT_SHARDS, DRAIN_DELAY_MS,
    HEADER_READ_TIMEOUT_SECS, IDLE_TIMEOUT_SECS, RECOVERY_PENDING_AFTER_MS,
    REDEEM_CREDIT_DEADLINE_MS, RESERVED_FILE_DESCRIPTORS,
};
use voucherd_service::rate_limit::PhoneRate;
use voucherd_service::role::Role;
use voucherd_service::slots::redis::RedisTarget;
use voucherd_store::scylla::CqlOptions;

/// The environment variable that may hold the admin token itself (instead of
/// `--admin-token-file`); never a command-line flag, which `ps` would show.
pub const ADMIN_TOKEN_ENV: &str = "VOUCHERD_ADMIN_TOKEN";
/// The environment variable that may hold the service token itself (instead of
/// `--service-token-file`).
pub const SERVICE_TOKEN_ENV: &str = "VOUCHERD_SERVICE_TOKEN";

#[derive(Debug, Parser)]
#[command(
    name = "voucherd",
    version,
    about = "Flash-crowd voucher redemption with an exactly-once wallet credit"
)]
pub struct Cli {
    /// Log line format on stderr: `text` (coloured only on a terminal) or `json`
    /// (one object per line, for log shippers).
    #[arg(long, env = "VOUCHERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(Box<ServeArgs>),
    /// Apply the SQL schema (`migrations/`) to a PostgreSQL/CockroachDB ledger and
    /// exit. `serve` also applies it on start; this lets a deployment do it once,
    /// before instances start.
    Migrate(MigrateArgs),
    /// Print the OpenAPI 3.1 contract of the HTTP API (every route of every role)
    /// to stdout and exit: `voucherd openapi > docs/openapi.json` regenerates the
    /// committed one. A running service serves the same at `GET /openapi.json`.
    Openapi,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The ledger to migrate: `postgres://user:pass@host:port/db` (PostgreSQL or
    /// CockroachDB) or `scylla://host:9042,host:9042/keyspace` (applies
    /// `cql/schema.cql`, keyspace included).
    #[arg(long, env = "VOUCHERD_STORE")]
    pub store: StoreLocation,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Which part of the system this instance runs: `all` (one process, one
    /// store), `voucher` (the voucher API; credits go to --wallet-url) or
    /// `wallet` (profiles, transactions and the credit endpoint).
    #[arg(long, env = "VOUCHERD_ROLE", value_enum, default_value_t = Role::All)]
    pub role: Role,

    /// Role `voucher`: base URL(s) of the wallet service, comma-separated (a
    /// wallet fleet is used in turn), e.g. `http://wallet:8001`.
    #[arg(long, env = "VOUCHERD_WALLET_URL", value_delimiter = ',')]
    pub wallet_url: Vec<String>,

    /// Role `voucher`: milliseconds a redeem waits for its wallet credit before
    /// answering 202 `pending` (the credit goes on; recovery finishes it).
    #[arg(long, env = "VOUCHERD_CREDIT_DEADLINE_MS", default_value_t = REDEEM_CREDIT_DEADLINE_MS, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub credit_deadline_ms: u64,

    /// Role `voucher`: milliseconds a redemption stays pending before recovery
    /// re-sends its credit (keep it above the wallet call timeout, 5000).
    #[arg(long, env = "VOUCHERD_RECOVERY_AFTER_MS", default_value_t = RECOVERY_PENDING_AFTER_MS, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    pub recovery_after_ms: u64,

    /// A file holding the service token: the wallet service accepts it on its
    /// credit endpoint, the voucher service presents it. Or set
    /// VOUCHERD_SERVICE_TOKEN. Give both services the same token.
    #[arg(long, env = "VOUCHERD_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,

    /// Milliseconds an instance keeps serving after SIGTERM, with `/readyz` answering
    /// 503 `draining` and every answer `Connection: close`, before it stops
    /// accepting and finishes what is in flight: long enough for the load balancer
    /// to take it out (see `limits.rs`). 0 stops accepting at once.
    #[arg(long, env = "VOUCHERD_DRAIN_DELAY_MS", default_value_t = DRAIN_DELAY_MS, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub drain_delay_ms: u64,

    /// Address to listen on; port 0 picks a free port. Without an admin token only
    /// a loopback address is allowed (see --insecure-no-auth).
    #[arg(long, env = "VOUCHERD_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    /// Where the ledger lives: a directory for the embedded store (one instance),
    /// `postgres://user:pass@host:port/db` for PostgreSQL/CockroachDB, or
    /// `scylla://host:9042,host:9042/keyspace` for ScyllaDB (both shared by many
    /// instances).
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

    /// A file holding the admin token (at least 16 printable characters; a
    /// trailing newline is ignored). Or set VOUCHERD_ADMIN_TOKEN to the token
    /// itself. Admin routes then need `Authorization: Bearer <token>`.
    #[arg(long, env = "VOUCHERD_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve every route without a token on a non-loopback address. Only for a
    /// network where every client is trusted.
    #[arg(long, env = "VOUCHERD_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Serve `/metrics` (without a token) on this separate address too, e.g. an
    /// internal interface that only Prometheus reaches. `/metrics` on the main
    /// address needs the admin token whenever one is configured.
    #[arg(long, env = "VOUCHERD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Client connections served at once; more are closed right after accept.
    /// Default: 10000, lowered to fit the open-file limit (less 64 descriptors).
    #[arg(long, env = "VOUCHERD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,

    /// Seconds a client may take to send a request's head once it started it.
    #[arg(long, env = "VOUCHERD_HEADER_TIMEOUT_SECS", default_value_t = HEADER_READ_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_timeout_secs: u64,

    /// Seconds a client may take to send a request's body (408 after that).
    #[arg(long, env = "VOUCHERD_BODY_TIMEOUT_SECS", default_value_t = BODY_READ_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub body_timeout_secs: u64,

    /// Seconds a connection may stay open without a request (new or keep-alive).
    #[arg(long, env = "VOUCHERD_IDLE_TIMEOUT_SECS", default_value_t = IDLE_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout_secs: u64,

    /// Redemptions one phone number may make per second, sustained; 0 turns the
    /// per-phone limit off. Past it: 429 `rate_limited` with Retry-After.
    #[arg(long, env = "VOUCHERD_REDEEM_RATE_PER_PHONE", default_value_t = DEFAULT_REDEEM_RATE_PER_PHONE)]
    pub redeem_rate_per_phone: u32,

    /// Redemptions one phone number may make in a burst.
    #[arg(long, env = "VOUCHERD_REDEEM_BURST_PER_PHONE", default_value_t = DEFAULT_REDEEM_BURST_PER_PHONE, value_parser = clap::value_parser!(u32).range(1..))]
    pub redeem_burst_per_phone: u32,
}

impl ServeArgs {
    /// The settings these arguments name; reads the admin token (file or
    /// environment) and the open-file limit.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut tokens = AcceptedTokens {
            admin: self.admin_token()?,
            service: None,
        };
        let service_token = read_token(
            "service",
            self.service_token_file.as_deref(),
            SERVICE_TOKEN_ENV,
        )?;
        if let (Role::Wallet | Role::All, Some(text)) = (self.role, &service_token) {
            let token = Token::new(text).map_err(anyhow::Error::msg)?;
            tokens.service = Some(token);
        }
        if self.role == Role::Voucher && self.wallet_url.is_empty() {
            anyhow::bail!(
                "role voucher needs the wallet service: give --wallet-url http://HOST:PORT \
                 (or VOUCHERD_WALLET_URL)"
            );
        }
        Ok(Settings {
            role: self.role,
            wallet_urls: self.wallet_url.clone(),
            protocol: ProtocolTimes {
                credit_deadline: Duration::from_millis(self.credit_deadline_ms),
                recovery_after: Duration::from_millis(self.recovery_after_ms),
            },
            service_token: service_token.map(ServiceToken),
            store: self.store.clone(),
            redis: self.redis.clone(),
            voucher_shards: usize::from(self.voucher_shards),
            wallet_actors: usize::from(self.wallet_actors),
            actor_restart_budget_ms: ACTOR_RESTART_BUDGET_MS,
            tokens,
            insecure_no_auth: self.insecure_no_auth,
            metrics_listen: self.metrics_listen,
            drain_delay: Duration::from_millis(self.drain_delay_ms),
            edge: EdgeLimits {
                max_connections: self.max_connections(),
                header_read_timeout: Duration::from_secs(self.header_timeout_secs),
                body_read_timeout: Duration::from_secs(self.body_timeout_secs),
                idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            },
            phone_rate: PhoneRate {
                per_second: self.redeem_rate_per_phone,
                burst: self.redeem_burst_per_phone,
            },
            clock: Arc::new(SystemClock),
        })
    }

    fn admin_token(&self) -> anyhow::Result<Option<Token>> {
        let Some(text) = read_token("admin", self.admin_token_file.as_deref(), ADMIN_TOKEN_ENV)?
        else {
            return Ok(None);
        };
        let token = Token::new(&text)
            .map_err(|reason| anyhow::anyhow!("the admin token is not usable: {reason}"))?;
        Ok(Some(token))
    }

    /// The configured cap, or the default lowered to what the open-file limit
    /// leaves for client connections.
    fn max_connections(&self) -> usize {
        if let Some(configured) = self.max_connections {
            return configured as usize;
        }
        let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX);
        let fitting = open_files.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(1);
        DEFAULT_MAX_CONNECTIONS.min(usize::try_from(fitting).unwrap_or(usize::MAX))
    }
}

/// A token's text from its file or its environment variable (not both); checked
/// to be usable.
fn read_token(
    which: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var(env).ok().filter(|t| !t.is_empty());
    let text = match (file, from_env) {
        (Some(_), Some(_)) => anyhow::bail!(
            "the {which} token is given twice: use --{which}-token-file or {env}, not both"
        ),
        (Some(path), None) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the {which} token file {}", path.display()))?,
        (None, Some(token)) => token,
        (None, None) => return Ok(None),
    };
    Token::new(&text)
        .map_err(|reason| anyhow::anyhow!("the {which} token is not usable: {reason}"))?;
    Ok(Some(text.trim().to_owned()))
}

/// The times of the split-mode protocol an operator may tune.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolTimes {
    /// How long a redeem waits for its credit before it answers 202.
    pub credit_deadline: Duration,
    /// How long a redemption stays pending before recovery takes it.
    pub recovery_after: Duration,
}

impl Default for ProtocolTimes {
    fn default() -> Self {
        Self {
            credit_deadline: Duration::from_millis(REDEEM_CREDIT_DEADLINE_MS),
            recovery_after: Duration::from_millis(RECOVERY_PENDING_AFTER_MS),
        }
    }
}

/// The service token's text, which a voucher service presents to the wallet
/// service. `Debug` never shows it.
#[derive(Clone)]
pub struct ServiceToken(pub String);

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(***)")
    }
}

/// What the application is built from (the listeners are passed separately).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which part of the system this instance runs.
    pub role: Role,
    /// Role `voucher`: the wallet service's base URLs.
    pub wallet_urls: Vec<String>,
    /// Role `voucher`: the redeem's wait for its credit, and recovery's threshold.
    pub protocol: ProtocolTimes,
    /// The token between the services (accepted by a wallet service,
    /// presented by a voucher service).
    pub service_token: Option<ServiceToken>,
    pub store: StoreLocation,
    pub redis: Option<RedisTarget>,
    pub voucher_shards: usize,
    pub wallet_actors: usize,
    /// Which tokens grant which routes; open when none is configured.
    pub tokens: AcceptedTokens,
    /// Allow an open policy on a non-loopback address.
    pub insecure_no_auth: bool,
    /// A separate address serving `/metrics` without a token.
    pub metrics_listen: Option<SocketAddr>,
    /// How long the instance keeps serving, not ready, after a stop is asked.
    pub drain_delay: Duration,
    pub edge: EdgeLimits,
    pub phone_rate: PhoneRate,
    /// Where windows and timestamps read the time (the system's, but for tests).
    pub clock: Arc<dyn Clock>,
    /// How long a failed actor may stay down before the app stops with an error
    /// ([`ACTOR_RESTART_BUDGET_MS`]; tests shorten it).
    pub actor_restart_budget_ms: u64,
}

impl Settings {
    /// Defaults with an embedded store at `path`: what tests and embedders use.
    pub fn embedded(path: impl Into<PathBuf>) -> Self {
        Self {
            role: Role::All,
            wallet_urls: Vec::new(),
            protocol: ProtocolTimes::default(),
            service_token: None,
            store: StoreLocation::Embedded(path.into()),
            redis: None,
            voucher_shards: DEFAULT_SHARDS,
            wallet_actors: DEFAULT_SHARDS,
            tokens: AcceptedTokens::default(),
            insecure_no_auth: false,
            metrics_listen: None,
            drain_delay: Duration::from_millis(DRAIN_DELAY_MS),
            edge: EdgeLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                header_read_timeout: Duration::from_secs(HEADER_READ_TIMEOUT_SECS),
                body_read_timeout: Duration::from_secs(BODY_READ_TIMEOUT_SECS),
                idle_timeout: Duration::from_secs(IDLE_TIMEOUT_SECS),
            },
            phone_rate: PhoneRate {
                per_second: DEFAULT_REDEEM_RATE_PER_PHONE,
                burst: DEFAULT_REDEEM_BURST_PER_PHONE,
            },
            clock: Arc::new(SystemClock),
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
    /// A ScyllaDB (or Cassandra) cluster,
    /// `scylla://host1:9042,host2:9042/keyspace[?local_dc=NAME&replication_factor=N]`.
    Scylla {
        hosts: Vec<String>,
        keyspace: String,
        options: CqlOptions,
    },
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Embedded(path) => write!(f, "{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact_password(url)),
            StoreLocation::Scylla {
                hosts,
                keyspace,
                options,
            } => {
                write!(f, "scylla://{}/{keyspace}", hosts.join(","))?;
                let mut separator = '?';
                if let Some(dc) = &options.local_dc {
                    write!(f, "{separator}local_dc={dc}")?;
                    separator = '&';
                }
                if options.replication_factor != CqlOptions::default().replication_factor {
                    write!(
                        f,
                        "{separator}replication_factor={}",
                        options.replication_factor
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`, with several
/// hosts too (`postgres://user:***@h1:5432,h2:5433/db`), and a `password=` in
/// the query (which libpq and tokio-postgres also accept) → `password=***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut redacted = match authority.rsplit_once('@') {
        Some((credentials, host)) if credentials.contains(':') => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => format!("{scheme}://{rest}"),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key == "password" => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&pairs.join("&"));
    }
    redacted
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
        if let Some(rest) = raw.strip_prefix("scylla://") {
            return parse_scylla(rest);
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            return Err(format!(
                "store scheme {scheme}:// is not supported by this build; give a directory path for the embedded store"
            ));
        }
        Ok(StoreLocation::Embedded(PathBuf::from(raw)))
    }
}

/// `host1:9042,host2:9042/keyspace[?option=value&…]` (the part after
/// `scylla://`); the options are [`CqlOptions`]'s.
fn parse_scylla(rest: &str) -> Result<StoreLocation, String> {
    const FORM: &str =
        "give scylla://HOST:PORT[,HOST:PORT...]/KEYSPACE[?local_dc=NAME&replication_factor=N]";
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let options = parse_cql_options(query)?;
    let (hosts, keyspace) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains(':') {
                h.to_owned()
            } else {
                format!("{h}:9042")
            }
        })
        .collect();
    if hosts.is_empty() {
        return Err(format!("the scylla:// store names no host; {FORM}"));
    }
    let keyspace = keyspace.trim_end_matches('/');
    if keyspace.is_empty() {
        return Err(format!("the scylla:// store names no keyspace; {FORM}"));
    }
    let valid = keyspace.len() <= 48
        && keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && keyspace.starts_with(|c: char| c.is_ascii_alphabetic());
    if !valid {
        return Err(format!(
            "the scylla:// keyspace {keyspace:?} is not a CQL keyspace name (a letter, then letters, digits or _; at most 48)"
        ));
    }
    Ok(StoreLocation::Scylla {
        hosts,
        keyspace: keyspace.to_owned(),
        options,
    })
}

/// `local_dc=NAME&replication_factor=N`, each optional.
fn parse_cql_options(query: &str) -> Result<CqlOptions, String> {
    let mut options = CqlOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "local_dc" => {
                let valid = !value.is_empty()
                    && value.len() <= 64
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !valid {
                    return Err(format!(
                        "the scylla:// option local_dc={value:?} is not a datacenter name"
                    ));
                }
                options.local_dc = Some(value.to_owned());
            }
            "replication_factor" => {
                options.replication_factor = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=9).contains(n))
                    .ok_or_else(|| {
                        format!("the scylla:// option replication_factor={value:?} is not 1 to 9")
                    })?;
            }
            _ => {
                return Err(format!(
                    "the scylla:// store has no option {name:?} (local_dc, replication_factor)"
                ))
            }
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_locations_parse_and_print() {
        let store: StoreLocation = "scylla://a:9042,b:9043/ledger".parse().unwrap();
        assert_eq!(
            store,
            StoreLocation::Scylla {
                hosts: vec!["a:9042".into(), "b:9043".into()],
                keyspace: "ledger".into(),
                options: CqlOptions::default(),
            }
        );
        assert_eq!(store.to_string(), "scylla://a:9042,b:9043/ledger");
        let pinned: StoreLocation = "scylla://a/ledger?local_dc=dc-1&replication_factor=1"
            .parse()
            .unwrap();
        assert_eq!(
            pinned.to_string(),
            "scylla://a:9042/ledger?local_dc=dc-1&replication_factor=1"
        );
        let unknown = "scylla://a/ledger?serial=local"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(unknown.contains("no option"), "{unknown}");
        let zero = "scylla://a/ledger?replication_factor=0"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(zero.contains("not 1 to 9"), "{zero}");
        assert!(store.is_shared());
        let default_port: StoreLocation = "scylla://a/ledger".parse().unwrap();
        assert_eq!(default_port.to_string(), "scylla://a:9042/ledger");
        let no_hosts = "scylla:///ledger".parse::<StoreLocation>().unwrap_err();
        assert!(no_hosts.contains("no host"), "{no_hosts}");
        let no_keyspace = "scylla://a:9042".parse::<StoreLocation>().unwrap_err();
        assert!(no_keyspace.contains("no keyspace"), "{no_keyspace}");
        let bad = "scylla://a:9042/my-ks"
            .parse::<StoreLocation>()
            .unwrap_err();
        assert!(bad.contains("not a CQL keyspace name"), "{bad}");
    }

    #[test]
    fn passwords_never_reach_the_log() {
        let store: StoreLocation = "postgres://app:s3cret@db:5432/voucherd".parse().unwrap();
        assert_eq!(store.to_string(), "postgres://app:***@db:5432/voucherd");
        assert_eq!(format!("{store:?}"), "postgres://app:***@db:5432/voucherd");
        let plain: StoreLocation = "postgres://app@db/voucherd".parse().unwrap();
        assert_eq!(plain.to_string(), "postgres://app@db/voucherd");
        let in_query: StoreLocation = "postgres://app@db/voucherd?sslmode=disable&password=s3cret"
            .parse()
            .unwrap();
        assert_eq!(
            in_query.to_string(),
            "postgres://app@db/voucherd?sslmode=disable&password=***"
        );
    }

    #[test]
    fn a_multi_host_postgres_url_is_one_shared_store() {
        let url = "postgres://app:s3cret@h1:5432,h2:5433/db?target_session_attrs=read-write";
        let store: StoreLocation = url.parse().unwrap();
        // Passed whole to the driver, which tries the hosts in order.
        assert_eq!(store, StoreLocation::Postgres(url.to_owned()));
        assert!(store.is_shared());
        assert_eq!(
            store.to_string(),
            "postgres://app:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(
            format!("{store:?}"),
            "postgres://app:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        let no_password: StoreLocation = "postgresql://app@h1,h2/db".parse().unwrap();
        assert_eq!(no_password.to_string(), "postgresql://app@h1,h2/db");
    }
}

/// The bounds of the HTTP edge; see `limits.rs` for the defaults and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The tokens a process accepts (`http::auth` turns them into its access
/// policy). None: every route is open, which the app allows on loopback only.
#[derive(Debug, Clone, Default)]
pub struct AcceptedTokens {
    /// The operator's token.
    pub admin: Option<Token>,
    /// The voucher service's token, on a process with the wallet half.
    pub service: Option<Token>,
}

impl AcceptedTokens {
    pub fn is_empty(&self) -> bool {
        self.admin.is_none() && self.service.is_none()
    }
}

/// Shortest token accepted: a token is a shared secret, not a password to type.
pub const MIN_TOKEN_BYTES: usize = 16;

/// A secret token, held as its digest. `Debug` never shows it.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// A token from its text; surrounding whitespace (a file's trailing newline)
    /// is not part of it.
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < MIN_TOKEN_BYTES {
            return Err(format!(
                "a token must be at least {MIN_TOKEN_BYTES} bytes long (after trimming whitespace)"
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token must be printable ASCII without spaces".into());
        }
        Ok(Self {
            digest: digest(secret.as_bytes()),
        })
    }

    pub(crate) fn matches(&self, presented: &[u8; 32]) -> bool {
        self.digest.ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

pub(crate) fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
