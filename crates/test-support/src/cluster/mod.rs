//! Harness for the multi-instance fault-tolerance tests: each test owns PRIVATE servers
//! (Redis, PostgreSQL, a Sentinel group) on free ports, runs several real `voucherd`
//! processes against them, drives a crowd of redeem requests over every instance while
//! a fault is injected, and checks the invariants I1–I5 afterwards.
//!
//! Every server is a child process of the test and is killed on Drop (also when the test
//! panics), so killing and restarting them never disturbs other tests or the machine's
//! own services.

pub mod crowd;
pub mod http;
pub mod pg;
pub mod process;
pub mod redis_server;
pub mod scenario;
pub mod sentinel;
pub mod split;
pub mod verify;
pub mod voucherd;

use std::future::Future;
use std::time::Duration;

/// Polls `check` every `every` until it returns Some, or panics with `what` after `limit`.
pub async fn wait_until<T, F, Fut>(what: &str, limit: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}
