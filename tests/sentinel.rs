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
use voucherd_test_support::cluster::redis_server::RedisServer;
use voucherd_test_support::cluster::scenario::{
    acknowledged_between, check, create_voucher, summary, verify_and_fill, RunningCrowd,
    DISTINCT_USERS, FAULT_AFTER, LIMIT, REPEATS, SERIAL,
};
use voucherd_test_support::cluster::sentinel::SentinelGroup;
use voucherd_test_support::cluster::verify::wait_metric_everywhere;
use voucherd_test_support::cluster::voucherd::Cluster;
use voucherd_test_support::proxy::Proxy;

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

/// A replica that stopped following its master (replication paused: `REPLICAOF NO ONE`
/// while the master takes a wave of leases) becomes the Redis the instances reach when
/// the master dies; the instances find it through a proxy the test retargets, as a
/// virtual IP or a DNS name would move. Its pool's cursor is behind the ledger: the slots
/// leased since the pause are handed out again. The claims that meet them realign the
/// pool (cursor clamped to what the ledger shows taken), so the crowd after the failover
/// gets no 503 and the voucher still fills exactly.
#[tokio::test(flavor = "multi_thread")]
async fn failover_to_a_lagging_replica() {
    // Goal: a Redis failover to a replica missing the last leases costs no 503 (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut master = RedisServer::start("master").await;
    let replica = RedisServer::start_replica_of("replica", &master).await;
    let proxy = Proxy::start(master.address()).await;
    let redis_url = proxy.url().replace("http://", "redis://");
    let pg = PgServer::start().await;
    let mut cluster = Cluster::start(VOUCHERD, 3, &pg.url(), &redis_url).await;
    let client = http::client();
    let urls = cluster.urls();
    let code = "LAGGING1";
    let limit = 1_500;
    create_voucher(&client, &cluster, code, limit).await;

    // Wave 1 through the master; the replica follows it.
    let wave = RunningCrowd::start(&client, urls.clone(), code, 0, 300, 0, 11);
    let mut seen = check(&wave.finish().await, code, None);
    summary("wave before the pause", &seen, started);
    let followed = pool_cursor(&master, code).await;
    assert!(followed.is_some(), "the master holds the pool of {code}");
    voucherd_test_support::cluster::wait_until(
        "the replica has the master's pool",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { (pool_cursor(&replica, code).await == followed).then_some(()) },
    )
    .await;

    // Replication paused; wave 2 leases from the master only.
    let reply: String = replica
        .cmd(redis::cmd("REPLICAOF").arg("NO").arg("ONE"))
        .await;
    assert_eq!(reply, "OK");
    let wave = RunningCrowd::start(&client, urls.clone(), code, 300, 600, 0, 12);
    let wave_seen = check(&wave.finish().await, code, None);
    summary("wave while the replica lags", &wave_seen, started);
    seen.merge(wave_seen);
    let ahead = pool_cursor(&master, code)
        .await
        .expect("the master holds the pool");
    let behind = pool_cursor(&replica, code)
        .await
        .expect("the replica holds the pool as it was at the pause");
    eprintln!("pool cursor: master {ahead}, lagging replica {behind}");
    assert!(
        behind + 300 <= ahead,
        "the replica must miss the last leases for this test to mean anything \
         (cursor {behind} on it, {ahead} on the master)"
    );

    // The master dies; its address now leads to the lagging replica.
    master.kill_hard().await;
    proxy.set_target(replica.address());
    let failed_over_at = Instant::now();
    let wave = RunningCrowd::start(&client, urls.clone(), code, 900, 400, 400, 13);
    let attempts = wave.finish().await;
    let wave_seen = check(&attempts, code, None);
    summary("wave after the failover", &wave_seen, started);
    let unavailable = wave_seen.count("503");
    let found_taken = futures::future::join_all(
        urls.iter()
            .map(|url| http::metric(&client, url, "voucherd_slots_found_taken_total")),
    )
    .await
    .into_iter()
    .map(|v| v.unwrap_or(0.0))
    .sum::<f64>();
    eprintln!(
        "after the failover: {unavailable} answers 503, {found_taken} claims met a slot the \
         lagging pool handed out again, {:.1?}",
        failed_over_at.elapsed()
    );
    assert!(
        found_taken >= 1.0,
        "the lagging replica must have handed out slots the ledger shows taken \
         (voucherd_slots_found_taken_total is 0): the test did not make it lag"
    );
    assert_eq!(
        unavailable,
        0,
        "a failover to a lagging replica costs no 503 (statuses {:?}):\n{}",
        wave_seen.statuses,
        cluster.logs(30)
    );
    seen.merge(wave_seen);
    let on_replica = replica.keys(&format!("voucherd:{{{code}}}:*")).await;
    assert!(
        !on_replica.is_empty(),
        "the instances lease from the promoted replica after the failover"
    );
    verify_and_fill(&client, &urls, code, limit, seen, 3).await;
    cluster.assert_no_panic();
    cluster.stop_all().await;
    eprintln!(
        "failover_to_a_lagging_replica took {:.1?}",
        started.elapsed()
    );
}

/// The slot pool's cursor (`next`, the lowest slot never leased) of `code` on `server`.
async fn pool_cursor(server: &RedisServer, code: &str) -> Option<u32> {
    let meta = format!("voucherd:{{{code}}}:meta");
    server.cmd(redis::cmd("HGET").arg(meta).arg("next")).await
}
