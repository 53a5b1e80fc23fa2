use std::time::Duration;

/// How long to wait before the next attempt of a failed job.
///
/// Every delay gets up to ±20 % of random jitter so that jobs which failed together do not
/// retry together. Delays are capped at [`Backoff::MAX_DELAY`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed(Duration),
    /// `delay × n` before retry `n`.
    Linear(Duration),
    /// `delay × 2^(n-1)` before retry `n`.
    Exponential(Duration),
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential(Duration::from_secs(1))
    }
}

impl Backoff {
    /// The longest delay any policy produces.
    pub const MAX_DELAY: Duration = Duration::from_secs(3600);

    /// The delay before retry number `retry` (1 for the first retry), without jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let n = retry.max(1);
        let d = match *self {
            Backoff::Fixed(d) => d,
            Backoff::Linear(d) => d.saturating_mul(n),
            Backoff::Exponential(d) => d.saturating_mul(2u32.saturating_pow(n - 1)),
        };
        d.min(Self::MAX_DELAY)
    }

    /// The delay before retry number `retry`, with jitter applied.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry);
        // Uniform in [0.8, 1.2).
        let factor = 0.8 + fastrand::f64() * 0.4;
        base.mul_f64(factor).min(Self::MAX_DELAY)
    }

    /// The policy's name: `fixed`, `linear` or `exponential`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backoff::Fixed(_) => "fixed",
            Backoff::Linear(_) => "linear",
            Backoff::Exponential(_) => "exponential",
        }
    }

    /// The initial delay.
    pub fn initial(&self) -> Duration {
        match *self {
            Backoff::Fixed(d) | Backoff::Linear(d) | Backoff::Exponential(d) => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_grow_as_named() {
        let s = Duration::from_secs;
        assert_eq!(Backoff::Fixed(s(2)).base_delay(3), s(2));
        assert_eq!(Backoff::Linear(s(2)).base_delay(3), s(6));
        assert_eq!(Backoff::Exponential(s(2)).base_delay(1), s(2));
        assert_eq!(Backoff::Exponential(s(2)).base_delay(4), s(16));
        assert_eq!(Backoff::Exponential(s(2)).base_delay(40), Backoff::MAX_DELAY);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::Fixed(Duration::from_millis(1000));
        for _ in 0..1000 {
            let d = b.delay(1).as_millis();
            assert!((800..1200).contains(&d), "{d}");
        }
    }
}
