//! Metrics of the redemption protocol across two services (split mode): the
//! credits the voucher service sends and their answers, the pending backlog,
//! recovery and voided redemptions.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use voucherd_core::redemption::{CreditAnswer, RecoveryPass};

/// How the wallet answered one credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum CreditResult {
    applied,
    refused,
    unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CreditLabels {
    result: CreditResult,
}

/// Handles to the protocol's metrics.
pub struct ProtocolMetrics {
    credits: Family<CreditLabels, Counter>,
    call_credits: Histogram,
    call_duration: Histogram,
    pending_backlog: Gauge,
    pending_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    recovered: Counter,
    voided: Counter,
    recovery_passes: Counter,
}

impl ProtocolMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let credits = Family::<CreditLabels, Counter>::default();
        registry.register(
            "wallet_credits",
            "Credits sent to the wallet service, by its answer (unknown: the call failed or timed out; asked again by recovery)",
            credits.clone(),
        );
        for result in [
            CreditResult::applied,
            CreditResult::refused,
            CreditResult::unknown,
        ] {
            let _ = credits.get_or_create(&CreditLabels { result });
        }
        let call_credits = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register(
            "wallet_call_credits",
            "Credits carried by one call to the wallet service",
            call_credits.clone(),
        );
        let call_duration = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register_with_unit(
            "wallet_call_duration",
            "Time of one call to the wallet service",
            Unit::Seconds,
            call_duration.clone(),
        );
        let pending_backlog = Gauge::default();
        registry.register(
            "redemptions_pending_backlog",
            "Redemptions pending past the recovery threshold, as the last recovery pass found them (at most one pass's worth)",
            pending_backlog.clone(),
        );
        let pending_oldest_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "redemptions_pending_oldest_age",
            "Age of the oldest pending redemption the last recovery pass found (0 when none)",
            Unit::Seconds,
            pending_oldest_age.clone(),
        );
        let recovered = Counter::default();
        registry.register(
            "redemptions_recovered",
            "Pending redemptions that recovery settled (credited or void)",
            recovered.clone(),
        );
        let voided = Counter::default();
        registry.register(
            "redemptions_voided",
            "Redemptions voided because the wallet refused their credit for good; slot and user key were released",
            voided.clone(),
        );
        let recovery_passes = Counter::default();
        registry.register(
            "recovery_passes",
            "Recovery passes run",
            recovery_passes.clone(),
        );
        Self {
            credits,
            call_credits,
            call_duration,
            pending_backlog,
            pending_oldest_age,
            recovered,
            voided,
            recovery_passes,
        }
    }

    /// One call to the wallet service and its answers.
    pub fn observe_call(&self, answers: &[CreditAnswer], elapsed: Duration) {
        self.call_credits.observe(answers.len() as f64);
        self.call_duration.observe(elapsed.as_secs_f64());
        for answer in answers {
            let result = match answer {
                CreditAnswer::Applied { .. } => CreditResult::applied,
                CreditAnswer::Refused { .. } => CreditResult::refused,
                CreditAnswer::Unknown => CreditResult::unknown,
            };
            self.credits.get_or_create(&CreditLabels { result }).inc();
        }
    }

    /// A redemption voided (on the request path or by recovery).
    pub fn count_voided(&self) {
        self.voided.inc();
    }

    /// What a recovery pass found and did; `oldest_age` of its oldest redemption.
    pub fn observe_recovery(&self, pass: &RecoveryPass, oldest_age: Duration) {
        self.recovery_passes.inc();
        self.pending_backlog.set(pass.examined as i64);
        self.pending_oldest_age.set(oldest_age.as_secs_f64());
        // Voided redemptions are counted where they are released (once per claim).
        self.recovered.inc_by((pass.credited + pass.voided) as u64);
    }
}
