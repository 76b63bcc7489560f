//! Wallet actors: each owns the wallets whose phone hashes to it and serialises
//! their writes.
//!
//! An actor submits each write to the ledger as it handles the message, so the
//! writes of one user reach the ledger in the order they arrived; a task awaits
//! the commit, which the ledger shares with every other write queued meanwhile
//! (group commit). Redemption credits do not pass here: they are part of the
//! claim's single ledger write (I3).

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use voucherd_core::domain::{Wallet, WalletTransaction};
use voucherd_core::error::Result;
use voucherd_core::ledger::{LedgerFuture, NewProfile, NewTransaction, WalletLedger};

/// The behaviour of a wallet actor.
pub struct WalletActor;

#[derive(Clone)]
pub struct WalletArgs {
    pub ledger: Arc<dyn WalletLedger>,
}

pub struct WalletState {
    ledger: Arc<dyn WalletLedger>,
}

pub enum WalletMsg {
    CreateProfile {
        profile: NewProfile,
        reply: RpcReplyPort<Result<Wallet>>,
    },
    Transact {
        transaction: NewTransaction,
        reply: RpcReplyPort<Result<WalletTransaction>>,
    },
    /// Makes the actor panic; used by tests to prove the supervisor restarts it.
    #[cfg(feature = "test-hooks")]
    InjectPanic,
}

impl Actor for WalletActor {
    type Msg = WalletMsg;
    type State = WalletState;
    type Arguments = WalletArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: WalletArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WalletState {
            ledger: args.ledger,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WalletMsg::CreateProfile { profile, reply } => {
                answer_when_committed(state.ledger.create_profile(profile), reply);
            }
            WalletMsg::Transact { transaction, reply } => {
                answer_when_committed(state.ledger.transact(transaction), reply);
            }
            #[cfg(feature = "test-hooks")]
            WalletMsg::InjectPanic => panic!("injected wallet actor panic"),
        }
        Ok(())
    }
}

fn answer_when_committed<T: Send + 'static>(
    committed: LedgerFuture<T>,
    reply: RpcReplyPort<Result<T>>,
) {
    tokio::spawn(async move {
        // The caller may have timed out and gone; the write stands either way.
        let _ = reply.send(committed.await);
    });
}
