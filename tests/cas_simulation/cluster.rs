//! The instances of a schedule over one faulty store: voucher services
//! (voucher half, a recovery loop each: the real `recover_claims` and
//! `recover_once`) and wallet services (wallet half), or instances of role
//! `all` (both halves, a recovery loop each of `recover_claims` only, as the
//! app runs it without a wallet client), each a `CasLedger` that a crash
//! halts where it stands (every write in flight stops between two store
//! operations, before or after one applies) and a restart opens anew. The
//! voucher services reach the wallets through [`SimPort`], the real
//! `answer_of` over a wallet instance's `transact`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{join_all, BoxFuture, FutureExt};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use uuid::Uuid;
use voucherd_core::domain::{Timestamp, VoucherCode};
use voucherd_core::ledger::{
    AllInOne, ClaimsRecovered, LedgerFuture, NewTransaction, VoucherHalf, VoucherLedger,
    WalletHalf, WalletLedger,
};
use voucherd_core::redemption::{answer_of, recover_once, Credit, CreditAnswer, CreditPort};
use voucherd_store::cas::memory::{Fate, Faults, MemoryStore, Op, Plan, SeededFaults};
use voucherd_store::cas::{CasLedger, CasOptions, Nonces, PlantedBug};
use voucherd_test_support::sim::world::World;

use super::planted::{DiesAfterVoid, SimStore};
use super::setup::Setup;
use super::Planted;

/// What an instance runs: role `all`, a voucher service or a wallet service.
/// The ledger it opens is typed by it ([`SimLedger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    All,
    Voucher,
    Wallet,
}

/// An instance's ledger, holding the half its kind runs.
pub enum SimLedger {
    All(CasLedger<SimStore, AllInOne>),
    Voucher(CasLedger<SimStore, VoucherHalf>),
    Wallet(CasLedger<SimStore, WalletHalf>),
}

impl SimLedger {
    fn open(kind: Kind, store: SimStore, options: CasOptions, nonces: Arc<dyn Nonces>) -> Self {
        match kind {
            Kind::All => SimLedger::All(CasLedger::open_with(store, options, nonces)),
            Kind::Voucher => SimLedger::Voucher(CasLedger::open_with(store, options, nonces)),
            Kind::Wallet => SimLedger::Wallet(CasLedger::open_with(store, options, nonces)),
        }
    }

    /// Stops every write in flight where it stands (a crash).
    pub fn halt(&self) {
        match self {
            SimLedger::All(ledger) => ledger.halt(),
            SimLedger::Voucher(ledger) => ledger.halt(),
            SimLedger::Wallet(ledger) => ledger.halt(),
        }
    }

    /// The voucher half; a wallet instance has none (a bug of the schedule).
    pub fn vouchers(&self) -> &dyn VoucherLedger {
        match self {
            SimLedger::All(ledger) => ledger,
            SimLedger::Voucher(ledger) => ledger,
            SimLedger::Wallet(_) => panic!("a wallet instance holds no voucher half"),
        }
    }

    /// The wallet half; a voucher instance has none (a bug of the schedule).
    pub fn wallets(&self) -> &dyn WalletLedger {
        match self {
            SimLedger::All(ledger) => ledger,
            SimLedger::Wallet(ledger) => ledger,
            SimLedger::Voucher(_) => panic!("a voucher instance holds no wallet half"),
        }
    }

    /// See `CasLedger::recover_claims`; only where the voucher half is.
    pub fn recover_claims(
        &self,
        claimed_before: Timestamp,
        limit: usize,
    ) -> LedgerFuture<ClaimsRecovered> {
        match self {
            SimLedger::All(ledger) => ledger.recover_claims(claimed_before, limit),
            SimLedger::Voucher(ledger) => ledger.recover_claims(claimed_before, limit),
            SimLedger::Wallet(_) => panic!("a wallet instance recovers no claims"),
        }
    }
}

/// Few partitions, so that a small voucher still spans several buckets and
/// listings merge several log shards.
pub const OPTIONS: CasOptions = CasOptions {
    max_buckets: 3,
    log_shards: 2,
    max_steps: 32,
    planted: PlantedBug::None,
};

/// Attempt nonces from the schedule's seed.
struct SeededNonces(Arc<World>);

impl Nonces for SeededNonces {
    fn next(&self) -> Uuid {
        let high = self.0.range(0, u64::MAX - 1);
        let low = self.0.range(0, u64::MAX - 1);
        Uuid::from_u64_pair(high, low)
    }
}

/// The seeded injector, whose unknown fates feed the trace.
pub struct SimFaults {
    world: Arc<World>,
    pub seeded: SeededFaults,
}

impl Faults for SimFaults {
    fn plan(&self, op: Op) -> Plan {
        let plan = self.seeded.plan(op);
        let kind = match (op, plan.fate) {
            (_, Fate::Normal) => return plan,
            (Op::Cas(_), Fate::Unanswered) => "store.cas_applied_unknown",
            (Op::Cas(_), Fate::Lost) => "store.cas_lost",
            (Op::Cas(_), Fate::Undecided { .. }) => "store.cas_undecided",
            (Op::Write(_), _) => "store.write_failed",
            _ => "store.read_failed",
        };
        self.world.event(kind, 0, 0);
        plan
    }

    fn contended(&self, op: Op) -> Fate {
        let fate = self.seeded.contended(op);
        match (op, fate) {
            (_, Fate::Normal) => {}
            (Op::Cas(_), _) => self.world.event("store.cas_contended", 0, 0),
            _ => self.world.event("store.serial_read_contended", 0, 0),
        }
        fate
    }
}

struct NodeState {
    up: bool,
    ledger: Arc<SimLedger>,
    /// The ledger the recovery loop runs on (its own store handle, so that a
    /// planted recovery bug stays in recovery).
    recovery: Arc<SimLedger>,
    tasks: Vec<JoinHandle<()>>,
    recovery_loop: Option<JoinHandle<()>>,
}

/// One service instance.
pub struct Node {
    pub kind: Kind,
    /// Its number among the instances of its kind.
    index: usize,
    state: Mutex<NodeState>,
}

pub struct Cluster {
    pub world: Arc<World>,
    pub setup: Setup,
    pub code: VoucherCode,
    pub store: MemoryStore,
    pub faults: Arc<SimFaults>,
    planted: Planted,
    pub vouchers: Vec<Node>,
    pub wallets: Vec<Node>,
    /// Voucher instances whose store asked to crash them (see
    /// `Setup::crash_after_void`).
    crash_requests: Arc<Mutex<Vec<usize>>>,
}

impl Cluster {
    pub fn new(world: Arc<World>, setup: Setup, planted: Planted) -> Arc<Cluster> {
        let seeded = SeededFaults::new(world.range(0, u64::MAX - 1), setup.rates);
        let faults = Arc::new(SimFaults {
            world: world.clone(),
            seeded,
        });
        let mut cluster = Cluster {
            code: VoucherCode::parse("CAS-FLASH").expect("a valid code"),
            store: MemoryStore::with_faults(faults.clone()),
            faults,
            planted,
            vouchers: Vec::new(),
            wallets: Vec::new(),
            crash_requests: Arc::default(),
            setup,
            world,
        };
        let claims = cluster.claims_kind();
        cluster.vouchers = (0..cluster.setup.voucher_nodes)
            .map(|i| cluster.node(claims, i))
            .collect();
        cluster.wallets = (0..cluster.setup.wallet_nodes)
            .map(|i| cluster.node(Kind::Wallet, i))
            .collect();
        Arc::new(cluster)
    }

    /// A ledger over the faulty store (or over the same data without faults).
    pub fn open(&self, kind: Kind, recovery: bool, faulty: bool) -> Arc<SimLedger> {
        self.open_instance(kind, recovery, faulty, None)
    }

    /// [`Self::open`] for voucher instance `instance`, if it is one.
    fn open_instance(
        &self,
        kind: Kind,
        recovery: bool,
        faulty: bool,
        instance: Option<usize>,
    ) -> Arc<SimLedger> {
        let inner = if faulty {
            self.store.clone()
        } else {
            self.store.without_faults()
        };
        let slow = self
            .setup
            .slow_vouchers_ms
            .filter(|_| kind != Kind::Wallet && faulty);
        let store = SimStore {
            inner,
            bug: self.planted,
            kind,
            recovery,
            slow: slow.map(|ms| (self.world.clone(), ms)),
            paused: (self.setup.paused_recovery_ms)
                .filter(|_| recovery && faulty)
                .map(|ms| (self.world.clone(), ms)),
            dies_after_void: instance
                .filter(|_| self.setup.crash_after_void && faulty && kind != Kind::Wallet)
                .map(|instance| DiesAfterVoid {
                    world: self.world.clone(),
                    instance,
                    requests: self.crash_requests.clone(),
                }),
        };
        let nonces = Arc::new(SeededNonces(self.world.clone()));
        let options = CasOptions {
            planted: match self.planted {
                Planted::SettleAnyAttempt => PlantedBug::SettleAnyAttempt,
                Planted::StaticsFromRowRead => PlantedBug::StaticsFromRowRead,
                _ => PlantedBug::None,
            },
            ..OPTIONS
        };
        Arc::new(SimLedger::open(kind, store, options, nonces))
    }

    fn node(&self, kind: Kind, index: usize) -> Node {
        let state = NodeState {
            up: true,
            ledger: self.open_instance(kind, false, true, Some(index)),
            recovery: self.open_instance(kind, true, true, Some(index)),
            tasks: Vec::new(),
            recovery_loop: None,
        };
        Node {
            kind,
            index,
            state: Mutex::new(state),
        }
    }

    /// Crashes the voucher instances whose store asked for it; answers them.
    fn crash_requested(&self) -> Vec<usize> {
        let requested = std::mem::take(&mut *self.crash_requests.lock());
        for &instance in &requested {
            self.vouchers[instance].crash();
        }
        requested
    }

    pub fn pick<'a>(&self, nodes: &'a [Node]) -> &'a Node {
        &nodes[self.world.range(0, nodes.len() as u64 - 1) as usize]
    }

    /// The instances serving wallets: the wallet services, or in role `all`
    /// every instance.
    pub fn wallet_nodes(&self) -> &[Node] {
        if self.setup.role_all {
            &self.vouchers
        } else {
            &self.wallets
        }
    }

    /// What the instances serving redemptions run.
    pub fn claims_kind(&self) -> Kind {
        if self.setup.role_all {
            Kind::All
        } else {
            Kind::Voucher
        }
    }

    pub fn port(self: &Arc<Self>) -> SimPort {
        SimPort {
            cluster: self.clone(),
        }
    }

    /// Starts every voucher instance's recovery loop.
    pub fn start(self: &Arc<Self>) {
        for (i, node) in self.vouchers.iter().enumerate() {
            node.start_recovery(self, i as u64);
        }
    }

    /// Faults stop: the store answers, nobody crashes, every instance is up,
    /// and the recovery loops stop (the driver runs the last passes).
    pub fn heal(self: &Arc<Self>) {
        self.faults.seeded.heal();
        self.world.heal();
        // Their writes wait forever: crash them before the restarts.
        self.crash_requested();
        for node in self.vouchers.iter().chain(&self.wallets) {
            node.restart(self);
            node.stop_recovery();
        }
    }

    /// Waits for every task an instance runs (the request handlers).
    pub async fn join(&self) {
        for node in self.vouchers.iter().chain(&self.wallets) {
            let tasks = std::mem::take(&mut node.state.lock().tasks);
            join_all(tasks).await;
        }
    }
}

impl Node {
    /// The instance's ledger, if it is up.
    pub fn ledger(&self) -> Option<Arc<SimLedger>> {
        let state = self.state.lock();
        state.up.then(|| state.ledger.clone())
    }

    pub fn recovery_ledger(&self) -> Arc<SimLedger> {
        self.state.lock().recovery.clone()
    }

    /// Runs `work` as a task of the instance (a crash aborts it); false if
    /// the instance is down.
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
        let mut state = self.state.lock();
        if state.up {
            state.tasks.retain(|t| !t.is_finished());
            state.tasks.push(tokio::spawn(work));
        }
        state.up
    }

    /// Kills the instance: every write and task stops where it stands.
    pub fn crash(&self) {
        let mut state = self.state.lock();
        state.up = false;
        state.ledger.halt();
        state.recovery.halt();
        state.tasks.drain(..).for_each(|t| t.abort());
        if let Some(task) = state.recovery_loop.take() {
            task.abort();
        }
    }

    /// Starts a crashed instance again, with fresh ledgers.
    pub fn restart(&self, cluster: &Arc<Cluster>) {
        {
            let mut state = self.state.lock();
            if state.up {
                return;
            }
            state.up = true;
            state.ledger = cluster.open_instance(self.kind, false, true, Some(self.index));
            state.recovery = cluster.open_instance(self.kind, true, true, Some(self.index));
        }
        if self.kind != Kind::Wallet {
            self.start_recovery(cluster, 9);
        }
    }

    fn start_recovery(&self, cluster: &Arc<Cluster>, instance: u64) {
        let ledger = self.recovery_ledger();
        let task = tokio::spawn(recovery_loop(cluster.clone(), ledger, instance));
        self.state.lock().recovery_loop = Some(task);
    }

    fn stop_recovery(&self) {
        if let Some(task) = self.state.lock().recovery_loop.take() {
            task.abort();
        }
    }
}

async fn recovery_loop(cluster: Arc<Cluster>, ledger: Arc<SimLedger>, instance: u64) {
    let every = cluster.setup.recovery_every_ms;
    loop {
        cluster.world.pause(every / 2, every * 3 / 2).await;
        let threshold = cluster.setup.threshold_ms as i64 * 1_000;
        let before = Timestamp(cluster.world.now().0 - threshold);
        recovery_pass(
            &cluster,
            &ledger,
            before,
            cluster.setup.recovery_limit,
            instance,
        )
        .await;
    }
}

/// One pass of the voucher service's recovery: interrupted claims first,
/// then the credits of pending redemptions (the real drivers). In role `all`
/// only the first, as the app's recovery runs without a wallet client
/// (`recover_claims` credits pending redemptions locally).
pub async fn recovery_pass(
    cluster: &Arc<Cluster>,
    ledger: &SimLedger,
    before: Timestamp,
    limit: usize,
    instance: u64,
) {
    let world = &cluster.world;
    match ledger.recover_claims(before, limit).await {
        Ok(pass) => {
            for (kind, n) in [
                ("recovery.finished", pass.finished),
                ("recovery.abandoned", pass.abandoned),
                ("recovery.released", pass.released),
                ("recovery.cleaned", pass.cleaned),
            ] {
                if n > 0 {
                    world.event(kind, instance, n as i64);
                }
            }
        }
        Err(_) => world.event("recovery.claims_failed", instance, 0),
    }
    if cluster.setup.role_all {
        return;
    }
    match recover_once(ledger.vouchers(), &cluster.port(), before, limit).await {
        Ok(pass) => world.event(
            "recovery.pass",
            instance,
            (pass.credited + pass.voided) as i64,
        ),
        Err(_) => world.event("recovery.failed", instance, 0),
    }
}

/// The wallet service as the voucher service reaches it: one wallet instance
/// per call, every credit applied with the real rules and answered with the
/// real `answer_of`. A down instance, or a write it could not finish, is
/// `Unknown`.
pub struct SimPort {
    cluster: Arc<Cluster>,
}

impl CreditPort for SimPort {
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>> {
        let cluster = self.cluster.clone();
        async move {
            let node = cluster.pick(&cluster.wallets);
            let Some(ledger) = node.ledger() else {
                cluster.world.event("port.wallet_down", 0, 0);
                return credits.iter().map(|_| CreditAnswer::Unknown).collect();
            };
            let applied = credits.iter().map(|credit| {
                ledger.wallets().transact(NewTransaction {
                    id: credit.id,
                    replayable: true,
                    phone: credit.phone,
                    amount: credit.amount,
                    reference: credit.reference.clone(),
                    at: cluster.world.now(),
                    refusal_is_final: true,
                })
            });
            let answers: Vec<CreditAnswer> =
                join_all(applied).await.into_iter().map(answer_of).collect();
            for answer in &answers {
                let kind = match answer {
                    CreditAnswer::Applied { .. } => "port.applied",
                    CreditAnswer::Refused { .. } => "port.refused",
                    CreditAnswer::Unknown => "port.unknown",
                };
                cluster.world.event(kind, 0, 0);
            }
            answers
        }
        .boxed()
    }
}

/// Crashes the voucher instances whose store asked for it, right away, and
/// restarts each a little later, while faults last.
pub async fn crashes_after_void(cluster: Arc<Cluster>) {
    if !cluster.setup.crash_after_void {
        return;
    }
    let world = cluster.world.clone();
    while world.faulty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        for instance in cluster.crash_requested() {
            world.event("voucher.crash_after_void", instance as u64, 0);
            let (cluster, pause) = (cluster.clone(), world.millis(10, 300));
            tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                cluster.vouchers[instance].restart(&cluster);
            });
        }
    }
}

/// Crashes and restarts instances of `nodes` now and then while faults last.
pub async fn crashes(cluster: Arc<Cluster>, wallets: bool, mean: Option<u64>) {
    let Some(mean) = mean else {
        return;
    };
    let world = cluster.world.clone();
    while world.faulty() {
        world.pause(mean / 2, mean * 3 / 2).await;
        if !world.faulty() {
            break;
        }
        let nodes = if wallets {
            &cluster.wallets
        } else {
            &cluster.vouchers
        };
        if nodes.is_empty() {
            return;
        }
        let node = cluster.pick(nodes);
        node.crash();
        world.event(
            if wallets {
                "wallet.crash"
            } else {
                "voucher.crash"
            },
            0,
            0,
        );
        tokio::time::sleep(Duration::from_millis(world.range(10, 300))).await;
        node.restart(&cluster);
    }
}
