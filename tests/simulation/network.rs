//! The network between the voucher service and the wallet, as a `CreditPort`:
//! each call's fate is drawn from the seed when it is made. A request may be
//! delayed, lost, slower than the caller's timeout (it still lands, later),
//! or delivered twice (the echo possibly much later); a reply may be delayed
//! or lost; a wallet that is down or crashes breaks the connection. Whatever
//! the caller does not hear is `Unknown`.
//!
//! Also the planted bugs of the port: wrappers the simulation must catch.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;
use voucherd_core::redemption::{Credit, CreditAnswer, CreditPort};
use voucherd_test_support::sim::world::{user, World};

use super::wallet::WalletLedger;

pub struct SimPort {
    world: Arc<World>,
    wallet: WalletLedger,
}

impl SimPort {
    pub fn new(world: Arc<World>, wallet: WalletLedger) -> Self {
        SimPort { world, wallet }
    }
}

impl CreditPort for SimPort {
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>> {
        call(self.world.clone(), self.wallet.clone(), credits).boxed()
    }
}

/// The fate of one call.
struct Plan {
    request: Duration,
    reply: Duration,
    drop_request: bool,
    lose_reply: bool,
    echo: Option<Duration>,
}

impl Plan {
    fn draw(world: &World) -> Plan {
        let k = &world.knobs;
        let timeout = k.call_timeout_ms;
        let leg = || {
            if world.fault(k.slow) {
                world.millis(timeout + 1, timeout + 3_000)
            } else {
                world.millis(1, k.max_delay_ms)
            }
        };
        let (request, reply) = (leg(), leg());
        Plan {
            request,
            reply,
            drop_request: world.fault(k.drop_request),
            lose_reply: world.fault(k.lose_reply),
            echo: world
                .fault(k.duplicate)
                .then(|| world.millis(1, k.max_echo_ms)),
        }
    }
}

async fn call(world: Arc<World>, wallet: WalletLedger, credits: Vec<Credit>) -> Vec<CreditAnswer> {
    let unknown = vec![CreditAnswer::Unknown; credits.len()];
    let who = credits.first().map_or(0, |c| user(c.phone));
    let plan = Plan::draw(&world);
    let timeout = Duration::from_millis(world.knobs.call_timeout_ms);
    if let Some(later) = plan.echo {
        world.event("net.duplicate", who, later.as_millis() as i64);
        world.spawn_net(echo(world.clone(), wallet.clone(), credits.clone(), later));
    }
    let (reply, answer) = oneshot::channel();
    world.spawn_net(transmit(world.clone(), wallet, credits, plan, reply));
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answers)) => answers,
        Ok(Err(_)) => {
            world.event("net.reset", who, 0);
            unknown
        }
        Err(_) => {
            world.event("net.timeout", who, 0);
            unknown
        }
    }
}

/// One delivery of the request and its reply. Dropping `reply` unsent is a
/// broken connection; holding it past the caller's timeout is a silent loss.
async fn transmit(
    world: Arc<World>,
    wallet: WalletLedger,
    credits: Vec<Credit>,
    plan: Plan,
    reply: oneshot::Sender<Vec<CreditAnswer>>,
) {
    let who = credits.first().map_or(0, |c| user(c.phone));
    let silence = Duration::from_millis(world.knobs.call_timeout_ms);
    tokio::time::sleep(plan.request).await;
    if plan.drop_request {
        world.event("net.request_lost", who, 0);
        return tokio::time::sleep(silence).await;
    }
    let Some(answers) = wallet.deliver(credits).await else {
        return;
    };
    if plan.lose_reply {
        world.event("net.reply_lost", who, 0);
        return tokio::time::sleep(silence).await;
    }
    tokio::time::sleep(plan.reply).await;
    let _ = reply.send(answers);
}

/// A second delivery of a request, `later`; nobody waits for its reply.
async fn echo(world: Arc<World>, wallet: WalletLedger, credits: Vec<Credit>, later: Duration) {
    tokio::time::sleep(later).await;
    let who = credits.first().map_or(0, |c| user(c.phone));
    let answered = wallet.deliver(credits).await.is_some();
    world.event("net.echo_delivered", who, i64::from(answered));
}

/// Planted bug (a): "credited before the wallet answered". Answers `Applied`
/// at once and sends the real credit in the background, where it may be lost
/// or refused.
pub struct AppliedBeforeAnswer {
    pub world: Arc<World>,
    pub inner: Arc<dyn CreditPort>,
}

impl CreditPort for AppliedBeforeAnswer {
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>> {
        let applied = vec![CreditAnswer::Applied { balance: 0 }; credits.len()];
        self.world.spawn_net(self.inner.credit(credits).map(drop));
        futures::future::ready(applied).boxed()
    }
}

/// Planted bug (b): "a timeout is a refusal". Turns `Unknown` into `Refused`,
/// so a redemption whose credit may have landed is voided.
pub struct TimeoutAsRefusal {
    pub inner: Arc<dyn CreditPort>,
}

impl CreditPort for TimeoutAsRefusal {
    fn credit(&self, credits: Vec<Credit>) -> BoxFuture<'static, Vec<CreditAnswer>> {
        let refused = |answer| match answer {
            CreditAnswer::Unknown => CreditAnswer::Refused {
                reason: "timed out".to_owned(),
            },
            known => known,
        };
        let answers = self.inner.credit(credits);
        async move { answers.await.into_iter().map(refused).collect() }.boxed()
    }
}
