//! The domain operations the HTTP handlers call, one function per use case.
//!
//! Redemption runs the fast path here: unknown voucher, inactive window, known
//! winner and exhausted voucher are answered from the in-memory [`Catalog`]
//! before any admission permit, actor round trip or ledger read. Only requests
//! that can still win go on to their voucher shard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::actors::voucher::VoucherShardMsg;
use crate::actors::wallet::WalletMsg;
use crate::actors::Directory;
use crate::rate_limit::PhoneRateLimiter;
use crate::readiness::{NotReadyReason, Readiness};
use voucherd_core::catalog::{Catalog, VoucherView};
use voucherd_core::clock::{Clock, SystemClock};
use voucherd_core::domain::{
    redemption_id, transaction_id, Page, PageRequest, PhoneNumber, Redemption, RedemptionStatus,
    ReportEntry, Timestamp, Voucher, VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use voucherd_core::error::{Error, ErrorCode, Result};
use voucherd_core::ledger::{
    Ledger, LedgerHealth, NewProfile, NewTransaction, PendingLedger, VoucherLedger, WalletLedger,
};
use voucherd_core::limits::{
    ACTOR_CALL_TIMEOUT_MS, MAX_REDEMPTIONS_IN_FLIGHT, MAX_REMEMBERED_VOIDS,
    MAX_UNKNOWN_VOUCHER_CACHE_ENTRIES, MAX_WALLET_WRITES_IN_FLIGHT, REDEEM_CREDIT_DEADLINE_MS,
    UNKNOWN_VOUCHER_CACHE_MS,
};
use voucherd_core::redemption::{self, answer_of, Credit, CreditAnswer, CreditPort};
use voucherd_metrics::{Metrics, RedemptionOutcome};

/// Marks one HTTP request in flight while it lives.
pub struct RequestGuard(Arc<AtomicUsize>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A wallet transaction request as the client sent it.
#[derive(Debug, Clone)]
pub struct TransactionRequest {
    pub phone: PhoneNumber,
    pub amount: i64,
    pub reference: String,
    pub idempotency_key: Option<String>,
}

/// A voucher's report page with its total.
#[derive(Debug, Clone)]
pub struct Report {
    pub code: VoucherCode,
    pub total: u32,
    pub page: Page<ReportEntry>,
}

/// The parts of the system an instance runs (see [`crate::role`]).
#[derive(Clone)]
pub struct Parts {
    /// The voucher half; absent in a wallet service.
    pub vouchers: Option<Arc<dyn VoucherLedger>>,
    /// The wallet half; absent in a voucher service.
    pub wallets: Option<Arc<dyn WalletLedger>>,
    /// A voucher service's way to the wallet service: claims are born pending
    /// and credited through it. Absent where a claim carries its credit.
    pub credits: Option<Arc<dyn CreditPort>>,
}

impl Parts {
    /// Both halves in one ledger (role `all`).
    pub fn all(ledger: Arc<dyn Ledger>) -> Self {
        Parts {
            vouchers: Some(ledger.clone()),
            wallets: Some(ledger),
            credits: None,
        }
    }

    /// The health of the halves this instance runs: the worst of them.
    pub fn health(&self) -> LedgerHealth {
        let vouchers = self.vouchers.as_ref().map(|l| l.health());
        let wallets = self.wallets.as_ref().map(|l| l.health());
        [vouchers, wallets]
            .into_iter()
            .flatten()
            .find(|health| *health != LedgerHealth::Healthy)
            .unwrap_or(LedgerHealth::Healthy)
    }
}

pub struct Service {
    catalog: Arc<Catalog>,
    directory: Arc<Directory>,
    parts: Parts,
    metrics: Arc<Metrics>,
    redemption_permits: Semaphore,
    wallet_permits: Semaphore,
    /// Why the instance should not get traffic, as raised by its parts.
    readiness: Arc<Readiness>,
    /// HTTP requests being handled now; shutdown waits for this to reach zero.
    requests_in_flight: Arc<AtomicUsize>,
    /// True when other instances write the same ledger: a code missing from the
    /// catalog may exist there.
    shared_ledger: bool,
    /// Codes recently found in no ledger, with when; keeps floods of unknown
    /// codes in memory when the ledger is shared.
    unknown_codes: parking_lot::Mutex<HashMap<String, Instant>>,
    /// The per-phone redemption rate, when one is configured.
    phone_rate: Option<Arc<PhoneRateLimiter>>,
    /// Where voucher windows and timestamps read the time.
    clock: Arc<dyn Clock>,
    /// Split mode: how long a redeem waits for its credit before 202.
    credit_deadline: Duration,
    /// Split mode: gives voided redemptions back to the shards.
    voids: VoidRelease,
}

impl Service {
    pub fn new(
        catalog: Arc<Catalog>,
        directory: Arc<Directory>,
        parts: Parts,
        metrics: Arc<Metrics>,
        shared_ledger: bool,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            catalog,
            voids: VoidRelease::new(directory.clone(), metrics.clone()),
            directory,
            parts,
            metrics,
            redemption_permits: Semaphore::new(MAX_REDEMPTIONS_IN_FLIGHT),
            wallet_permits: Semaphore::new(MAX_WALLET_WRITES_IN_FLIGHT),
            readiness,
            requests_in_flight: Arc::default(),
            shared_ledger,
            unknown_codes: parking_lot::Mutex::default(),
            phone_rate: None,
            clock: Arc::new(SystemClock),
            credit_deadline: Duration::from_millis(REDEEM_CREDIT_DEADLINE_MS),
        }
    }

    /// How long a redeem waits for its wallet credit before answering pending.
    pub fn with_credit_deadline(mut self, deadline: Duration) -> Self {
        self.credit_deadline = deadline;
        self
    }

    /// Reads the time from `clock` (windows, timestamps) instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The current time, as this service reads it.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Limits redemptions per phone number (429 with `Retry-After` past it).
    pub fn with_phone_rate_limit(mut self, limiter: Option<Arc<PhoneRateLimiter>>) -> Self {
        self.phone_rate = limiter;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A shared handle to the metrics (for the server loop).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_reasons().is_empty()
    }

    /// Every reason this instance should not get traffic now; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<NotReadyReason> {
        self.readiness.reasons(self.parts.health())
    }

    /// The metrics exposition, with readiness read now.
    pub fn metrics_text(&self) -> String {
        let reasons = self.not_ready_reasons();
        self.metrics.set_readiness(
            NotReadyReason::ALL
                .into_iter()
                .map(|reason| (reason.as_str(), reasons.contains(&reason))),
        );
        self.metrics.encode()
    }

    /// The reasons the instance's parts raise and clear.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Counts a request as in flight until the returned guard is dropped (also
    /// when the request's future is dropped because its client went away).
    pub fn track_request(&self) -> RequestGuard {
        self.requests_in_flight.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.requests_in_flight.clone())
    }

    pub fn requests_in_flight(&self) -> usize {
        self.requests_in_flight.load(Ordering::Acquire)
    }

    /// Marks the instance as stopping, so load balancers drain it.
    pub fn set_not_ready(&self) {
        self.readiness.raise(NotReadyReason::Draining);
    }

    pub async fn create_voucher(&self, voucher: Voucher) -> Result<VoucherStatus> {
        let status = self.vouchers()?.create_voucher(voucher).await?;
        self.unknown_codes
            .lock()
            .remove(status.voucher.code.as_str());
        let view = self.catalog.insert(VoucherView::new(status.clone(), []));
        self.metrics
            .set_remaining_slots(view.voucher.code.as_str(), view.remaining());
        Ok(status)
    }

    pub async fn voucher(&self, code: VoucherCode) -> Result<VoucherStatus> {
        self.vouchers()?
            .voucher(code)
            .await?
            .ok_or(Error::VoucherNotFound)
    }

    pub async fn redeem(&self, code: VoucherCode, phone: PhoneNumber) -> Result<Redemption> {
        let admitted = match &self.phone_rate {
            Some(limiter) => limiter.check(phone),
            None => Ok(()),
        };
        let result = match admitted {
            Ok(()) => self.try_redeem(code, phone).await,
            Err(refused) => Err(refused),
        };
        self.metrics.count_redemption(match &result {
            Ok(r) if r.status == RedemptionStatus::Pending => RedemptionOutcome::pending,
            Ok(_) => RedemptionOutcome::redeemed,
            Err(Error::CreditRefused { .. }) => RedemptionOutcome::voided,
            Err(Error::AlreadyRedeemed) => RedemptionOutcome::already_redeemed,
            Err(Error::VoucherExhausted) => RedemptionOutcome::exhausted,
            Err(Error::VoucherNotFound) => RedemptionOutcome::not_found,
            Err(Error::VoucherNotActive) => RedemptionOutcome::not_active,
            Err(Error::Overloaded) => RedemptionOutcome::overloaded,
            Err(Error::RateLimited { .. }) => RedemptionOutcome::rate_limited,
            Err(_) => RedemptionOutcome::failed,
        });
        result
    }

    async fn try_redeem(&self, code: VoucherCode, phone: PhoneNumber) -> Result<Redemption> {
        let view = match self.catalog.get(code.as_str()) {
            Some(view) => view,
            None if self.shared_ledger => self.discover(&code).await?,
            None => return Err(Error::VoucherNotFound),
        };
        if view.voucher.has_window() && !view.voucher.is_active_at(self.now()) {
            return Err(Error::VoucherNotActive);
        }
        if view.has_winner(phone) {
            return Err(Error::AlreadyRedeemed);
        }
        if view.is_exhausted() {
            return Err(Error::VoucherExhausted);
        }
        let _permit = self
            .redemption_permits
            .try_acquire()
            .map_err(|_| Error::Overloaded)?;
        let shard = self.directory.voucher_shard(code.as_str());
        let claimed = call(&shard, |reply| VoucherShardMsg::Redeem {
            code,
            phone,
            reply,
        })
        .await
        .map_err(credit_refused_in_the_claim)?;
        match &self.parts.credits {
            Some(wallet) => self.complete(claimed, wallet.clone()).await,
            None => Ok(claimed),
        }
    }

    /// Split mode: credits a fresh pending redemption in the wallet service and
    /// settles it, in a task of its own so the credit goes on when the request
    /// stops waiting at its deadline ([`REDEEM_CREDIT_DEADLINE_MS`] unless
    /// configured) and answers it pending. A void settlement, on time or late,
    /// gives the slot and the user key back to the shard from that task.
    ///
    /// When the client may be told what is [`redemption::complete_and_tell`]'s
    /// rule (the simulation runs the same function).
    async fn complete(
        &self,
        claimed: Redemption,
        wallet: Arc<dyn CreditPort>,
    ) -> Result<Redemption> {
        let ledger: Arc<dyn PendingLedger> = self.vouchers()?.clone();
        let voids = self.voids.clone();
        let (tell, told) = tokio::sync::oneshot::channel();
        let pending = claimed.clone();
        tokio::spawn(async move {
            let settled =
                redemption::complete_and_tell(ledger.as_ref(), wallet.as_ref(), pending, tell)
                    .await;
            if let Ok(redemption) = &settled {
                voids.release(redemption);
            }
        });
        match tokio::time::timeout(self.credit_deadline, told).await {
            Ok(Ok(Ok(voided))) if voided.status == RedemptionStatus::Void => {
                // Before the client hears of it (its retry must find the slot
                // and its key free); the task releases it too, once in all.
                self.voids.release(&voided);
                Err(Error::CreditRefused {
                    reason: "the wallet refused the credit".to_owned(),
                })
            }
            Ok(Ok(Ok(redemption))) => Ok(redemption),
            // Settling failed, or no answer by the deadline: the redemption is
            // pending, and the task or recovery finishes it.
            Ok(Ok(Err(_)) | Err(_)) | Err(_) => Ok(claimed),
        }
    }

    /// What takes voided redemptions back into this instance's memory; recovery
    /// uses it too.
    pub fn void_release(&self) -> VoidRelease {
        self.voids.clone()
    }

    /// The voucher half, or an error where this instance does not run it (the
    /// routes already answer `not_served_here` before reaching here).
    fn vouchers(&self) -> Result<&Arc<dyn VoucherLedger>> {
        self.parts
            .vouchers
            .as_ref()
            .ok_or_else(|| Error::unavailable("this instance does not run the voucher half"))
    }

    fn wallets(&self) -> Result<&Arc<dyn WalletLedger>> {
        self.parts
            .wallets
            .as_ref()
            .ok_or_else(|| Error::unavailable("this instance does not run the wallet half"))
    }

    /// Looks a code up in the shared ledger (another instance may have created
    /// it) and adds it to the catalog; remembers misses for a short while.
    async fn discover(&self, code: &VoucherCode) -> Result<Arc<VoucherView>> {
        let ttl = Duration::from_millis(UNKNOWN_VOUCHER_CACHE_MS);
        let recently_unknown = self
            .unknown_codes
            .lock()
            .get(code.as_str())
            .is_some_and(|at| at.elapsed() < ttl);
        if recently_unknown {
            return Err(Error::VoucherNotFound);
        }
        match self.vouchers()?.voucher(code.clone()).await? {
            Some(status) => {
                // Winners elsewhere are not loaded: the ledger refuses them, and
                // each refusal is remembered.
                let view = self.catalog.insert_if_absent(VoucherView::new(status, []));
                self.metrics
                    .set_remaining_slots(view.voucher.code.as_str(), view.remaining());
                Ok(view)
            }
            None => {
                let mut unknown = self.unknown_codes.lock();
                if unknown.len() >= MAX_UNKNOWN_VOUCHER_CACHE_ENTRIES {
                    unknown.clear();
                }
                unknown.insert(code.as_str().to_owned(), Instant::now());
                Err(Error::VoucherNotFound)
            }
        }
    }

    /// What a redeem answered `AlreadyRedeemed` tells its client: the id of the
    /// redemption the phone holds and, when known, its status. A client whose
    /// answer was lost (a killed instance, a reset connection) and who retries thus
    /// learns it won. In one process a winner is credited in the write that made it
    /// one, so this costs no read; in split mode the status is read from the ledger
    /// (pending or credited), and none is given if the read fails or finds no
    /// redemption (it was voided meanwhile).
    pub async fn held_redemption(
        &self,
        code: &VoucherCode,
        phone: PhoneNumber,
    ) -> (Uuid, Option<RedemptionStatus>) {
        let id = redemption_id(code, phone);
        if self.parts.credits.is_none() {
            return (id, Some(RedemptionStatus::Credited));
        }
        let status = match self.vouchers() {
            Ok(ledger) => match ledger.redemption(code.clone(), phone).await {
                Ok(Some(redemption)) => Some(redemption.status),
                Ok(None) => None,
                Err(error) => {
                    tracing::debug!(%code, %error, "reading the status of a held redemption failed");
                    None
                }
            },
            Err(_) => None,
        };
        (id, status)
    }

    pub async fn redemption(&self, code: VoucherCode, phone: PhoneNumber) -> Result<Redemption> {
        self.vouchers()?
            .redemption(code, phone)
            .await?
            .ok_or(Error::RedemptionNotFound)
    }

    pub async fn report(&self, code: VoucherCode, page: PageRequest) -> Result<Report> {
        let status = self.voucher(code.clone()).await?;
        let page = self.vouchers()?.report(code.clone(), page).await?;
        Ok(Report {
            code,
            total: status.redeemed,
            page,
        })
    }

    pub async fn create_profile(&self, phone: PhoneNumber, opening_balance: i64) -> Result<Wallet> {
        let _permit = self
            .wallet_permits
            .try_acquire()
            .map_err(|_| Error::Overloaded)?;
        let profile = NewProfile {
            phone,
            opening_balance,
            at: self.now(),
        };
        let wallet = self.wallet_actor(phone);
        call(&wallet, |reply| WalletMsg::CreateProfile { profile, reply }).await
    }

    pub async fn profile(
        &self,
        phone: PhoneNumber,
        page: PageRequest,
    ) -> Result<(Wallet, Page<WalletTransaction>)> {
        self.wallets()?
            .wallet(phone, page)
            .await?
            .ok_or(Error::ProfileNotFound)
    }

    pub async fn transact(&self, request: TransactionRequest) -> Result<WalletTransaction> {
        let _permit = self
            .wallet_permits
            .try_acquire()
            .map_err(|_| Error::Overloaded)?;
        let transaction = NewTransaction {
            id: transaction_id(request.idempotency_key.as_deref()),
            replayable: request.idempotency_key.is_some(),
            phone: request.phone,
            amount: request.amount,
            reference: request.reference,
            at: self.now(),
            refusal_is_final: false,
        };
        let wallet = self.wallet_actor(request.phone);
        call(&wallet, |reply| WalletMsg::Transact { transaction, reply }).await
    }

    /// The wallet service's side of the protocol: applies the voucher service's
    /// credits (each idempotent by its id, its refusal final) and answers each.
    /// All are submitted at once, so they share the ledger's group commit.
    /// Overloaded: every credit is `Unknown`, and the voucher service asks again.
    /// The answers come in the order of `credits`.
    pub async fn apply_credits(&self, credits: Vec<Credit>) -> Vec<CreditAnswer> {
        let count = u32::try_from(credits.len()).unwrap_or(u32::MAX);
        let Ok(_permits) = self.wallet_permits.try_acquire_many(count) else {
            return vec![CreditAnswer::Unknown; credits.len()];
        };
        let applied = credits.iter().map(|credit| {
            let transaction = NewTransaction {
                id: credit.id,
                replayable: true,
                phone: credit.phone,
                amount: credit.amount,
                reference: credit.reference.clone(),
                at: self.now(),
                refusal_is_final: true,
            };
            let wallet = self.wallet_actor(credit.phone);
            async move { call(&wallet, |reply| WalletMsg::Transact { transaction, reply }).await }
        });
        let results = futures::future::join_all(applied).await;
        results.into_iter().map(answer_of).collect()
    }

    fn wallet_actor(&self, phone: PhoneNumber) -> ActorRef<WalletMsg> {
        self.directory.wallet(&phone.to_string())
    }
}

/// Takes a voided redemption (the wallet refused its credit for good; the ledger
/// released its slot and user key) back into the voucher shard's memory: the
/// catalog forgets the winner and counts one redemption less, the slot goes back
/// to the pool. Once per claim, whichever path voided it (a redeem's credit, on
/// time or late, or recovery), both of which may void the same claim at once.
#[derive(Clone)]
pub struct VoidRelease {
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    /// Claims already released, by (redemption id, claimed at): a user may claim
    /// again after a void, under the same id. Cleared when full
    /// ([`MAX_REMEMBERED_VOIDS`]).
    released: Arc<parking_lot::Mutex<HashSet<(uuid::Uuid, i64)>>>,
}

impl VoidRelease {
    fn new(directory: Arc<Directory>, metrics: Arc<Metrics>) -> Self {
        Self {
            directory,
            metrics,
            released: Arc::default(),
        }
    }

    /// Releases `redemption` if it is void and was not released yet.
    pub fn release(&self, redemption: &Redemption) {
        if redemption.status != RedemptionStatus::Void {
            return;
        }
        {
            let mut released = self.released.lock();
            if released.len() >= MAX_REMEMBERED_VOIDS {
                released.clear();
            }
            if !released.insert((redemption.id, redemption.redeemed_at.0)) {
                return;
            }
        }
        self.metrics.protocol.count_voided();
        let shard = self.directory.voucher_shard(redemption.code.as_str());
        let _ = shard.cast(VoucherShardMsg::Released {
            code: redemption.code.clone(),
            phone: redemption.phone,
            slot: redemption.slot,
        });
    }
}

/// Calls an actor with the bounded wait every call has. A call that times out or
/// reaches a dead actor (one being restarted) is `Unavailable`: retry later.
async fn call<M, T>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<Result<T>>) -> M,
) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    let timeout = Some(Duration::from_millis(ACTOR_CALL_TIMEOUT_MS));
    match actor.call(build, timeout).await {
        Ok(CallResult::Success(result)) => result,
        Ok(CallResult::Timeout) => Err(Error::unavailable("actor call timed out")),
        Ok(CallResult::SenderError) => Err(Error::unavailable("actor stopped before answering")),
        Err(error) => Err(Error::unavailable(format!("actor unreachable: {error}"))),
    }
}

/// In one process (role `all`) the credit is part of the claim's write, so a
/// wallet that cannot take it (its balance would overflow: `invalid_amount`
/// from the wallet rules) refuses the claim, and nothing is written. The client
/// asked to redeem, not to move an amount: it gets what the wallet service's
/// refusal gives in split mode, 409 `credit_refused`, not a 400 about a field
/// it never sent.
fn credit_refused_in_the_claim(error: Error) -> Error {
    match error {
        Error::Invalid {
            code: ErrorCode::InvalidAmount,
            message,
        } => Error::CreditRefused { reason: message },
        other => other,
    }
}
