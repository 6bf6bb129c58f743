//! Per-endpoint rate limits: `requests_per_minute` and `tokens_per_minute` as token buckets,
//! as hosted APIs count them per key.
//!
//! A bucket refills at `per_minute / 60` per second and holds at most one second's worth (at
//! least one request's), so a run never sends a minute's budget in one burst, and starts
//! full. Tokens are not known before the answer: a request takes an estimate (its body's length
//! / 4 plus `max_tokens`) and the answer's `usage.total_tokens` settles the difference, which
//! may leave the bucket in debt: later requests then wait until it is paid back.

use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Units per second.
    rate: f64,
    /// The most the bucket holds.
    capacity: f64,
    /// What it holds now (negative: in debt).
    level: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket allowing `per_minute` units a minute.
    pub fn per_minute(per_minute: f64, now: Instant) -> Self {
        let rate = per_minute / 60.0;
        let capacity = rate.max(1.0);
        Self {
            rate,
            capacity,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.rate).min(self.capacity);
        self.at = now.max(self.at);
    }

    /// How long until `amount` can be taken (zero: now). An amount above the capacity waits
    /// only for a full bucket, so a long request is slowed, never refused for ever.
    pub fn wait_for(&mut self, amount: f64, now: Instant) -> Duration {
        self.refill(now);
        let need = amount.min(self.capacity);
        if self.level >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.level) / self.rate)
        }
    }

    /// Takes `amount` (call after [`Bucket::wait_for`] said zero).
    pub fn take(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level -= amount;
    }

    /// Corrects an estimate once the real amount is known (`used - estimated`, either sign).
    pub fn settle(&mut self, difference: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level - difference).min(self.capacity);
    }
}

/// One endpoint's limits.
#[derive(Debug, Default)]
pub struct RateLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl RateLimits {
    /// Limits from the options (None: unlimited).
    pub fn new(requests_per_minute: Option<f64>, tokens_per_minute: Option<f64>) -> Self {
        Self::starting(requests_per_minute, tokens_per_minute, Instant::now())
    }

    /// Limits whose buckets are full at `now`.
    pub fn starting(
        requests_per_minute: Option<f64>,
        tokens_per_minute: Option<f64>,
        now: Instant,
    ) -> Self {
        Self {
            requests: requests_per_minute.map(|r| Bucket::per_minute(r, now)),
            tokens: tokens_per_minute.map(|t| Bucket::per_minute(t, now)),
        }
    }

    /// Zero if one request of `tokens` (an estimate) fits both budgets now, or how long to
    /// wait until it does.
    pub fn check(&mut self, tokens: f64, now: Instant) -> Result<(), Duration> {
        let wait = self
            .requests
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0, now))
            .max(
                self.tokens
                    .as_mut()
                    .map_or(Duration::ZERO, |b| b.wait_for(tokens, now)),
            );
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    /// Takes one request and `tokens` (after [`RateLimits::check`] allowed it).
    pub fn take(&mut self, tokens: f64, now: Instant) {
        if let Some(b) = self.requests.as_mut() {
            b.take(1.0, now);
        }
        if let Some(b) = self.tokens.as_mut() {
            b.take(tokens, now);
        }
    }

    /// [`RateLimits::check`], then [`RateLimits::take`] if allowed.
    #[cfg(test)]
    pub fn try_take(&mut self, tokens: f64, now: Instant) -> Result<(), Duration> {
        self.check(tokens, now)?;
        self.take(tokens, now);
        Ok(())
    }

    /// The answer's real token count replaces the estimate.
    pub fn settle_tokens(&mut self, estimated: f64, used: f64, now: Instant) {
        if let Some(b) = self.tokens.as_mut() {
            b.settle(used - estimated, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_one_second_and_refills_at_its_rate() {
        let t0 = Instant::now();
        // 120 a minute: 2 a second, holding 2.
        let mut b = Bucket::per_minute(120.0, t0);
        for _ in 0..2 {
            assert_eq!(b.wait_for(1.0, t0), Duration::ZERO);
            b.take(1.0, t0);
        }
        assert_eq!(b.wait_for(1.0, t0), Duration::from_millis(500));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(b.wait_for(1.0, later), Duration::ZERO);
        // A long idle time does not bank more than the capacity.
        let much_later = t0 + Duration::from_secs(600);
        b.take(1.0, later);
        assert_eq!(b.wait_for(2.0, much_later), Duration::ZERO);
        b.take(2.0, much_later);
        assert!(b.wait_for(1.0, much_later) > Duration::ZERO);
    }

    #[test]
    fn tokens_are_settled_and_debt_is_paid_back_before_the_next_request() {
        let t0 = Instant::now();
        // 6,000 tokens a minute: 100 a second, holding 100.
        let mut l = RateLimits::starting(None, Some(6000.0), t0);
        assert!(l.try_take(50.0, t0).is_ok());
        // The answer used 250, not 50: 150 in debt.
        l.settle_tokens(50.0, 250.0, t0);
        let wait = l.try_take(50.0, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(l.try_take(50.0, t0 + Duration::from_secs(2)).is_ok());
        // An estimate above the capacity waits for a full bucket, not for ever.
        let t1 = t0 + Duration::from_secs(10);
        assert!(l.try_take(1_000.0, t1).is_ok());
        // Over-estimates give tokens back, up to the capacity.
        let mut l = RateLimits::starting(Some(60.0), Some(6000.0), t0);
        assert!(l.try_take(100.0, t0).is_ok());
        l.settle_tokens(100.0, 10.0, t0);
        // The token bucket has 90 again, but the request bucket (1 a second) is empty.
        assert_eq!(l.try_take(90.0, t0).unwrap_err(), Duration::from_secs(1));
    }
}
