//! Per-provider circuit breaker: closed → (N consecutive failures) → open → (after `open_ms`) requests
//! may probe it (half-open) → closed on the first success, open again on a failure.

use serde::{Deserialize, Serialize};

use super::config::BreakerConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Breaker {
    Closed {
        consecutive_failures: u32,
    },
    /// Denies traffic until `until_ms`, then lets requests probe (half-open).
    Open {
        until_ms: u64,
    },
}

/// What the breaker lets a new request do with this provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Allowed as the probe that decides whether the breaker closes.
    Probe,
    Deny,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::Closed {
            consecutive_failures: 0,
        }
    }
}

impl Breaker {
    pub fn admission(&self, now_ms: u64) -> Admission {
        match *self {
            Breaker::Closed { .. } => Admission::Allow,
            Breaker::Open { until_ms } if now_ms >= until_ms => Admission::Probe,
            Breaker::Open { .. } => Admission::Deny,
        }
    }

    pub fn on_success(&mut self) {
        *self = Breaker::Closed {
            consecutive_failures: 0,
        };
    }

    pub fn on_failure(&mut self, now_ms: u64, config: &BreakerConfig) {
        *self = match *self {
            Breaker::Closed {
                consecutive_failures,
            } if consecutive_failures + 1 < config.failure_threshold => Breaker::Closed {
                consecutive_failures: consecutive_failures + 1,
            },
            _ => Breaker::Open {
                until_ms: now_ms + config.open_ms,
            },
        };
    }

    pub fn name(&self, now_ms: u64) -> &'static str {
        match self.admission(now_ms) {
            Admission::Allow => "closed",
            Admission::Probe => "half_open",
            Admission::Deny => "open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_after_open_ms_and_closes_on_success() {
        let config = BreakerConfig {
            failure_threshold: 3,
            open_ms: 1000,
        };
        let mut b = Breaker::default();
        b.on_failure(0, &config);
        b.on_failure(1, &config);
        assert_eq!(
            b,
            Breaker::Closed {
                consecutive_failures: 2
            }
        );
        assert_eq!(b.admission(2), Admission::Allow);
        b.on_failure(10, &config);
        assert_eq!(b, Breaker::Open { until_ms: 1010 });
        assert_eq!((b.admission(500), b.name(500)), (Admission::Deny, "open"));
        assert_eq!(
            (b.admission(1010), b.name(1010)),
            (Admission::Probe, "half_open")
        );
        b.on_success();
        assert_eq!(b.admission(1012), Admission::Allow);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let config = BreakerConfig {
            failure_threshold: 2,
            open_ms: 100,
        };
        let mut b = Breaker::default();
        b.on_failure(0, &config);
        b.on_success();
        b.on_failure(1, &config);
        assert_eq!(
            b,
            Breaker::Closed {
                consecutive_failures: 1
            },
            "success resets the count"
        );
        b.on_failure(2, &config);
        assert_eq!(b, Breaker::Open { until_ms: 102 });
        assert_eq!(b.admission(102), Admission::Probe);
        b.on_failure(103, &config);
        assert_eq!(
            b,
            Breaker::Open { until_ms: 203 },
            "a failed probe opens it again"
        );
        assert_eq!(b.admission(150), Admission::Deny);
    }
}
