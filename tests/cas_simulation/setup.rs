//! One schedule's shape, drawn from its seed: the voucher, the crowd, the
//! instances, the store's fault rates, crashes and recovery timings. Some
//! schedules are calm, others stormy.

use std::time::Duration;

use voucherd_core::domain::PhoneNumber;
use voucherd_store::cas::memory::FaultRates;

use voucherd_test_support::sim::world::{phone, World};

/// A user of the crowd.
#[derive(Debug, Clone)]
pub struct User {
    pub phone: PhoneNumber,
    /// Holds a balance so close to i64::MAX that a voucher credit overflows:
    /// the wallet refuses it for good, the redemption is voided, its slot
    /// freed (until client debits make room).
    pub rich: bool,
    pub arrival: Duration,
    /// Redemption attempts, and the gap between them.
    pub attempts: u32,
    pub gap: Duration,
    /// In role `all`, a rich user may spend (a debit larger than the
    /// voucher's amount) this long after arriving: room appears in the
    /// wallet while the credit of its claim is being decided.
    pub spends: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Setup {
    pub limit: u32,
    pub amount: i64,
    pub users: Vec<User>,
    /// Voucher instances (in role `all`: the instances, both halves each).
    pub voucher_nodes: usize,
    /// Wallet instances (none in role `all`).
    pub wallet_nodes: usize,
    pub rates: FaultRates,
    /// Mean time between crashes of a voucher (wallet) instance, if any.
    pub voucher_crash_ms: Option<u64>,
    pub wallet_crash_ms: Option<u64>,
    pub recovery_every_ms: u64,
    /// Recovery takes claims logged this long ago (0: it races live claims).
    pub threshold_ms: u64,
    pub recovery_limit: usize,
    /// The voucher instances' conditional writes leave up to this long
    /// after they were decided (slow instances), so that claims stay in
    /// flight while recovery drives them, and writes land on partitions
    /// others changed meanwhile.
    pub slow_vouchers_ms: Option<u64>,
    /// How long a client waits for its redemption's answer.
    pub deadline_ms: u64,
    pub fault_phase: Duration,
    /// Clients' own wallet transactions, and the pool of idempotency keys
    /// they draw from (small, so keys come again, for other phones too).
    pub transactions: usize,
    pub keys: u64,
    /// The instances run role `all` (`Kind::All`: a claim carries its
    /// credit, applied in the same store, and recovery only finishes
    /// claims, crediting pending ones locally) instead of split voucher and
    /// wallet services.
    pub role_all: bool,
    /// An instance may crash right after its settle voided a redemption,
    /// before the slot's release: the crash point whose recovery races the
    /// user's next claim (a fault aimed where the protocol is delicate, not
    /// left to the timing of the crash loop).
    pub crash_after_void: bool,
    /// The recovery loops hear the answers of their serial reads of users'
    /// keys up to this long after they read (a paused process), so that a
    /// pass decides on a key others changed since: a user's next claim, say.
    pub paused_recovery_ms: Option<u64>,
}

impl Setup {
    /// This setup with contention timeouts as the store's only unknown
    /// outcomes: no other store faults, no crashes. A trace a planted bug
    /// shows here is one that contention alone produces.
    pub fn contention_only(mut self, world: &World) -> Setup {
        self.rates = contention_only(world);
        self.voucher_crash_ms = None;
        self.wallet_crash_ms = None;
        self.crash_after_void = false;
        self
    }

    pub fn draw(world: &World) -> Setup {
        let limit = world.range(1, 5) as u32;
        let crowd = u64::from(limit) + world.range(1, u64::from(limit) + 2);
        let fault_ms = world.range(300, 1_500);
        // A flash crowd arrives at once; otherwise over a third of the phase.
        let arrivals = if world.chance(500) { 30 } else { fault_ms / 3 };
        let users = (0..crowd).map(|i| user(world, i, arrivals)).collect();
        // Recovery racing live claims: right away, and with the voucher
        // instances slow, so that claims stay in flight while recovery
        // drives them too.
        let racing = world.chance(400);
        let storm = world.range(0, 3);
        let crashes =
            |world: &World| (storm > 0 && world.chance(600)).then(|| world.range(200, 1_200));
        let mut setup = Setup {
            limit,
            amount: world.range(100, 1_000) as i64,
            users,
            voucher_nodes: world.range(1, 3) as usize,
            wallet_nodes: world.range(1, 2) as usize,
            rates: rates(world, storm),
            voucher_crash_ms: crashes(world),
            wallet_crash_ms: crashes(world),
            recovery_every_ms: world.range(150, 800),
            threshold_ms: if racing || world.chance(200) {
                0
            } else {
                world.range(1, 300)
            },
            recovery_limit: world.range(1, 8) as usize,
            slow_vouchers_ms: racing.then(|| world.range(20, 200)),
            deadline_ms: world.range(20, 800),
            fault_phase: Duration::from_millis(fault_ms),
            transactions: world.range(0, 6) as usize,
            keys: world.range(1, 4),
            role_all: world.chance(400),
            crash_after_void: world.chance(300),
            paused_recovery_ms: world.chance(400).then(|| world.range(50, 500)),
        };
        if setup.role_all {
            // Two instances at least, each with its recovery loop: the
            // interleavings of one instance's claim and another's recovery
            // are what role `all` adds; the same instances serve wallets.
            setup.voucher_nodes = setup.voucher_nodes.max(2);
            setup.wallet_nodes = 0;
            // Another instance's recovery pass is what meets a claim's
            // credit here: passes come often, and often race live claims.
            setup.recovery_every_ms = world.range(20, 200);
            if world.chance(500) {
                setup.threshold_ms = 0;
            }
            // More users are rich (their credit is refused); refused, one
            // tries again soon, and may spend meanwhile, so that refusals,
            // claims again and room in the wallet meet recovery passes that
            // saw the claim pending; crashes after a void and paused passes
            // make those passes decide on old views.
            setup.crash_after_void = setup.crash_after_void || world.chance(400);
            if setup.paused_recovery_ms.is_none() && world.chance(700) {
                setup.paused_recovery_ms = Some(world.range(50, 500));
            }
            for user in setup.users.iter_mut() {
                user.rich = user.rich || world.chance(300);
            }
            for user in setup.users.iter_mut().filter(|u| u.rich) {
                if world.chance(800) {
                    user.attempts = 3;
                    user.gap = world.millis(0, 50);
                }
                user.spends = world.chance(700).then(|| world.millis(0, 300));
            }
        }
        setup
    }
}

/// The store's fault rates: none when calm (`storm` 0), up to heavy (3).
/// Contention timeouts come in calm schedules too, as a race on a healthy
/// Cassandra cluster shows them (`tests/cassandra.rs`).
fn rates(world: &World, storm: u64) -> FaultRates {
    FaultRates {
        unknown: storm * world.range(0, 60),
        read_error: storm * world.range(0, 20),
        contention: if world.chance(500) {
            world.range(100, 1_000)
        } else {
            0
        },
        max_delay: Duration::from_micros(world.range(0, 8_000)),
    }
}

/// Rates with contention timeouts as the only unknown outcomes and failed
/// reads (see `Setup::contention_only`).
fn contention_only(world: &World) -> FaultRates {
    FaultRates {
        unknown: 0,
        read_error: 0,
        contention: world.range(200, 800),
        max_delay: Duration::from_micros(world.range(1_000, 8_000)),
    }
}

fn user(world: &World, i: u64, arrivals: u64) -> User {
    User {
        phone: phone(i),
        rich: world.chance(250),
        arrival: world.millis(0, arrivals),
        attempts: if world.chance(300) { 2 } else { 1 },
        gap: world.millis(0, 600),
        spends: None,
    }
}
