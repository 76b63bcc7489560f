//! The voucher service process: a request handler per redemption attempt
//! (claim, then the real `complete_and_tell`) and recovery loops (the real
//! `recover_once`). A crash aborts all of them wherever they are; the ledger
//! keeps what was written.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use uuid::Uuid;
use voucherd_core::domain::{PhoneNumber, Redemption, RedemptionStatus, Timestamp};
use voucherd_core::error::Result;
use voucherd_core::redemption::{complete_and_tell, recover_once, CreditPort};
use voucherd_test_support::sim::world::World;

use super::ledger::VoucherLedger;

/// What a client was told about one redemption attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The service was down: nothing was attempted.
    Unavailable,
    /// No answer (a crash, or the deadline came before the claim).
    Silence,
    /// Exhausted, already redeemed, or the claim failed.
    Refused,
    Credited(Uuid),
    /// Claimed; the credit is on its way (recovery finishes it).
    Pending(Uuid),
    Void(Uuid),
}

#[derive(Default)]
struct Tasks {
    up: bool,
    requests: Vec<JoinHandle<()>>,
    recovery: Vec<JoinHandle<()>>,
}

/// The voucher service process.
pub struct VoucherService {
    world: Arc<World>,
    pub ledger: VoucherLedger,
    pub port: Arc<dyn CreditPort>,
    tasks: Mutex<Tasks>,
}

impl VoucherService {
    pub fn new(world: Arc<World>, ledger: VoucherLedger, port: Arc<dyn CreditPort>) -> Self {
        let tasks = Mutex::new(Tasks::default());
        VoucherService {
            world,
            ledger,
            port,
            tasks,
        }
    }

    /// Starts (or restarts) the process and its recovery loops.
    pub fn start(&self) {
        let mut tasks = self.tasks.lock();
        tasks.up = true;
        for instance in 0..self.world.knobs.recovery_instances {
            let (world, ledger) = (self.world.clone(), self.ledger.clone());
            let looping = recovery_loop(world, ledger, self.port.clone(), instance);
            tasks.recovery.push(tokio::spawn(looping));
        }
        self.world.event("voucher.start", 0, 0);
    }

    /// Kills the process: every handler and recovery loop stops where it is.
    pub fn crash(&self) {
        let mut tasks = self.tasks.lock();
        tasks.up = false;
        tasks.requests.iter().for_each(JoinHandle::abort);
        tasks.recovery.drain(..).for_each(|task| task.abort());
        self.world.event("voucher.crash", 0, 0);
    }

    pub fn stop_recovery(&self) {
        self.tasks.lock().recovery.drain(..).for_each(|t| t.abort());
    }

    /// No request handler is running.
    pub fn idle(&self) -> bool {
        self.tasks
            .lock()
            .requests
            .iter()
            .all(JoinHandle::is_finished)
    }

    /// Waits for every handler; `Err` with its message if one panicked.
    pub async fn join_handlers(&self) -> std::result::Result<(), String> {
        let handlers = std::mem::take(&mut self.tasks.lock().requests);
        for handler in handlers {
            match handler.await {
                Err(e) if e.is_panic() => return Err(format!("{e:?}")),
                _ => {}
            }
        }
        Ok(())
    }

    /// A client's redemption attempt, answered by `deadline` at the latest.
    pub async fn redeem(&self, phone: PhoneNumber, deadline: Duration) -> Answer {
        let until = Instant::now() + deadline;
        let (claimed, claim_answer) = oneshot::channel();
        let (done, done_answer) = oneshot::channel();
        let handler = handle(self.ledger.clone(), self.port.clone(), phone, claimed, done);
        {
            let mut tasks = self.tasks.lock();
            if !tasks.up {
                return Answer::Unavailable;
            }
            tasks.requests.push(tokio::spawn(handler));
        }
        let id = match timeout_at(until, claim_answer).await {
            Ok(Ok(Ok(redemption))) => redemption.id,
            Ok(Ok(Err(_))) => return Answer::Refused,
            Ok(Err(_)) | Err(_) => return Answer::Silence,
        };
        match timeout_at(until, done_answer).await {
            Ok(Ok(Ok(redemption))) => match redemption.status {
                RedemptionStatus::Credited => Answer::Credited(id),
                RedemptionStatus::Pending => Answer::Pending(id),
                RedemptionStatus::Void => Answer::Void(id),
            },
            // The claim stands: the service answers pending.
            Ok(Ok(Err(_))) | Err(_) => Answer::Pending(id),
            Ok(Err(_)) => Answer::Silence,
        }
    }
}

/// Where a handler sends an answer back to the waiting client.
type Reply = oneshot::Sender<Result<Redemption>>;

/// A request handler: claim, then complete the redemption with the real driver
/// (`complete_and_tell`, which the voucher service runs), telling the client
/// what it says as soon as it says it.
async fn handle(
    ledger: VoucherLedger,
    port: Arc<dyn CreditPort>,
    phone: PhoneNumber,
    claimed: Reply,
    done: Reply,
) {
    let redemption = match ledger.claim(phone).await {
        Ok(redemption) => redemption,
        Err(error) => {
            let _ = claimed.send(Err(error));
            return;
        }
    };
    let _ = claimed.send(Ok(redemption.clone()));
    // The service's own rule for when a client may be told what.
    let _ = complete_and_tell(&ledger, port.as_ref(), redemption, done).await;
}

/// One instance's recovery loop, running the real `recover_once` forever.
async fn recovery_loop(
    world: Arc<World>,
    ledger: VoucherLedger,
    port: Arc<dyn CreditPort>,
    instance: u64,
) {
    let every = world.knobs.recovery_every_ms;
    loop {
        world.pause(every / 2, every * 3 / 2).await;
        recovery_pass(&world, &ledger, port.as_ref(), instance).await;
    }
}

/// One pass of the real `recover_once` with the schedule's threshold and limit.
pub async fn recovery_pass(
    world: &World,
    ledger: &VoucherLedger,
    port: &dyn CreditPort,
    instance: u64,
) {
    let threshold = world.knobs.threshold_ms as i64 * 1_000;
    let claimed_before = Timestamp(world.now().0 - threshold);
    let limit = world.knobs.recovery_limit;
    match recover_once(ledger, port, claimed_before, limit).await {
        Ok(pass) => {
            let settled = (pass.credited + pass.voided) as i64;
            world.event("recovery.pass", instance, settled);
        }
        Err(_) => world.event("recovery.failed", instance, 0),
    }
}
