//! The fault rates and protocol timings of one schedule, drawn from its seed so
//! that some schedules are calm and others stormy.

use crate::rng::Rng;

/// Per-mille probabilities (‰) and durations in virtual milliseconds.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// A credit call's request is lost on the way (the caller times out).
    pub drop_request: u64,
    /// The wallet applied the call but its reply is lost (the caller times out).
    pub lose_reply: u64,
    /// The network delivers the request a second time, up to `max_echo_ms` later.
    pub duplicate: u64,
    pub max_echo_ms: u64,
    /// One leg of a call is slower than the caller's timeout (it still lands).
    pub slow: u64,
    /// Longest ordinary one-way network delay.
    pub max_delay_ms: u64,
    /// The voucher service's timeout of one wallet call.
    pub call_timeout_ms: u64,
    /// The wallet answers one credit "overloaded" (Unknown, nothing applied).
    pub overloaded: u64,
    /// Mean time between wallet crashes, if the wallet crashes at all.
    pub wallet_crash_ms: Option<u64>,
    /// A credit in flight when the wallet crashes was committed before it died.
    pub crash_applies: u64,
    /// Mean time between voucher service crashes, if it crashes at all.
    pub voucher_crash_ms: Option<u64>,
    /// A voucher ledger write fails (not written, or written but answered failed).
    pub ledger_fault: u64,
    /// How long a client waits for its redemption before being told "pending".
    pub deadline_ms: u64,
    /// Recovery re-sends credits pending for longer than this.
    pub threshold_ms: u64,
    pub recovery_every_ms: u64,
    /// Redemptions per recovery pass.
    pub recovery_limit: usize,
    /// Voucher service instances each running a recovery loop.
    pub recovery_instances: u64,
}

impl Knobs {
    pub fn draw(rng: &mut Rng) -> Knobs {
        // 0 = calm (no faults at all) .. 3 = heavy.
        let storm = rng.below(4);
        let mut rate = |max: u64| rng.below(max * storm + 1);
        let (drop_request, lose_reply, duplicate) = (rate(60), rate(80), rate(150));
        let (slow, overloaded, ledger_fault) = (rate(80), rate(40), rate(15));
        let crashes =
            |rng: &mut Rng| (storm > 0 && rng.below(3) > 0).then(|| 300 + rng.below(1500));
        let wallet_crash_ms = crashes(rng);
        let voucher_crash_ms = crashes(rng);
        Knobs {
            drop_request,
            lose_reply,
            duplicate,
            max_echo_ms: 50 + rng.below(5_000),
            slow,
            max_delay_ms: 1 + rng.below(50),
            call_timeout_ms: 150 + rng.below(450),
            overloaded,
            wallet_crash_ms,
            crash_applies: rng.below(1_001),
            voucher_crash_ms,
            ledger_fault,
            deadline_ms: 50 + rng.below(1_500),
            threshold_ms: 50 + rng.below(2_000),
            recovery_every_ms: 100 + rng.below(900),
            recovery_limit: 1 + rng.below(6) as usize,
            recovery_instances: 1 + rng.below(2),
        }
    }
}
