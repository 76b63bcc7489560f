//! The domain operations the HTTP handlers call, one function per use case.
//!
//! Redemption runs the fast path here: unknown voucher, inactive window, known
//! winner and exhausted voucher are answered from the in-memory [`Catalog`]
//! before any admission permit, actor round trip or ledger read. Only requests
//! that can still win go on to their voucher shard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use crate::actors::voucher::VoucherShardMsg;
use crate::actors::wallet::WalletMsg;
use crate::actors::Directory;
use crate::catalog::{Catalog, VoucherView};
use crate::clock::{Clock, SystemClock};
use crate::domain::{
    transaction_id, Page, PageRequest, PhoneNumber, Redemption, ReportEntry, Timestamp, Voucher,
    VoucherCode, VoucherStatus, Wallet, WalletTransaction,
};
use crate::error::{Error, Result};
use crate::limits::{
    ACTOR_CALL_TIMEOUT_MS, MAX_REDEMPTIONS_IN_FLIGHT, MAX_UNKNOWN_VOUCHER_CACHE_ENTRIES,
    MAX_WALLET_WRITES_IN_FLIGHT, UNKNOWN_VOUCHER_CACHE_MS,
};
use crate::metrics::{Metrics, RedemptionOutcome};
use crate::rate_limit::PhoneRateLimiter;
use crate::readiness::{NotReadyReason, Readiness};
use crate::store::{Ledger, NewProfile, NewTransaction};

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

pub struct Service {
    catalog: Arc<Catalog>,
    directory: Arc<Directory>,
    ledger: Arc<dyn Ledger>,
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
}

impl Service {
    pub fn new(
        catalog: Arc<Catalog>,
        directory: Arc<Directory>,
        ledger: Arc<dyn Ledger>,
        metrics: Arc<Metrics>,
        shared_ledger: bool,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            catalog,
            directory,
            ledger,
            metrics,
            redemption_permits: Semaphore::new(MAX_REDEMPTIONS_IN_FLIGHT),
            wallet_permits: Semaphore::new(MAX_WALLET_WRITES_IN_FLIGHT),
            readiness,
            requests_in_flight: Arc::default(),
            shared_ledger,
            unknown_codes: parking_lot::Mutex::default(),
            phone_rate: None,
            clock: Arc::new(SystemClock),
        }
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
        self.readiness.reasons(self.ledger.health())
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
        self.readiness.raise(NotReadyReason::ShuttingDown);
    }

    pub async fn create_voucher(&self, voucher: Voucher) -> Result<VoucherStatus> {
        let status = self.ledger.create_voucher(voucher).await?;
        self.unknown_codes
            .lock()
            .remove(status.voucher.code.as_str());
        let view = self.catalog.insert(VoucherView::new(status.clone(), []));
        self.metrics
            .set_remaining_slots(view.voucher.code.as_str(), view.remaining());
        Ok(status)
    }

    pub async fn voucher(&self, code: VoucherCode) -> Result<VoucherStatus> {
        self.ledger
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
            Ok(_) => RedemptionOutcome::redeemed,
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
        call(&shard, |reply| VoucherShardMsg::Redeem {
            code,
            phone,
            reply,
        })
        .await
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
        match self.ledger.voucher(code.clone()).await? {
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

    pub async fn redemption(&self, code: VoucherCode, phone: PhoneNumber) -> Result<Redemption> {
        self.ledger
            .redemption(code, phone)
            .await?
            .ok_or(Error::RedemptionNotFound)
    }

    pub async fn report(&self, code: VoucherCode, page: PageRequest) -> Result<Report> {
        let status = self.voucher(code.clone()).await?;
        let page = self.ledger.report(code.clone(), page).await?;
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
        self.ledger
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

    fn wallet_actor(&self, phone: PhoneNumber) -> ActorRef<WalletMsg> {
        self.directory.wallet(&phone.to_string())
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
