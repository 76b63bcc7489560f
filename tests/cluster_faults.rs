//! Multi-instance fault tolerance: three real voucherd instances share one private Redis
//! (slot leases) and one private PostgreSQL (the ledger); a crowd of 5,000 distinct users
//! plus 1,500 repeats redeems a limit-500 voucher over all three, 128 requests in flight,
//! while one fault strikes midway. Afterwards the invariants I1–I5 must hold, every 200 a
//! client saw must be in the ledger, and a final wave of fresh users must bring the
//! voucher to exactly its limit (no slot is lost for good).
//!
//! Every server is private to its test (free ports, tempdirs) and killed on Drop.

use std::time::{Duration, Instant};

use voucherd_test_support::binary::Binary;
use voucherd_test_support::cluster;
use voucherd_test_support::cluster::pg::PgServer;
use voucherd_test_support::cluster::redis_server::RedisServer;
use voucherd_test_support::cluster::scenario::{
    acknowledged_between, check, create_voucher, summary, verify_and_fill, RunningCrowd,
    DISTINCT_USERS, FAULT_AFTER, LIMIT, REPEATS, SERIAL,
};
use voucherd_test_support::cluster::voucherd::Cluster;
use voucherd_test_support::cluster::{http, verify};

/// The binary under test.
const VOUCHERD: Binary = Binary::new(env!("CARGO_BIN_EXE_voucherd"));

const DEGRADED: &str = "voucherd_slot_source_degraded";
/// How long PostgreSQL stays down in its restart.
const PG_DOWN: Duration = Duration::from_secs(1);

/// A private PostgreSQL, a private Redis and three instances on them.
async fn three_instances() -> (PgServer, RedisServer, Cluster) {
    let pg = PgServer::start().await;
    let redis = RedisServer::start("redis").await;
    let cluster = Cluster::start(VOUCHERD, 3, &pg.url(), &redis.url()).await;
    (pg, redis, cluster)
}

/// Three instances with a voucher `code` of [`LIMIT`], and a crowd (seeded by
/// `seed`) on it that has had [`FAULT_AFTER`] answers: the moment to inject a fault.
struct AtFault {
    pg: PgServer,
    redis: RedisServer,
    cluster: Cluster,
    client: reqwest::Client,
    crowd: RunningCrowd,
}

async fn crowd_at_fault_point(code: &str, seed: u64) -> AtFault {
    let (pg, redis, cluster) = three_instances().await;
    let client = http::client();
    create_voucher(&client, &cluster, code, LIMIT).await;
    let crowd = RunningCrowd::start(
        &client,
        cluster.urls(),
        code,
        0,
        DISTINCT_USERS,
        REPEATS,
        seed,
    );
    crowd.progress.reached(FAULT_AFTER).await;
    AtFault {
        pg,
        redis,
        cluster,
        client,
        crowd,
    }
}

/// The end of every scenario: no instance panicked, all stop cleanly.
async fn finish(cluster: &mut Cluster, scenario: &str, started: Instant) {
    cluster.assert_no_panic();
    cluster.stop_all().await;
    eprintln!("{scenario} took {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn launchers_start_stop_and_restart_private_servers() {
    // Goal: the harness works: private Redis stops/starts on its port; private PostgreSQL restarts on its port with its data.
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start("redis").await;
    redis.cmd::<()>(redis::cmd("SET").arg("k").arg("v")).await;
    let port = redis.port();
    redis.stop().await;
    assert!(
        cluster::redis_server::command::<String>(port, &redis::cmd("PING"))
            .await
            .is_err(),
        "a stopped Redis must not answer"
    );
    redis.start_again().await;
    assert_eq!(redis.port(), port, "Redis starts again on the same port");
    let value: Option<String> = redis.cmd(redis::cmd("GET").arg("k")).await;
    assert_eq!(value, None, "Redis runs without persistence");

    let mut pg = PgServer::start().await;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect to the private PostgreSQL");
    let driver = tokio::spawn(connection);
    client
        .batch_execute("CREATE TABLE probe (v INT); INSERT INTO probe VALUES (42);")
        .await
        .expect("write a row");
    pg.restart().await;
    let _ = driver.await;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect after the restart");
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT v FROM probe", &[])
        .await
        .expect("read the row back");
    assert_eq!(
        row.get::<_, i32>(0),
        42,
        "PostgreSQL keeps committed data across a restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_one_instance_midway() {
    // Goal: SIGKILL of one of three instances mid-crowd loses no acknowledged redemption, and its leased slots come back (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "KILL1";
    let AtFault {
        pg: _pg,
        redis: _redis,
        mut cluster,
        client,
        crowd,
    } = crowd_at_fault_point(code, 1).await;
    // No new request goes to v1 from now on; those in flight fail in transport.
    crowd.targets.mark_dead(1);
    cluster.instances[1].kill_hard().await;
    let killed_at = Instant::now();
    let attempts = crowd.finish().await;
    let seen = check(&attempts, code, Some(1));
    summary("crowd with v1 SIGKILLed", &seen, started);
    let survivors_after_kill = acknowledged_between(&attempts, killed_at, Instant::now());
    eprintln!("200s from the survivors after the kill: {survivors_after_kill}");

    let survivors = cluster.live_urls();
    assert_eq!(survivors.len(), 2, "two instances survive");
    verify_and_fill(&client, &survivors, code, LIMIT, seen, 1).await;
    finish(&mut cluster, "sigkill_one_instance_midway", started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_flushall_midway() {
    // Goal: FLUSHALL of the shared Redis mid-crowd costs no correctness: pools are rebuilt from the ledger (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "FLUSH1";
    let AtFault {
        pg: _pg,
        redis,
        mut cluster,
        client,
        crowd,
    } = crowd_at_fault_point(code, 2).await;
    let keys_before = redis.keys("voucherd:*").await;
    redis.flushall().await;
    eprintln!(
        "FLUSHALL after {} answers; keys before: {keys_before:?}",
        crowd.progress.count()
    );
    assert!(
        !keys_before.is_empty(),
        "the instances lease slots through Redis (keys voucherd:* exist before the flush)"
    );
    let attempts = crowd.finish().await;
    let seen = check(&attempts, code, None);
    summary("crowd with FLUSHALL", &seen, started);

    verify_and_fill(&client, &cluster.urls(), code, LIMIT, seen, 1).await;
    let pool = format!("voucherd:{{{code}}}:meta");
    assert!(
        redis.keys(&pool).await.contains(&pool),
        "after FLUSHALL the instances rebuild the slot pool in Redis from the ledger ({pool} exists again)"
    );
    finish(&mut cluster, "redis_flushall_midway", started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_for_three_seconds() {
    // Goal: while Redis is down the instances keep redeeming from the ledger (degraded), and return to Redis after (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let (_pg, mut redis, mut cluster) = three_instances().await;
    let client = http::client();
    let code = "OUTAGE1";
    create_voucher(&client, &cluster, code, LIMIT).await;
    let urls = cluster.urls();

    let crowd_started = Instant::now();
    let crowd = RunningCrowd::start(&client, urls.clone(), code, 0, DISTINCT_USERS, REPEATS, 3);
    crowd.progress.reached(FAULT_AFTER).await;
    // SIGKILL: Redis is gone at once, so the outage has a sharp start.
    let stop_started = Instant::now();
    redis.kill_hard().await;
    let outage_start = Instant::now();
    eprintln!(
        "Redis stopped after {} answers (kill took {:.1?})",
        crowd.progress.count(),
        stop_started.elapsed()
    );
    // Watch the degraded gauge of every instance while Redis is down.
    let watcher = {
        let (client, urls) = (client.clone(), urls.clone());
        tokio::spawn(async move {
            let mut seen_degraded = vec![false; urls.len()];
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < until {
                for (i, url) in urls.iter().enumerate() {
                    if http::metric(&client, url, DEGRADED).await == Some(1.0) {
                        seen_degraded[i] = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen_degraded
        })
    };
    let seen_degraded = watcher.await.expect("metric watcher");
    let outage_end = Instant::now();
    redis.start_again().await;
    let attempts = crowd.finish().await;
    let seen = check(&attempts, code, None);
    summary("crowd with Redis down for 3 s", &seen, started);

    assert!(
        seen_degraded.iter().any(|&d| d),
        "{DEGRADED} must be 1 on some instance while Redis is down (seen per instance: {seen_degraded:?})"
    );
    let during = acknowledged_between(&attempts, outage_start, outage_end);
    eprintln!(
        "200s answered before the outage: {}, sent and answered during it: {during}, after it: {}; \
         degraded seen on {seen_degraded:?}",
        acknowledged_between(&attempts, crowd_started, outage_start),
        acknowledged_between(&attempts, outage_end, Instant::now())
    );
    assert!(
        during > 0,
        "instances must keep redeeming from the ledger while Redis is down: no 200 was answered \
         to a request sent during the outage (statuses {:?})",
        seen.statuses
    );
    verify::wait_metric_everywhere(&client, &urls, DEGRADED, 0.0, Duration::from_secs(20)).await;

    verify_and_fill(&client, &urls, code, LIMIT, seen, 1).await;
    cluster.assert_no_panic();
    cluster.stop_all().await;
    eprintln!(
        "redis_down_for_three_seconds took {:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_midway() {
    // Goal: a PostgreSQL restart (down 1 s) mid-crowd costs at most 503s, no hang, no lost redemption; then all works (I1–I5, exact fill).
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let code = "PGRESTART1";
    let AtFault {
        mut pg,
        redis: _redis,
        mut cluster,
        client,
        crowd,
    } = crowd_at_fault_point(code, 4).await;
    let restart_started = Instant::now();
    // Fast shutdown, down for a second (as a real restart with a shutdown checkpoint and
    // crash recovery is), then up again on the same port and data directory.
    pg.stop().await;
    tokio::time::sleep(PG_DOWN).await;
    pg.start_again().await;
    eprintln!(
        "PostgreSQL restarted in {:.1?} after {} answers",
        restart_started.elapsed(),
        crowd.progress.count()
    );
    let attempts = crowd.finish().await;
    let seen = check(&attempts, code, None);
    summary("crowd with a PostgreSQL restart", &seen, started);

    verify_and_fill(&client, &cluster.urls(), code, LIMIT, seen, 1).await;
    finish(&mut cluster, "postgres_restart_midway", started).await;
}
