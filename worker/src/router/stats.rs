//! Live provider statistics from real traffic (time to first token, output throughput), the
//! breaker and any `Retry-After` cool-down. One `ProviderBoard` lives in a Durable Object so every
//! isolate sees the same numbers; requests read a snapshot and report their attempts back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::breaker::{Admission, Breaker};
use super::config::BreakerConfig;

/// Weight of the newest sample in the moving averages.
const EWMA_ALPHA: f64 = 0.2;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderHealth {
    pub breaker: Breaker,
    /// No new requests before this time (a 429's `Retry-After`).
    pub cooldown_until_ms: u64,
    pub ttft_ms: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub successes: u64,
    pub failures: u64,
}

/// What one attempt did, as the relay reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub provider: String,
    /// The attempt produced its answer (or its part of it) without a provider fault.
    pub ok: bool,
    /// Counts against the provider's breaker (a caller's error or a lost hedge does not).
    pub provider_fault: bool,
    pub ttft_ms: Option<u64>,
    /// Output tokens per second after the first token, when the stream ran long enough to tell.
    pub tokens_per_second: Option<f64>,
    /// A 429's `Retry-After` (or a default) in milliseconds.
    pub retry_after_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderBoard {
    pub providers: BTreeMap<String, ProviderHealth>,
}

impl ProviderBoard {
    pub fn health(&self, provider: &str) -> ProviderHealth {
        self.providers.get(provider).cloned().unwrap_or_default()
    }

    /// Whether a new request may use `provider` now.
    pub fn admission(&self, provider: &str, now_ms: u64) -> Admission {
        let health = self.health(provider);
        if health.cooldown_until_ms > now_ms {
            return Admission::Deny;
        }
        health.breaker.admission(now_ms)
    }

    pub fn record(&mut self, report: &AttemptReport, now_ms: u64, config: &BreakerConfig) {
        let health = self.providers.entry(report.provider.clone()).or_default();
        if let Some(ms) = report.retry_after_ms {
            health.cooldown_until_ms = health.cooldown_until_ms.max(now_ms + ms);
        }
        if let Some(ttft) = report.ttft_ms {
            health.ttft_ms = Some(ewma(health.ttft_ms, ttft as f64));
        }
        if let Some(tps) = report
            .tokens_per_second
            .filter(|t| t.is_finite() && *t > 0.0)
        {
            health.tokens_per_second = Some(ewma(health.tokens_per_second, tps));
        }
        if report.ok {
            health.successes += 1;
            health.breaker.on_success();
        } else if report.provider_fault {
            health.failures += 1;
            health.breaker.on_failure(now_ms, config);
        }
    }
}

fn ewma(previous: Option<f64>, sample: f64) -> f64 {
    match previous {
        Some(p) => p + EWMA_ALPHA * (sample - p),
        None => sample,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(provider: &str, ok: bool) -> AttemptReport {
        AttemptReport {
            provider: provider.into(),
            ok,
            provider_fault: !ok,
            ttft_ms: ok.then_some(100),
            tokens_per_second: ok.then_some(50.0),
            retry_after_ms: None,
        }
    }

    #[test]
    fn averages_ttft_and_throughput_and_drives_the_breaker() {
        let config = BreakerConfig {
            failure_threshold: 2,
            open_ms: 1000,
        };
        let mut board = ProviderBoard::default();
        board.record(&report("a", true), 0, &config);
        board.record(
            &AttemptReport {
                ttft_ms: Some(200),
                tokens_per_second: Some(100.0),
                ..report("a", true)
            },
            1,
            &config,
        );
        let a = board.health("a");
        assert_eq!(a.ttft_ms, Some(120.0));
        assert_eq!(a.tokens_per_second, Some(60.0));
        assert_eq!(a.successes, 2);
        board.record(&report("a", false), 2, &config);
        board.record(&report("a", false), 3, &config);
        assert_eq!(board.admission("a", 4), Admission::Deny);
        assert_eq!(board.admission("a", 1003), Admission::Probe);
        assert_eq!(board.admission("unknown", 0), Admission::Allow);
    }

    #[test]
    fn retry_after_cools_a_provider_down_without_opening_its_breaker() {
        let config = BreakerConfig::default();
        let mut board = ProviderBoard::default();
        let r = AttemptReport {
            retry_after_ms: Some(2000),
            provider_fault: false,
            ..report("a", false)
        };
        board.record(&r, 1000, &config);
        assert_eq!(board.admission("a", 2999), Admission::Deny);
        assert_eq!(board.admission("a", 3000), Admission::Allow);
        assert_eq!(board.health("a").breaker, Breaker::default());
    }
}
