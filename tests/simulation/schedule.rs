//! One schedule: a voucher, a crowd, wallets, faults, then heal and check.

use std::sync::Arc;
use std::time::Duration;

use voucherd_core::domain::{PhoneNumber, VoucherCode};
use voucherd_test_support::sim::world::{phone, user, World};

use super::check::{check, violation, Violation};
use super::ledger::{LedgerState, VoucherLedger};
use super::network::SimPort;
use super::service::{recovery_pass, Answer, VoucherService};
use super::wallet::WalletLedger;
use super::Planted;

/// Recovery passes of the heal phase before "nothing converges" is a violation.
const HEAL_PASSES: usize = 40;
/// 100 ms waits for the network to go quiet after the heal.
const QUIET_WAITS: usize = 1_000;

#[derive(Clone)]
struct User {
    phone: PhoneNumber,
    /// Holds a balance so close to i64::MAX that a voucher credit overflows:
    /// the wallet refuses it for good (until client debits make room).
    rich: bool,
    arrival: Duration,
    /// A second attempt this long after the first answer.
    retry: Option<Duration>,
}

struct Setup {
    limit: u32,
    amount: i64,
    users: Vec<User>,
    fault_phase: Duration,
    /// Clients' own transactions go on this long, past the fault phase.
    traffic_phase: Duration,
}

impl Setup {
    fn draw(world: &World) -> Setup {
        let limit = world.range(1, 8) as u32;
        let crowd = u64::from(limit) + world.range(1, u64::from(limit) + 4);
        let fault_ms = world.range(1_000, 5_000);
        let users = (0..crowd)
            .map(|i| User {
                phone: phone(i),
                rich: world.chance(300),
                arrival: world.millis(0, fault_ms * 3 / 5),
                retry: world.chance(300).then(|| world.millis(50, 2_000)),
            })
            .collect();
        Setup {
            limit,
            amount: world.range(100, 1_000) as i64,
            users,
            fault_phase: Duration::from_millis(fault_ms),
            traffic_phase: Duration::from_millis(fault_ms + world.range(0, 4_000)),
        }
    }

    fn open_wallets(&self, world: &World, wallet: &WalletLedger) {
        for u in &self.users {
            if u.rich {
                let room = world.range(0, self.amount as u64 - 1) as i64;
                wallet.open(u.phone, i64::MAX - room);
            } else if world.chance(600) {
                wallet.open(u.phone, world.range(0, 1_000) as i64);
            }
        }
    }
}

/// Runs one schedule to its verdict (the trace is read from the world).
pub async fn run(world: Arc<World>, planted: Planted) -> Result<(), Violation> {
    let setup = Setup::draw(&world);
    let (wallet, service) = build(&world, &setup, planted);
    let answers = crowd_under_faults(&world, &setup, &wallet, &service).await;
    settle_everything(&world, &service).await?;
    quiesce(&world).await?;
    let panicked = service.join_handlers().await;
    panicked.map_err(|e| violation("panic", e))?;
    let ledger = service.ledger.state();
    fingerprint_final_state(&world, &ledger, &wallet);
    let verdict = check(&ledger, &wallet.state(), &answers);
    verdict
}

/// The wallet with its opening balances, and the voucher service over the
/// network (wrapped in the planted bug, if any), started.
fn build(
    world: &Arc<World>,
    setup: &Setup,
    planted: Planted,
) -> (WalletLedger, Arc<VoucherService>) {
    let wallet = WalletLedger::new(world.clone(), planted != Planted::NoRefusalTombstone);
    setup.open_wallets(world, &wallet);
    let code = VoucherCode::parse("SIM-FLASH").expect("valid code");
    let ledger = VoucherLedger::new(world.clone(), code, setup.amount, setup.limit);
    let port = planted.port(world, SimPort::new(world.clone(), wallet.clone()));
    let service = Arc::new(VoucherService::new(world.clone(), ledger, port));
    service.start();
    (wallet, service)
}

/// The fault phase: the crowd redeems while crashes and client traffic go on;
/// then faults stop (client traffic may go on a while). Answers every client got.
async fn crowd_under_faults(
    world: &Arc<World>,
    setup: &Setup,
    wallet: &WalletLedger,
    service: &Arc<VoucherService>,
) -> Vec<Answer> {
    let background = [
        tokio::spawn(crash_voucher(world.clone(), service.clone())),
        tokio::spawn(crash_wallet(world.clone(), wallet.clone())),
        tokio::spawn(traffic(world.clone(), wallet.clone(), setup)),
    ];
    let clients: Vec<_> = (setup.users.iter())
        .map(|u| tokio::spawn(client(world.clone(), service.clone(), u.clone())))
        .collect();
    tokio::time::sleep(setup.fault_phase).await;
    world.heal();
    for task in background {
        task.await.expect("background task");
    }
    let mut answers = Vec::new();
    for task in clients {
        answers.extend(task.await.expect("client task"));
    }
    answers
}

/// Crashes and restarts the voucher service now and then while faults last.
async fn crash_voucher(world: Arc<World>, service: Arc<VoucherService>) {
    let Some(mean) = world.knobs.voucher_crash_ms else {
        return;
    };
    while world.faulty() {
        world.pause(mean / 2, mean * 3 / 2).await;
        if world.faulty() {
            service.crash();
            world.pause(10, 500).await;
            service.start();
        }
    }
}

/// Crashes and restarts the wallet service now and then while faults last.
async fn crash_wallet(world: Arc<World>, wallet: WalletLedger) {
    let Some(mean) = world.knobs.wallet_crash_ms else {
        return;
    };
    while world.faulty() {
        world.pause(mean / 2, mean * 3 / 2).await;
        if world.faulty() {
            wallet.crash();
            world.pause(10, 800).await;
            wallet.restart();
        }
    }
}

/// Clients' own debits and credits, in and after the fault phase (they are no
/// fault: only the heal passes wait for them). Half of them move rich wallets
/// up and down near i64::MAX, so a voucher credit the wallet refused may fit
/// later (yet must stay refused).
fn traffic(
    world: Arc<World>,
    wallet: WalletLedger,
    setup: &Setup,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let everyone: Vec<PhoneNumber> = setup.users.iter().map(|u| u.phone).collect();
    let rich: Vec<PhoneNumber> = setup
        .users
        .iter()
        .filter(|u| u.rich)
        .map(|u| u.phone)
        .collect();
    let amount = setup.amount as u64;
    let pick = |world: &World, phones: &[PhoneNumber]| {
        phones[world.range(0, phones.len() as u64 - 1) as usize]
    };
    let end = tokio::time::Instant::now() + setup.traffic_phase;
    async move {
        while tokio::time::Instant::now() < end {
            world.pause(20, 400).await;
            let (phone, delta) = if !rich.is_empty() && world.chance(500) {
                let step = world.range(1, 2 * amount) as i64;
                (
                    pick(&world, &rich),
                    if world.chance(500) { step } else { -step },
                )
            } else {
                (pick(&world, &everyone), world.range(0, 999) as i64 - 600)
            };
            let _ = wallet.transact(phone, if delta == 0 { 1 } else { delta });
        }
    }
}

/// One user of the crowd: an attempt, and maybe a second one later.
async fn client(world: Arc<World>, service: Arc<VoucherService>, crowd: User) -> Vec<Answer> {
    let deadline = Duration::from_millis(world.knobs.deadline_ms);
    tokio::time::sleep(crowd.arrival).await;
    let mut answers = Vec::new();
    for gap in [Some(Duration::ZERO), crowd.retry].into_iter().flatten() {
        tokio::time::sleep(gap).await;
        let answer = service.redeem(crowd.phone, deadline).await;
        world.event(answer_kind(&answer), user(crowd.phone), 0);
        answers.push(answer);
    }
    answers
}

fn answer_kind(answer: &Answer) -> &'static str {
    match answer {
        Answer::Unavailable => "client.unavailable",
        Answer::Silence => "client.silence",
        Answer::Refused => "client.refused",
        Answer::Credited(_) => "client.credited",
        Answer::Pending(_) => "client.pending",
        Answer::Void(_) => "client.void",
    }
}

/// Heal: background recovery stops, and the driver runs recovery passes until
/// no handler runs and nothing is pending.
async fn settle_everything(world: &World, service: &VoucherService) -> Result<(), Violation> {
    service.stop_recovery();
    let k = &world.knobs;
    let every = Duration::from_millis(k.threshold_ms.max(k.recovery_every_ms) + 1);
    for _ in 0..HEAL_PASSES {
        if service.idle() && service.ledger.state().pending_count() == 0 {
            return Ok(());
        }
        tokio::time::sleep(every).await;
        recovery_pass(world, &service.ledger, service.port.as_ref(), 99).await;
    }
    let pending = service.ledger.state().pending_count();
    let detail = format!("{pending} redemptions pending after {HEAL_PASSES} heal passes");
    Err(violation("liveness", detail))
}

/// Waits until no delivery (echoes included) is still travelling.
async fn quiesce(world: &World) -> Result<(), Violation> {
    for _ in 0..QUIET_WAITS {
        if world.travelling() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detail = format!("{} deliveries still travelling", world.travelling());
    Err(violation("liveness", detail))
}

/// Folds the final ledger and wallet state into the trace's fingerprint.
fn fingerprint_final_state(world: &World, ledger: &LedgerState, wallet: &WalletLedger) {
    for r in &ledger.history {
        world.event(
            "final.redemption",
            user(r.phone),
            i64::from(r.status.stored()),
        );
    }
    for (phone, account) in &wallet.state().accounts {
        world.event("final.balance", user(*phone), account.balance);
    }
}
