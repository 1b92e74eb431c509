//! Which route answers a request (local WebGPU or wasm, or the hosted router), and when a local
//! answer is too slow to go on with.

use serde::{Deserialize, Serialize};
use web_time::Instant;

/// How the caller wants requests routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Local when the model runs here and keeps up; hosted otherwise, even mid-answer.
    #[default]
    PreferLocal,
    /// Never the hosted route: without a local model, requests fail.
    LocalOnly,
    /// Always the hosted route; no model is loaded here.
    HostedOnly,
}

/// The hosted route and the thresholds that send a request to it.
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// The router's base URL, e.g. `https://router.example.com/v1`.
    pub url: String,
    /// The caller's router token (sent as a bearer token, never logged or returned).
    pub token: String,
    /// The router's model name for this model, e.g. `ministral-8b`.
    pub model: String,
    /// `cheapest`, `fastest` or a provider's name: appended to the model as `model:policy`.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Hand off to the hosted route when local decoding runs slower than this (tokens/s, measured
    /// over the tokens after `warmupTokens`). 0 turns the check off.
    #[serde(default)]
    pub min_tokens_per_second: f64,
    /// Tokens decoded before speed is judged (the first ones include warm-up costs).
    #[serde(default = "default_warmup_tokens")]
    pub warmup_tokens: usize,
    /// Answer from the hosted route while the local model loads (the package's worker acts on it).
    #[serde(default)]
    pub answer_while_loading: bool,
}

fn default_warmup_tokens() -> usize {
    8
}

impl std::fmt::Debug for Fallback {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("model", &self.model)
            .field("policy", &self.policy)
            .field("mode", &self.mode)
            .field("min_tokens_per_second", &self.min_tokens_per_second)
            .field("warmup_tokens", &self.warmup_tokens)
            .field("answer_while_loading", &self.answer_while_loading)
            .finish()
    }
}

impl Fallback {
    /// The model name the router is asked for.
    pub fn router_model(&self) -> String {
        match &self.policy {
            Some(policy) if !policy.is_empty() => format!("{}:{policy}", self.model),
            _ => self.model.clone(),
        }
    }

    /// `/chat/completions` under the router's base URL.
    pub fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.url.trim_end_matches('/'))
    }
}

/// Whether the local model can answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Local {
    Ready,
    /// Why not: no WebGPU and too big for wasm, does not fit, failed to load, device lost …
    Unavailable(String),
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    Local,
    /// With the reason the caller is told.
    Hosted(String),
}

/// The route for a new request; an error when there is none (local-only without a local model,
/// or no hosted route configured and no local model).
pub fn route(fallback: Option<&Fallback>, local: &Local) -> Result<Route, String> {
    match (fallback.map(|f| f.mode), local) {
        (Some(Mode::HostedOnly), _) => Ok(Route::Hosted("hosted-only mode".into())),
        (_, Local::Ready) => Ok(Route::Local),
        (Some(Mode::PreferLocal), Local::Unavailable(why)) => Ok(Route::Hosted(format!(
            "the local model is unavailable: {why}"
        ))),
        (Some(Mode::LocalOnly) | None, Local::Unavailable(why)) => {
            Err(format!("the local model is unavailable: {why}"))
        }
    }
}

/// Watches a local answer's decode speed: after the warm-up tokens, the rate from then on must
/// stay at or above the threshold.
pub struct SpeedWatch {
    min_tokens_per_second: f64,
    warmup_tokens: usize,
    tokens: usize,
    measured_from: Option<Instant>,
}

impl SpeedWatch {
    pub fn new(fallback: &Fallback) -> Self {
        Self {
            min_tokens_per_second: fallback.min_tokens_per_second,
            warmup_tokens: fallback.warmup_tokens.max(1),
            tokens: 0,
            measured_from: None,
        }
    }

    /// Counts a decoded token at `now`; `Some(reason)` when the answer should move to the hosted
    /// route.
    pub fn token(&mut self, now: Instant) -> Option<String> {
        self.tokens += 1;
        if self.min_tokens_per_second <= 0.0 || self.tokens < self.warmup_tokens {
            return None;
        }
        let Some(from) = self.measured_from else {
            self.measured_from = Some(now);
            return None;
        };
        let measured = self.tokens - self.warmup_tokens;
        let seconds = now.duration_since(from).as_secs_f64();
        // Judge after at least two tokens past warm-up, so one slow token is not a verdict.
        if measured < 2 || seconds <= 0.0 {
            return None;
        }
        let rate = measured as f64 / seconds;
        (rate < self.min_tokens_per_second).then(|| {
            format!(
                "local decoding at {rate:.1} tokens/s is below the {} tokens/s threshold",
                self.min_tokens_per_second
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fallback(mode: Mode, min: f64) -> Fallback {
        Fallback {
            url: "http://router/v1/".into(),
            token: "secret-token".into(),
            model: "ministral-8b".into(),
            policy: Some("fastest".into()),
            mode,
            min_tokens_per_second: min,
            warmup_tokens: 3,
            answer_while_loading: false,
        }
    }

    #[test]
    fn routes_follow_the_mode_and_the_local_state() {
        let down = Local::Unavailable("no WebGPU".into());
        let prefer = fallback(Mode::PreferLocal, 0.0);
        assert_eq!(route(Some(&prefer), &Local::Ready), Ok(Route::Local));
        assert!(
            matches!(route(Some(&prefer), &down), Ok(Route::Hosted(r)) if r.contains("no WebGPU"))
        );
        let hosted = fallback(Mode::HostedOnly, 0.0);
        assert!(matches!(
            route(Some(&hosted), &Local::Ready),
            Ok(Route::Hosted(_))
        ));
        let local = fallback(Mode::LocalOnly, 0.0);
        assert_eq!(route(Some(&local), &Local::Ready), Ok(Route::Local));
        assert!(route(Some(&local), &down)
            .unwrap_err()
            .contains("no WebGPU"));
        assert!(route(None, &down).is_err());
    }

    #[test]
    fn the_router_model_carries_the_policy_and_the_token_is_never_printed() {
        let f = fallback(Mode::PreferLocal, 0.0);
        assert_eq!(f.router_model(), "ministral-8b:fastest");
        assert_eq!(f.endpoint(), "http://router/v1/chat/completions");
        assert!(!format!("{f:?}").contains("secret-token"));
    }

    #[test]
    fn speed_is_judged_after_the_warm_up() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // 3 warm-up tokens (slow, not judged), then 10 tokens/s against a 5 tokens/s threshold.
        let mut fast = SpeedWatch::new(&fallback(Mode::PreferLocal, 5.0));
        for (i, ms) in [0, 2000, 4000, 4100, 4200, 4300, 4400]
            .into_iter()
            .enumerate()
        {
            assert_eq!(fast.token(at(ms)), None, "token {i}");
        }
        // Then 2 tokens/s: handed off once two measured tokens show it.
        let mut slow = SpeedWatch::new(&fallback(Mode::PreferLocal, 5.0));
        assert_eq!(slow.token(at(0)), None);
        assert_eq!(slow.token(at(10)), None);
        assert_eq!(slow.token(at(20)), None);
        assert_eq!(slow.token(at(520)), None);
        let reason = slow.token(at(1020)).expect("too slow");
        assert!(reason.contains("2.0 tokens/s"), "{reason}");
        // Off when the threshold is 0.
        let mut off = SpeedWatch::new(&fallback(Mode::PreferLocal, 0.0));
        assert!((0..20).all(|i| off.token(at(i * 10_000)).is_none()));
    }
}
