//! Sentinel failover: three real voucherd instances find their Redis through a private
//! Sentinel group (master, one replica, three sentinels, quorum 2) and share one private
//! PostgreSQL. The master is SIGKILLed during a crowd; the sentinels promote the replica,
//! the instances follow it and keep serving, and the invariants I1–I5 hold.
//!
//! Every server is private to the test (free ports, tempdirs) and killed on Drop.

use std::time::{Duration, Instant};

use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster::http;
use voucherd_test_support::cluster::pg::PgServer;
use voucherd_test_support::cluster::scenario::{
    acknowledged_between, check, create_voucher, summary, verify_and_fill, RunningCrowd,
    DISTINCT_USERS, FAULT_AFTER, LIMIT, REPEATS, SERIAL,
};
use voucherd_test_support::cluster::sentinel::SentinelGroup;
use voucherd_test_support::cluster::verify::wait_metric_everywhere;
use voucherd_test_support::cluster::voucherd::Cluster;

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

const DEGRADED: &str = "voucherd_slot_source_degraded";
/// Bound on the sentinels' failover (down-after 1 s, failover-timeout 5 s).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn master_sigkilled_during_crowd() {
    // Goal: SIGKILL of the Redis master mid-crowd is followed through Sentinel, instances keep serving on the new master (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut group = SentinelGroup::start().await;
    let pg = PgServer::start().await;
    let mut cluster = Cluster::start(VOUCHERD, 3, &pg.url(), &group.url()).await;
    let client = http::client();
    let urls = cluster.urls();
    let code = "SENTINEL1";
    create_voucher(&client, &cluster, code, LIMIT).await;

    let crowd = RunningCrowd::start(&client, urls.clone(), code, 0, DISTINCT_USERS, REPEATS, 5);
    crowd.progress.reached(FAULT_AFTER).await;
    let keys_before = group.master.keys("voucherd:*").await;
    assert!(
        !keys_before.is_empty(),
        "the instances lease slots through the Sentinel-named master (keys voucherd:* exist on it)"
    );
    group.master.kill_hard().await;
    let killed_at = Instant::now();
    eprintln!("master SIGKILLed after {} answers", crowd.progress.count());
    let failover = tokio::time::timeout(
        FAILOVER_DEADLINE,
        group.wait_for_failover(FAILOVER_DEADLINE),
    )
    .await;
    if failover.is_err() {
        panic!(
            "the sentinels did not fail over within {FAILOVER_DEADLINE:?}:\n{}",
            group.logs()
        );
    }
    let failed_over_at = Instant::now();
    eprintln!(
        "replica promoted {:.1?} after the kill",
        killed_at.elapsed()
    );
    let attempts = crowd.finish().await;
    let seen = check(&attempts, code, None);
    summary("crowd with the master SIGKILLed", &seen, started);
    eprintln!(
        "200s sent after the kill: {}, after the failover: {}",
        acknowledged_between(&attempts, killed_at, Instant::now()),
        acknowledged_between(&attempts, failed_over_at, Instant::now())
    );

    // The instances find the new master: none stays on the ledger fallback.
    wait_metric_everywhere(&client, &urls, DEGRADED, 0.0, Duration::from_secs(30)).await;
    verify_and_fill(&client, &urls, code, LIMIT, seen, 1).await;

    // After the failover: a second voucher's crowd is served through the new master.
    let after = "SENTINEL2";
    let after_limit = 200;
    create_voucher(&client, &cluster, after, after_limit).await;
    // Users of this crowd are new: numbers from 100,000 on.
    let crowd = RunningCrowd::start(&client, urls.clone(), after, 100_000, 1_000, 200, 6);
    let attempts = crowd.finish().await;
    let seen = check(&attempts, after, None);
    summary("crowd after the failover", &seen, started);
    assert!(
        !seen.acknowledged.is_empty(),
        "instances must keep serving after the failover: no 200 for {after} (statuses {:?})",
        seen.statuses
    );
    let keys = group.replica.keys(&format!("voucherd:{{{after}}}:*")).await;
    assert!(
        !keys.is_empty(),
        "slots of {after} must be leased from the promoted replica (no voucherd:{{{after}}}:* key on it)"
    );
    verify_and_fill(&client, &urls, after, after_limit, seen, 2).await;

    cluster.assert_no_panic();
    cluster.stop_all().await;
    eprintln!(
        "master_sigkilled_during_crowd took {:.1?}",
        started.elapsed()
    );
}
