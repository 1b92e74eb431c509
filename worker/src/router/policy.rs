//! Which providers to try, in which order: the policy comes from the model suffix
//! (`model:cheapest`, `model:fastest`, `model:<provider>`, plain `model` → the default policy).

use super::api::ApiError;
use super::breaker::Admission;
use super::config::{ModelOffer, Provider, RouterConfig};
use super::stats::ProviderBoard;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Cheapest,
    Fastest,
    /// Only this provider (retries, no failover to others).
    Pinned(String),
}

impl Policy {
    /// `cheapest`, `fastest` or a configured provider's name.
    pub fn parse_name(name: &str, config: &RouterConfig) -> Option<Policy> {
        match name {
            "cheapest" => Some(Policy::Cheapest),
            "fastest" => Some(Policy::Fastest),
            _ => config
                .provider(name)
                .map(|p| Policy::Pinned(p.name.clone())),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Policy::Cheapest => "cheapest",
            Policy::Fastest => "fastest",
            Policy::Pinned(p) => p,
        }
    }
}

/// A requested model resolved to a configured model and a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub model: String,
    pub policy: Policy,
}

impl Route {
    pub fn resolve(requested: &str, config: &RouterConfig) -> Result<Route, ApiError> {
        let known = config.model_names();
        // Model names may contain ':' themselves, so a suffix counts only when the rest is a model.
        if let Some((model, suffix)) = requested.rsplit_once(':') {
            if known.iter().any(|k| k == model) {
                let policy = Policy::parse_name(suffix, config).ok_or_else(|| {
                    ApiError::invalid_request(
                        format!("unknown routing suffix {suffix:?}: use :cheapest, :fastest or a provider name"),
                        Some("model"),
                    )
                })?;
                if let Policy::Pinned(p) = &policy {
                    if !config
                        .offers(model)
                        .iter()
                        .any(|(provider, _)| &provider.name == p)
                    {
                        return Err(ApiError::not_found(format!(
                            "provider {p:?} does not serve model {model:?}"
                        )));
                    }
                }
                return Ok(Route {
                    model: model.to_string(),
                    policy,
                });
            }
        }
        if known.iter().any(|k| k == requested) {
            let policy =
                Policy::parse_name(&config.default_policy, config).unwrap_or(Policy::Cheapest);
            let policy = match policy {
                // A pinned default provider that lacks this model falls back to the cheapest.
                Policy::Pinned(p)
                    if !config
                        .offers(requested)
                        .iter()
                        .any(|(provider, _)| provider.name == p) =>
                {
                    Policy::Cheapest
                }
                other => other,
            };
            return Ok(Route {
                model: requested.to_string(),
                policy,
            });
        }
        Err(ApiError::model_not_found(requested, &known))
    }
}

/// One provider to try for this request.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub provider: Provider,
    pub offer: ModelOffer,
}

/// Rough token count of a prompt (no tokenizer in the router): 4 bytes per token plus a few
/// tokens of chat-template overhead per message.
pub fn estimate_prompt_tokens(prompt_chars: usize, messages: usize) -> u64 {
    (prompt_chars as u64).div_ceil(4) + 4 * messages as u64
}

/// Output tokens assumed when ranking by cost or speed if the request sets no `max_tokens`.
pub const TYPICAL_OUTPUT_TOKENS: u64 = 256;
/// What an unmeasured provider is assumed to do (so it gets tried and measured).
const UNMEASURED_TTFT_MS: f64 = 500.0;
const UNMEASURED_TOKENS_PER_SECOND: f64 = 50.0;

pub fn cost_usd(offer: &ModelOffer, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    (prompt_tokens as f64 * offer.input_usd_per_mtok
        + completion_tokens as f64 * offer.output_usd_per_mtok)
        / 1e6
}

/// Expected seconds to a full answer of `output_tokens` from live statistics.
pub fn expected_seconds(board: &ProviderBoard, provider: &str, output_tokens: u64) -> f64 {
    let health = board.health(provider);
    let ttft = health.ttft_ms.unwrap_or(UNMEASURED_TTFT_MS) / 1000.0;
    let tps = health
        .tokens_per_second
        .unwrap_or(UNMEASURED_TOKENS_PER_SECOND)
        .max(0.1);
    ttft + output_tokens as f64 / tps
}

/// The candidates in the order to try them. Providers whose breaker is open, or that asked us to
/// back off, come last (still tried when nothing else is left); a half-open one is tried in its
/// normal place, as the probe that closes or reopens its breaker.
pub fn rank(
    route: &Route,
    config: &RouterConfig,
    board: &ProviderBoard,
    now_ms: u64,
    prompt_tokens: u64,
    max_tokens: Option<u32>,
) -> Vec<Candidate> {
    let output_tokens = max_tokens.map_or(TYPICAL_OUTPUT_TOKENS, |m| {
        (m as u64).min(TYPICAL_OUTPUT_TOKENS * 8)
    });
    let mut scored: Vec<(u8, f64, f64, Candidate)> = config
        .offers(&route.model)
        .into_iter()
        .filter(|(p, _)| match &route.policy {
            Policy::Pinned(name) => &p.name == name,
            _ => true,
        })
        .map(|(provider, offer)| {
            let admission = board.admission(&provider.name, now_ms);
            // A half-open provider takes its normal place: its trial request decides the breaker.
            let tier = u8::from(admission == Admission::Deny);
            let cost = cost_usd(offer, prompt_tokens, output_tokens);
            let seconds = expected_seconds(board, &provider.name, output_tokens);
            let candidate = Candidate {
                provider: provider.clone(),
                offer: offer.clone(),
            };
            (tier, cost, seconds, candidate)
        })
        .collect();
    // A prompt longer than an offer's context cannot succeed there: those go last.
    let fits = |c: &Candidate| u64::from(c.offer.context_length) > prompt_tokens;
    scored.sort_by(|a, b| {
        let key_a = (!fits(&a.3), a.0);
        let key_b = (!fits(&b.3), b.0);
        key_a.cmp(&key_b).then_with(|| match route.policy {
            Policy::Fastest => a.2.total_cmp(&b.2).then(a.1.total_cmp(&b.1)),
            _ => a.1.total_cmp(&b.1).then(a.2.total_cmp(&b.2)),
        })
    });
    scored.into_iter().map(|(_, _, _, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::config::BreakerConfig;
    use crate::router::stats::AttemptReport;

    fn config() -> RouterConfig {
        RouterConfig::from_json(
            r#"{"default_policy": "fastest", "providers": [
            {"name": "cheap", "base_url": "http://a/v1", "models": [
                {"model": "m", "upstream_model": "m1", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1, "context_length": 4096},
                {"model": "org/x:8b", "upstream_model": "x", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "context_length": 4096}]},
            {"name": "quick", "base_url": "http://b/v1", "models": [
                {"model": "m", "upstream_model": "m2", "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.9, "context_length": 32768}]},
            {"name": "mid", "base_url": "http://c/v1", "models": [
                {"model": "m", "upstream_model": "m3", "input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.2, "context_length": 8192}]}
        ]}"#,
        )
        .unwrap()
    }

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.provider.name.as_str()).collect()
    }

    fn measured(board: &mut ProviderBoard, provider: &str, ttft_ms: u64, tps: f64) {
        let r = AttemptReport {
            provider: provider.into(),
            ok: true,
            provider_fault: false,
            ttft_ms: Some(ttft_ms),
            tokens_per_second: Some(tps),
            retry_after_ms: None,
        };
        board.record(&r, 0, &BreakerConfig::default());
    }

    #[test]
    fn resolves_suffixes_and_the_default_policy() {
        let c = config();
        assert_eq!(
            Route::resolve("m:cheapest", &c).unwrap().policy,
            Policy::Cheapest
        );
        assert_eq!(
            Route::resolve("m:fastest", &c).unwrap().policy,
            Policy::Fastest
        );
        assert_eq!(
            Route::resolve("m:quick", &c).unwrap().policy,
            Policy::Pinned("quick".into())
        );
        assert_eq!(Route::resolve("m", &c).unwrap().policy, Policy::Fastest);
        // A model whose own name has a colon.
        assert_eq!(Route::resolve("org/x:8b", &c).unwrap().model, "org/x:8b");
        assert_eq!(
            Route::resolve("org/x:8b:cheap", &c).unwrap().policy,
            Policy::Pinned("cheap".into())
        );
        let e = Route::resolve("nope", &c).unwrap_err();
        assert_eq!(e.status, 404);
        assert!(e.message.contains("m, org/x:8b"), "{}", e.message);
        assert_eq!(Route::resolve("m:bogus", &c).unwrap_err().status, 400);
        assert_eq!(
            Route::resolve("org/x:8b:quick", &c).unwrap_err().status,
            404
        );
    }

    #[test]
    fn cheapest_orders_by_expected_cost_and_fastest_by_live_speed() {
        let c = config();
        let mut board = ProviderBoard::default();
        let cheapest = Route::resolve("m:cheapest", &c).unwrap();
        assert_eq!(
            names(&rank(&cheapest, &c, &board, 0, 100, Some(100))),
            ["cheap", "mid", "quick"]
        );
        measured(&mut board, "quick", 50, 400.0);
        measured(&mut board, "cheap", 900, 20.0);
        measured(&mut board, "mid", 300, 80.0);
        let fastest = Route::resolve("m:fastest", &c).unwrap();
        assert_eq!(
            names(&rank(&fastest, &c, &board, 0, 100, Some(100))),
            ["quick", "mid", "cheap"]
        );
        let pinned = Route::resolve("m:mid", &c).unwrap();
        assert_eq!(names(&rank(&pinned, &c, &board, 0, 100, None)), ["mid"]);
    }

    #[test]
    fn open_breakers_and_too_small_contexts_go_last_and_probes_are_marked() {
        let c = config();
        let mut board = ProviderBoard::default();
        let breaker = BreakerConfig::default();
        let fail = AttemptReport {
            provider: "cheap".into(),
            ok: false,
            provider_fault: true,
            ttft_ms: None,
            tokens_per_second: None,
            retry_after_ms: None,
        };
        for _ in 0..breaker.failure_threshold {
            board.record(&fail, 0, &breaker);
        }
        let route = Route::resolve("m:cheapest", &c).unwrap();
        assert_eq!(
            names(&rank(&route, &c, &board, 1, 100, None)),
            ["mid", "quick", "cheap"]
        );
        let probe_time = breaker.open_ms;
        let ranked = rank(&route, &c, &board, probe_time, 100, None);
        assert_eq!(
            names(&ranked),
            ["cheap", "mid", "quick"],
            "a half-open provider is probed in its place"
        );
        assert_eq!(board.admission("cheap", probe_time), Admission::Probe);
        // 10k prompt tokens fit only 'quick' (32k context).
        assert_eq!(
            names(&rank(
                &route,
                &c,
                &ProviderBoard::default(),
                0,
                10_000,
                None
            )),
            ["quick", "cheap", "mid"]
        );
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let c = config();
        let offer = &c.offers("m")[1].1;
        assert!((cost_usd(offer, 1_000_000, 2_000_000) - 2.3).abs() < 1e-12);
        assert_eq!(estimate_prompt_tokens(10, 2), 11);
    }
}
