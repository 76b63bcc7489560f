//! The redemption protocol across two services: claim → credit → settle.
//!
//! In role `all` a redemption is one ledger write (claim and credit together)
//! and nothing here runs. In split mode (a voucher service and a wallet
//! service, each with its own store) a redemption is a small state machine kept
//! in the voucher ledger:
//!
//! ```text
//! claim (slot + user key + redemption, status pending)
//!   ──► credit in the wallet service (id = redemption id, reference voucher:<code>)
//!   ──► settle: credited (the wallet applied it) | void (the wallet refused it for good)
//! ```
//!
//! The rules that keep money and slots in agreement (I3) whatever crashes,
//! timeouts, duplicates or reorderings happen:
//! - The wallet applies a given credit id at most once and its answer for an id
//!   is final: a replay answers the first outcome (applied, or refused for
//!   good), and the same id with another amount is refused.
//! - A redemption is settled `Credited` only after the wallet said `Applied`,
//!   and `Void` only after it said `Refused`. An `Unknown` answer (a timeout, a
//!   lost connection, a wallet that is down) leaves it `Pending`: the credit may
//!   or may not have landed, and only asking again (idempotently) can tell.
//! - Settling is idempotent and one-way: `Pending` → `Credited` | `Void`; a
//!   settled redemption never changes again.
//! - Recovery re-sends the credit of every redemption pending longer than a
//!   threshold, then settles it by the same rules.
//!
//! The logic here is independent of the backends: ledgers implement
//! [`PendingLedger`], the wallet client implements [`CreditPort`], and the
//! deterministic simulation in `tests/simulation/` runs these same functions
//! against in-memory models of both services and the network.

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::domain::{voucher_reference, PhoneNumber, Redemption, RedemptionStatus, Timestamp};
use crate::error::{Error, Result};
use crate::ledger::{PendingLedger, Resolution};

/// The credit that completes a pending redemption, as the wallet receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    /// The redemption id: the credit's idempotency key in the wallet.
    pub id: Uuid,
    pub phone: PhoneNumber,
    /// Always > 0: the voucher's amount.
    pub amount: i64,
    /// `voucher:<code>`, a reference only the voucher service may write.
    pub reference: String,
    /// When the redemption was claimed (the credit's timestamp).
    pub at: Timestamp,
}

impl Credit {
    /// The credit of `redemption`.
    pub fn of(redemption: &Redemption) -> Self {
        Credit {
            id: redemption.id,
            phone: redemption.phone,
            amount: redemption.amount,
            reference: voucher_reference(&redemption.code),
            at: redemption.redeemed_at,
        }
    }
}

/// What the wallet said about one credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditAnswer {
    /// The wallet holds the credit (now, or from an earlier attempt).
    Applied { balance: i64 },
    /// The wallet refused the credit for good, and will refuse this id again.
    Refused { reason: String },
    /// Nobody knows: the call failed, timed out, or the wallet could not decide
    /// now (overloaded, its store unavailable). Ask again later.
    Unknown,
}

/// The only place an answer becomes a settlement: `Applied` credits, `Refused`
/// voids, `Unknown` leaves the redemption pending.
pub fn resolution(answer: CreditAnswer) -> Option<Resolution> {
    match answer {
        CreditAnswer::Applied { balance } => Some(Resolution::Credited { balance }),
        CreditAnswer::Refused { reason } => Some(Resolution::Void { reason }),
        CreditAnswer::Unknown => None,
    }
}

/// The wallet side of the protocol, as the voucher service reaches it.
pub trait CreditPort: Send + Sync + 'static {
    /// Applies `credits` (each idempotently, by id) and answers each, in order.
    /// Never fails as a whole: a failed call answers `Unknown` for each credit.
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>>;
}

/// Credits one freshly claimed (pending) redemption and settles it by the
/// wallet's answer. Answers the redemption as it now stands: still `Pending`
/// when the wallet's answer is unknown (recovery finishes it later).
pub async fn complete(
    ledger: &dyn PendingLedger,
    wallet: &dyn CreditPort,
    redemption: Redemption,
) -> Result<Redemption> {
    if redemption.status != RedemptionStatus::Pending {
        return Ok(redemption);
    }
    let answer = credit(wallet, &redemption).await;
    settle_by(ledger, redemption, answer).await
}

/// [`complete`], telling `tell` what a client may be answered as soon as it is
/// known: the redemption as credited the moment the wallet said `Applied` (the
/// credit is durable in the wallet and the claim in the voucher ledger, so the
/// win is final even if the settle that follows is lost: recovery re-sends the
/// credit, gets the same answer and settles it); otherwise the redemption as
/// settled (void only once the void is committed, since that frees the slot),
/// or still pending. Answers the settled redemption, like [`complete`].
pub async fn complete_and_tell(
    ledger: &dyn PendingLedger,
    wallet: &dyn CreditPort,
    redemption: Redemption,
    tell: tokio::sync::oneshot::Sender<Result<Redemption>>,
) -> Result<Redemption> {
    if redemption.status != RedemptionStatus::Pending {
        let _ = tell.send(Ok(redemption.clone()));
        return Ok(redemption);
    }
    let answer = credit(wallet, &redemption).await;
    if let CreditAnswer::Applied { balance } = answer {
        let credited = Redemption {
            status: RedemptionStatus::Credited,
            balance: Some(balance),
            ..redemption.clone()
        };
        let _ = tell.send(Ok(credited));
        return settle_by(ledger, redemption, answer).await;
    }
    let settled = settle_by(ledger, redemption, answer).await;
    let _ = tell.send(settled.clone());
    settled
}

/// Sends one pending redemption's credit and answers what the wallet said.
pub async fn credit(wallet: &dyn CreditPort, redemption: &Redemption) -> CreditAnswer {
    let mut answers = wallet.credit(vec![Credit::of(redemption)]).await;
    answers.pop().unwrap_or(CreditAnswer::Unknown)
}

/// Settles a pending redemption by the wallet's answer to its credit (an
/// unknown answer leaves it pending).
pub async fn settle_by(
    ledger: &dyn PendingLedger,
    redemption: Redemption,
    answer: CreditAnswer,
) -> Result<Redemption> {
    let Some(resolution) = resolution(answer) else {
        return Ok(redemption);
    };
    let target = resolution.status();
    let settled = ledger.settle(redemption.id, resolution).await?;
    // The ledger's contract: a settle answers the redemption it settled, at
    // the status it was asked for (or fails).
    assert_eq!(
        settled.id, redemption.id,
        "a settle answered another redemption"
    );
    assert_eq!(settled.status, target, "a settle answered another status");
    Ok(settled)
}

/// What one recovery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryPass {
    /// Pending redemptions older than the threshold that the pass looked at.
    pub examined: usize,
    pub credited: usize,
    pub voided: usize,
    /// Left pending: the wallet's answer was unknown, or settling failed.
    pub still_pending: usize,
    /// When the oldest examined redemption was claimed.
    pub oldest: Option<Timestamp>,
    /// The redemptions this pass voided: their slots and user keys are free in
    /// the ledger, and the voucher shards must take them back.
    pub released: Vec<Redemption>,
}

/// One recovery pass: re-sends (idempotently, in one batch) the credits of up to
/// `limit` redemptions pending since before `claimed_before`, and settles each
/// by its answer. A redemption another instance settled meanwhile settles
/// again as a no-op.
pub async fn recover_once(
    ledger: &dyn PendingLedger,
    wallet: &dyn CreditPort,
    claimed_before: Timestamp,
    limit: usize,
) -> Result<RecoveryPass> {
    let stuck = ledger.pending(claimed_before, limit).await?;
    let mut pass = RecoveryPass {
        examined: stuck.len(),
        oldest: stuck.iter().map(|r| r.redeemed_at).min(),
        ..RecoveryPass::default()
    };
    if stuck.is_empty() {
        return Ok(pass);
    }
    let credits = stuck.iter().map(Credit::of).collect();
    let answers = wallet.credit(credits).await;
    // The port's contract: one answer per credit, in order.
    assert_eq!(answers.len(), stuck.len(), "a credit port skipped credits");
    let settles = stuck
        .iter()
        .zip(answers)
        .filter_map(|(redemption, answer)| {
            resolution(answer).map(|resolution| ledger.settle(redemption.id, resolution))
        });
    for settled in futures::future::join_all(settles).await {
        match settled {
            Ok(r) if r.status == RedemptionStatus::Credited => pass.credited += 1,
            Ok(r) if r.status == RedemptionStatus::Void => {
                pass.voided += 1;
                pass.released.push(r);
            }
            Ok(_) | Err(_) => {}
        }
    }
    pass.still_pending = pass.examined - pass.credited - pass.voided;
    Ok(pass)
}

/// The answer a wallet gives for a credit whose own outcome was `result`:
/// business refusals are final, failures of the moment are `Unknown`.
pub fn answer_of(result: Result<crate::domain::WalletTransaction>) -> CreditAnswer {
    match result {
        Ok(transaction) => CreditAnswer::Applied {
            balance: transaction.balance_after,
        },
        Err(error) if is_final_refusal(&error) => CreditAnswer::Refused {
            reason: error.to_string(),
        },
        Err(_) => CreditAnswer::Unknown,
    }
}

/// Whether a wallet's refusal of a credit is for good. Transient failures
/// (overload, an unavailable or unwritten store, a storage failure whose
/// outcome is unknown) are not.
pub fn is_final_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::Invalid { .. }
            | Error::IdempotencyKeyReused
            | Error::InsufficientFunds
            | Error::CreditRefused { .. }
    )
}
