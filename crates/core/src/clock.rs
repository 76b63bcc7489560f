//! Where the service reads the time: voucher windows and redemption, voucher and
//! transaction timestamps all come from one injected [`Clock`], so tests can put
//! a voucher's window in the past or the future without waiting.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::Timestamp;

/// A source of the current time.
pub trait Clock: std::fmt::Debug + Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The real time of the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until it is moved: for tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn at(start: Timestamp) -> Self {
        Self {
            micros: AtomicI64::new(start.0),
        }
    }

    /// Moves the clock forward by `seconds`.
    pub fn advance_secs(&self, seconds: i64) {
        self.micros
            .fetch_add(seconds.saturating_mul(1_000_000), Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.micros.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at(Timestamp(1_000_000));
        assert_eq!(clock.now(), Timestamp(1_000_000));
        clock.advance_secs(60);
        assert_eq!(clock.now(), Timestamp(61_000_000));
    }
}
