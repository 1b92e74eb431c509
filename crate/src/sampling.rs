//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, repetition /
//! frequency / presence penalties and a seeded RNG.
//!
//! The order follows llama.cpp's default chain: penalties, then top-k, top-p and min-p (computed on
//! the penalized logits *before* temperature), then temperature and a weighted draw. A temperature
//! of 0 (or `top_k == 1`) is greedy: a plain argmax, lowest token id on ties.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens and when to stop. Missing fields deserialize to [`Default`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature. 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens. 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability adds up to `top_p`. 1 = off.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the most likely one's. 0 = off.
    pub min_p: f32,
    /// llama.cpp semantics: for tokens in the last `penalty_last_n` tokens, positive logits are
    /// divided by this and negative ones multiplied by it. 1 = off.
    pub repetition_penalty: f32,
    /// OpenAI semantics: subtract `count * frequency_penalty` from a token's logit, where `count`
    /// is how often it occurs in the last `penalty_last_n` tokens. 0 = off.
    pub frequency_penalty: f32,
    /// OpenAI semantics: subtract `presence_penalty` from the logit of every token that occurs in
    /// the last `penalty_last_n` tokens. 0 = off.
    pub presence_penalty: f32,
    /// How many of the most recent tokens (prompt included) the penalties look at. 0 = no penalties.
    pub penalty_last_n: usize,
    /// RNG seed; `None` seeds from the operating system (or the browser's crypto API).
    pub seed: Option<u64>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are never part of the output.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties.
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            max_tokens: 512,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding: temperature 0, every filter and penalty off.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            ..Self::default()
        }
    }

    /// True when sampling reduces to an argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    fn has_penalties(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// One token choice a backend can make on its device from the logits it computed, so only the
/// token id comes back (no penalties: those need the history, which stays on the host). Same
/// semantics as [`Sampler::sample`]: top-k, top-p and min-p on the logits at temperature 1, then a
/// draw at `temperature`; `temperature <= 0` is greedy (argmax, lowest id on ties).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSampling {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// A uniform draw in [0, 1) from the sampler's seeded RNG: where the weighted draw lands.
    pub uniform: f32,
}

impl DeviceSampling {
    /// Whether this is the argmax: `temperature <= 0`, NaN included (the host's sampler ends up
    /// at the argmax for it as well).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }

    /// The most likely token (lowest id on ties).
    pub const GREEDY: DeviceSampling = DeviceSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        uniform: 0.0,
    };
}

/// A uniform draw in [0, 1) for one token choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub uniform: f64,
}

/// Picks tokens according to [`SamplingParams`]. Keeps its RNG between calls, so one sampler per
/// request gives a reproducible sequence for a fixed seed.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Penalized logits, reused between calls (a vocabulary can be 131k entries).
    scratch: Vec<f32>,
    /// (token, logit) candidates, reused between calls.
    candidates: Vec<(u32, f32)>,
    /// Occurrences of each token in the penalty window, reused between calls.
    penalty_counts: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            params: params.clone(),
            rng,
            scratch: Vec::new(),
            candidates: Vec::new(),
            penalty_counts: HashMap::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Draws what the next choice needs from the RNG (nothing when greedy). The same draw serves
    /// [`device_request`](Self::device_request) and [`sample_drawn`](Self::sample_drawn), which
    /// map it to a token the same way, so a seed gives the same sequence whether the device or the
    /// host chooses (up to float rounding at a boundary between two tokens).
    pub fn draw(&mut self) -> Draw {
        Draw {
            uniform: if self.params.is_greedy() {
                0.0
            } else {
                self.rng.gen::<f64>()
            },
        }
    }

    /// The choice as a device can make it, or `None` when it needs the host (penalties look at
    /// the history).
    pub fn device_request(&self, draw: &Draw) -> Option<DeviceSampling> {
        let p = &self.params;
        if p.has_penalties() {
            return None;
        }
        let greedy = p.is_greedy();
        Some(DeviceSampling {
            temperature: if greedy { 0.0 } else { p.temperature },
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            // f32 has 24 bits of mantissa: keep the draw below 1.0 after the cast.
            uniform: (draw.uniform as f32).min(1.0 - f32::EPSILON),
        })
    }

    /// Chooses the next token: [`draw`](Self::draw), then [`sample_drawn`](Self::sample_drawn).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let draw = self.draw();
        self.sample_drawn(logits, history, &draw)
    }

    /// Chooses the next token on the host with an earlier draw. `history` is the sequence so far
    /// (prompt and generated tokens); only its last `penalty_last_n` tokens matter, and ids
    /// outside the vocabulary are ignored. An empty `logits` slice yields token 0.
    pub fn sample_drawn(&mut self, logits: &[f32], history: &[u32], draw: &Draw) -> u32 {
        // NaN needs no separate scan: `argmax` and the max below skip it, and the candidates
        // turn it into -inf as they are built.
        let logits = if self.params.has_penalties() {
            self.penalized(logits, history);
            &self.scratch[..]
        } else {
            logits
        };
        // `logits` may borrow self.scratch: from here on use the other fields one by one.
        let params = &self.params;
        if params.is_greedy() {
            return argmax(logits);
        }
        let max_logit = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max_logit.is_finite() {
            // Everything -inf, or some +inf: no distribution to draw from.
            return argmax(logits);
        }

        // top-k: an O(n) selection, then only the k survivors get sorted.
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, nan_to_neg_infinity(l))),
        );
        if params.top_k > 0 && params.top_k < candidates.len() {
            candidates.select_nth_unstable_by(params.top_k - 1, by_logit_desc);
            candidates.truncate(params.top_k);
        }

        // Probabilities of top-p and min-p are over the top-k set at temperature 1 (llama.cpp).
        let normalizer: f64 = candidates
            .iter()
            .map(|&(_, l)| ((l - max_logit) as f64).exp())
            .sum();

        // min-p keeps p >= min_p * p_max, i.e. logit >= max + ln(min_p). Applying it before the
        // sort is equivalent (it removes a suffix of the sorted order and does not change the
        // normalizer top-p uses) and makes the sort cheap when top-k is off.
        if params.min_p > 0.0 && params.min_p <= 1.0 {
            let threshold = max_logit + params.min_p.ln();
            candidates.retain(|&(_, l)| l >= threshold);
        }
        candidates.sort_unstable_by(by_logit_desc);

        if params.top_p < 1.0 {
            let mut cumulative = 0.0f64;
            let mut keep = candidates.len();
            for (i, &(_, l)) in candidates.iter().enumerate() {
                cumulative += ((l - max_logit) as f64).exp() / normalizer;
                if cumulative >= params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep.max(1));
        }

        // Temperature, then a weighted draw.
        let inv_temp = 1.0 / params.temperature as f64;
        let weights_sum: f64 = candidates
            .iter()
            .map(|&(_, l)| ((l - max_logit) as f64 * inv_temp).exp())
            .sum();
        if !weights_sum.is_finite() || weights_sum <= 0.0 {
            return candidates.first().map_or(0, |&(t, _)| t);
        }
        // The draw walks the survivors in id order, as the GPU sampler does: the same draw picks
        // the same token on either side.
        candidates.sort_unstable_by_key(|&(token, _)| token);
        let mut target = draw.uniform * weights_sum;
        for &(token, l) in candidates.iter() {
            target -= ((l - max_logit) as f64 * inv_temp).exp();
            if target < 0.0 {
                return token;
            }
        }
        // Rounding left a sliver: the last candidate takes it.
        candidates.last().map_or(0, |&(t, _)| t)
    }

    /// Copies `logits` into `scratch` with NaN turned into -inf and the penalties applied.
    fn penalized(&mut self, logits: &[f32], history: &[u32]) {
        self.scratch.clear();
        self.scratch
            .extend(logits.iter().map(|&l| nan_to_neg_infinity(l)));
        let p = &self.params;
        if !p.has_penalties() {
            return;
        }
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let counts = &mut self.penalty_counts;
        counts.clear();
        for &token in window {
            *counts.entry(token).or_insert(0) += 1;
        }
        for (&token, &count) in counts.iter() {
            let Some(logit) = self.scratch.get_mut(token as usize) else {
                continue;
            };
            if p.repetition_penalty != 1.0 && p.repetition_penalty > 0.0 {
                if *logit > 0.0 {
                    *logit /= p.repetition_penalty;
                } else {
                    *logit *= p.repetition_penalty;
                }
            }
            *logit -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// NaN is treated as "never this token".
fn nan_to_neg_infinity(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit
    }
}

/// Descending by logit, ascending by token id on ties: a total order, so results never depend on
/// how the unstable sort/selection happened to arrange equal values.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest logit, the lowest index on ties; NaN never wins. 0 for an empty slice.
pub fn argmax(logits: &[f32]) -> u32 {
    // The largest value first, in sixteen running maxima the compiler keeps in vector registers
    // (one running maximum and its index serialise on a compare and a branch per logit: 3 % of
    // the tiny Mistral's decode step over 131072 logits). NaNs never win: `v > m` is false.
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = logits.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let best = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    if best == f32::NEG_INFINITY {
        return 0;
    }
    // Then its first position, as a scan that keeps the first maximum would give.
    logits.iter().position(|&v| v == best).unwrap_or(0) as u32
}
