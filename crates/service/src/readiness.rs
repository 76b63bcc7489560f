//! Whether this instance should get traffic, and if not, why.
//!
//! `/readyz` answers 503 with the names of every reason that holds, so a load
//! balancer drains the instance and an operator sees the cause. Some reasons are
//! raised and cleared by the part that knows (shutdown, the actor supervisor);
//! the ledger's are read from the ledger when asked (see
//! [`voucherd_core::ledger::Durable::health`]).

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

use voucherd_core::ledger::LedgerHealth;

/// One reason not to send this instance traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotReadyReason {
    /// SIGTERM arrived: the instance is draining.
    Draining,
    /// The embedded ledger cannot write (a full disk, an I/O error) and is
    /// recovering; writes get 503.
    LedgerUnwritable,
    /// The SQL ledger's database does not answer.
    DatabaseUnreachable,
    /// A voucher shard or wallet actor is down and its restart is being retried;
    /// requests it owns get 503.
    ActorRestarting,
    /// The actors cannot be restored (restart budget spent, or their supervisor
    /// stopped): the process is stopping with an error.
    SupervisorFailed,
}

impl NotReadyReason {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [NotReadyReason; 5] = [
        NotReadyReason::Draining,
        NotReadyReason::LedgerUnwritable,
        NotReadyReason::DatabaseUnreachable,
        NotReadyReason::ActorRestarting,
        NotReadyReason::SupervisorFailed,
    ];

    /// The name `/readyz` and the metrics give it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReadyReason::Draining => "draining",
            NotReadyReason::LedgerUnwritable => "ledger_unwritable",
            NotReadyReason::DatabaseUnreachable => "database_unreachable",
            NotReadyReason::ActorRestarting => "actor_restarting",
            NotReadyReason::SupervisorFailed => "supervisor_failed",
        }
    }

    /// The reasons an instance raises itself, in the order `/readyz` lists them.
    const RAISED: [NotReadyReason; 3] = [
        NotReadyReason::Draining,
        NotReadyReason::ActorRestarting,
        NotReadyReason::SupervisorFailed,
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The reasons raised by the parts of the instance, as one set of flags.
#[derive(Debug, Default)]
pub struct Readiness {
    raised: AtomicU8,
}

impl Readiness {
    pub fn raise(&self, reason: NotReadyReason) {
        self.raised.fetch_or(reason.bit(), Ordering::AcqRel);
    }

    pub fn clear(&self, reason: NotReadyReason) {
        self.raised.fetch_and(!reason.bit(), Ordering::AcqRel);
    }

    /// Every reason that holds now: those raised, then the ledger's; empty when ready.
    pub fn reasons(&self, ledger: LedgerHealth) -> Vec<NotReadyReason> {
        let raised = self.raised.load(Ordering::Acquire);
        let mut reasons: Vec<NotReadyReason> = NotReadyReason::RAISED
            .into_iter()
            .filter(|reason| raised & reason.bit() != 0)
            .collect();
        match ledger {
            LedgerHealth::Healthy => {}
            LedgerHealth::Unwritable => reasons.push(NotReadyReason::LedgerUnwritable),
            LedgerHealth::Unreachable => reasons.push(NotReadyReason::DatabaseUnreachable),
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_the_readyz_names() {
        for reason in NotReadyReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }

    #[test]
    fn reasons_are_raised_cleared_and_named() {
        let readiness = Readiness::default();
        assert!(readiness.reasons(LedgerHealth::Healthy).is_empty());
        readiness.raise(NotReadyReason::ActorRestarting);
        readiness.raise(NotReadyReason::Draining);
        assert_eq!(
            readiness.reasons(LedgerHealth::Unwritable),
            [
                NotReadyReason::Draining,
                NotReadyReason::ActorRestarting,
                NotReadyReason::LedgerUnwritable
            ]
        );
        readiness.clear(NotReadyReason::ActorRestarting);
        assert_eq!(
            readiness.reasons(LedgerHealth::Unreachable),
            [
                NotReadyReason::Draining,
                NotReadyReason::DatabaseUnreachable
            ]
        );
        assert_eq!(
            serde_json::to_string(&NotReadyReason::LedgerUnwritable).unwrap(),
            "\"ledger_unwritable\""
        );
    }
}
