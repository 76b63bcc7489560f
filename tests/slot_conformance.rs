//! One conformance suite for every `SlotSource`: the local source, the shared
//! (random-start) local source and Redis leases, each over a real ledger.
//! Redis tests use the server at `VOUCHERD_TEST_REDIS` (default
//! redis://127.0.0.1:6379) and fail, never skip, if it is unreachable (`scripts/services.sh
//! up` starts one). Each test
//! uses its own voucher code, so tests share one Redis safely.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use voucherd_core::domain::{PhoneNumber, Timestamp, Voucher, VoucherCode};
use voucherd_core::ledger::{Claim, Ledger};
use voucherd_metrics::Metrics;
use voucherd_service::slots::local::LocalSlots;
use voucherd_service::slots::redis::{RedisSlots, RedisTarget};
use voucherd_service::slots::{SlotBatch, SlotSource};
use voucherd_store::embedded::EmbeddedLedger;

struct Fixture {
    ledger: Arc<dyn Ledger>,
    code: VoucherCode,
    limit: u32,
    _store: tempfile::TempDir,
}

async fn fixture(limit: u32) -> Fixture {
    let store = tempfile::tempdir().expect("temporary store");
    let ledger: Arc<dyn Ledger> = Arc::new(
        EmbeddedLedger::open(store.path(), Arc::new(Metrics::new())).expect("ledger opens"),
    );
    let code = VoucherCode::parse(&format!("SLOT{}", uuid::Uuid::new_v4().simple())).expect("code");
    let voucher =
        Voucher::new(code.clone(), 100, limit, None, None, Timestamp::now()).expect("voucher");
    ledger
        .create_voucher(voucher)
        .await
        .expect("voucher created");
    Fixture {
        ledger,
        code,
        limit,
        _store: store,
    }
}

fn redis_url() -> String {
    std::env::var("VOUCHERD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn assert_redis_reachable() {
    let client = redis::Client::open(redis_url()).expect("Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is unreachable at {}: {e}. This test needs a Redis server: start it \
                 with `scripts/services.sh up` (or run everything with `scripts/test.sh`), \
                 or set VOUCHERD_TEST_REDIS to a server's URL.",
                redis_url()
            )
        });
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}

fn redis_source(ledger: &Arc<dyn Ledger>) -> RedisSlots {
    let target: RedisTarget = redis_url().parse().expect("Redis URL parses");
    RedisSlots::start(target, ledger.clone(), Arc::new(Metrics::new()))
}

async fn claim(f: &Fixture, slot: u32, phone: u64) {
    let phone = PhoneNumber::parse(&format!("+49151{phone:08}")).expect("phone");
    f.ledger
        .claim(Claim {
            code: f.code.clone(),
            phone,
            slot,
            at: Timestamp::now(),
        })
        .await
        .expect("claim commits");
}

/// Leases until the source has nothing left (bounded), returning every slot.
async fn lease_all(source: &dyn SlotSource, f: &Fixture, batch: u32) -> Vec<u32> {
    let mut all = Vec::new();
    for _ in 0..(f.limit * 2 + 10) {
        let slots = source.lease(&f.code, f.limit, batch).await.expect("lease");
        assert_batch_is_consistent(&slots, batch);
        if slots.is_empty() {
            return all;
        }
        all.extend(slots.iter());
    }
    panic!("the source never ran dry");
}

/// A batch is sorted, coalesced ranges whose slot count is its length, and no
/// larger than asked for.
fn assert_batch_is_consistent(batch: &SlotBatch, max: u32) {
    assert!(batch.len() <= max as usize, "a lease exceeded its maximum");
    let ranges: Vec<_> = batch.ranges().collect();
    let counted: usize = ranges.iter().map(|r| r.clone().count()).sum();
    assert_eq!(counted, batch.len(), "the length counts the ranges' slots");
    assert!(
        ranges.windows(2).all(|w| w[0].end() + 1 < *w[1].start()),
        "ranges are sorted, disjoint and coalesced: {ranges:?}"
    );
}

fn assert_distinct_in_range(slots: &[u32], limit: u32) {
    let distinct: HashSet<u32> = slots.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        slots.len(),
        "I1: a slot was handed out twice: {slots:?}"
    );
    assert!(
        slots.iter().all(|s| (1..=limit).contains(s)),
        "I1: a slot outside 1..={limit}"
    );
}

async fn leases_are_distinct_and_cover_the_limit(source: &dyn SlotSource, f: &Fixture) {
    let slots = lease_all(source, f, 64).await;
    assert_distinct_in_range(&slots, f.limit);
    assert_eq!(slots.len(), f.limit as usize, "every slot is leased once");
}

async fn given_back_slots_are_leased_again(source: &dyn SlotSource, f: &Fixture) {
    let first = lease_all(source, f, 16).await;
    assert_eq!(first.len(), f.limit as usize);
    let back: Vec<u32> = first.iter().copied().take(5).collect();
    source
        .give_back(&f.code, back.iter().copied().collect())
        .await
        .expect("give back");
    let again = lease_all(source, f, 16).await;
    let again: HashSet<u32> = again.into_iter().collect();
    assert_eq!(
        again,
        back.into_iter().collect(),
        "exactly the given-back slots come again"
    );
}

async fn slots_the_ledger_holds_are_never_leased(source: &dyn SlotSource, f: &Fixture) {
    for slot in 1..=10 {
        claim(f, slot, u64::from(slot)).await;
    }
    claim(f, 20, 20).await;
    let slots = lease_all(source, f, 32).await;
    assert_distinct_in_range(&slots, f.limit);
    assert!(
        slots.iter().all(|s| *s > 10 && *s != 20),
        "I1: a slot the ledger holds was leased: {slots:?}"
    );
    assert_eq!(
        slots.len(),
        f.limit as usize - 11,
        "every free slot is leased"
    );
}

async fn after_a_reset_unclaimed_slots_come_back(source: &dyn SlotSource, f: &Fixture) {
    let held = lease_all(source, f, 64).await;
    assert_eq!(held.len(), f.limit as usize);
    claim(f, held[0], 1).await;
    // A restarted shard forgets what it held; the source rebuilds from the ledger.
    source.reset(&f.code).await.expect("reset");
    let again = lease_all(source, f, 64).await;
    assert_distinct_in_range(&again, f.limit);
    assert!(!again.contains(&held[0]), "I1: the claimed slot came back");
    assert_eq!(
        again.len(),
        f.limit as usize - 1,
        "every unclaimed slot came back"
    );
}

async fn a_lease_of_fresh_slots_is_a_few_ranges(source: &dyn SlotSource, f: &Fixture) {
    let batch = source.lease(&f.code, f.limit, 4_096).await.expect("lease");
    assert_batch_is_consistent(&batch, 4_096);
    assert!(!batch.is_empty(), "a fresh voucher has slots to lease");
    assert!(
        batch.range_count() <= 2,
        "fresh slots come as at most two ranges (a random start may wrap), got {}",
        batch.range_count()
    );
    assert_distinct_in_range(&batch.iter().collect::<Vec<_>>(), f.limit);
}

macro_rules! conformance {
    ($module:ident, $make:expr, $needs_redis:expr) => {
        mod $module {
            use super::*;

            async fn source(f: &Fixture) -> Box<dyn SlotSource> {
                if $needs_redis {
                    assert_redis_reachable().await;
                }
                let make: fn(&Arc<dyn Ledger>) -> Box<dyn SlotSource> = $make;
                make(&f.ledger)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn leases_are_distinct_and_cover_the_limit() {
                // Goal: I1 at the source: each slot 1..=limit goes out exactly once.
                let f = fixture(300).await;
                super::leases_are_distinct_and_cover_the_limit(source(&f).await.as_ref(), &f).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn given_back_slots_are_leased_again() {
                // Goal: slots of failed claims are not lost.
                let f = fixture(40).await;
                super::given_back_slots_are_leased_again(source(&f).await.as_ref(), &f).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn slots_the_ledger_holds_are_never_leased() {
                // Goal: a source built on a ledger with claims skips their slots.
                let f = fixture(60).await;
                super::slots_the_ledger_holds_are_never_leased(source(&f).await.as_ref(), &f).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_lease_of_fresh_slots_is_a_few_ranges() {
                // Goal: a lease costs memory by its ranges, not its slots, so a
                // voucher of a large limit in use stays small.
                let f = fixture(1_000_000).await;
                super::a_lease_of_fresh_slots_is_a_few_ranges(source(&f).await.as_ref(), &f).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn after_a_reset_unclaimed_slots_come_back() {
                // Goal: a restarted shard's unclaimed slots are not lost for good.
                let f = fixture(50).await;
                super::after_a_reset_unclaimed_slots_come_back(source(&f).await.as_ref(), &f).await;
            }
        }
    };
}

conformance!(
    local,
    |ledger| Box::new(LocalSlots::new(ledger.clone())),
    false
);
conformance!(
    shared_local,
    |ledger| Box::new(LocalSlots::shared(ledger.clone())),
    false
);
conformance!(redis_leases, |ledger| Box::new(redis_source(ledger)), true);

async fn delete_pool(code: &VoucherCode) {
    let client = redis::Client::open(redis_url()).expect("Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("voucherd:{{{code}}}:*"))
        .query_async(&mut connection)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await
            .expect("DEL");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_the_pool_costs_no_slot_and_no_double_claim() {
    // Goal: after Redis loses a voucher's keys (FLUSHALL, failover), the pool is
    // rebuilt from the ledger: claimed slots never come back, unclaimed ones do.
    assert_redis_reachable().await;
    let f = fixture(80).await;
    let source = redis_source(&f.ledger);
    let first: Vec<u32> = source
        .lease(&f.code, f.limit, 64)
        .await
        .expect("lease")
        .iter()
        .collect();
    for (i, slot) in first.iter().take(5).enumerate() {
        claim(&f, *slot, i as u64).await;
    }
    delete_pool(&f.code).await;
    let rest = lease_all(&source, &f, 64).await;
    assert_distinct_in_range(&rest, f.limit);
    let claimed: HashSet<u32> = first.iter().copied().take(5).collect();
    assert!(
        rest.iter().all(|s| !claimed.contains(s)),
        "I1: a claimed slot was leased again"
    );
    assert_eq!(
        rest.len(),
        f.limit as usize - 5,
        "every unclaimed slot is in the rebuilt pool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_batches_shrink_as_the_pool_runs_low() {
    // Goal: the last slots spread over instances instead of one lease taking them all.
    assert_redis_reachable().await;
    let f = fixture(64).await;
    let source = redis_source(&f.ledger);
    let first = source.lease(&f.code, f.limit, 512).await.expect("lease");
    assert_eq!(
        first.len(),
        8,
        "a lease takes at most an eighth of the pool"
    );
    let mut sizes = Vec::new();
    loop {
        let batch = source.lease(&f.code, f.limit, 512).await.expect("lease");
        if batch.is_empty() {
            break;
        }
        sizes.push(batch.len());
    }
    assert!(
        sizes.windows(2).all(|w| w[1] <= w[0]),
        "batches never grow as the pool drains: {sizes:?}"
    );
    assert_eq!(sizes.last(), Some(&1), "the last slots go out one by one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_lease_expires_and_its_unclaimed_slots_return() {
    // Goal: an instance that dies holding slots loses them only until its lease
    // expires; another instance then gets every slot the ledger shows unclaimed.
    assert_redis_reachable().await;
    let f = fixture(30).await;
    let dying = redis_source(&f.ledger);
    let held = lease_all(&dying, &f, 64).await;
    assert_eq!(held.len(), 30);
    claim(&f, held[0], 1).await;
    drop(dying); // No renewal, no give-back: as if SIGKILLed.
    let survivor = redis_source(&f.ledger);
    let mut recovered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while recovered.len() < 29 && tokio::time::Instant::now() < deadline {
        let batch = survivor.lease(&f.code, f.limit, 64).await.expect("lease");
        if batch.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        recovered.extend(batch.iter());
    }
    assert_distinct_in_range(&recovered, f.limit);
    assert!(
        !recovered.contains(&held[0]),
        "I1: the claimed slot came back"
    );
    assert_eq!(
        recovered.len(),
        29,
        "every unclaimed slot of the dead lease returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_falls_back_to_the_ledger_and_says_so() {
    // Goal: Redis is a speed-up, not a single point of failure.
    let f = fixture(20).await;
    let metrics = Arc::new(Metrics::new());
    let target: RedisTarget = "redis://127.0.0.1:1".parse().expect("URL");
    let source = RedisSlots::start(target, f.ledger.clone(), metrics.clone());
    let slots = lease_all(&source, &f, 8).await;
    assert_distinct_in_range(&slots, f.limit);
    assert_eq!(
        slots.len(),
        20,
        "the ledger fallback hands out every free slot"
    );
    let text = metrics.encode();
    assert!(
        text.contains("voucherd_slot_source_degraded 1"),
        "degraded mode is visible:\n{text}"
    );
    let ledger_leases: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("voucherd_slot_leases_total{source=\"ledger\"} "))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    assert!(
        ledger_leases >= 1.0,
        "ledger leases are counted:
{text}"
    );
}
