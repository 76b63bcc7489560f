//! The ledger conformance suite: one specification of the `Ledger` trait, run
//! against every backend; the voucher and wallet halves of split mode are
//! specified in `halves.rs`.
//!
//! Each case is a plain async function over a [`Store`]; the `conformance!`
//! macro instantiates every case once per backend. The embedded backend runs on
//! a fresh temporary directory; the PostgreSQL backend on a fresh database
//! created for the test (`VOUCHERD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped afterwards, so
//! tests run in parallel. An unreachable PostgreSQL fails its tests: they never
//! skip silently. The CAS backend (the protocol a ScyllaDB ledger runs) runs on
//! a fresh in-memory compare-and-set store, without faults; reopening it opens
//! a new ledger over the same store. The same ledger runs over real Apache
//! Cassandra 5.0 through the CQL adapter, on one node (`cassandra`) and on a
//! three-node cluster with replication factor 3 (`cassandra_cluster`), each
//! test in a fresh keyspace migrated from `cql/schema.cql`
//! (`voucherd_test_support::cql` names the clusters; `scripts/cassandra.sh` starts
//! them). The Scylla backend runs it over a ScyllaDB cluster when
//! `VOUCHERD_TEST_SCYLLA=host:9042[,host:9042]` is set
//! (`deploy/scylla-compose.yaml` starts one); without it each Scylla test says
//! it is skipped and passes (the one sanctioned skip: ScyllaDB cannot run on
//! the development machines).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tempfile::TempDir;
use uuid::Uuid;
use voucherd_core::domain::{
    redemption_id, transaction_id, voucher_reference, PageRequest, PhoneNumber, Timestamp, Voucher,
    VoucherCode, WalletTransaction, OPENING_BALANCE_REFERENCE,
};
use voucherd_core::error::Error;
use voucherd_core::ledger::{
    AllInOne, Claim, HalfKind, Ledger, NewProfile, NewTransaction, SlotUsage, VoucherHalf,
    VoucherLedger, WalletHalf, WalletLedger,
};
use voucherd_metrics::Metrics;
use voucherd_store::cas::memory::MemoryStore;
use voucherd_store::cas::{CasLedger, Observed};
use voucherd_store::embedded::EmbeddedLedger;
use voucherd_store::postgres::PostgresLedger;
use voucherd_store::scylla::ScyllaStore;
use voucherd_test_support::cql;
use voucherd_test_support::database::TestDatabase;

mod halves;

/// A fresh store of one backend; `open` may be called again after the previous
/// ledger was shut down, to reopen the same data.
enum Store {
    Embedded(TempDir),
    Postgres(TestDatabase),
    Cas(MemoryStore),
    /// A fresh keyspace on a CQL cluster (Cassandra, or the ScyllaDB cluster
    /// `VOUCHERD_TEST_SCYLLA` names).
    Cql {
        cluster: cql::CqlCluster,
        keyspace: cql::TestKeyspace,
    },
    /// A backend whose server is not configured here (said when made).
    Skipped,
}

impl Store {
    async fn embedded() -> Store {
        let directory = tempfile::Builder::new()
            .prefix("voucherd-conformance-")
            .tempdir()
            .expect("create a store directory");
        Store::Embedded(directory)
    }

    async fn postgres() -> Store {
        Store::Postgres(TestDatabase::create().await)
    }

    async fn cas() -> Store {
        Store::Cas(MemoryStore::new())
    }

    async fn cassandra() -> Store {
        Store::cql(cql::one_node()).await
    }

    async fn cassandra_cluster() -> Store {
        Store::cql(cql::three_nodes()).await
    }

    async fn scylla() -> Store {
        let Ok(hosts) = std::env::var("VOUCHERD_TEST_SCYLLA") else {
            println!("skipped: VOUCHERD_TEST_SCYLLA is not set (no Scylla server here)");
            return Store::Skipped;
        };
        let hosts: Vec<String> = hosts.split(',').map(|h| h.trim().to_owned()).collect();
        Store::cql(cql::CqlCluster {
            replication_factor: hosts.len().clamp(1, 3) as u32,
            hosts,
            start: "docker compose -f deploy/scylla-compose.yaml up -d",
        })
        .await
    }

    async fn cql(cluster: cql::CqlCluster) -> Store {
        let keyspace = cluster.fresh_keyspace("voucherd_conf").await;
        Store::Cql { cluster, keyspace }
    }

    /// Opens the store holding both halves.
    async fn open(&self) -> Arc<dyn Ledger> {
        self.open_half::<AllInOne>().await.into_ledger()
    }

    /// Opens the store holding the voucher half: no wallet methods.
    async fn open_vouchers(&self) -> Arc<dyn VoucherLedger> {
        self.open_half::<VoucherHalf>().await.into_vouchers()
    }

    /// Opens the store holding the wallet half: no voucher methods.
    async fn open_wallets(&self) -> Arc<dyn WalletLedger> {
        self.open_half::<WalletHalf>().await.into_wallets()
    }

    /// Opens the store holding half `H`, as its backend's concrete type.
    async fn open_half<H: HalfKind>(&self) -> Opened<H> {
        let metrics = Arc::new(Metrics::new());
        match self {
            Store::Embedded(directory) => {
                // The previous ledger's writer thread lets go of the file just
                // after it acknowledges the shutdown, so a reopen may need a
                // moment.
                let mut attempts = 0;
                loop {
                    match EmbeddedLedger::open_half(directory.path(), metrics.clone()) {
                        Ok(ledger) => break Opened::Embedded(ledger),
                        Err(error) if attempts < 100 => {
                            attempts += 1;
                            eprintln!("reopening the embedded ledger: {error}; retrying");
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(error) => panic!("open the embedded ledger: {error}"),
                    }
                }
            }
            Store::Postgres(database) => Opened::Postgres(
                PostgresLedger::open_half(&database.url, metrics)
                    .await
                    .expect("open the PostgreSQL ledger"),
            ),
            Store::Cas(store) => Opened::Cas(CasLedger::open_half(store.clone())),
            Store::Cql { cluster, keyspace } => {
                let store = ScyllaStore::open(&cluster.hosts, &keyspace.name, &cluster.options())
                    .await
                    .unwrap_or_else(|error| panic!("open the Scylla ledger: {error:#}"));
                Opened::Cql(CasLedger::open_half(Observed::new(store, metrics)))
            }
            Store::Skipped => unreachable!("a skipped backend is never opened"),
        }
    }
}

/// A store opened for half `H`, as its backend's type; handed out as the
/// ledger traits `H` has.
enum Opened<H: HalfKind> {
    Embedded(EmbeddedLedger<H>),
    Postgres(PostgresLedger<H>),
    Cas(CasLedger<MemoryStore, H>),
    Cql(CasLedger<Observed<ScyllaStore>, H>),
}

/// `impl Opened<$half> { fn $into(self) -> Arc<dyn $ledger> }`.
macro_rules! hand_out {
    ($half:ty, $into:ident, $ledger:path) => {
        impl Opened<$half> {
            fn $into(self) -> Arc<dyn $ledger> {
                match self {
                    Opened::Embedded(ledger) => Arc::new(ledger),
                    Opened::Postgres(ledger) => Arc::new(ledger),
                    Opened::Cas(ledger) => Arc::new(ledger),
                    Opened::Cql(ledger) => Arc::new(ledger),
                }
            }
        }
    };
}

hand_out!(AllInOne, into_ledger, Ledger);
hand_out!(VoucherHalf, into_vouchers, VoucherLedger);
hand_out!(WalletHalf, into_wallets, WalletLedger);

/// Instantiates every case for one backend, as `backend::case`.
macro_rules! conformance {
    ($backend:ident => $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let store = super::Store::$backend().await;
                    if matches!(store, super::Store::Skipped) {
                        return;
                    }
                    super::cases::$case(&store).await;
                }
            )*
        }
    };
}

macro_rules! every_case {
    ($backend:ident) => {
        conformance!($backend =>
            claim_returns_the_redemption_and_the_credited_balance,
            a_second_claim_by_the_same_user_is_already_redeemed_and_writes_nothing,
            a_taken_slot_is_refused,
            slots_outside_the_limit_are_refused,
            an_unknown_voucher_cannot_be_claimed,
            concurrent_claims_never_exceed_the_limit,
            replayed_transactions_answer_the_first,
            an_idempotency_key_binds_the_phone_too,
            a_debit_below_zero_is_refused_and_changes_nothing,
            writes_apply_in_submission_order,
            a_profile_opens_once,
            the_report_pages_by_offset_and_by_cursor,
            the_wallet_pages_newest_first,
            slot_usage_reports_gaps_and_the_highest_slot,
            winners_are_the_users_holding_a_redemption,
            a_reopened_ledger_holds_the_same_state,
            a_voucher_half_claim_is_pending_until_settled,
            a_void_releases_the_slot_and_the_user_key,
            pending_lists_the_oldest_pending_first,
            settling_an_unknown_redemption_is_not_found,
            settles_apply_in_submission_order,
            credits_together_answer_each_as_alone,
            a_reopened_voucher_half_holds_the_same_state,
            a_final_refusal_is_remembered,
            a_refusal_that_is_not_final_leaves_no_trace,
            a_final_credit_replays_its_first_answer,
        );
    };
}

every_case!(embedded);
every_case!(postgres);
every_case!(cas);
every_case!(cassandra);
every_case!(cassandra_cluster);
every_case!(scylla);

/// Helpers the cases share.
mod fixtures {
    use super::*;

    /// A fixed clock, so that answers can be compared exactly.
    pub const EPOCH_MICROS: i64 = 1_780_000_000_000_000;

    pub fn at(offset_micros: i64) -> Timestamp {
        Timestamp(EPOCH_MICROS + offset_micros)
    }

    pub fn code(raw: &str) -> VoucherCode {
        VoucherCode::parse(raw).expect("a valid voucher code")
    }

    pub fn phone(n: u64) -> PhoneNumber {
        PhoneNumber::parse(&format!("+98912{n:07}")).expect("a valid phone number")
    }

    pub fn voucher(code_text: &str, amount: i64, limit: u32) -> Voucher {
        Voucher::new(code(code_text), amount, limit, None, None, at(0)).expect("a valid voucher")
    }

    pub async fn create_voucher(
        ledger: &dyn VoucherLedger,
        code_text: &str,
        amount: i64,
        limit: u32,
    ) {
        ledger
            .create_voucher(voucher(code_text, amount, limit))
            .await
            .expect("create the voucher");
    }

    pub fn claim(code_text: &str, phone_n: u64, slot: u32) -> Claim {
        Claim {
            code: code(code_text),
            phone: phone(phone_n),
            slot,
            at: at(i64::from(slot) * 1_000 + phone_n as i64),
        }
    }

    pub fn credit(phone_n: u64, amount: i64, offset: i64) -> NewTransaction {
        NewTransaction {
            id: Uuid::new_v4(),
            replayable: false,
            phone: phone(phone_n),
            amount,
            reference: format!("test {offset}"),
            at: at(offset),
            refusal_is_final: false,
        }
    }

    pub fn page(limit: u32, offset: u32, cursor: Option<u64>) -> PageRequest {
        PageRequest {
            limit,
            offset,
            cursor,
        }
    }

    /// Every transaction of the wallet, newest first (one large page).
    pub async fn history(ledger: &dyn WalletLedger, phone_n: u64) -> Vec<WalletTransaction> {
        history_of(ledger, phone(phone_n)).await
    }

    pub async fn history_of(
        ledger: &dyn WalletLedger,
        phone: PhoneNumber,
    ) -> Vec<WalletTransaction> {
        let (_, transactions) = ledger
            .wallet(phone, page(1_000, 0, None))
            .await
            .expect("read the wallet")
            .expect("the wallet exists");
        assert_eq!(transactions.next_cursor, None);
        transactions.items
    }

    pub async fn balance(ledger: &dyn WalletLedger, phone_n: u64) -> Option<i64> {
        ledger
            .wallet(phone(phone_n), page(1, 0, None))
            .await
            .expect("read the wallet")
            .map(|(wallet, _)| wallet.balance)
    }

    pub async fn redeemed(ledger: &dyn VoucherLedger, code_text: &str) -> u32 {
        ledger
            .voucher(code(code_text))
            .await
            .expect("read the voucher")
            .expect("the voucher exists")
            .redeemed
    }

    /// I5: the balance equals the sum of the wallet's transactions, every
    /// balance_after is the running sum, and none is negative.
    pub async fn assert_balance_is_the_sum(ledger: &dyn WalletLedger, phone_n: u64) {
        let mut oldest_first = history(ledger, phone_n).await;
        oldest_first.reverse();
        let mut running = 0;
        for transaction in &oldest_first {
            running += transaction.amount;
            assert_eq!(transaction.balance_after, running, "I5: balance_after");
            assert!(running >= 0, "I5: a balance went negative");
        }
        assert_eq!(balance(ledger, phone_n).await, Some(running), "I5: balance");
    }
}

mod cases {
    use super::fixtures::*;
    use super::*;

    pub use super::halves::*;

    /// A claim answers the redemption (id, slot, amount, time) and the balance
    /// right after its credit, which the wallet shows as a transaction of the
    /// same id (I3).
    pub async fn claim_returns_the_redemption_and_the_credited_balance(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 50_000, 10).await;
        ledger
            .create_profile(NewProfile {
                phone: phone(2),
                opening_balance: 1_000,
                at: at(1),
            })
            .await
            .expect("open a wallet");

        let first = ledger.claim(claim("GOAL", 1, 1)).await.expect("claim");
        assert_eq!(first.id, redemption_id(&code("GOAL"), phone(1)));
        assert_eq!(first.code, code("GOAL"));
        assert_eq!(first.phone, phone(1));
        assert_eq!(first.amount, 50_000);
        assert_eq!(first.slot, 1);
        assert_eq!(first.redeemed_at, claim("GOAL", 1, 1).at);
        assert_eq!(first.balance, Some(50_000));

        let second = ledger.claim(claim("GOAL", 2, 2)).await.expect("claim");
        assert_eq!(
            second.balance,
            Some(51_000),
            "the credit adds to an open wallet"
        );

        assert_eq!(
            ledger
                .redemption(code("GOAL"), phone(1))
                .await
                .expect("read"),
            Some(first.clone())
        );
        assert_eq!(
            ledger
                .redemption(code("GOAL"), phone(3))
                .await
                .expect("read"),
            None
        );
        let credits = history(ledger.as_ref(), 1).await;
        assert_eq!(credits.len(), 1);
        assert_eq!(
            credits[0].id, first.id,
            "I3: the credit has the redemption's id"
        );
        assert_eq!(credits[0].amount, 50_000);
        assert_eq!(credits[0].reference, voucher_reference(&code("GOAL")));
        assert_eq!(credits[0].balance_after, 50_000);
        assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 2);
        ledger.shutdown().await.expect("shut down");
    }

    /// I2: a user holding a redemption is refused another one, and the refused
    /// claim leaves no trace: no slot, no credit, no count.
    pub async fn a_second_claim_by_the_same_user_is_already_redeemed_and_writes_nothing(
        store: &Store,
    ) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, 5).await;
        ledger.claim(claim("GOAL", 1, 1)).await.expect("claim");

        let again = ledger.claim(claim("GOAL", 1, 2)).await;
        assert_eq!(again, Err(Error::AlreadyRedeemed), "I2");
        assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 1);
        assert_eq!(history(ledger.as_ref(), 1).await.len(), 1);
        assert_eq!(balance(ledger.as_ref(), 1).await, Some(100));
        let usage = ledger.slot_usage(code("GOAL")).await.expect("usage");
        assert_eq!(usage.taken, 1);
        assert_eq!(usage.highest_taken, 1);
        // Slot 2 stayed free.
        let other = ledger.claim(claim("GOAL", 2, 2)).await.expect("claim");
        assert_eq!(other.slot, 2);
        ledger.shutdown().await.expect("shut down");
    }

    /// I1: a slot belongs to one claim; another claim of it is `SlotTaken` and
    /// writes nothing, so its user can still win with another slot.
    pub async fn a_taken_slot_is_refused(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, 5).await;
        ledger.claim(claim("GOAL", 1, 3)).await.expect("claim");

        assert_eq!(
            ledger.claim(claim("GOAL", 2, 3)).await,
            Err(Error::SlotTaken),
            "I1"
        );
        assert_eq!(
            balance(ledger.as_ref(), 2).await,
            None,
            "no credit, no wallet"
        );
        assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 1);
        let retried = ledger.claim(claim("GOAL", 2, 4)).await.expect("claim");
        assert_eq!(retried.slot, 4);
        ledger.shutdown().await.expect("shut down");
    }

    /// I1: slots are 1..=limit; slot 0 and slot limit+1 do not exist.
    pub async fn slots_outside_the_limit_are_refused(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, 3).await;

        assert_eq!(
            ledger.claim(claim("GOAL", 1, 0)).await,
            Err(Error::SlotTaken)
        );
        assert_eq!(
            ledger.claim(claim("GOAL", 2, 4)).await,
            Err(Error::SlotTaken)
        );
        assert_eq!(redeemed(ledger.as_ref(), "GOAL").await, 0);
        assert_eq!(balance(ledger.as_ref(), 1).await, None);
        assert_eq!(balance(ledger.as_ref(), 2).await, None);
        ledger
            .claim(claim("GOAL", 2, 3))
            .await
            .expect("the last slot");
        ledger.shutdown().await.expect("shut down");
    }

    /// A claim of an unknown voucher is `VoucherNotFound`; a code is created once.
    pub async fn an_unknown_voucher_cannot_be_claimed(store: &Store) {
        let ledger = store.open().await;
        assert_eq!(
            ledger.claim(claim("NOPE", 1, 1)).await,
            Err(Error::VoucherNotFound)
        );
        assert_eq!(ledger.voucher(code("NOPE")).await, Ok(None));
        assert_eq!(balance(ledger.as_ref(), 1).await, None);

        create_voucher(ledger.as_ref(), "GOAL", 100, 3).await;
        assert_eq!(
            ledger.create_voucher(voucher("GOAL", 5, 5)).await,
            Err(Error::VoucherExists)
        );
        let status = ledger
            .voucher(code("GOAL"))
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(status.voucher, voucher("GOAL", 100, 3));
        assert_eq!(status.redeemed, 0);
        let all = ledger.vouchers().await.expect("list");
        assert_eq!(all.len(), 1);
        ledger.shutdown().await.expect("shut down");
    }

    /// I1, I2, I3 under contention: 500 users submit at once for a voucher of
    /// 100 slots (five per slot); exactly 100 win, on distinct slots, and each
    /// winner's wallet holds exactly one credit, with the redemption's id.
    pub async fn concurrent_claims_never_exceed_the_limit(store: &Store) {
        const LIMIT: u32 = 100;
        const CONTENDERS: u64 = 500;
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "RUSH", 700, LIMIT).await;

        let submitted: Vec<_> = (0..CONTENDERS)
            .map(|n| ledger.claim(claim("RUSH", n, (n % u64::from(LIMIT)) as u32 + 1)))
            .collect();
        let answers = futures::future::join_all(submitted).await;

        let mut winners = BTreeMap::new();
        for answer in answers {
            match answer {
                Ok(redemption) => {
                    let previous = winners.insert(redemption.slot, redemption);
                    assert!(previous.is_none(), "I1: a slot was won twice");
                }
                Err(error) => assert_eq!(error, Error::SlotTaken),
            }
        }
        assert_eq!(winners.len(), LIMIT as usize, "I1: exactly limit winners");
        assert_eq!(redeemed(ledger.as_ref(), "RUSH").await, LIMIT, "I1");
        let users: BTreeSet<_> = winners.values().map(|r| r.phone).collect();
        assert_eq!(users.len(), LIMIT as usize, "I2: one redemption per user");
        for redemption in winners.values() {
            let credits = history_of(ledger.as_ref(), redemption.phone).await;
            assert_eq!(credits.len(), 1, "I3: exactly one credit per winner");
            assert_eq!(
                credits[0].id, redemption.id,
                "I3: the credit is the redemption's"
            );
            assert_eq!(credits[0].amount, 700);
        }
        ledger.shutdown().await.expect("shut down");
    }

    /// An id sent again answers its first transaction without applying it
    /// twice; the same id with another body is `IdempotencyKeyReused`.
    pub async fn replayed_transactions_answer_the_first(store: &Store) {
        let ledger = store.open().await;
        let key = Uuid::new_v4();
        let first_request = NewTransaction {
            id: key,
            replayable: true,
            ..credit(1, 300, 1)
        };
        let first = ledger
            .transact(first_request.clone())
            .await
            .expect("credit");
        assert_eq!(first.balance_after, 300);

        let later = NewTransaction {
            at: at(99),
            ..first_request.clone()
        };
        assert_eq!(ledger.transact(later).await, Ok(first.clone()));
        let other_amount = NewTransaction {
            amount: 301,
            ..first_request.clone()
        };
        assert_eq!(
            ledger.transact(other_amount).await,
            Err(Error::IdempotencyKeyReused)
        );
        let other_reference = NewTransaction {
            reference: "something else".into(),
            ..first_request.clone()
        };
        assert_eq!(
            ledger.transact(other_reference).await,
            Err(Error::IdempotencyKeyReused)
        );

        // Replays submitted together with the first are answered the same way.
        let key = Uuid::new_v4();
        let together = NewTransaction {
            id: key,
            replayable: true,
            ..credit(1, 50, 2)
        };
        let a = ledger.transact(together.clone());
        let b = ledger.transact(together.clone());
        let c = ledger.transact(NewTransaction {
            amount: 51,
            ..together
        });
        let (a, b, c) = futures::join!(a, b, c);
        let a = a.expect("credit");
        assert_eq!(b, Ok(a.clone()));
        assert_eq!(c, Err(Error::IdempotencyKeyReused));

        assert_eq!(balance(ledger.as_ref(), 1).await, Some(350));
        assert_eq!(history(ledger.as_ref(), 1).await.len(), 2);
        assert_balance_is_the_sum(ledger.as_ref(), 1).await;
        ledger.shutdown().await.expect("shut down");
    }

    /// An Idempotency-Key names one request whoever it is for: its id does not
    /// depend on the phone, so the same key for another phone is
    /// `IdempotencyKeyReused` and touches neither wallet, also when both are
    /// submitted together.
    pub async fn an_idempotency_key_binds_the_phone_too(store: &Store) {
        let ledger = store.open().await;
        let keyed = |key: &str, phone_n: u64| NewTransaction {
            id: transaction_id(Some(key)),
            replayable: true,
            ..credit(phone_n, 300, 1)
        };
        let first = ledger.transact(keyed("order-7", 1)).await.expect("credit");
        assert_eq!(
            ledger.transact(keyed("order-7", 2)).await,
            Err(Error::IdempotencyKeyReused),
            "the same key for another phone"
        );
        assert_eq!(balance(ledger.as_ref(), 2).await, None, "no wallet opened");
        assert_eq!(
            ledger.transact(keyed("order-7", 1)).await,
            Ok(first),
            "the same request still replays"
        );

        // Submitted together, the first in submission order wins the key.
        let a = ledger.transact(keyed("order-8", 3));
        let b = ledger.transact(keyed("order-8", 4));
        let (a, b) = futures::join!(a, b);
        let a = a.expect("credit");
        assert_eq!(a.phone, phone(3));
        assert_eq!(b, Err(Error::IdempotencyKeyReused));
        assert_eq!(balance(ledger.as_ref(), 4).await, None, "no wallet opened");

        assert_eq!(balance(ledger.as_ref(), 1).await, Some(300));
        assert_eq!(balance(ledger.as_ref(), 3).await, Some(300));
        assert_eq!(history(ledger.as_ref(), 1).await.len(), 1);
        assert_balance_is_the_sum(ledger.as_ref(), 1).await;
        ledger.shutdown().await.expect("shut down");
    }

    /// I5: a debit that would go below zero is refused and writes nothing; a
    /// debit of the whole balance is fine.
    pub async fn a_debit_below_zero_is_refused_and_changes_nothing(store: &Store) {
        let ledger = store.open().await;
        ledger.transact(credit(1, 100, 1)).await.expect("credit");

        assert_eq!(
            ledger.transact(credit(1, -150, 2)).await,
            Err(Error::InsufficientFunds),
            "I5"
        );
        assert_eq!(balance(ledger.as_ref(), 1).await, Some(100));
        assert_eq!(history(ledger.as_ref(), 1).await.len(), 1);

        let emptied = ledger.transact(credit(1, -100, 3)).await.expect("debit");
        assert_eq!(emptied.balance_after, 0);
        assert_eq!(
            ledger.transact(credit(1, -1, 4)).await,
            Err(Error::InsufficientFunds)
        );
        // A debit never opens a wallet.
        assert_eq!(
            ledger.transact(credit(2, -1, 5)).await,
            Err(Error::InsufficientFunds)
        );
        assert_eq!(balance(ledger.as_ref(), 2).await, None);
        assert_balance_is_the_sum(ledger.as_ref(), 1).await;
        ledger.shutdown().await.expect("shut down");
    }

    /// Writes submitted before any is awaited apply in submission order: a
    /// debit sees the credits submitted before it, and a claim's credit lands
    /// between a user's transactions in the order they were submitted.
    pub async fn writes_apply_in_submission_order(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 1_000, 5).await;

        let credited = ledger.transact(credit(1, 100, 1));
        let debited = ledger.transact(credit(1, -100, 2));
        let overdrawn = ledger.transact(credit(1, -1, 3));
        let claimed = ledger.claim(claim("GOAL", 1, 1));
        let spent = ledger.transact(credit(1, -1_000, 4));
        let opened = ledger.create_profile(NewProfile {
            phone: phone(1),
            opening_balance: 0,
            at: at(5),
        });
        let (credited, debited, overdrawn, claimed, spent, opened) =
            futures::join!(credited, debited, overdrawn, claimed, spent, opened);
        assert_eq!(credited.expect("credit").balance_after, 100);
        assert_eq!(debited.expect("debit").balance_after, 0);
        assert_eq!(overdrawn, Err(Error::InsufficientFunds));
        assert_eq!(claimed.expect("claim").balance, Some(1_000));
        assert_eq!(spent.expect("debit").balance_after, 0);
        assert_eq!(opened, Err(Error::ProfileExists));

        let amounts: Vec<i64> = history(ledger.as_ref(), 1)
            .await
            .iter()
            .rev()
            .map(|t| t.amount)
            .collect();
        assert_eq!(amounts, vec![100, -100, 1_000, -1_000]);
        assert_balance_is_the_sum(ledger.as_ref(), 1).await;
        ledger.shutdown().await.expect("shut down");
    }

    /// A profile opens once, with its opening balance as a transaction; a credit
    /// also opens a wallet, after which the profile exists.
    pub async fn a_profile_opens_once(store: &Store) {
        let ledger = store.open().await;
        let profile = NewProfile {
            phone: phone(1),
            opening_balance: 500,
            at: at(1),
        };
        let wallet = ledger.create_profile(profile.clone()).await.expect("open");
        assert_eq!(wallet.phone, phone(1));
        assert_eq!(wallet.balance, 500);
        assert_eq!(wallet.created_at, at(1));
        assert_eq!(
            ledger.create_profile(profile).await,
            Err(Error::ProfileExists)
        );
        let opening = history(ledger.as_ref(), 1).await;
        assert_eq!(opening.len(), 1);
        assert_eq!(opening[0].reference, OPENING_BALANCE_REFERENCE);
        assert_eq!(opening[0].amount, 500);

        let empty = ledger
            .create_profile(NewProfile {
                phone: phone(2),
                opening_balance: 0,
                at: at(2),
            })
            .await
            .expect("open");
        assert_eq!(empty.balance, 0);
        let (head, transactions) = ledger
            .wallet(phone(2), page(10, 0, None))
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(head, empty);
        assert!(transactions.items.is_empty());

        ledger.transact(credit(3, 10, 3)).await.expect("credit");
        assert_eq!(
            ledger
                .create_profile(NewProfile {
                    phone: phone(3),
                    opening_balance: 0,
                    at: at(4),
                })
                .await,
            Err(Error::ProfileExists)
        );
        assert_eq!(ledger.wallet(phone(4), page(10, 0, None)).await, Ok(None));
        ledger.shutdown().await.expect("shut down");
    }

    /// The report lists every taken slot once, in slot order, whether read by
    /// offset or by following cursors.
    pub async fn the_report_pages_by_offset_and_by_cursor(store: &Store) {
        const LIMIT: u32 = 25;
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, LIMIT).await;
        // Claimed out of slot order.
        for slot in (1..=LIMIT).rev().step_by(2).chain((2..LIMIT).step_by(2)) {
            ledger
                .claim(claim("GOAL", u64::from(slot) + 100, slot))
                .await
                .expect("claim");
        }
        let expected: Vec<u32> = (1..=LIMIT).collect();

        let mut by_offset = Vec::new();
        for offset in (0..LIMIT).step_by(10) {
            let page = ledger
                .report(code("GOAL"), page(10, offset, None))
                .await
                .expect("report");
            by_offset.extend(page.items);
        }
        assert_eq!(
            by_offset.iter().map(|e| e.slot).collect::<Vec<_>>(),
            expected
        );
        for entry in &by_offset {
            assert_eq!(entry.phone, phone(u64::from(entry.slot) + 100));
            assert_eq!(
                entry.redeemed_at,
                claim("GOAL", u64::from(entry.slot) + 100, entry.slot).at
            );
        }

        let mut by_cursor = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = ledger
                .report(code("GOAL"), page(10, 0, cursor))
                .await
                .expect("report");
            pages += 1;
            by_cursor.extend(page.items.iter().map(|e| e.slot));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(pages <= 3, "the cursor must end");
        }
        assert_eq!(by_cursor, expected);
        assert_eq!(pages, 3);

        let exact = ledger
            .report(code("GOAL"), page(LIMIT, 0, None))
            .await
            .expect("report");
        assert_eq!(exact.items.len(), LIMIT as usize);
        assert_eq!(exact.next_cursor, None, "no next page after the last slot");
        let past = ledger
            .report(code("GOAL"), page(10, 0, Some(u64::MAX)))
            .await
            .expect("report");
        assert!(past.items.is_empty());
        ledger.shutdown().await.expect("shut down");
    }

    /// A wallet's transactions come newest first; following cursors covers
    /// each exactly once, and offsets skip within a page request.
    pub async fn the_wallet_pages_newest_first(store: &Store) {
        const TRANSACTIONS: i64 = 23;
        let ledger = store.open().await;
        for n in 1..=TRANSACTIONS {
            ledger.transact(credit(1, n, n)).await.expect("credit");
        }
        // Another wallet's transactions must not appear.
        ledger.transact(credit(2, 7, 100)).await.expect("credit");
        let newest_first: Vec<i64> = (1..=TRANSACTIONS).rev().collect();

        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let (wallet, page) = ledger
                .wallet(phone(1), page(5, 0, cursor))
                .await
                .expect("read")
                .expect("exists");
            assert_eq!(wallet.balance, (1..=TRANSACTIONS).sum::<i64>());
            pages += 1;
            seen.extend(page.items.iter().cloned());
            match page.next_cursor {
                Some(next) => {
                    assert_eq!(Some(next), page.items.last().map(|t| t.sequence));
                    cursor = Some(next);
                }
                None => break,
            }
            assert!(pages <= 5, "the cursor must end");
        }
        assert_eq!(pages, 5);
        assert_eq!(
            seen.iter().map(|t| t.amount).collect::<Vec<_>>(),
            newest_first
        );
        assert!(
            seen.windows(2).all(|w| w[0].sequence > w[1].sequence),
            "sequences decrease along the pages"
        );
        let ids: BTreeSet<_> = seen.iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), TRANSACTIONS as usize, "each transaction once");

        let (_, skipped) = ledger
            .wallet(phone(1), page(5, 3, None))
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(
            skipped.items.iter().map(|t| t.amount).collect::<Vec<_>>(),
            newest_first[3..8].to_vec()
        );
        let (_, after_cursor) = ledger
            .wallet(phone(1), page(2, 1, Some(seen[4].sequence)))
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(
            after_cursor
                .items
                .iter()
                .map(|t| t.amount)
                .collect::<Vec<_>>(),
            newest_first[6..8].to_vec()
        );
        assert_balance_is_the_sum(ledger.as_ref(), 1).await;
        ledger.shutdown().await.expect("shut down");
    }

    /// Slot usage: every slot above the highest taken is free, and below it
    /// exactly the gaps.
    pub async fn slot_usage_reports_gaps_and_the_highest_slot(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, 10).await;
        assert_eq!(
            ledger.slot_usage(code("GOAL")).await,
            Ok(SlotUsage::default())
        );
        for (n, slot) in [(1, 7), (2, 2), (3, 5), (4, 1)] {
            ledger.claim(claim("GOAL", n, slot)).await.expect("claim");
        }
        assert_eq!(
            ledger.slot_usage(code("GOAL")).await,
            Ok(SlotUsage {
                highest_taken: 7,
                gaps: vec![3, 4, 6],
                taken: 4,
            })
        );
        assert_eq!(
            ledger.slot_usage(code("NOPE")).await,
            Ok(SlotUsage::default())
        );
        ledger.shutdown().await.expect("shut down");
    }

    /// winners() names exactly the users holding a redemption of the voucher.
    pub async fn winners_are_the_users_holding_a_redemption(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 100, 10).await;
        create_voucher(ledger.as_ref(), "OTHER", 100, 10).await;
        for (n, slot) in [(1, 3), (2, 1), (3, 2)] {
            ledger.claim(claim("GOAL", n, slot)).await.expect("claim");
        }
        ledger.claim(claim("OTHER", 9, 1)).await.expect("claim");
        assert_eq!(
            ledger.claim(claim("GOAL", 4, 3)).await,
            Err(Error::SlotTaken)
        );
        let winners: BTreeSet<_> = ledger
            .winners(code("GOAL"))
            .await
            .expect("winners")
            .into_iter()
            .collect();
        assert_eq!(
            winners,
            [phone(1), phone(2), phone(3)].into_iter().collect()
        );
        assert_eq!(ledger.winners(code("NOPE")).await, Ok(vec![]));
        ledger.shutdown().await.expect("shut down");
    }

    /// I4: after shutdown, the reopened ledger answers every read the same way
    /// and still refuses what it refused before.
    pub async fn a_reopened_ledger_holds_the_same_state(store: &Store) {
        let ledger = store.open().await;
        create_voucher(ledger.as_ref(), "GOAL", 250, 10).await;
        let mut claims = Vec::new();
        for (n, slot) in [(1, 1), (2, 4), (3, 2)] {
            claims.push(ledger.claim(claim("GOAL", n, slot)));
        }
        for answer in futures::future::join_all(claims).await {
            answer.expect("claim");
        }
        ledger
            .create_profile(NewProfile {
                phone: phone(5),
                opening_balance: 40,
                at: at(1),
            })
            .await
            .expect("open");
        let replayable = NewTransaction {
            id: Uuid::new_v4(),
            replayable: true,
            ..credit(1, 25, 2)
        };
        let first = ledger.transact(replayable.clone()).await.expect("credit");
        ledger.transact(credit(5, -15, 3)).await.expect("debit");

        let read_all = |ledger: Arc<dyn Ledger>| async move {
            let voucher = ledger.voucher(code("GOAL")).await.expect("voucher");
            let vouchers = ledger.vouchers().await.expect("vouchers");
            let report = ledger
                .report(code("GOAL"), page(100, 0, None))
                .await
                .expect("report");
            let usage = ledger.slot_usage(code("GOAL")).await.expect("usage");
            let winners = ledger.winners(code("GOAL")).await.expect("winners");
            let redemption = ledger
                .redemption(code("GOAL"), phone(2))
                .await
                .expect("redemption");
            let mut wallets = Vec::new();
            for n in [1, 2, 3, 5] {
                wallets.push(
                    ledger
                        .wallet(phone(n), page(100, 0, None))
                        .await
                        .expect("wallet"),
                );
            }
            format!(
                "{voucher:?}{vouchers:?}{report:?}{usage:?}{winners:?}{redemption:?}{wallets:?}"
            )
        };
        let before = read_all(ledger.clone()).await;
        ledger.shutdown().await.expect("shut down");
        assert!(
            matches!(
                ledger.claim(claim("GOAL", 7, 7)).await,
                Err(Error::Unavailable { .. })
            ),
            "a shut down ledger refuses writes"
        );
        drop(ledger);

        let reopened = store.open().await;
        assert_eq!(read_all(reopened.clone()).await, before, "I4: same state");
        assert_eq!(reopened.transact(replayable).await, Ok(first));
        assert_eq!(
            reopened.claim(claim("GOAL", 9, 4)).await,
            Err(Error::SlotTaken)
        );
        assert_eq!(
            reopened.claim(claim("GOAL", 3, 9)).await,
            Err(Error::AlreadyRedeemed)
        );
        let next = reopened.claim(claim("GOAL", 9, 3)).await.expect("claim");
        assert_eq!(next.balance, Some(250));
        reopened.shutdown().await.expect("shut down");
    }
}
