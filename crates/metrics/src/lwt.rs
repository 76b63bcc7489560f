//! Metrics of the ScyllaDB ledger's lightweight transactions (LWT): how each
//! conditional write answered, how the unknown ones were settled by a serial
//! read, and how long one took.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// How one LWT answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum LwtResult {
    applied,
    not_applied,
    /// A timeout or a lost connection after sending: settled by a serial read.
    unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LwtLabels {
    result: LwtResult,
}

/// Handles to the LWT metrics.
pub struct LwtMetrics {
    outcomes: Family<LwtLabels, Counter>,
    serial_reads: Counter,
    resolved: Counter,
    duration: Histogram,
}

impl LwtMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let outcomes = Family::<LwtLabels, Counter>::default();
        registry.register(
            "lwt_outcomes",
            "Conditional writes (LWT) of the ScyllaDB ledger, by answer (unknown: timed out or lost after sending; a serial read settles it)",
            outcomes.clone(),
        );
        for result in [
            LwtResult::applied,
            LwtResult::not_applied,
            LwtResult::unknown,
        ] {
            let _ = outcomes.get_or_create(&LwtLabels { result });
        }
        let serial_reads = Counter::default();
        registry.register(
            "lwt_serial_reads",
            "Serial reads of the ScyllaDB ledger (each settles an unknown LWT outcome or reads a row as the last Paxos round left it)",
            serial_reads.clone(),
        );
        let resolved = Counter::default();
        registry.register(
            "lwt_unknowns_resolved",
            "Unknown LWT outcomes settled by a later serial read of their partition (unknown minus this: still in doubt)",
            resolved.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register_with_unit(
            "lwt_duration",
            "Time of one conditional write (LWT) of the ScyllaDB ledger",
            Unit::Seconds,
            duration.clone(),
        );
        LwtMetrics {
            outcomes,
            serial_reads,
            resolved,
            duration,
        }
    }

    /// One LWT answered `result` after `took`.
    pub fn observe(&self, result: LwtResult, took: Duration) {
        self.outcomes.get_or_create(&LwtLabels { result }).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// `unknowns` unknown outcomes were settled by a serial read.
    pub fn resolved(&self, unknowns: u64) {
        self.resolved.inc_by(unknowns);
    }

    /// One serial read was made.
    pub fn serial_read(&self) {
        self.serial_reads.inc();
    }
}
