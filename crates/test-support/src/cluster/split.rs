//! Split mode under test: a wallet service (`--role wallet`) and a voucher service
//! (`--role voucher`), real binaries, each with its own store, the voucher service
//! reaching the wallet service through a [`Proxy`] the test controls. Short protocol
//! times (a redeem waits [`CREDIT_DEADLINE_MS`] for its credit, recovery takes what has
//! been pending [`RECOVERY_AFTER_MS`]) and no per-phone rate limit. Either service can be
//! SIGKILLed and started again on its store (on another port: the proxy follows the
//! wallet service; the test re-reads the voucher service's URL).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use stress::verify::ReportEntry;
use tempfile::TempDir;

use super::crowd::Seen;
use super::voucherd::Instance;
use crate::binary::Binary;
use crate::cql::{self, TestKeyspace};
use crate::database::TestDatabase;
use crate::http::report_all;
use crate::invariants::{check_invariants_at, Expect};
use crate::proxy::{socket_address, Proxy};

/// How long a redeem waits for its credit before it answers 202 pending.
pub const CREDIT_DEADLINE_MS: u64 = 500;
/// How long a redemption stays pending before recovery re-sends its credit.
pub const RECOVERY_AFTER_MS: u64 = 1_500;
/// Upper bound on the wait for every redemption to be credited: a credit stalled by a
/// partition is abandoned after the wallet call timeout (5 s), then recovery passes every
/// 2–3 s; well above that, so only a redemption that never settles fails the test.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(45);

/// Where the two services keep their stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A directory each (redb).
    Embedded,
    /// A throwaway database each on the shared PostgreSQL server.
    Postgres,
    /// A fresh keyspace each on the one-node Cassandra cluster (`crate::cql`).
    Cassandra,
}

/// One service's store, removed when the test ends.
enum Store {
    Embedded(TempDir),
    Postgres(TestDatabase),
    /// The keyspace (dropped with it) and the `--store` URL over it.
    Cassandra {
        _keyspace: TestKeyspace,
        url: String,
    },
}

impl Store {
    async fn create(backend: Backend) -> Store {
        match backend {
            Backend::Embedded => Store::Embedded(
                tempfile::Builder::new()
                    .prefix("split-store-")
                    .tempdir()
                    .expect("create a store directory"),
            ),
            Backend::Postgres => Store::Postgres(TestDatabase::create().await),
            Backend::Cassandra => {
                let cluster = cql::one_node();
                let keyspace = cluster.fresh_keyspace("split").await;
                let url = cluster.store_url(&keyspace);
                Store::Cassandra {
                    _keyspace: keyspace,
                    url,
                }
            }
        }
    }

    /// The `--store` value.
    fn location(&self) -> String {
        match self {
            Store::Embedded(directory) => directory.path().display().to_string(),
            Store::Postgres(database) => database.url.clone(),
            Store::Cassandra { url, .. } => url.clone(),
        }
    }
}

/// A wallet service and a voucher service through a proxy, killed on Drop.
pub struct Split {
    pub wallet: Instance,
    pub voucher: Instance,
    pub proxy: Proxy,
    pub client: reqwest::Client,
    /// Kept for the services' lifetime (dropped after them, which kills them).
    _stores: (Store, Store),
    log_dir: TempDir,
}

impl Split {
    /// Starts the wallet service, the proxy to it, then the voucher service (both
    /// `binary`).
    pub async fn start(binary: Binary, backend: Backend) -> Split {
        Split::start_with(binary, backend, RECOVERY_AFTER_MS).await
    }

    /// Like [`Split::start`], recovery taking what has been pending `recovery_after_ms`.
    pub async fn start_with(binary: Binary, backend: Backend, recovery_after_ms: u64) -> Split {
        let log_dir = tempfile::Builder::new()
            .prefix("split-logs-")
            .tempdir()
            .expect("create a log directory");
        let stores = (Store::create(backend).await, Store::create(backend).await);
        let wallet = start_wallet(binary, &stores.1, log_dir.path()).await;
        let proxy = Proxy::start(socket_address(wallet.base_url())).await;
        let voucher = start_voucher(
            binary,
            &stores.0,
            &proxy.url(),
            recovery_after_ms,
            log_dir.path(),
        )
        .await;
        Split {
            wallet,
            voucher,
            proxy,
            client: super::http::client(),
            _stores: stores,
            log_dir,
        }
    }

    /// The voucher service's base URL (changes when it starts again).
    pub fn voucher_url(&self) -> String {
        self.voucher.base_url().to_owned()
    }

    /// The wallet service's base URL, direct (not through the proxy).
    pub fn wallet_url(&self) -> String {
        self.wallet.base_url().to_owned()
    }

    /// Starts the wallet service again on its store and points the proxy at it.
    pub async fn start_wallet_again(&mut self) {
        self.wallet.start_again().await;
        self.proxy
            .set_target(socket_address(self.wallet.base_url()));
    }

    /// Polls the voucher service's report of `code` until every redemption in it is
    /// `credited` (bounded by [`SETTLE_LIMIT`]; the failure names those that are not);
    /// returns the report's items.
    pub async fn wait_all_credited(&self, code: &str) -> Vec<Value> {
        wait_all_credited(&self.client, self.voucher.base_url(), code).await
    }

    /// Waits until nothing more can reach the wallet service: the proxy holds no chunk
    /// back, and a recovery pass has ended since this was called (so the pass that may
    /// have been re-sending credits then has had its answers). Bounded by
    /// [`SETTLE_LIMIT`].
    pub async fn wait_quiet(&self) {
        let passes = self.recovery_passes().await;
        let what = "the proxy delivered all it held, and a recovery pass ended";
        super::wait_until(what, SETTLE_LIMIT, Duration::from_millis(100), || async {
            let quiet = self.proxy.held() == 0 && self.recovery_passes().await > passes;
            quiet.then_some(())
        })
        .await;
    }

    /// The voucher service's count of recovery passes (0 when it does not answer).
    async fn recovery_passes(&self) -> f64 {
        let url = self.voucher.base_url();
        let name = "voucherd_recovery_passes_total";
        super::http::metric(&self.client, url, name)
            .await
            .unwrap_or(0.0)
    }

    /// Waits until every redemption of `code` is credited and every credit sent has
    /// reached the wallet service ([`Split::wait_quiet`]), then checks I1–I5 with the
    /// one checker: the report from the voucher service, the wallet of every user in
    /// `seen` from the wallet service (a voucher credit in anyone's wallet without its
    /// redemption is a violation), and I4 for every 200 and every 202 a client got (each
    /// must be in the report with its id, credited once). Returns the report.
    pub async fn check(
        &self,
        code: &str,
        limit: u32,
        amount: i64,
        seen: &Seen,
    ) -> Vec<ReportEntry> {
        self.wait_all_credited(code).await;
        self.wait_quiet().await;
        let winners = seen.winners();
        let expect = Expect {
            code,
            limit: u64::from(limit),
            amount,
            acknowledged: &winners,
            told_redeemed: &seen.told_already_redeemed,
            wallets_of: Some(&seen.tried),
        };
        let wallets = [self.wallet_url()];
        check_invariants_at(&self.client, self.voucher.base_url(), &wallets, &expect).await
    }

    /// The voucher service's protocol counters (credits sent by answer, redemptions
    /// recovered), one line, for the test output.
    pub async fn protocol_counters(&self) -> String {
        let url = format!("{}/metrics", self.voucher.base_url());
        let text = super::http::send(self.client.get(url)).await.text;
        text.lines()
            .filter(|line| {
                line.contains("wallet_credits_total") || line.contains("recovered_total")
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Fails the test if either service's log shows a panic.
    pub fn assert_no_panic(&self) {
        for service in [&self.wallet, &self.voucher] {
            assert!(
                !service.log().contains("panicked"),
                "the {} service logged a panic:\n{}",
                service.name,
                service.log_tail(80)
            );
        }
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in [&self.wallet, &self.voucher] {
                eprintln!(
                    "---- {} service (logs in {}) ----\n{}",
                    service.name,
                    self.log_dir.path().display(),
                    service.log_tail(40)
                );
            }
        }
    }
}

/// Polls the report of `code` served at `base` until every redemption in it is
/// `credited` (bounded by [`SETTLE_LIMIT`]; the failure names those that are not);
/// returns the report's items.
pub async fn wait_all_credited(client: &reqwest::Client, base: &str, code: &str) -> Vec<Value> {
    let mut last = Vec::new();
    let settled = tokio::time::timeout(SETTLE_LIMIT, async {
        loop {
            let items = report_all(client, base, code).await;
            if items.items.iter().all(|item| item["status"] == "credited") {
                return items.items;
            }
            last = items.items;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    settled.unwrap_or_else(|_| {
        let unsettled: Vec<&Value> = last.iter().filter(|i| i["status"] != "credited").collect();
        panic!(
            "{code}: {} of {} redemptions still not credited after {SETTLE_LIMIT:?}, e.g. {:?}",
            unsettled.len(),
            last.len(),
            &unsettled[..unsettled.len().min(5)]
        )
    })
}

async fn start_wallet(binary: Binary, store: &Store, log_dir: &Path) -> Instance {
    let args = vec!["--role".to_owned(), "wallet".to_owned()];
    Instance::start_with(binary, "wallet", &store.location(), args, log_dir).await
}

async fn start_voucher(
    binary: Binary,
    store: &Store,
    wallet_url: &str,
    recovery_after_ms: u64,
    log_dir: &Path,
) -> Instance {
    let args = [
        "--role",
        "voucher",
        "--wallet-url",
        wallet_url,
        "--credit-deadline-ms",
        &CREDIT_DEADLINE_MS.to_string(),
        "--recovery-after-ms",
        &recovery_after_ms.to_string(),
        "--redeem-rate-per-phone",
        "0",
    ];
    let args = args.iter().map(|a| a.to_string()).collect();
    Instance::start_with(binary, "voucher", &store.location(), args, log_dir).await
}
