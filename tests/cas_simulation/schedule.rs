//! One schedule: a voucher and wallets, a crowd and clients' transactions on
//! several instances over a faulty store with crashes; then heal, recover to
//! quiescence, and check.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use voucherd_core::domain::Timestamp;
use voucherd_core::ledger::NewTransaction;
use voucherd_store::cas::store::{Table, Value};
use voucherd_test_support::sim::runner::{violation, Violation};
use voucherd_test_support::sim::world::World;

use super::check::{check, Expected};
use super::clients::{prepare, redeemer, spender, traffic};
use super::cluster::{crashes, crashes_after_void, recovery_pass, Cluster};
use super::setup::Setup;
use super::Planted;

/// Recovery passes of the heal phase before "nothing converges" is a violation.
const HEAL_PASSES: usize = 30;

pub async fn run(
    world: Arc<World>,
    planted: Planted,
    contention_only: bool,
) -> Result<(), Violation> {
    let mut setup = Setup::draw(&world);
    if contention_only {
        setup = setup.contention_only(&world);
    }
    let cluster = Cluster::new(world.clone(), setup.clone(), planted);
    prepare(&cluster).await;
    cluster.start();
    let background = [
        tokio::spawn(crashes(cluster.clone(), false, setup.voucher_crash_ms)),
        tokio::spawn(crashes(cluster.clone(), true, setup.wallet_crash_ms)),
        tokio::spawn(crashes_after_void(cluster.clone())),
    ];
    let traffic = tokio::spawn(traffic(cluster.clone()));
    let crowd: Vec<_> = (setup.users.iter())
        .map(|u| tokio::spawn(redeemer(cluster.clone(), u.clone())))
        .collect();
    let spenders: Vec<_> = (setup.users.iter())
        .map(|u| tokio::spawn(spender(cluster.clone(), u.clone())))
        .collect();
    tokio::time::sleep(setup.fault_phase).await;
    cluster.heal();
    for task in background {
        task.await.expect("a crash loop");
    }
    let mut told = traffic.await.expect("the client traffic");
    for task in spenders {
        told.extend(task.await.expect("a spender"));
    }
    let mut answers = Vec::new();
    for task in crowd {
        answers.extend(task.await.expect("a redeemer"));
    }
    cluster.join().await;
    quiesce(&cluster).await?;
    funded_debits(&cluster).await?;
    let expected = Expected {
        code: &cluster.code,
        limit: setup.limit,
        answers: &answers,
        told: &told,
    };
    check(&cluster.store, &expected, &world)
}

/// Recovery passes (the real drivers, on an instance of their own) until no
/// claim is in flight, nothing is pending and the claim log is empty.
async fn quiesce(cluster: &Arc<Cluster>) -> Result<(), Violation> {
    let ledger = cluster.open(cluster.claims_kind(), true, false);
    let everything = Timestamp(i64::MAX / 2);
    for _ in 0..HEAL_PASSES {
        cluster.store.decide_all();
        recovery_pass(cluster, &ledger, everything, 64, 99).await;
        if is_quiet(cluster) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let detail = format!("not quiet after {HEAL_PASSES} heal passes");
    Err(violation("liveness", detail))
}

/// Once quiet, a debit of one minor unit from every wallet that holds
/// more, through an instance of the wallet half over the store without
/// faults, alone: it must apply, at the wallet's next version, leaving one
/// unit less. A ledger that misreads a wallet (its statics, say) refuses it.
async fn funded_debits(cluster: &Arc<Cluster>) -> Result<(), Violation> {
    let kind = cluster.wallet_nodes()[0].kind;
    let ledger = cluster.open(kind, false, false);
    for wallet in cluster.store.dump(Table::Wallets) {
        let (Some(Value::Int(phone)), Some(Value::Int(balance))) =
            (wallet.partition.key.first(), wallet.statics.get("balance"))
        else {
            continue;
        };
        let Some(user) = (cluster.setup.users.iter()).find(|u| u.phone.stored() as i64 == *phone)
        else {
            continue;
        };
        if *balance < 1 {
            continue;
        }
        let debit = NewTransaction {
            id: Uuid::from_u64_pair(*phone as u64, 9),
            replayable: false,
            phone: user.phone,
            amount: -1,
            reference: "funded debit".to_owned(),
            at: cluster.world.now(),
            refusal_is_final: false,
        };
        match ledger.wallets().transact(debit).await {
            Ok(applied) if applied.balance_after == balance - 1 => {}
            answer => {
                let detail = format!("{phone} holds {balance}; a debit of 1 answered {answer:?}");
                return Err(violation("funded debit", detail));
            }
        }
    }
    Ok(())
}

fn is_quiet(cluster: &Cluster) -> bool {
    let store = &cluster.store;
    let busy = |row: &voucherd_store::cas::store::Row| {
        row.contains_key("attempt") || row.get("status") == Some(&Value::Int(0))
    };
    let keys = store.dump(Table::Redemptions);
    let log = store.dump(Table::ClaimLog);
    !keys.iter().flat_map(|p| &p.rows).any(|(_, row)| busy(row))
        && log.iter().all(|p| p.rows.is_empty())
}
