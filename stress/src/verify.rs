//! Post-run verification of the invariants in voucherd's docs/DESIGN.md from the service's own API.
//!
//! Fetching (reports, wallets) and checking are separate: `check` is a pure
//! function over what was fetched plus the 200s the harness saw, so tests can
//! plant any violation without a server. It is the one checker of I1–I5: the
//! integration tests (`voucherd_test_support::invariants`) fetch the same data with
//! their own client and call it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::{Method, StatusCode};
use parking_lot::Mutex;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::client::{encode_query, encode_segment, path_uri, Conn, Target};
use crate::scenarios::{VoucherSpec, Winner};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ReportEntry {
    pub redemption_id: String,
    pub phone_number: String,
    /// `pending` or `credited` (split mode); absent from older services.
    #[serde(default)]
    pub status: Option<String>,
}

impl ReportEntry {
    /// Whether the redemption's credit is still on its way (split mode).
    pub fn is_pending(&self) -> bool {
        self.status.as_deref() == Some("pending")
    }
}

/// A voucher as created by the harness, with its full redemption report.
#[derive(Debug, Clone)]
pub struct VoucherReport {
    pub code: String,
    pub amount: i64,
    pub limit: u64,
    /// The report's `total` field.
    pub total: u64,
    pub entries: Vec<ReportEntry>,
    /// `redeemed` from GET /api/vouchers/{code}, a second opinion on the count.
    pub redeemed: Option<u64>,
    /// `remaining` from GET /api/vouchers/{code}: must be `limit - redeemed`.
    pub remaining: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WalletTx {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub reference: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Wallet {
    pub balance: i64,
    pub transactions: Vec<WalletTx>,
}

/// A redemption the service answered 200 to during the run.
#[derive(Debug, Clone)]
pub struct Seen {
    pub code: String,
    pub phone: String,
    pub redemption_id: String,
}

/// A user the service answered 409 already_redeemed: it says the user holds a
/// redemption of `code`, so the report must list them.
#[derive(Debug, Clone)]
pub struct ToldRedeemed {
    pub code: String,
    pub phone: String,
}

/// Everything `check` looks at. A wallet mapped to `None` answered 404.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub vouchers: Vec<VoucherReport>,
    pub wallets: HashMap<String, Option<Wallet>>,
    pub seen: Vec<Seen>,
    pub told_redeemed: Vec<ToldRedeemed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// I1..I5, or REPORT for a report that contradicts itself.
    pub invariant: &'static str,
    pub code: Option<String>,
    pub phone: Option<String>,
    /// Redemption / transaction ids involved.
    pub ids: Vec<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub passed: bool,
    pub vouchers: usize,
    pub redemptions: usize,
    pub wallets: usize,
    pub seen_200: usize,
    pub elapsed_s: f64,
    pub violations: Vec<Violation>,
    /// 200 bodies that disagreed with their request (see scenarios).
    pub anomalies: Vec<String>,
}

fn violation(
    invariant: &'static str,
    code: Option<&str>,
    phone: Option<&str>,
    ids: Vec<String>,
    detail: String,
) -> Violation {
    Violation {
        invariant,
        code: code.map(str::to_owned),
        phone: phone.map(str::to_owned),
        ids,
        detail,
    }
}

/// Checks I1–I5 over fetched data; returns every violation found.
pub fn check(f: &Fetched) -> Vec<Violation> {
    let mut out = Vec::new();
    let voucher_ref = |code: &str| format!("voucher:{code}");

    for v in &f.vouchers {
        let code = Some(v.code.as_str());
        // I1: count what the report claims, what it lists and what the
        // voucher itself says.
        let n = v.entries.len() as u64;
        if n.max(v.total).max(v.redeemed.unwrap_or(0)) > v.limit {
            out.push(violation(
                "I1",
                code,
                None,
                v.entries
                    .iter()
                    .skip(v.limit as usize)
                    .map(|e| e.redemption_id.clone())
                    .collect(),
                format!(
                    "{} redemptions listed, total {}, voucher redeemed {:?} > limit {}",
                    n, v.total, v.redeemed, v.limit
                ),
            ));
        }
        if let Some(r) = v.redeemed.filter(|r| *r != v.total) {
            out.push(violation(
                "REPORT",
                code,
                None,
                vec![],
                format!(
                    "voucher says redeemed {r} but its report total is {}",
                    v.total
                ),
            ));
        }
        if n != v.total {
            out.push(violation(
                "REPORT",
                code,
                None,
                vec![],
                format!("report total {} but {} entries listed", v.total, n),
            ));
        }
        // Past the limit I1 has spoken already; `remaining` cannot be right.
        if let (Some(remaining), Some(redeemed)) = (v.remaining, v.redeemed) {
            if redeemed <= v.limit && remaining != v.limit - redeemed {
                out.push(violation(
                    "REPORT",
                    code,
                    None,
                    vec![],
                    format!(
                        "voucher says remaining {remaining} but limit {} - redeemed {redeemed}",
                        v.limit
                    ),
                ));
            }
        }

        // I2: one redemption per user (and so one per redemption id).
        let mut phones: HashMap<&str, &str> = HashMap::new();
        let mut ids = HashSet::new();
        for e in &v.entries {
            if let Some(first) = phones.insert(&e.phone_number, &e.redemption_id) {
                out.push(violation(
                    "I2",
                    code,
                    Some(&e.phone_number),
                    vec![first.to_owned(), e.redemption_id.clone()],
                    "user redeemed the voucher more than once".into(),
                ));
            } else if !ids.insert(e.redemption_id.as_str()) {
                out.push(violation(
                    "I2",
                    code,
                    Some(&e.phone_number),
                    vec![e.redemption_id.clone()],
                    "redemption id listed twice".into(),
                ));
            }
        }

        // I3: each redemption has exactly one credit, same id, voucher amount,
        // referencing the voucher.
        let reference = voucher_ref(&v.code);
        for e in &v.entries {
            let phone = Some(e.phone_number.as_str());
            let Some(Some(w)) = f.wallets.get(&e.phone_number) else {
                out.push(violation(
                    "I3",
                    code,
                    phone,
                    vec![e.redemption_id.clone()],
                    "winner has no wallet".into(),
                ));
                continue;
            };
            let credits: Vec<&WalletTx> = w
                .transactions
                .iter()
                .filter(|t| t.id == e.redemption_id)
                .collect();
            match credits.as_slice() {
                [] => out.push(violation(
                    "I3",
                    code,
                    phone,
                    vec![e.redemption_id.clone()],
                    "no wallet credit with the redemption id".into(),
                )),
                [t] if t.amount != v.amount => out.push(violation(
                    "I3",
                    code,
                    phone,
                    vec![e.redemption_id.clone()],
                    format!("credit amount {} != voucher amount {}", t.amount, v.amount),
                )),
                [t] if t.reference.as_deref() != Some(reference.as_str()) => out.push(violation(
                    "I3",
                    code,
                    phone,
                    vec![e.redemption_id.clone()],
                    format!("credit reference {:?} != {reference:?}", t.reference),
                )),
                [_] => {}
                many => out.push(violation(
                    "I3",
                    code,
                    phone,
                    vec![e.redemption_id.clone()],
                    format!("{} credits with the redemption id", many.len()),
                )),
            }
        }
    }

    // I3, the other way: no credit of our vouchers without its redemption.
    let by_ref: HashMap<String, &VoucherReport> = f
        .vouchers
        .iter()
        .map(|v| (voucher_ref(&v.code), v))
        .collect();
    let redeemed: HashSet<(&str, &str, &str)> = f
        .vouchers
        .iter()
        .flat_map(|v| {
            v.entries.iter().map(move |e| {
                (
                    v.code.as_str(),
                    e.phone_number.as_str(),
                    e.redemption_id.as_str(),
                )
            })
        })
        .collect();
    let mut phones: Vec<&String> = f.wallets.keys().collect();
    phones.sort();
    for phone in phones {
        let Some(w) = &f.wallets[phone] else { continue };
        for t in &w.transactions {
            let Some(v) = t.reference.as_deref().and_then(|r| by_ref.get(r)) else {
                continue;
            };
            if !redeemed.contains(&(v.code.as_str(), phone.as_str(), t.id.as_str())) {
                out.push(violation(
                    "I3",
                    Some(&v.code),
                    Some(phone),
                    vec![t.id.clone()],
                    "voucher credit without a matching redemption".into(),
                ));
            }
        }
    }

    // I4: every 200 the harness received is in the report, with its id.
    let mut reported: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for v in &f.vouchers {
        for e in &v.entries {
            reported
                .entry((v.code.as_str(), e.phone_number.as_str()))
                .or_default()
                .push(e.redemption_id.as_str());
        }
    }
    for s in &f.seen {
        match reported.get(&(s.code.as_str(), s.phone.as_str())) {
            None => out.push(violation(
                "I4",
                Some(&s.code),
                Some(&s.phone),
                vec![s.redemption_id.clone()],
                "answered 200 but missing from the report".into(),
            )),
            Some(ids) if !ids.contains(&s.redemption_id.as_str()) => {
                let mut all = vec![s.redemption_id.clone()];
                all.extend(ids.iter().map(|id| (*id).to_owned()));
                out.push(violation(
                    "I4",
                    Some(&s.code),
                    Some(&s.phone),
                    all,
                    "answered 200 with another redemption id than the report's".into(),
                ))
            }
            Some(_) => {}
        }
    }
    // I4, for 409 already_redeemed: the service said the user holds a redemption.
    for t in &f.told_redeemed {
        if !reported.contains_key(&(t.code.as_str(), t.phone.as_str())) {
            out.push(violation(
                "I4",
                Some(&t.code),
                Some(&t.phone),
                vec![],
                "answered 409 already_redeemed but missing from the report".into(),
            ));
        }
    }

    // I5: balance is the sum of the transactions and not negative.
    let mut phones: Vec<&String> = f.wallets.keys().collect();
    phones.sort();
    for phone in phones {
        let Some(w) = &f.wallets[phone] else { continue };
        let sum: i128 = w.transactions.iter().map(|t| t.amount as i128).sum();
        if sum != w.balance as i128 || w.balance < 0 {
            out.push(violation(
                "I5",
                None,
                Some(phone),
                w.transactions.iter().map(|t| t.id.clone()).collect(),
                format!(
                    "balance {} vs sum of {} transactions {}",
                    w.balance,
                    w.transactions.len(),
                    sum
                ),
            ));
        }
    }
    out
}

#[derive(Deserialize)]
struct ReportPage {
    total: u64,
    redemptions: Vec<ReportEntry>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct WalletPage {
    balance: i64,
    transactions: Vec<WalletTx>,
    next_cursor: Option<String>,
}

const PAGE: u32 = 1000;

/// GET with retries on overload and transport failures: verification must not
/// fail because the service is still shedding the crowd's tail.
async fn get<T: DeserializeOwned>(conn: &mut Conn, path: &str) -> Result<Option<T>> {
    let mut last = String::new();
    for attempt in 0..6u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        let req = conn
            .target()
            .admin_request(Method::GET, path_uri(path.to_owned()), None);
        match conn.send(req, Duration::from_secs(30)).await {
            Ok((StatusCode::OK, body)) => {
                return serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| anyhow!("GET {path}: bad body ({e})"));
            }
            Ok((StatusCode::NOT_FOUND, _)) => return Ok(None),
            Ok((s, body)) if s.as_u16() == 429 || s.as_u16() == 503 => {
                last = format!("HTTP {s}: {}", String::from_utf8_lossy(&body));
            }
            Ok((s, body)) => bail!("GET {path}: HTTP {s}: {}", String::from_utf8_lossy(&body)),
            Err(f) => last = f.code().to_owned(),
        }
    }
    bail!("GET {path}: gave up after retries ({last})")
}

#[derive(Deserialize)]
struct VoucherInfo {
    redeemed: u64,
    #[serde(default)]
    remaining: Option<u64>,
}

async fn fetch_report(conn: &mut Conn, v: &VoucherSpec) -> Result<VoucherReport> {
    let info: VoucherInfo = get(conn, &format!("/api/vouchers/{}", encode_segment(&v.code)))
        .await?
        .ok_or_else(|| anyhow!("voucher {} not found", v.code))?;
    let mut out = VoucherReport {
        code: v.code.clone(),
        amount: v.amount,
        limit: v.limit,
        total: 0,
        entries: Vec::new(),
        redeemed: Some(info.redeemed),
        remaining: info.remaining,
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/vouchers/report?code={}&limit={PAGE}",
            encode_query(&v.code)
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode_query(c)));
        }
        let page: ReportPage = get(conn, &path)
            .await?
            .ok_or_else(|| anyhow!("voucher {} not found", v.code))?;
        if cursor.is_none() {
            out.total = page.total;
        }
        out.entries.extend(page.redemptions);
        cursor = page.next_cursor;
        // Bounded even if the service kept handing out cursors: past twice the
        // limit I1 is violated anyway and the rest adds nothing.
        if cursor.is_none() || out.entries.len() as u64 > 2 * v.limit + PAGE as u64 {
            return Ok(out);
        }
    }
}

async fn fetch_wallet(conn: &mut Conn, phone: &str) -> Result<Option<Wallet>> {
    let mut wallet: Option<Wallet> = None;
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let mut path = format!("/api/profiles/{}?limit={PAGE}", encode_segment(phone));
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", encode_query(c)));
        }
        let Some(page) = get::<WalletPage>(conn, &path).await? else {
            return Ok(None);
        };
        let w = wallet.get_or_insert(Wallet {
            balance: page.balance,
            transactions: Vec::new(),
        });
        w.transactions.extend(page.transactions);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    Ok(wallet)
}

/// Runs `job` over `items` with `concurrency` workers, each with its own
/// connection (round-robin over the targets).
async fn bounded<I, O, F, Fut>(
    targets: &[Arc<Target>],
    concurrency: usize,
    items: Vec<I>,
    job: F,
) -> Result<Vec<O>>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(Conn, I) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (Conn, Result<O>)> + Send,
{
    let queue = Arc::new(Mutex::new(items));
    let mut set: JoinSet<Result<Vec<O>>> = JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (queue, job) = (queue.clone(), job.clone());
        let mut conn = Conn::new(targets[w % targets.len()].clone());
        set.spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(item) = queue.lock().pop() else {
                    return Ok(out);
                };
                let (c, r) = job(conn, item).await;
                conn = c;
                out.push(r?);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.map_err(|e| anyhow!("verify task failed: {e}"))??);
    }
    Ok(all)
}

/// How long verification waits for pending redemptions (split mode) to settle.
const SETTLE_WAIT: Duration = Duration::from_secs(120);

/// Every voucher's report once no redemption is pending any more (or the wait
/// is over: then the pending ones stay in, and the check reports their missing
/// credits).
async fn settled_reports(
    targets: &[Arc<Target>],
    concurrency: usize,
    vouchers: &[VoucherSpec],
) -> Result<Vec<VoucherReport>> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let reports = bounded(
            targets,
            concurrency,
            vouchers.to_vec(),
            |mut conn, v: VoucherSpec| async move {
                let r = fetch_report(&mut conn, &v).await;
                (conn, r)
            },
        )
        .await?;
        let pending = reports
            .iter()
            .flat_map(|r| &r.entries)
            .filter(|e| e.is_pending())
            .count();
        if pending == 0 || Instant::now() >= deadline {
            return Ok(reports);
        }
        eprintln!("verify: {pending} redemption(s) still pending; waiting for their credits");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fetches every report (from `targets`) and every wallet involved (from
/// `wallet_targets`: the wallet service in split mode), then checks.
#[allow(clippy::too_many_arguments)]
pub async fn verify(
    targets: &[Arc<Target>],
    wallet_targets: &[Arc<Target>],
    vouchers: &[VoucherSpec],
    winners: &[Winner],
    extra_wallets: Vec<String>,
    anomalies: Vec<String>,
    concurrency: usize,
) -> Result<VerifyReport> {
    let started = Instant::now();
    let reports = settled_reports(targets, concurrency, vouchers).await?;

    let seen: Vec<Seen> = winners
        .iter()
        .map(|w| Seen {
            code: vouchers[w.voucher as usize].code.clone(),
            phone: w.phone.clone(),
            redemption_id: w.redemption_id.clone(),
        })
        .collect();
    let phones: HashSet<String> = reports
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| e.phone_number.clone()))
        .chain(seen.iter().map(|s| s.phone.clone()))
        .chain(extra_wallets)
        .collect();
    let wallets = bounded(
        wallet_targets,
        concurrency,
        phones.into_iter().collect(),
        |mut conn, phone: String| async move {
            let r = fetch_wallet(&mut conn, &phone).await.map(|w| (phone, w));
            (conn, r)
        },
    )
    .await?;

    let mut fetched = Fetched {
        vouchers: reports,
        wallets: wallets.into_iter().collect(),
        seen,
        told_redeemed: Vec::new(),
    };
    // Report in the order the vouchers were created.
    fetched
        .vouchers
        .sort_by_key(|r| vouchers.iter().position(|v| v.code == r.code));
    let violations = check(&fetched);
    Ok(VerifyReport {
        passed: violations.is_empty() && anomalies.is_empty(),
        vouchers: fetched.vouchers.len(),
        redemptions: fetched.vouchers.iter().map(|v| v.entries.len()).sum(),
        wallets: fetched.wallets.values().filter(|w| w.is_some()).count(),
        seen_200: fetched.seen.len(),
        elapsed_s: started.elapsed().as_secs_f64(),
        violations,
        anomalies,
    })
}

#[cfg(test)]
mod tests;
