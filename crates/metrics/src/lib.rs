//! Every metric of voucherd, registered once, with typed, bounded label sets.
//!
//! Names get the `voucherd_` prefix; the library adds `_total` and unit suffixes.
//! The per-voucher gauge is labelled by code: it has a series only for vouchers
//! with slots left, and at most [`MAX_VOUCHER_METRIC_SERIES`] of them.

use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use voucherd_core::limits::MAX_VOUCHER_METRIC_SERIES;

mod lwt;
mod protocol;

pub use lwt::{LwtMetrics, LwtResult};
pub use protocol::ProtocolMetrics;

/// The routes of the HTTP API, as a bounded label. Which request is which route
/// is decided by the route table (`http::endpoints`), where each route names its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Route {
    create_voucher,
    get_voucher,
    redeem,
    report,
    get_redemption,
    create_profile,
    get_profile,
    transaction,
    credits,
    healthz,
    readyz,
    metrics,
    openapi,
    other,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Route,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Route,
}

/// What became of a redemption request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RedemptionOutcome {
    /// Won a slot; the credit is durable.
    redeemed,
    /// Won a slot; the credit was not confirmed in time (202, split mode).
    pending,
    /// Won a slot, but the wallet refused the credit for good: voided.
    voided,
    /// Rejected from memory: the user already holds it.
    already_redeemed,
    /// Rejected from memory: no slot left.
    exhausted,
    not_found,
    not_active,
    /// Turned away by admission control (429).
    overloaded,
    /// The phone number exceeded its redemption rate (429).
    rate_limited,
    /// A bounded wait ran out or the ledger failed (503/500).
    failed,
}

impl RedemptionOutcome {
    const ALL: [RedemptionOutcome; 10] = [
        RedemptionOutcome::redeemed,
        RedemptionOutcome::pending,
        RedemptionOutcome::voided,
        RedemptionOutcome::already_redeemed,
        RedemptionOutcome::exhausted,
        RedemptionOutcome::not_found,
        RedemptionOutcome::not_active,
        RedemptionOutcome::overloaded,
        RedemptionOutcome::rate_limited,
        RedemptionOutcome::failed,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: RedemptionOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VoucherLabels {
    code: String,
}

/// Where a voucher shard got its slots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SlotSourceKind {
    /// Redis leases (the normal multi-instance mode).
    redis,
    /// Slots read from the ledger directly (single instance, or Redis unreachable).
    ledger,
}

impl SlotSourceKind {
    const ALL: [SlotSourceKind; 2] = [SlotSourceKind::redis, SlotSourceKind::ledger];
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SourceLabels {
    source: SlotSourceKind,
}

/// The registry and handles to every metric.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram>,
    redemptions: Family<OutcomeLabels, Counter>,
    remaining_slots: Family<VoucherLabels, Gauge>,
    /// Number of series in `remaining_slots`; held while one is added or
    /// removed, so the cap holds.
    remaining_slots_series: Mutex<usize>,
    commit_batch_operations: Histogram,
    commit_duration: Histogram,
    ledger_write_errors: Counter,
    shard_restarts: Counter,
    leases: Family<SourceLabels, Counter>,
    slots_leased: Family<SourceLabels, Counter>,
    lease_duration: Family<SourceLabels, Histogram>,
    slots_returned: Counter,
    slots_reclaimed: Counter,
    slots_found_taken: Counter,
    slot_source_degraded: Gauge,
    ready: Gauge,
    not_ready: Family<ReasonLabels, Gauge>,
    /// Connections, accept errors and timeouts at the HTTP edge.
    pub edge: EdgeMetrics,
    /// Credits, the pending backlog and recovery (split mode).
    pub protocol: ProtocolMetrics,
    /// Lightweight transactions of the ScyllaDB ledger.
    pub lwt: LwtMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("voucherd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~6.5 s.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
        });
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route",
            Unit::Seconds,
            request_duration.clone(),
        );
        let redemptions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "redemptions",
            "Redemption requests by outcome",
            redemptions.clone(),
        );
        let remaining_slots = Family::<VoucherLabels, Gauge>::default();
        registry.register(
            "voucher_remaining_slots",
            format!(
                "Slots of a voucher not yet redeemed, as this instance last saw them; \
                 only vouchers with slots left, at most {MAX_VOUCHER_METRIC_SERIES} of them \
                 (further vouchers are not exported individually)"
            ),
            remaining_slots.clone(),
        );
        let commit_batch_operations = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "ledger_commit_batch_operations",
            "Operations written by one durable ledger commit",
            commit_batch_operations.clone(),
        );
        let commit_duration = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register_with_unit(
            "ledger_commit_duration",
            "Time to apply and durably commit one ledger batch",
            Unit::Seconds,
            commit_duration.clone(),
        );
        let ledger_write_errors = Counter::default();
        registry.register(
            "ledger_write_errors",
            "Ledger writes (commits, recovery probes, reopens) that failed with an I/O error",
            ledger_write_errors.clone(),
        );
        let shard_restarts = Counter::default();
        registry.register(
            "actor_restarts",
            "Voucher shard and wallet actors restarted by their supervisor",
            shard_restarts.clone(),
        );
        let leases = Family::<SourceLabels, Counter>::default();
        registry.register(
            "slot_leases",
            "Slot leases taken, by source",
            leases.clone(),
        );
        let slots_leased = Family::<SourceLabels, Counter>::default();
        registry.register(
            "slots_leased",
            "Slots leased, by source",
            slots_leased.clone(),
        );
        let lease_duration = Family::<SourceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register_with_unit(
            "slot_lease_duration",
            "Time to take one slot lease, by source",
            Unit::Seconds,
            lease_duration.clone(),
        );
        let slots_returned = Counter::default();
        registry.register(
            "slots_returned",
            "Leased slots given back unused (failed claims, shutdown)",
            slots_returned.clone(),
        );
        let slots_reclaimed = Counter::default();
        registry.register(
            "slots_reclaimed",
            "Slots put back in the Redis pool by reconciliation with the ledger (expired leases, lost writes)",
            slots_reclaimed.clone(),
        );
        let slots_found_taken = Counter::default();
        registry.register(
            "slots_found_taken",
            "Claims whose leased slot the ledger already held (a slot source behind the ledger, e.g. after a Redis failover to a lagging replica; each costs the request a retry)",
            slots_found_taken.clone(),
        );
        let slot_source_degraded = Gauge::default();
        registry.register(
            "slot_source_degraded",
            "1 while Redis is unreachable and slots come from the ledger directly",
            slot_source_degraded.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz would answer 200 (read at each scrape)",
            ready.clone(),
        );
        let not_ready = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "not_ready",
            "1 for each reason /readyz would give now (read at each scrape)",
            not_ready.clone(),
        );
        let edge = EdgeMetrics::register(&mut registry);
        let protocol = ProtocolMetrics::register(&mut registry);
        let lwt = LwtMetrics::register(&mut registry);
        // Every series of a bounded label set exists from the start, at zero:
        // rates work from the first event and dashboards show 0, not no data.
        for outcome in RedemptionOutcome::ALL {
            let _ = redemptions.get_or_create(&OutcomeLabels { outcome });
        }
        for source in SlotSourceKind::ALL {
            let _ = leases.get_or_create(&SourceLabels { source });
            let _ = slots_leased.get_or_create(&SourceLabels { source });
        }
        Self {
            registry,
            edge,
            protocol,
            lwt,
            leases,
            slots_leased,
            lease_duration,
            slots_returned,
            slots_reclaimed,
            slots_found_taken,
            slot_source_degraded,
            ready,
            not_ready,
            requests,
            request_duration,
            redemptions,
            remaining_slots,
            remaining_slots_series: Mutex::new(0),
            commit_batch_operations,
            commit_duration,
            ledger_write_errors,
            shard_restarts,
        }
    }

    pub fn observe_request(&self, route: Route, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_redemption(&self, outcome: RedemptionOutcome) {
        self.redemptions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Sets a voucher's remaining slots. A sold-out voucher's series is removed;
    /// a voucher without a series gets one only while fewer than
    /// [`MAX_VOUCHER_METRIC_SERIES`] exist.
    pub fn set_remaining_slots(&self, code: &str, remaining: u32) {
        let labels = VoucherLabels {
            code: code.to_owned(),
        };
        if remaining > 0 {
            if let Some(gauge) = self.remaining_slots.get(&labels) {
                gauge.set(i64::from(remaining));
                return;
            }
        }
        let mut series = self.remaining_slots_series.lock();
        if remaining == 0 {
            if self.remaining_slots.remove(&labels) {
                *series -= 1;
            }
        } else if *series < MAX_VOUCHER_METRIC_SERIES {
            // Another call may have added it since the look-up above.
            if self.remaining_slots.get(&labels).is_none() {
                *series += 1;
            }
            self.remaining_slots
                .get_or_create(&labels)
                .set(i64::from(remaining));
        }
    }

    pub fn observe_ledger_commit(&self, operations: usize, elapsed: Duration) {
        self.commit_batch_operations.observe(operations as f64);
        self.commit_duration.observe(elapsed.as_secs_f64());
    }

    pub fn count_ledger_write_error(&self) {
        self.ledger_write_errors.inc();
    }

    pub fn count_actor_restart(&self) {
        self.shard_restarts.inc();
    }

    pub fn observe_lease(&self, source: SlotSourceKind, slots: usize, elapsed: Duration) {
        let labels = SourceLabels { source };
        self.leases.get_or_create(&labels).inc();
        self.slots_leased
            .get_or_create(&labels)
            .inc_by(slots as u64);
        self.lease_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn count_slots_returned(&self, slots: usize) {
        self.slots_returned.inc_by(slots as u64);
    }

    pub fn count_slots_reclaimed(&self, slots: usize) {
        self.slots_reclaimed.inc_by(slots as u64);
    }

    pub fn count_slot_found_taken(&self) {
        self.slots_found_taken.inc();
    }

    pub fn set_slot_source_degraded(&self, degraded: bool) {
        self.slot_source_degraded.set(i64::from(degraded));
    }

    /// The Prometheus text exposition of every metric.
    /// Records readiness: `reasons` are every possible reason with whether
    /// it holds now.
    pub fn set_readiness(&self, reasons: impl IntoIterator<Item = (&'static str, bool)>) {
        let mut ready = true;
        for (reason, holds) in reasons {
            ready &= !holds;
            self.not_ready
                .get_or_create(&ReasonLabels { reason })
                .set(i64::from(holds));
        }
        self.ready.set(i64::from(ready));
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Why the HTTP edge closed or refused a connection, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ConnectionEnd {
    /// Past the connection cap: closed right after accept.
    refused_over_cap,
    /// No request for the idle timeout.
    idle_timeout,
    /// A request head not complete within the header timeout.
    header_timeout,
}

impl ConnectionEnd {
    const ALL: [ConnectionEnd; 3] = [
        ConnectionEnd::refused_over_cap,
        ConnectionEnd::idle_timeout,
        ConnectionEnd::header_timeout,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectionEndLabels {
    reason: ConnectionEnd,
}

/// What failed in `accept`, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AcceptFailure {
    /// EMFILE or ENFILE: no file descriptor left.
    descriptors_exhausted,
    /// ECONNABORTED and the like: the peer left before accept.
    connection_aborted,
    other,
}

impl AcceptFailure {
    const ALL: [AcceptFailure; 3] = [
        AcceptFailure::descriptors_exhausted,
        AcceptFailure::connection_aborted,
        AcceptFailure::other,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AcceptFailureLabels {
    kind: AcceptFailure,
}

/// Metrics of the HTTP edge (connections and their limits).
pub struct EdgeMetrics {
    open: Gauge,
    accepted: Counter,
    ended: Family<ConnectionEndLabels, Counter>,
    accept_errors: Family<AcceptFailureLabels, Counter>,
}

impl EdgeMetrics {
    fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Client connections open now",
            open.clone(),
        );
        let accepted = Counter::default();
        registry.register(
            "http_connections_accepted",
            "Client connections accepted (including those refused over the cap)",
            accepted.clone(),
        );
        let ended = Family::<ConnectionEndLabels, Counter>::default();
        registry.register(
            "http_connections_closed_by_server",
            "Connections the server refused or closed on a limit, by reason",
            ended.clone(),
        );
        let accept_errors = Family::<AcceptFailureLabels, Counter>::default();
        registry.register(
            "http_accept_errors",
            "Failed accept calls, by kind; the server backs off and keeps accepting",
            accept_errors.clone(),
        );
        for reason in ConnectionEnd::ALL {
            let _ = ended.get_or_create(&ConnectionEndLabels { reason });
        }
        for kind in AcceptFailure::ALL {
            let _ = accept_errors.get_or_create(&AcceptFailureLabels { kind });
        }
        Self {
            open,
            accepted,
            ended,
            accept_errors,
        }
    }

    pub fn connection_opened(&self) {
        self.accepted.inc();
        self.open.inc();
    }

    pub fn connection_closed(&self) {
        self.open.dec();
    }

    pub fn count_connection_end(&self, reason: ConnectionEnd) {
        self.ended
            .get_or_create(&ConnectionEndLabels { reason })
            .inc();
    }

    pub fn count_accept_error(&self, kind: AcceptFailure) {
        self.accept_errors
            .get_or_create(&AcceptFailureLabels { kind })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remaining_series(metrics: &Metrics) -> usize {
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with("voucherd_voucher_remaining_slots{"))
            .count()
    }

    #[test]
    fn remaining_slot_series_are_capped_and_sold_out_vouchers_leave() {
        let metrics = Metrics::new();
        for n in 0..MAX_VOUCHER_METRIC_SERIES + 10 {
            metrics.set_remaining_slots(&format!("V{n}"), 5);
        }
        assert_eq!(remaining_series(&metrics), MAX_VOUCHER_METRIC_SERIES);
        metrics.set_remaining_slots("V0", 0);
        assert_eq!(remaining_series(&metrics), MAX_VOUCHER_METRIC_SERIES - 1);
        // The freed place goes to the next voucher that reports.
        metrics.set_remaining_slots(&format!("V{MAX_VOUCHER_METRIC_SERIES}"), 4);
        assert!(metrics.encode().contains(&format!(
            "voucherd_voucher_remaining_slots{{code=\"V{MAX_VOUCHER_METRIC_SERIES}\"}} 4"
        )));
        // A voucher with a series keeps it while it has slots.
        metrics.set_remaining_slots("V1", 3);
        assert!(metrics
            .encode()
            .contains("voucherd_voucher_remaining_slots{code=\"V1\"} 3"));
        assert_eq!(remaining_series(&metrics), MAX_VOUCHER_METRIC_SERIES);
    }
}
