//! Router configuration: the providers, the models each serves and at what price, and the
//! deadlines. Deployed as one JSON string (wrangler var `ROUTER_CONFIG`); provider keys are not in
//! it — each provider names the secret that holds its key.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::policy::Policy;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ROUTER_CONFIG is not valid JSON for the router configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ROUTER_CONFIG: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Policy for a plain `model` with no `:suffix`.
    #[serde(default = "default_policy")]
    pub default_policy: String,
    /// Browser origins allowed by CORS (`*` allows any).
    #[serde(default)]
    pub cors_allow_origins: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Hedge delay per policy name (`cheapest`, `fastest`, or a provider name); a request's own
    /// `hedge_ms` field overrides it.
    #[serde(default)]
    pub hedge_ms: std::collections::BTreeMap<String, u64>,
    pub providers: Vec<Provider>,
}

fn default_policy() -> String {
    "cheapest".into()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Upstream attempts per request, hedges and rescues included.
    pub max_attempts: u32,
    /// Whole request, first attempt to last byte.
    pub overall_deadline_ms: u64,
    /// From sending an attempt to its first token (headers included).
    pub ttft_deadline_ms: u64,
    /// Longest silence inside a stream before it counts as stalled.
    pub stall_deadline_ms: u64,
    /// After an answer ends, how long the rest of its upstream body is still read (a body read to
    /// its end lets the runtime reuse the connection). The caller does not wait for it.
    pub drain_deadline_ms: u64,
    /// Longest wait for a provider's `Retry-After` when it is the only one left.
    pub max_retry_after_ms: u64,
    /// Request body limit (413 above).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_attempts: 4,
            overall_deadline_ms: 300_000,
            ttft_deadline_ms: 20_000,
            stall_deadline_ms: 20_000,
            drain_deadline_ms: 1_000,
            max_retry_after_ms: 10_000,
            max_body_bytes: 1 << 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open a provider's breaker.
    pub failure_threshold: u32,
    /// How long an open breaker keeps traffic away before one probe request is let through.
    pub open_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            open_ms: 30_000,
        }
    }
}

/// How a provider continues a partial answer (assistant prefill), if it can.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Prefill {
    /// Cannot continue: a rescued stream restarts from the beginning.
    None,
    /// A trailing assistant message is continued as is (edgechat serve, llama.cpp server).
    TrailingAssistant,
    /// Mistral's API: the trailing assistant message carries `"prefix": true`.
    MistralPrefix,
    /// vLLM-style servers: `continue_final_message: true, add_generation_prompt: false`.
    ContinueFinalMessage,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Short name: the `model:<provider>` suffix, the `x-edgechat-provider` header, ledger rows.
    pub name: String,
    /// OpenAI-compatible base URL, up to and including `/v1`.
    pub base_url: String,
    /// Name of the worker secret holding this provider's API key (none for a keyless server).
    #[serde(default)]
    pub api_key_secret: Option<String>,
    #[serde(default = "default_prefill")]
    pub prefill: Prefill,
    pub models: Vec<ModelOffer>,
}

fn default_prefill() -> Prefill {
    Prefill::None
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOffer {
    /// The router's model name, as callers send it.
    pub model: String,
    /// The provider's own id for it.
    pub upstream_model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    pub context_length: u32,
}

impl RouterConfig {
    pub fn from_json(text: &str) -> Result<RouterConfig, ConfigError> {
        let config: RouterConfig = serde_json::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.providers.is_empty() {
            return invalid("no providers".into());
        }
        Policy::parse_name(&self.default_policy, self).ok_or_else(|| {
            ConfigError::Invalid(format!("unknown default_policy {:?}", self.default_policy))
        })?;
        let mut names = BTreeSet::new();
        for provider in &self.providers {
            if provider.name.is_empty()
                || !provider
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return invalid(format!(
                    "provider name {:?} must be letters, digits, - or _",
                    provider.name
                ));
            }
            if ["cheapest", "fastest"].contains(&provider.name.as_str()) {
                return invalid(format!(
                    "provider name {:?} is a policy name",
                    provider.name
                ));
            }
            if !names.insert(provider.name.as_str()) {
                return invalid(format!("provider {:?} is listed twice", provider.name));
            }
            if !(provider.base_url.starts_with("https://")
                || provider.base_url.starts_with("http://"))
            {
                return invalid(format!(
                    "provider {:?}: base_url must be http(s)",
                    provider.name
                ));
            }
            for offer in &provider.models {
                if offer.model.is_empty() || offer.upstream_model.is_empty() {
                    return invalid(format!("provider {:?}: empty model name", provider.name));
                }
                let prices = [offer.input_usd_per_mtok, offer.output_usd_per_mtok];
                if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
                    return invalid(format!(
                        "provider {:?}, model {:?}: bad price",
                        provider.name, offer.model
                    ));
                }
                if offer.context_length == 0 {
                    return invalid(format!(
                        "provider {:?}, model {:?}: context_length 0",
                        provider.name, offer.model
                    ));
                }
            }
        }
        let l = &self.limits;
        if l.max_attempts == 0
            || l.overall_deadline_ms == 0
            || l.ttft_deadline_ms == 0
            || l.stall_deadline_ms == 0
        {
            return invalid("limits must be positive".into());
        }
        if self.breaker.failure_threshold == 0 {
            return invalid("breaker.failure_threshold must be positive".into());
        }
        Ok(())
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Every model name some provider serves, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .providers
            .iter()
            .flat_map(|p| p.models.iter().map(|m| m.model.as_str()))
            .collect();
        names.into_iter().map(String::from).collect()
    }

    /// The providers serving `model`, with their offer, in configuration order.
    pub fn offers(&self, model: &str) -> Vec<(&Provider, &ModelOffer)> {
        self.providers
            .iter()
            .filter_map(|p| p.models.iter().find(|m| m.model == model).map(|m| (p, m)))
            .collect()
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.cors_allow_origins
            .iter()
            .any(|o| o == "*" || o == origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"{
        "default_policy": "cheapest",
        "cors_allow_origins": ["http://localhost:8000"],
        "providers": [
            {"name": "alpha", "base_url": "https://alpha.example/v1", "api_key_secret": "ALPHA_KEY",
             "prefill": "mistral_prefix",
             "models": [{"model": "m", "upstream_model": "alpha/m", "input_usd_per_mtok": 0.2,
                         "output_usd_per_mtok": 0.6, "context_length": 8192}]},
            {"name": "beta", "base_url": "http://127.0.0.1:9/v1",
             "models": [{"model": "m", "upstream_model": "m-beta", "input_usd_per_mtok": 0.1,
                         "output_usd_per_mtok": 0.1, "context_length": 32768},
                        {"model": "other", "upstream_model": "o", "input_usd_per_mtok": 1,
                         "output_usd_per_mtok": 2, "context_length": 4096}]}
        ]
    }"#;

    #[test]
    fn parses_and_indexes_a_config() {
        let config = RouterConfig::from_json(SAMPLE).unwrap();
        assert_eq!(config.model_names(), ["m", "other"]);
        assert_eq!(config.offers("m").len(), 2);
        assert_eq!(
            config.provider("alpha").unwrap().prefill,
            Prefill::MistralPrefix
        );
        assert_eq!(config.provider("beta").unwrap().prefill, Prefill::None);
        assert!(config.allows_origin("http://localhost:8000"));
        assert!(!config.allows_origin("https://evil.example"));
        assert_eq!(config.limits.max_attempts, 4);
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let cases = [
            (r#"{"providers": []}"#, "no providers"),
            (
                r#"{"providers": [{"name": "a b", "base_url": "https://x/v1", "models": []}]}"#,
                "letters",
            ),
            (
                r#"{"providers": [{"name": "fastest", "base_url": "https://x/v1", "models": []}]}"#,
                "policy name",
            ),
            (
                r#"{"providers": [{"name": "a", "base_url": "ftp://x", "models": []}]}"#,
                "http(s)",
            ),
            (
                r#"{"default_policy": "nope", "providers": [{"name": "a", "base_url": "https://x/v1", "models": []}]}"#,
                "default_policy",
            ),
            (
                r#"{"providers": [{"name": "a", "base_url": "https://x/v1", "models": [{"model": "m", "upstream_model": "u", "input_usd_per_mtok": -1, "output_usd_per_mtok": 0, "context_length": 1}]}]}"#,
                "bad price",
            ),
            (
                r#"{"providers": [{"name": "a", "base_url": "https://x/v1", "models": [], "extra": 1}]}"#,
                "unknown field",
            ),
        ];
        for (json, expected) in cases {
            let message = RouterConfig::from_json(json).unwrap_err().to_string();
            assert!(message.contains(expected), "{json}: {message}");
        }
    }
}
