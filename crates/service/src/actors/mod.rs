//! The actor system: voucher shards, wallet actors, and the supervisor that
//! restarts them.
//!
//! Shards are found by a stable hash (FNV-1a 64 of the key's bytes, modulo the
//! shard count), so the same code or phone always lands on the same actor for a
//! given configuration. The [`Directory`] holds the current reference of each
//! actor; the supervisor swaps in a fresh one when a dead actor's restart
//! succeeds (until then the entry is the dead actor, which callers find
//! unreachable at once: 503, never a hang).

pub mod voucher;
pub mod wallet;

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use parking_lot::RwLock;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

use crate::readiness::{NotReadyReason, Readiness};
use voucher::{VoucherShard, VoucherShardArgs, VoucherShardMsg};
use voucherd_core::limits::{
    ACTOR_RESTART_MAX_DELAY_MS, ACTOR_RESTART_MIN_DELAY_MS, ACTOR_START_TIMEOUT_MS,
};
use voucherd_metrics::Metrics;
use wallet::{WalletActor, WalletArgs, WalletMsg};

/// The shard index of a key: FNV-1a 64 of its bytes modulo `shards`.
pub fn shard_of(key: &str, shards: usize) -> usize {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(key.as_bytes());
    (hasher.finish() % shards as u64) as usize
}

/// Current references to every shard and wallet actor.
pub struct Directory {
    vouchers: RwLock<Vec<ActorRef<VoucherShardMsg>>>,
    wallets: RwLock<Vec<ActorRef<WalletMsg>>>,
}

impl Directory {
    pub fn voucher_shard(&self, code: &str) -> ActorRef<VoucherShardMsg> {
        let shards = self.vouchers.read();
        shards[shard_of(code, shards.len())].clone()
    }

    pub fn wallet(&self, phone: &str) -> ActorRef<WalletMsg> {
        let wallets = self.wallets.read();
        wallets[shard_of(phone, wallets.len())].clone()
    }

    /// Every voucher shard, in index order.
    pub fn voucher_shards(&self) -> Vec<ActorRef<VoucherShardMsg>> {
        self.vouchers.read().clone()
    }

    /// Every wallet actor, in index order.
    pub fn wallets(&self) -> Vec<ActorRef<WalletMsg>> {
        self.wallets.read().clone()
    }
}

/// The supervisor of every shard and wallet actor.
///
/// An actor that fails is restarted at once; when its restart fails too (a
/// shard's start reads the ledger, which may be unreachable), it is tried again
/// with backoff, and meanwhile readiness says `actor_restarting` and requests
/// for it get 503 at once (its directory entry is the dead actor). An actor
/// still down after the restart budget means recovery is not coming: the
/// supervisor raises `supervisor_failed` and sets the fatal signal, on which the
/// app stops with an error (crash-only: the process supervisor restarts it).
/// The supervisor itself never fails because of a child.
pub struct Supervisor;

pub struct SupervisorArgs {
    /// The shards' arguments; None where the instance runs no voucher half.
    pub voucher_args: Option<VoucherShardArgs>,
    /// The wallet actors' arguments; None where it runs no wallet half.
    pub wallet_args: Option<WalletArgs>,
    pub wallet_actors: usize,
    pub metrics: Arc<Metrics>,
    /// Where `actor_restarting` and `supervisor_failed` are raised.
    pub readiness: Arc<Readiness>,
    /// How long an actor may stay down before recovery counts as impossible.
    pub restart_budget: Duration,
    /// Set to the reason once recovery is impossible. The supervisor holds the
    /// only sender, so it closes when the supervisor stops for any reason.
    pub fatal: watch::Sender<Option<String>>,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    directory: Arc<Directory>,
    /// Actors that failed and do not run again yet.
    down: HashMap<Child, Down>,
}

/// One supervised actor: its kind and its index in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    VoucherShard(usize),
    Wallet(usize),
}

/// An actor that failed and whose restart has not succeeded yet.
struct Down {
    since: Instant,
    failed_attempts: u32,
    delays: ExponentialBackoff,
}

pub enum SupervisorMsg {
    /// Answers the directory once every child runs.
    Directory(ractor::RpcReplyPort<Arc<Directory>>),
    /// Tries again to start an actor whose restart failed (sent by a timer).
    Restart(Child),
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let shards = args.voucher_args.as_ref().map_or(0, |a| a.shards);
        let mut vouchers = Vec::with_capacity(shards);
        for index in 0..shards {
            vouchers.push(spawn_shard(&myself, &args, index).await?);
        }
        let wallet_actors = if args.wallet_args.is_some() {
            args.wallet_actors
        } else {
            0
        };
        let mut wallets = Vec::with_capacity(wallet_actors);
        for _ in 0..wallet_actors {
            wallets.push(spawn_wallet(&myself, &args).await?);
        }
        let directory = Arc::new(Directory {
            vouchers: RwLock::new(vouchers),
            wallets: RwLock::new(wallets),
        });
        Ok(SupervisorState {
            args,
            directory,
            down: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Directory(reply) => {
                let _ = reply.send(state.directory.clone());
            }
            SupervisorMsg::Restart(child) => state.restart(&myself, child).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(dead, error) = event else {
            return Ok(());
        };
        state.args.metrics.count_actor_restart();
        let Some(child) = state.child_of(&dead) else {
            return Ok(());
        };
        tracing::error!(?child, %error, "actor failed; restarting it");
        state.down.entry(child).or_insert_with(|| Down {
            since: Instant::now(),
            failed_attempts: 0,
            delays: restart_delays(),
        });
        state.args.readiness.raise(NotReadyReason::ActorRestarting);
        state.restart(&myself, child).await;
        Ok(())
    }
}

impl SupervisorState {
    /// Which child `dead` is, if it is the current actor of an entry.
    fn child_of(&self, dead: &ActorCell) -> Option<Child> {
        if let Some(index) = position_of(&self.directory.vouchers.read(), dead) {
            return Some(Child::VoucherShard(index));
        }
        position_of(&self.directory.wallets.read(), dead).map(Child::Wallet)
    }

    /// Starts `child` again (bounded by [`ACTOR_START_TIMEOUT_MS`]); on failure
    /// schedules the next attempt, or gives up once the budget is spent.
    async fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child) {
        if !self.down.contains_key(&child) {
            return; // Running again already.
        }
        let attempt = async {
            match child {
                Child::VoucherShard(index) => {
                    let fresh = spawn_shard(myself, &self.args, index).await?;
                    self.directory.vouchers.write()[index] = fresh;
                }
                Child::Wallet(index) => {
                    let fresh = spawn_wallet(myself, &self.args).await?;
                    self.directory.wallets.write()[index] = fresh;
                }
            }
            Ok::<(), ActorProcessingErr>(())
        };
        let limit = Duration::from_millis(ACTOR_START_TIMEOUT_MS);
        let error = match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(())) => {
                if let Some(down) = self.down.remove(&child) {
                    tracing::info!(
                        ?child,
                        down_ms = down.since.elapsed().as_millis() as u64,
                        "actor restarted"
                    );
                }
                if self.down.is_empty() {
                    self.args.readiness.clear(NotReadyReason::ActorRestarting);
                }
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("its start took longer than {ACTOR_START_TIMEOUT_MS} ms"),
        };
        let Some(down) = self.down.get_mut(&child) else {
            return;
        };
        down.failed_attempts += 1;
        if down.since.elapsed() >= self.args.restart_budget {
            let reason = format!(
                "{child:?} could not be restarted within {} ms ({} attempts): {error}",
                self.args.restart_budget.as_millis(),
                down.failed_attempts
            );
            tracing::error!(%reason, "actor recovery is impossible; stopping the process");
            self.args.readiness.raise(NotReadyReason::SupervisorFailed);
            self.args.fatal.send_replace(Some(reason));
            return;
        }
        let delay = down
            .delays
            .next()
            .unwrap_or(Duration::from_millis(ACTOR_RESTART_MAX_DELAY_MS));
        tracing::warn!(
            ?child,
            %error,
            attempt = down.failed_attempts,
            delay_ms = delay.as_millis() as u64,
            "actor restart failed; trying again"
        );
        myself.send_after(delay, move || SupervisorMsg::Restart(child));
    }
}

/// The waits between restart attempts of one actor, with jitter so that actors
/// that failed together do not retry in lockstep.
fn restart_delays() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(ACTOR_RESTART_MIN_DELAY_MS))
        .with_max_delay(Duration::from_millis(ACTOR_RESTART_MAX_DELAY_MS))
        .with_jitter()
        .without_max_times()
        .build()
}

fn position_of<M>(actors: &[ActorRef<M>], dead: &ActorCell) -> Option<usize> {
    actors
        .iter()
        .position(|actor| actor.get_id() == dead.get_id())
}

async fn spawn_shard(
    myself: &ActorRef<SupervisorMsg>,
    args: &SupervisorArgs,
    index: usize,
) -> Result<ActorRef<VoucherShardMsg>, ActorProcessingErr> {
    let shared = args
        .voucher_args
        .as_ref()
        .ok_or("no voucher half: no shard to start")?;
    let shard_args = VoucherShardArgs {
        index,
        ..shared.clone()
    };
    let (shard, _) = Actor::spawn_linked(None, VoucherShard, shard_args, myself.get_cell()).await?;
    Ok(shard)
}

async fn spawn_wallet(
    myself: &ActorRef<SupervisorMsg>,
    args: &SupervisorArgs,
) -> Result<ActorRef<WalletMsg>, ActorProcessingErr> {
    let wallet_args = args
        .wallet_args
        .clone()
        .ok_or("no wallet half: no wallet actor to start")?;
    let (wallet, _) =
        Actor::spawn_linked(None, WalletActor, wallet_args, myself.get_cell()).await?;
    Ok(wallet)
}
