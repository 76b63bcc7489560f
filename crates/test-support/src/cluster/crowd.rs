//! The crowd driver: redeem requests sent round-robin over the live instances with many
//! in flight, every answer recorded; and the checks of what the crowd saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use super::http::{redeem, Resp};
use crate::http::phone;
use crate::rng::Rng;

/// Requests in flight at once.
pub const IN_FLIGHT: usize = 128;
/// Upper bound on one whole crowd, so that a stuck cluster fails the test.
pub const CROWD_DEADLINE: Duration = Duration::from_secs(60);

/// A valid E.164 number for fresh user `n` of a final wave, never a crowd user.
pub fn fresh_phone(wave: u64, n: u64) -> String {
    format!("+4478{wave:02}{n:07}")
}

/// `distinct` users numbered from `first`, plus `repeats` extra requests from users drawn
/// among them, in a shuffled order fixed by `seed`.
pub fn crowd_users(first: u64, distinct: u64, repeats: u64, seed: u64) -> Vec<String> {
    let mut rng = Rng::seeded(seed);
    let mut users: Vec<u64> = (first..first + distinct).collect();
    users.extend((0..repeats).map(|_| first + rng.below(distinct)));
    rng.shuffle(&mut users);
    users.into_iter().map(phone).collect()
}

/// The instances a crowd talks to; an instance marked dead gets no new requests.
pub struct Targets {
    urls: Vec<String>,
    alive: Vec<AtomicBool>,
}

impl Targets {
    pub fn new(urls: Vec<String>) -> Arc<Targets> {
        let alive = urls.iter().map(|_| AtomicBool::new(true)).collect();
        Arc::new(Targets { urls, alive })
    }

    pub fn url(&self, index: usize) -> &str {
        &self.urls[index]
    }

    /// From now on, no request is sent to instance `index`.
    pub fn mark_dead(&self, index: usize) {
        self.alive[index].store(false, Ordering::SeqCst);
    }

    /// Round-robin over the live instances.
    fn pick(&self, seq: usize) -> usize {
        let live: Vec<usize> = (0..self.urls.len())
            .filter(|&i| self.alive[i].load(Ordering::SeqCst))
            .collect();
        assert!(
            !live.is_empty(),
            "no live instance left to send requests to"
        );
        live[seq % live.len()]
    }
}

/// How many answers (or transport errors) the crowd has had so far; a fault task waits
/// on it to strike midway.
#[derive(Clone)]
pub struct Progress {
    tx: Arc<watch::Sender<usize>>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tx: Arc::new(watch::channel(0).0),
        }
    }

    fn bump(&self) {
        self.tx.send_modify(|count| *count += 1);
    }

    pub fn count(&self) -> usize {
        *self.tx.borrow()
    }

    /// Resolves once `n` answers have come back (bounded by the crowd's deadline).
    pub async fn reached(&self, n: usize) {
        let mut rx = self.tx.subscribe();
        tokio::time::timeout(CROWD_DEADLINE, rx.wait_for(|count| *count >= n))
            .await
            .unwrap_or_else(|_| panic!("the crowd never reached {n} answers"))
            .expect("progress channel open");
    }
}

/// One request of the crowd and what came back.
#[derive(Debug)]
pub struct Attempt {
    pub seq: usize,
    pub phone: String,
    /// Index of the instance it was sent to.
    pub target: usize,
    pub sent: Instant,
    pub done: Instant,
    pub outcome: Result<Resp, String>,
}

/// Sends one redeem per entry of `phones` for `code`, request `seq` to the live instance
/// picked round-robin when it is sent, with [`IN_FLIGHT`] in flight. Never retries:
/// every answer is recorded as it came.
pub async fn run(
    client: reqwest::Client,
    targets: Arc<Targets>,
    code: String,
    phones: Vec<String>,
    progress: Progress,
) -> Vec<Attempt> {
    run_in_flight(client, targets, code, phones, progress, IN_FLIGHT).await
}

/// Like [`run`], with `in_flight` requests in flight instead of [`IN_FLIGHT`].
pub async fn run_in_flight(
    client: reqwest::Client,
    targets: Arc<Targets>,
    code: String,
    phones: Vec<String>,
    progress: Progress,
    in_flight: usize,
) -> Vec<Attempt> {
    let total = phones.len();
    let requests = futures::stream::iter(phones.into_iter().enumerate())
        .map(|(seq, phone)| {
            let (client, targets, code, progress) = (
                client.clone(),
                targets.clone(),
                code.clone(),
                progress.clone(),
            );
            async move {
                let target = targets.pick(seq);
                let sent = Instant::now();
                let outcome = redeem(&client, targets.url(target), &phone, &code).await;
                let done = Instant::now();
                progress.bump();
                Attempt {
                    seq,
                    phone,
                    target,
                    sent,
                    done,
                    outcome,
                }
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<_>>();
    let mut attempts = tokio::time::timeout(CROWD_DEADLINE, requests)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the crowd of {total} requests did not finish within {CROWD_DEADLINE:?} \
                 (a request to a live instance hung past the client timeout?)"
            )
        });
    attempts.sort_by_key(|a| a.seq);
    attempts
}

/// What a crowd (or a wave) saw, by user.
#[derive(Debug, Default)]
pub struct Seen {
    /// Users answered 200, with their redemption id.
    pub acknowledged: HashMap<String, String>,
    /// Users answered 202 pending (split mode: the credit was not confirmed in time),
    /// with their redemption id.
    pub pending: HashMap<String, String>,
    /// Users answered 409 already_redeemed: the service says they hold a redemption.
    pub told_already_redeemed: HashSet<String>,
    /// Every user that sent at least one request.
    pub tried: HashSet<String>,
    /// Count per status ("transport" for transport errors).
    pub statuses: BTreeMap<String, usize>,
    /// Answers a client must never get (wrong status or error code, transport errors
    /// from an instance that was not killed).
    pub violations: Vec<String>,
    /// Users one of whose answers was a violation.
    pub violating_users: HashSet<String>,
}

impl Seen {
    pub fn merge(&mut self, other: Seen) {
        for (phone, id) in other.acknowledged {
            self.acknowledge(&phone, &id);
        }
        self.pending.extend(other.pending);
        self.told_already_redeemed
            .extend(other.told_already_redeemed);
        self.tried.extend(other.tried);
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.violations.extend(other.violations);
        self.violating_users.extend(other.violating_users);
    }

    /// Fails the test when any answer was one a client must never get.
    pub fn assert_no_violations(&self, what: &str) {
        assert!(
            self.violations.is_empty(),
            "{what}: {} answers a client must never get (I1-I5 were checked and held), first ones:\n{}",
            self.violations.len(),
            self.violations
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn acknowledge(&mut self, phone: &str, id: &str) {
        if let Some(previous) = self.acknowledged.insert(phone.to_owned(), id.to_owned()) {
            assert_eq!(
                previous, id,
                "I2 unique: {phone} was answered 200 twice with different redemption ids"
            );
        }
    }

    pub fn count(&self, status: &str) -> usize {
        self.statuses.get(status).copied().unwrap_or_default()
    }

    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(status, _)| status.starts_with('5'))
            .map(|(_, count)| count)
            .sum()
    }

    /// Users told they won, 200 credited or 202 pending, with their redemption id.
    pub fn winners(&self) -> HashMap<String, String> {
        let mut winners = self.pending.clone();
        winners.extend(self.acknowledged.clone());
        winners
    }
}

/// Checks one answer of a redeem for `phone`: its status is one a crowd may see (200,
/// 202 pending in split mode, 409 already_redeemed, 410 voucher_exhausted, 503
/// unavailable, 429 overloaded), and a 200 or 202 body describes this redemption. Records it in `seen`; an answer a crowd must never see
/// is recorded as a violation (the test fails on it after checking I1–I5, so that a
/// failure report says whether the data stayed right).
pub fn check_answer(
    seen: &mut Seen,
    phone: &str,
    resp: &Resp,
    code: &str,
    amount: i64,
    context: &str,
) {
    seen.tried.insert(phone.to_owned());
    *seen.statuses.entry(resp.status.to_string()).or_default() += 1;
    let expected_error = match resp.status {
        200 | 202 => None,
        409 => Some("already_redeemed"),
        410 => Some("voucher_exhausted"),
        503 => Some("unavailable"),
        429 => Some("overloaded"),
        other => {
            seen.violating_users.insert(phone.to_owned());
            seen.violations.push(format!(
                "{context}: redeem for {phone} answered HTTP {other}, which a crowd must never see: {}",
                resp.text
            ));
            return;
        }
    };
    if let Some(error) = expected_error {
        if resp.error_code() != error {
            seen.violating_users.insert(phone.to_owned());
            seen.violations.push(format!(
                "{context}: HTTP {} for {phone} must carry error {error}: {}",
                resp.status, resp.text
            ));
            return;
        }
        if error == "already_redeemed" {
            seen.told_already_redeemed.insert(phone.to_owned());
        }
        return;
    }
    let id = check_redemption_body(resp, phone, code, amount, context);
    if resp.status == 202 {
        seen.pending.insert(phone.to_owned(), id);
        return;
    }
    // Each user of these tests has no other transaction: the credit is the whole balance.
    assert_eq!(
        resp.json["balance"].as_i64(),
        Some(amount),
        "I3 credited: a winner's balance right after the credit is the voucher amount: {}",
        resp.text
    );
    seen.acknowledge(phone, &id);
}

/// Checks that a 200 (credited) or 202 (pending) body describes the redemption of `code`
/// by `phone`; returns its redemption id.
fn check_redemption_body(
    resp: &Resp,
    phone: &str,
    code: &str,
    amount: i64,
    context: &str,
) -> String {
    let body = &resp.json;
    let status = if resp.status == 202 {
        "pending"
    } else {
        "credited"
    };
    assert_eq!(
        (body["status"].as_str(), body["code"].as_str()),
        (Some(status), Some(code)),
        "{context}: HTTP {} body says {status} and names the voucher: {}",
        resp.status,
        resp.text
    );
    assert_eq!(
        body["phone_number"].as_str(),
        Some(phone),
        "{context}: the body names the user: {}",
        resp.text
    );
    assert_eq!(
        body["amount"].as_i64(),
        Some(amount),
        "{context}: the body carries the amount: {}",
        resp.text
    );
    body["redemption_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: body without redemption_id: {}", resp.text))
        .to_owned()
}

/// Checks every attempt of a crowd. Transport errors are allowed only for requests sent
/// to `killed` (the instance a test SIGKILLed); anything else fails the test.
pub fn check_crowd(attempts: &[Attempt], code: &str, amount: i64, killed: Option<usize>) -> Seen {
    let mut seen = Seen::default();
    for attempt in attempts {
        match &attempt.outcome {
            Ok(resp) => check_answer(
                &mut seen,
                &attempt.phone,
                resp,
                code,
                amount,
                &format!(
                    "crowd request {} to instance v{}",
                    attempt.seq, attempt.target
                ),
            ),
            Err(error) => {
                if Some(attempt.target) != killed {
                    seen.violating_users.insert(attempt.phone.clone());
                    seen.violations.push(format!(
                        "crowd request {} for {} to instance v{} (never killed) failed in transport \
                         (a hang past the client timeout, or a dropped connection): {error}",
                        attempt.seq, attempt.phone, attempt.target
                    ));
                }
                seen.tried.insert(attempt.phone.clone());
                *seen.statuses.entry("transport".into()).or_default() += 1;
            }
        }
    }
    seen
}
