//! The per-phone redemption rate limit (a GCRA from `governor`).
//!
//! A person retrying a timed-out redemption stays far below the default rate; a
//! script hammering redeem for one phone number gets 429 with `Retry-After`
//! before it costs an actor message or a ledger read. The limiter keeps state only
//! for phones seen recently: a sweep forgets every phone whose allowance is full
//! again, so memory follows the hammering phones, not the crowd.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use voucherd_core::domain::PhoneNumber;
use voucherd_core::error::{Error, Result};
use voucherd_core::limits::RATE_LIMIT_SWEEP_INTERVAL_MS;

/// Redemptions per phone: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneRate {
    pub per_second: u32,
    pub burst: u32,
}

/// A redemption rate limit keyed by phone number.
pub struct PhoneRateLimiter {
    limiter: RateLimiter<u64, DefaultKeyedStateStore<u64>, DefaultClock>,
    clock: DefaultClock,
}

impl PhoneRateLimiter {
    /// `None` when the rate is 0 (the limit is off).
    pub fn new(rate: PhoneRate) -> Option<Arc<Self>> {
        let per_second = NonZeroU32::new(rate.per_second)?;
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(per_second);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Some(Arc::new(Self {
            limiter: RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }))
    }

    /// Takes one attempt from the phone's allowance, or says how long to wait.
    pub fn check(&self, phone: PhoneNumber) -> Result<()> {
        self.limiter
            .check_key(&phone.stored())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                Error::RateLimited {
                    retry_after_secs: whole_seconds_at_least_one(wait),
                }
            })
    }

    /// Phones the limiter holds state for now.
    pub fn tracked_phones(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets phones whose allowance is full again, every
    /// [`RATE_LIMIT_SWEEP_INTERVAL_MS`], until the limiter is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval(Duration::from_millis(RATE_LIMIT_SWEEP_INTERVAL_MS));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                limiter.limiter.retain_recent();
                limiter.limiter.shrink_to_fit();
            }
        });
    }
}

fn whole_seconds_at_least_one(wait: Duration) -> u64 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phone_past_its_burst_is_told_when_to_retry() {
        let limiter = PhoneRateLimiter::new(PhoneRate {
            per_second: 1,
            burst: 3,
        })
        .expect("a non-zero rate makes a limiter");
        let phone = PhoneNumber::parse("+989120000001").unwrap();
        let other = PhoneNumber::parse("+989120000002").unwrap();
        for _ in 0..3 {
            limiter.check(phone).expect("within the burst");
        }
        match limiter.check(phone) {
            Err(Error::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("expected RateLimited, got {other:?}"),
        }
        // Other phones have their own allowance.
        limiter.check(other).expect("another phone is not limited");
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        assert!(PhoneRateLimiter::new(PhoneRate {
            per_second: 0,
            burst: 10
        })
        .is_none());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_at_least_one(Duration::from_millis(1_001)), 2);
    }
}
