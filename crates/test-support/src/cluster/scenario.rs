//! The shape every cluster test shares: a crowd with a fault midway, then the checks.

use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;

use super::crowd::{self, check_crowd, crowd_users, Attempt, Progress, Seen, Targets};
use super::http;
use super::verify::{check_invariants, final_wave, Expect};
use super::voucherd::Cluster;
use stress::verify::ReportEntry;

/// Voucher limit of a crowd.
pub const LIMIT: u32 = 500;
/// Voucher amount (minor units).
pub const AMOUNT: i64 = 50_000;
/// Distinct users of a crowd, and repeated requests from them on top.
pub const DISTINCT_USERS: u64 = 5_000;
pub const REPEATS: u64 = 1_500;
/// The fault strikes after this many answers: early enough that most slots are still
/// free, so the fault hits instances that are busy claiming.
pub const FAULT_AFTER: usize = 150;

/// One cluster test at a time per test binary: each runs three voucherd instances and its
/// own servers, and the machine has two cores; serialising keeps every test's crowd
/// and fault independent of the others' load.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A crowd running in its own task.
pub struct RunningCrowd {
    pub targets: Arc<Targets>,
    pub progress: Progress,
    pub started: Instant,
    handle: JoinHandle<Vec<Attempt>>,
}

impl RunningCrowd {
    /// Starts a crowd of `distinct` users (numbered from `first_user`) plus `repeats`
    /// repeats, shuffled by `seed`, on `code`, round-robin over `urls`.
    pub fn start(
        client: &reqwest::Client,
        urls: Vec<String>,
        code: &str,
        first_user: u64,
        distinct: u64,
        repeats: u64,
        seed: u64,
    ) -> RunningCrowd {
        let targets = Targets::new(urls);
        let progress = Progress::new();
        let handle = tokio::spawn(crowd::run(
            client.clone(),
            targets.clone(),
            code.to_owned(),
            crowd_users(first_user, distinct, repeats, seed),
            progress.clone(),
        ));
        RunningCrowd {
            targets,
            progress,
            started: Instant::now(),
            handle,
        }
    }

    /// Waits for the whole crowd; a panic in its task fails the test.
    pub async fn finish(self) -> Vec<Attempt> {
        match self.handle.await {
            Ok(attempts) => attempts,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

/// One line of what a crowd saw, for the test output.
pub fn summary(label: &str, seen: &Seen, started: Instant) {
    eprintln!(
        "{label}: {} users tried, {} acknowledged, statuses {:?}, {:.1?}",
        seen.tried.len(),
        seen.acknowledged.len(),
        seen.statuses,
        started.elapsed()
    );
}

/// I1–I5 over the voucher `code` (of [`AMOUNT`]) and what the clients saw; the report.
async fn check_seen(
    client: &reqwest::Client,
    urls: &[String],
    code: &str,
    limit: u32,
    seen: &Seen,
) -> Vec<ReportEntry> {
    let expect = Expect {
        code,
        limit,
        amount: AMOUNT,
        seen,
    };
    check_invariants(client, urls, &expect).await
}

/// After a crowd: I1–I5 on what it saw, then a final wave of fresh users that must bring
/// the voucher to exactly its limit, then I1–I5 again over crowd and wave together.
pub async fn verify_and_fill(
    client: &reqwest::Client,
    urls: &[String],
    code: &str,
    limit: u32,
    mut seen: Seen,
    wave: u64,
) -> Seen {
    let started = Instant::now();
    let report = check_seen(client, urls, code, limit, &seen).await;
    for phone in &seen.violating_users {
        let held = report.iter().any(|entry| &entry.phone_number == phone);
        eprintln!("VIOLATION user {phone}: in the report of {code}: {held}");
    }
    eprintln!(
        "{code}: after the crowd {} of {limit} redeemed; I1-I5 hold ({:.1?})",
        report.len(),
        started.elapsed()
    );
    let wave_seen = final_wave(client, urls, code, limit, AMOUNT, wave).await;
    summary(&format!("{code}: final wave"), &wave_seen, started);
    seen.merge(wave_seen);
    assert!(
        seen.pending.is_empty(),
        "{code}: one process credits in the claim's own write, so a redeem never answers \
         202 pending; {} did",
        seen.pending.len()
    );
    let report = check_seen(client, urls, code, limit, &seen).await;
    assert_eq!(
        report.len(),
        limit as usize,
        "I1 limit: after the final wave {code} has exactly {limit} redemptions"
    );
    seen.assert_no_violations(code);
    seen
}

/// Creates the voucher through the first instance and checks every instance sees it.
pub async fn create_voucher(client: &reqwest::Client, cluster: &Cluster, code: &str, limit: u32) {
    let urls = cluster.urls();
    http::create_voucher(client, &urls[0], code, AMOUNT, limit).await;
    for url in &urls {
        let resp = http::voucher(client, url, code).await;
        resp.expect_status_for(
            200,
            &format!("instance {url} finds voucher {code} in the shared ledger"),
        );
    }
}

/// Attempts answered 200 that were sent at or after `from` and answered by `until`.
pub fn acknowledged_between(attempts: &[Attempt], from: Instant, until: Instant) -> usize {
    attempts
        .iter()
        .filter(|a| a.sent >= from && a.done <= until)
        .filter(|a| a.outcome.as_ref().is_ok_and(|r| r.status == 200))
        .count()
}

/// Checks a crowd's answers; see [`check_crowd`].
/// Answers a client must never get are printed at once, and fail the test in
/// [`verify_and_fill`] after I1–I5 have been checked.
pub fn check(attempts: &[Attempt], code: &str, killed: Option<usize>) -> Seen {
    let seen = check_crowd(attempts, code, AMOUNT, killed);
    for violation in seen.violations.iter().take(10) {
        eprintln!("VIOLATION {violation}");
    }
    seen
}
