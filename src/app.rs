//! Building and running the application: ledger, catalog, actors, HTTP server.
//!
//! The app takes an already-bound listener (tests bind port 0) and a shutdown
//! future. On shutdown it drains: `/readyz` answers 503 `draining` at once while it
//! keeps serving for the drain delay (every answer `Connection: close`), so the load
//! balancer takes it out before anything is refused; a second stop signal cuts the
//! delay short. Then it stops accepting, lets in-flight requests finish (up to
//! [`SHUTDOWN_GRACE_MS`]), and flushes the ledger, so every acknowledged write is
//! durable before the process exits. When the actors cannot be restored (the
//! supervisor spent its restart budget, or stopped) it stops the same way and
//! returns an error, so the process exits non-zero and is restarted.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::EdgeLimits;
use crate::config::Settings;
use crate::http::auth::AccessPolicy;
use crate::http::server;
use crate::http::RouteOptions;
use crate::wiring;
use voucherd_core::catalog::{Catalog, VoucherView};
use voucherd_core::ledger::{Durable, VoucherLedger};
use voucherd_core::limits::{DRAIN_CHECK_INTERVAL_MS, SHUTDOWN_GRACE_MS};
use voucherd_metrics::Metrics;
use voucherd_service::actors::voucher::VoucherShardArgs;
use voucherd_service::actors::wallet::WalletArgs;
use voucherd_service::actors::{Supervisor, SupervisorArgs, SupervisorMsg};
use voucherd_service::rate_limit::PhoneRateLimiter;
use voucherd_service::readiness::{NotReadyReason, Readiness};
use voucherd_service::recovery::Recovery;
use voucherd_service::service::Parts;
use voucherd_service::service::Service;

pub struct App {
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    routes: RouteOptions,
    edge: EdgeLimits,
    /// How long to keep serving, not ready, once a stop is asked.
    drain_delay: Duration,
    service: Arc<Service>,
    /// The store of this instance's halves, flushed on stop.
    store: Arc<dyn Durable>,
    /// Role `voucher`: the task finishing pending redemptions.
    recovery: Option<JoinHandle<()>>,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_task: JoinHandle<()>,
    /// Set by the supervisor when the actors cannot be restored; closed when
    /// the supervisor stops.
    fatal: watch::Receiver<Option<String>>,
}

impl App {
    /// Builds the app on an already-bound `listener`. Refuses an open access
    /// policy (no token) on a non-loopback address unless `insecure_no_auth`.
    pub async fn build(
        settings: Settings,
        listener: std::net::TcpListener,
    ) -> anyhow::Result<Self> {
        let address = listener.local_addr()?;
        check_exposure(&settings, address)?;
        let metrics_listener = match settings.metrics_listen {
            Some(metrics_address) => {
                let bound = std::net::TcpListener::bind(metrics_address)
                    .with_context(|| format!("binding the metrics address {metrics_address}"))?;
                bound.set_nonblocking(true)?;
                Some(tokio::net::TcpListener::from_std(bound)?)
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let (parts, store) = wiring::open_parts(&settings, metrics.clone())
            .await
            .context("opening the ledger")?;
        let catalog = Arc::new(Catalog::default());
        let voucher_args = match &parts.vouchers {
            Some(ledger) => {
                load_catalog(&catalog, ledger.as_ref(), &metrics).await?;
                Some(VoucherShardArgs {
                    index: 0,
                    shards: settings.voucher_shards,
                    catalog: catalog.clone(),
                    ledger: ledger.clone(),
                    slots: wiring::slot_source(&settings, ledger.clone(), metrics.clone()),
                    metrics: metrics.clone(),
                    clock: settings.clock.clone(),
                })
            }
            None => None,
        };
        let readiness = Arc::new(Readiness::default());
        let (fatal_sender, fatal) = watch::channel(None);
        let arguments = SupervisorArgs {
            voucher_args,
            wallet_args: parts.wallets.clone().map(|ledger| WalletArgs { ledger }),
            wallet_actors: settings.wallet_actors,
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            restart_budget: Duration::from_millis(settings.actor_restart_budget_ms),
            fatal: fatal_sender,
        };
        let (supervisor, supervisor_task) = Actor::spawn(None, Supervisor, arguments)
            .await
            .context("starting the actors")?;
        let directory = ractor::call!(supervisor, SupervisorMsg::Directory)
            .map_err(|e| anyhow::anyhow!("reading the actor directory: {e}"))?;
        let phone_rate = PhoneRateLimiter::new(settings.phone_rate);
        if let Some(limiter) = &phone_rate {
            limiter.spawn_sweeper();
        }
        let recovery_parts = parts.clone();
        let service = Arc::new(
            Service::new(
                catalog,
                directory,
                parts,
                metrics,
                settings.store.is_shared(),
                readiness,
            )
            .with_phone_rate_limit(phone_rate)
            .with_credit_deadline(settings.protocol.credit_deadline)
            .with_clock(settings.clock.clone()),
        );
        let recovery = start_recovery(&recovery_parts, &settings, &service);
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(Self {
            listener,
            metrics_listener,
            routes: RouteOptions {
                access: Arc::new(AccessPolicy::of(&settings.tokens)),
                body_read_timeout: settings.edge.body_read_timeout,
                role: settings.role,
            },
            edge: settings.edge,
            drain_delay: settings.drain_delay,
            service,
            store,
            recovery,
            supervisor,
            supervisor_task,
            fatal,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address serving `/metrics` without a token, if one was configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The domain service, for embedding and in-process tests.
    pub fn service(&self) -> Arc<Service> {
        self.service.clone()
    }

    /// Serves until `shutdown` resolves, then drains and stops (see the module's doc).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until_stopped_or_hurried(shutdown, std::future::pending())
            .await
    }

    /// As [`App::run_until_stopped`]; `hurry` resolving during the drain delay ends
    /// it early (the process got a second SIGTERM or SIGINT).
    pub async fn run_until_stopped_or_hurried(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        hurry: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (signalled, signal_seen) = oneshot::channel();
        let (failed, failure) = oneshot::channel();
        let service = self.service.clone();
        let mut fatal = self.fatal.clone();
        let closing = server::Closing::default();
        let drain_delay = self.drain_delay;
        let closing_connections = closing.clone();
        let signal = async move {
            let drain = tokio::select! {
                () = shutdown => true,
                reason = supervision_lost(&mut fatal) => {
                    tracing::error!(%reason, "stopping: the actors cannot be restored");
                    service.readiness().raise(NotReadyReason::SupervisorFailed);
                    let _ = failed.send(reason);
                    // Its requests fail anyway: no point in keeping it in the pool.
                    false
                }
            };
            service.set_not_ready();
            closing_connections.start();
            if drain && !drain_delay.is_zero() {
                tracing::info!(
                    drain_delay_ms = drain_delay.as_millis() as u64,
                    "draining: not ready, still serving until the load balancer has taken this instance out"
                );
                tokio::select! {
                    () = tokio::time::sleep(drain_delay) => {}
                    () = hurry => tracing::info!("asked again to stop: ending the drain delay early"),
                }
            }
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            let _ = signalled.send(());
        };
        let metrics = self.service.metrics_handle();
        let routes = crate::http::routes(self.service.clone(), self.routes.clone());
        let server = server::serve(
            self.listener,
            routes,
            self.edge,
            metrics.clone(),
            closing,
            signal,
        );
        if let Some(listener) = self.metrics_listener {
            let routes = crate::http::metrics_routes(self.service.clone());
            // Lives until the process ends: Prometheus may scrape until the last moment.
            tokio::spawn(server::serve(
                listener,
                routes,
                self.edge,
                metrics,
                server::Closing::default(),
                std::future::pending(),
            ));
        }
        // The server ends by itself once every connection is closed, but a client
        // may hold a connection open without sending a request; so after the
        // signal, stop as soon as no request has been in flight for two checks in
        // a row, or when the grace period is over.
        let service = self.service.clone();
        let drained = async move {
            if signal_seen.await.is_err() {
                return std::future::pending::<bool>().await;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
            let mut idle_checks = 0;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(DRAIN_CHECK_INTERVAL_MS)).await;
                idle_checks = if service.requests_in_flight() == 0 {
                    idle_checks + 1
                } else {
                    0
                };
                if idle_checks >= 2 {
                    return true;
                }
            }
            false
        };
        tokio::select! {
            () = server => {}
            idle = drained => {
                if !idle {
                    tracing::warn!("grace period over; dropping unfinished requests");
                }
            }
        }
        if let Some(recovery) = self.recovery {
            recovery.abort();
        }
        self.store.shutdown().await.context("flushing the ledger")?;
        self.supervisor.stop(None);
        let _ = self.supervisor_task.await;
        if let Ok(reason) = failure.await {
            anyhow::bail!("the actors could not be restored: {reason}");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// An open access policy lets anyone who reaches the address move money, so it
/// is allowed only where nobody else can reach it, unless the operator insists.
fn check_exposure(settings: &Settings, address: SocketAddr) -> anyhow::Result<()> {
    if !settings.tokens.is_empty() || address.ip().is_loopback() {
        return Ok(());
    }
    if settings.insecure_no_auth {
        tracing::warn!(%address, "serving every route without a token (--insecure-no-auth)");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve on {address} without an admin token: anyone who reaches it could \
         create vouchers and move money. Give --admin-token-file FILE (or set \
         VOUCHERD_ADMIN_TOKEN), listen on a loopback address such as 127.0.0.1, or pass \
         --insecure-no-auth if every client of this network is trusted"
    )
}

/// Resolves when the actors cannot be restored: the supervisor says why, or it
/// stopped (its end of the channel closed) for any other reason.
async fn supervision_lost(fatal: &mut watch::Receiver<Option<String>>) -> String {
    match fatal.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => "the actor supervisor stopped".to_owned(),
    }
}

async fn load_catalog(
    catalog: &Catalog,
    ledger: &dyn VoucherLedger,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    for status in ledger.vouchers().await? {
        let winners = ledger.winners(status.voucher.code.clone()).await?;
        let view = catalog.insert(VoucherView::new(status, winners));
        metrics.set_remaining_slots(view.voucher.code.as_str(), view.remaining());
    }
    Ok(())
}

/// The recovery task of an instance with a voucher half (see [`voucherd_service::recovery`]); it runs until
/// the app stops.
fn start_recovery(parts: &Parts, settings: &Settings, service: &Service) -> Option<JoinHandle<()>> {
    // Every instance with a voucher half runs it: in role `voucher` to re-send
    // credits, in every role to finish claims a crash interrupted between
    // their steps (a ledger whose claims are one write has none).
    let ledger = parts.vouchers.as_ref()?;
    let recovery = Recovery {
        ledger: ledger.clone(),
        wallet: parts.credits.clone(),
        clock: settings.clock.clone(),
        metrics: service.metrics_handle(),
        pending_after: settings.protocol.recovery_after,
        release: {
            let voids = service.void_release();
            Arc::new(move |voided| voids.release(voided))
        },
    };
    Some(tokio::spawn(recovery.run()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lost_supervisor_is_noticed_with_its_reason_or_by_its_silence() {
        let (sender, mut fatal) = watch::channel(None);
        sender.send_replace(Some("VoucherShard(3) could not be restarted".to_owned()));
        assert_eq!(
            supervision_lost(&mut fatal).await,
            "VoucherShard(3) could not be restarted"
        );

        let (sender, mut fatal) = watch::channel::<Option<String>>(None);
        drop(sender); // The supervisor stopped, for whatever reason.
        assert_eq!(
            supervision_lost(&mut fatal).await,
            "the actor supervisor stopped"
        );
    }
}
