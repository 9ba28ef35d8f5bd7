//! The one reconnect/restart backoff used everywhere: capped exponential with full jitter.

use std::time::Duration;

use crate::config::BackoffConfig;
use rand::Rng;

/// Delay generator. Never gives up: `next_delay` always returns a delay.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, attempt: 0 }
    }

    /// The delay before the next attempt: a random point in `[0, min(max, initial * 2^n)]`,
    /// never below a tenth of `initial`, so many bridges reconnecting at once spread out.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self
            .config
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.config.max);
        let floor = (self.config.initial / 10).min(ceiling);
        let span = ceiling.saturating_sub(floor).as_micros() as u64;
        let jitter = if span == 0 {
            0
        } else {
            rand::rng().random_range(0..=span)
        };
        floor + Duration::from_micros(jitter)
    }

    /// Call after a success so the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps the next delay, or returns early (with `false`) when `cancel` fires.
    pub async fn wait(&mut self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut backoff = Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        });
        for _ in 0..50 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(2), "{delay:?}");
            assert!(delay >= Duration::from_millis(10), "{delay:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
