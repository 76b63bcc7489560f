//! The clients of a schedule: the crowd redeeming the voucher (each attempt
//! handled on a random voucher instance: claims of random slots, the next
//! slot on `SlotTaken` as a shard does, then the real `complete_and_tell`;
//! in role `all` the claim carries its credit and its answer is the
//! client's, as the app answers it),
//! and clients' own wallet transactions (keyed from a small pool of
//! idempotency keys, so keys come again, for other phones and amounts too,
//! and are retried after an unknown outcome).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};
use uuid::Uuid;
use voucherd_core::domain::{
    transaction_id, PhoneNumber, Redemption, RedemptionStatus, WalletTransaction,
};
use voucherd_core::error::{Error, Result};
use voucherd_core::ledger::{Claim, NewTransaction};
use voucherd_core::redemption::complete_and_tell;
use voucherd_test_support::sim::world::user;

use super::cluster::{Cluster, Kind, SimLedger};
use super::setup::User;

/// What a client was told about one redemption attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The instance was down, or nothing came back.
    Silence,
    /// Sold out, already redeemed, or the claim failed.
    Refused,
    /// Claimed; the credit is on its way.
    Pending(Uuid),
    Credited(Uuid),
    Void(Uuid),
}

/// One user of the crowd: its attempts, in order.
pub async fn redeemer(cluster: Arc<Cluster>, crowd: User) -> Vec<Answer> {
    tokio::time::sleep(crowd.arrival).await;
    let mut answers = Vec::new();
    for attempt in 0..crowd.attempts {
        if attempt > 0 {
            tokio::time::sleep(crowd.gap).await;
        }
        let answer = redeem(&cluster, crowd.phone).await;
        cluster
            .world
            .event(answer_kind(&answer), user(crowd.phone), 0);
        answers.push(answer);
    }
    answers
}

fn answer_kind(answer: &Answer) -> &'static str {
    match answer {
        Answer::Silence => "client.silence",
        Answer::Refused => "client.refused",
        Answer::Pending(_) => "client.pending",
        Answer::Credited(_) => "client.credited",
        Answer::Void(_) => "client.void",
    }
}

type Reply = oneshot::Sender<Result<Redemption>>;

/// Slots one attempt tries before it gives up (the service's catalog would
/// answer a sold-out voucher before that).
const MAX_SLOTS_TRIED: u32 = 3;

/// One attempt, answered by the client's deadline at the latest.
async fn redeem(cluster: &Arc<Cluster>, phone: PhoneNumber) -> Answer {
    let until = Instant::now() + Duration::from_millis(cluster.setup.deadline_ms);
    let node = cluster.pick(&cluster.vouchers);
    let Some(ledger) = node.ledger() else {
        return Answer::Silence;
    };
    let (claimed, claim_answer) = oneshot::channel();
    let (done, done_answer) = oneshot::channel();
    if !node.spawn(handle(cluster.clone(), ledger, phone, claimed, done)) {
        return Answer::Silence;
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
        Ok(Ok(Err(_))) | Err(_) | Ok(Err(_)) => Answer::Pending(id),
    }
}

/// The request handler: claims a slot (another on `SlotTaken`), then
/// completes the redemption with the voucher service's own driver.
async fn handle(
    cluster: Arc<Cluster>,
    ledger: Arc<SimLedger>,
    phone: PhoneNumber,
    claimed: Reply,
    done: Reply,
) {
    let redemption = match claim_some_slot(&cluster, &ledger, phone).await {
        Ok(redemption) => redemption,
        Err(error) => {
            let _ = claimed.send(Err(error));
            return;
        }
    };
    let _ = claimed.send(Ok(redemption.clone()));
    if cluster.setup.role_all {
        // The claim credited it (or answered its refusal): the app answers
        // the client with the claim's redemption, 200 when credited.
        let _ = done.send(Ok(redemption));
        return;
    }
    let port = cluster.port();
    let _ = complete_and_tell(ledger.vouchers(), &port, redemption, done).await;
}

async fn claim_some_slot(
    cluster: &Cluster,
    ledger: &SimLedger,
    phone: PhoneNumber,
) -> Result<Redemption> {
    let limit = cluster.setup.limit;
    let first = cluster.world.range(1, u64::from(limit)) as u32;
    for step in 0..limit.min(MAX_SLOTS_TRIED) {
        let slot = (first + step - 1) % limit + 1;
        let claim = Claim {
            code: cluster.code.clone(),
            phone,
            slot,
            at: cluster.world.now(),
        };
        let answer = ledger.vouchers().claim(claim).await;
        let kind = match &answer {
            Ok(_) => "claim.won",
            Err(Error::SlotTaken) => "claim.slot_taken",
            Err(Error::CreditRefused { .. } | Error::Invalid { .. }) => "claim.credit_refused",
            Err(Error::AlreadyRedeemed) => "claim.already_redeemed",
            Err(_) => "claim.failed",
        };
        cluster.world.event(kind, user(phone), i64::from(slot));
        match answer {
            Err(Error::SlotTaken) => continue,
            other => return other,
        }
    }
    Err(Error::VoucherExhausted)
}

/// A client transaction and what it was answered.
#[derive(Debug, Clone)]
pub struct Told {
    pub request: NewTransaction,
    pub answer: Result<WalletTransaction>,
}

/// Clients' own transactions on random wallets, through random wallet
/// instances; one whose outcome is unknown is sent again (same id).
pub async fn traffic(cluster: Arc<Cluster>) -> Vec<Told> {
    let mut told = Vec::new();
    for _ in 0..cluster.setup.transactions {
        cluster.world.pause(10, 300).await;
        let request = client_transaction(&cluster);
        told.extend(send_until_known(&cluster, request).await);
    }
    told
}

/// A rich user's spending (see [`User::spends`]): one debit larger than the
/// voucher's amount, sent again while its outcome is unknown.
pub async fn spender(cluster: Arc<Cluster>, crowd: User) -> Vec<Told> {
    let Some(after) = crowd.spends else {
        return Vec::new();
    };
    tokio::time::sleep(crowd.arrival + after).await;
    let world = &cluster.world;
    let amount = cluster.setup.amount as u64;
    let request = NewTransaction {
        id: Uuid::from_u64_pair(world.range(0, u64::MAX - 1), 8),
        replayable: false,
        phone: crowd.phone,
        amount: -(world.range(amount, 2 * amount) as i64),
        reference: "client spend".to_owned(),
        at: world.now(),
        refusal_is_final: false,
    };
    send_until_known(&cluster, request).await
}

/// Sends `request` up to three times while its outcome is unknown.
async fn send_until_known(cluster: &Arc<Cluster>, request: NewTransaction) -> Vec<Told> {
    let mut told = Vec::new();
    for _ in 0..3 {
        let answer = send(cluster, request.clone()).await;
        let unknown = matches!(answer, Err(Error::Unavailable { .. }));
        told.push(Told {
            request: request.clone(),
            answer,
        });
        if !unknown {
            break;
        }
    }
    told
}

fn client_transaction(cluster: &Cluster) -> NewTransaction {
    let world = &cluster.world;
    let users = &cluster.setup.users;
    let phone = users[world.range(0, users.len() as u64 - 1) as usize].phone;
    let amount = world.range(0, 1_200) as i64 - 700;
    let keyed = world.chance(700);
    let key = format!("key-{}", world.range(1, cluster.setup.keys));
    NewTransaction {
        id: if keyed {
            transaction_id(Some(&key))
        } else {
            Uuid::from_u64_pair(world.range(0, u64::MAX - 1), 7)
        },
        replayable: keyed,
        phone,
        amount: if amount == 0 { 1 } else { amount },
        reference: format!("client {}", world.range(0, 1)),
        at: world.now(),
        refusal_is_final: false,
    }
}

async fn send(cluster: &Arc<Cluster>, request: NewTransaction) -> Result<WalletTransaction> {
    let node = cluster.pick(cluster.wallet_nodes());
    let Some(ledger) = node.ledger() else {
        return Err(Error::unavailable("wallet instance down"));
    };
    let (tell, told) = oneshot::channel();
    let sent = node.spawn(async move {
        let _ = tell.send(ledger.wallets().transact(request).await);
    });
    if !sent {
        return Err(Error::unavailable("wallet instance down"));
    }
    let answer = told
        .await
        .unwrap_or_else(|_| Err(Error::unavailable("instance crashed")));
    let kind = match &answer {
        Ok(_) => "tx.applied",
        Err(Error::IdempotencyKeyReused) => "tx.key_reused",
        Err(Error::InsufficientFunds) => "tx.insufficient",
        Err(Error::Unavailable { .. }) => "tx.unknown",
        Err(_) => "tx.refused",
    };
    cluster.world.event(kind, 0, 0);
    answer
}

/// Voucher and wallets as a schedule starts: written without faults.
pub async fn prepare(cluster: &Arc<Cluster>) {
    let ledger = cluster.open(Kind::All, false, false);
    let voucher = voucherd_core::domain::Voucher::new(
        cluster.code.clone(),
        cluster.setup.amount,
        cluster.setup.limit,
        None,
        None,
        cluster.world.now(),
    )
    .expect("a valid voucher");
    ledger
        .vouchers()
        .create_voucher(voucher)
        .await
        .expect("create the voucher");
    for crowd in &cluster.setup.users {
        let opening = if crowd.rich {
            i64::MAX - cluster.world.range(0, cluster.setup.amount as u64 - 1) as i64
        } else if cluster.world.chance(500) {
            cluster.world.range(0, 1_000) as i64
        } else {
            continue;
        };
        let profile = voucherd_core::ledger::NewProfile {
            phone: crowd.phone,
            opening_balance: opening,
            at: cluster.world.now(),
        };
        ledger
            .wallets()
            .create_profile(profile)
            .await
            .expect("open a wallet");
    }
}
