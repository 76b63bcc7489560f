//! The actor system: voucher shards, wallet actors, and the supervisor that
//! restarts them.
//!
//! Shards are found by a stable hash (FNV-1a 64 of the key's bytes, modulo the
//! shard count), so the same code or phone always lands on the same actor for a
//! given configuration. The [`Directory`] holds the current reference of each
//! actor; the supervisor swaps in a fresh one when an actor dies.

pub mod catalog;
pub mod voucher;
pub mod wallet;

use std::hash::Hasher;
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::metrics::Metrics;
use voucher::{VoucherShard, VoucherShardArgs, VoucherShardMsg};
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
pub struct Supervisor;

pub struct SupervisorArgs {
    pub voucher_args: VoucherShardArgs,
    pub wallet_args: WalletArgs,
    pub wallet_actors: usize,
    pub metrics: Arc<Metrics>,
}

pub struct SupervisorState {
    args: SupervisorArgs,
    directory: Arc<Directory>,
}

pub enum SupervisorMsg {
    /// Answers the directory once every child runs.
    Directory(ractor::RpcReplyPort<Arc<Directory>>),
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
        let mut vouchers = Vec::with_capacity(args.voucher_args.shards);
        for index in 0..args.voucher_args.shards {
            vouchers.push(spawn_shard(&myself, &args, index).await?);
        }
        let mut wallets = Vec::with_capacity(args.wallet_actors);
        for _ in 0..args.wallet_actors {
            wallets.push(spawn_wallet(&myself, &args).await?);
        }
        let directory = Arc::new(Directory {
            vouchers: RwLock::new(vouchers),
            wallets: RwLock::new(wallets),
        });
        Ok(SupervisorState { args, directory })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Directory(reply) => {
                let _ = reply.send(state.directory.clone());
            }
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
        let voucher_index = position_of(&state.directory.vouchers.read(), &dead);
        if let Some(index) = voucher_index {
            tracing::error!(shard = index, %error, "voucher shard failed; restarting it");
            let fresh = spawn_shard(&myself, &state.args, index).await?;
            state.directory.vouchers.write()[index] = fresh;
            return Ok(());
        }
        let wallet_index = position_of(&state.directory.wallets.read(), &dead);
        if let Some(index) = wallet_index {
            tracing::error!(wallet = index, %error, "wallet actor failed; restarting it");
            let fresh = spawn_wallet(&myself, &state.args).await?;
            state.directory.wallets.write()[index] = fresh;
        }
        Ok(())
    }
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
    let shard_args = VoucherShardArgs {
        index,
        ..args.voucher_args.clone()
    };
    let (shard, _) = Actor::spawn_linked(None, VoucherShard, shard_args, myself.get_cell()).await?;
    Ok(shard)
}

async fn spawn_wallet(
    myself: &ActorRef<SupervisorMsg>,
    args: &SupervisorArgs,
) -> Result<ActorRef<WalletMsg>, ActorProcessingErr> {
    let (wallet, _) = Actor::spawn_linked(
        None,
        WalletActor,
        args.wallet_args.clone(),
        myself.get_cell(),
    )
    .await?;
    Ok(wallet)
}
