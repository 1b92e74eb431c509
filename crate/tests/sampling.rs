//! Every sampling knob, checked on small hand-made logit vectors.

use std::collections::HashSet;

use edgechat::sampling::{argmax, Sampler, SamplingParams};

/// Plain temperature sampling with every filter off.
fn plain(temperature: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        seed: Some(seed),
        ..SamplingParams::greedy()
    }
}

/// The set of tokens drawn in `n` samples (fresh history each time).
fn drawn(params: &SamplingParams, logits: &[f32], n: usize) -> HashSet<u32> {
    let mut sampler = Sampler::new(params);
    (0..n).map(|_| sampler.sample(logits, &[])).collect()
}

/// A pseudo-random logit vector of a realistic vocabulary size.
fn big_logits(n: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
        })
        .collect()
}

#[test]
fn defaults_match_llama_cpp() {
    let p = SamplingParams::default();
    assert_eq!(
        (p.temperature, p.top_k, p.top_p, p.min_p),
        (0.8, 40, 0.95, 0.05)
    );
    assert_eq!(p.repetition_penalty, 1.0);
    assert!(!p.is_greedy());
    assert!(SamplingParams::greedy().is_greedy());
}

#[test]
fn params_deserialize_with_defaults_for_missing_fields() {
    let p: SamplingParams =
        serde_json::from_str(r#"{"temperature": 0.0, "stop": ["\n"]}"#).unwrap();
    assert_eq!(p.temperature, 0.0);
    assert_eq!(p.stop, vec!["\n".to_string()]);
    assert_eq!(p.top_k, SamplingParams::default().top_k);
    let round_trip: SamplingParams =
        serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(round_trip, p);
}

#[test]
fn greedy_is_argmax_with_lowest_index_on_ties() {
    let logits = [0.5, 3.0, -1.0, 3.0, 2.9];
    assert_eq!(argmax(&logits), 1);
    let mut sampler = Sampler::new(&SamplingParams::greedy());
    for _ in 0..10 {
        assert_eq!(sampler.sample(&logits, &[]), 1);
    }
    // NaN never wins.
    assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
    assert_eq!(
        Sampler::new(&SamplingParams::greedy()).sample(&[f32::NAN, 1.0, 0.0], &[]),
        1
    );
}

/// The first maximum wherever it lies (in a full run of 16, in the remainder, tied across runs),
/// NaNs skipped, and 0 when nothing beats -inf.
#[test]
fn argmax_finds_the_first_maximum_at_any_length_and_position() {
    for len in [1, 15, 16, 17, 33, 100] {
        for at in 0..len {
            let mut logits: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 10.0).collect();
            logits[at] = 5.0;
            if at + 17 < len {
                logits[at + 17] = 5.0;
            }
            if at > 0 {
                logits[at - 1] = f32::NAN;
            }
            assert_eq!(argmax(&logits), at as u32, "length {len}, maximum at {at}");
        }
    }
    assert_eq!(argmax(&[f32::NEG_INFINITY; 20]), 0);
    assert_eq!(argmax(&[f32::NAN; 20]), 0);
    assert_eq!(argmax(&[f32::NAN, f32::NEG_INFINITY, f32::INFINITY]), 2);
}

#[test]
fn greedy_on_a_big_vocabulary_matches_a_naive_argmax() {
    let logits = big_logits(131_072);
    let naive = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0 as u32;
    assert_eq!(
        Sampler::new(&SamplingParams::greedy()).sample(&logits, &[]),
        naive
    );
}

#[test]
fn top_k_one_is_greedy_whatever_the_temperature() {
    let logits = big_logits(50_000);
    let params = SamplingParams {
        temperature: 5.0,
        top_k: 1,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(1),
        ..Default::default()
    };
    let mut sampler = Sampler::new(&params);
    for _ in 0..20 {
        assert_eq!(sampler.sample(&logits, &[]), argmax(&logits));
    }
}

#[test]
fn same_seed_same_sequence_different_seed_different_sequence() {
    let logits = big_logits(32_000);
    let params = SamplingParams {
        temperature: 1.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(42),
        ..Default::default()
    };
    let run = |p: &SamplingParams| {
        let mut s = Sampler::new(p);
        (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    let a = run(&params);
    assert_eq!(a, run(&params));
    let b = run(&SamplingParams {
        seed: Some(43),
        ..params.clone()
    });
    assert_ne!(
        a, b,
        "two seeds gave the same 50 draws from a flat 32k distribution"
    );
    // Unseeded samplers work too (seeded from the OS).
    let c = run(&SamplingParams {
        seed: None,
        ..params
    });
    assert_eq!(c.len(), 50);
}

#[test]
fn temperature_sampling_follows_the_distribution() {
    // softmax([ln 3, ln 1]) = [0.75, 0.25] at temperature 1.
    let logits = [3.0f32.ln(), 0.0];
    let mut sampler = Sampler::new(&plain(1.0, 7));
    let n = 20_000;
    let zeros = (0..n).filter(|_| sampler.sample(&logits, &[]) == 0).count();
    let freq = zeros as f64 / n as f64;
    // Binomial std dev is ~0.003; allow 0.02.
    assert!(
        (freq - 0.75).abs() < 0.02,
        "token 0 drawn with frequency {freq}, expected 0.75"
    );

    // Temperature 0.5 squares the odds: 9:1 -> 0.9.
    let mut sampler = Sampler::new(&plain(0.5, 7));
    let zeros = (0..n).filter(|_| sampler.sample(&logits, &[]) == 0).count();
    let freq = zeros as f64 / n as f64;
    assert!(
        (freq - 0.9).abs() < 0.02,
        "token 0 drawn with frequency {freq} at T=0.5, expected 0.9"
    );
}

#[test]
fn top_k_keeps_only_the_k_best() {
    let logits = [1.0, 5.0, 2.0, 4.0, 3.0, 0.0];
    let params = SamplingParams {
        top_k: 2,
        ..plain(100.0, 3)
    };
    assert_eq!(drawn(&params, &logits, 500), HashSet::from([1, 3]));
    // A huge temperature without top-k reaches everything.
    assert_eq!(drawn(&plain(100.0, 3), &logits, 2000).len(), 6);
}

#[test]
fn top_k_on_a_big_vocabulary_draws_from_the_true_top_k() {
    let logits = big_logits(131_072);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let top: HashSet<u32> = order[..5].iter().copied().collect();
    let params = SamplingParams {
        top_k: 5,
        ..plain(1000.0, 11)
    };
    assert_eq!(drawn(&params, &logits, 1000), top);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Probabilities 0.5, 0.3, 0.15, 0.05.
    let probs = [0.5f32, 0.3, 0.15, 0.05];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let with_top_p = |top_p: f32| SamplingParams {
        top_p,
        ..plain(1.0, 5)
    };
    assert_eq!(drawn(&with_top_p(0.45), &logits, 300), HashSet::from([0]));
    assert_eq!(
        drawn(&with_top_p(0.7), &logits, 1000),
        HashSet::from([0, 1])
    );
    assert_eq!(
        drawn(&with_top_p(0.9), &logits, 2000),
        HashSet::from([0, 1, 2])
    );
    assert_eq!(
        drawn(&with_top_p(1.0), &logits, 3000),
        HashSet::from([0, 1, 2, 3])
    );
    // top_p is computed before temperature (llama.cpp order): a high temperature does not widen it.
    let hot = SamplingParams {
        top_p: 0.7,
        ..plain(50.0, 5)
    };
    assert_eq!(drawn(&hot, &logits, 1000), HashSet::from([0, 1]));
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    // Probabilities 0.5, 0.3, 0.15, 0.05: relative to the best 1, 0.6, 0.3, 0.1.
    let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    let with_min_p = |min_p: f32| SamplingParams {
        min_p,
        ..plain(1.0, 9)
    };
    assert_eq!(
        drawn(&with_min_p(0.5), &logits, 1000),
        HashSet::from([0, 1])
    );
    assert_eq!(
        drawn(&with_min_p(0.2), &logits, 2000),
        HashSet::from([0, 1, 2])
    );
    assert_eq!(drawn(&with_min_p(0.9), &logits, 300), HashSet::from([0]));
}

#[test]
fn min_p_and_top_p_combine_as_an_intersection() {
    let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
    // top_p 0.9 keeps {0,1,2}; min_p 0.5 keeps {0,1}.
    let params = SamplingParams {
        top_p: 0.9,
        min_p: 0.5,
        ..plain(1.0, 13)
    };
    assert_eq!(drawn(&params, &logits, 1000), HashSet::from([0, 1]));
    // top_p 0.45 keeps {0}; min_p 0.2 keeps {0,1,2}.
    let params = SamplingParams {
        top_p: 0.45,
        min_p: 0.2,
        ..plain(1.0, 13)
    };
    assert_eq!(drawn(&params, &logits, 300), HashSet::from([0]));
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    // Token 0 leads 2.0 vs 1.5; a penalty of 2 makes it 1.0, so token 1 wins.
    let logits = [2.0, 1.5, -1.0];
    let params = SamplingParams {
        repetition_penalty: 2.0,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[]), 0);
    assert_eq!(Sampler::new(&params).sample(&logits, &[0]), 1);

    // Negative logits are multiplied: -0.5 * 3 = -1.5 falls below -1.0.
    let logits = [-0.5, -1.0];
    let params = SamplingParams {
        repetition_penalty: 3.0,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0, 0, 0]), 1);

    // Only the last penalty_last_n tokens count.
    let logits = [2.0, 1.5, -1.0];
    let params = SamplingParams {
        repetition_penalty: 2.0,
        penalty_last_n: 2,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0, 2, 2]), 0);
    assert_eq!(Sampler::new(&params).sample(&logits, &[2, 2, 0]), 1);

    // penalty_last_n = 0 disables penalties.
    let params = SamplingParams {
        repetition_penalty: 2.0,
        penalty_last_n: 0,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0]), 0);
}

#[test]
fn frequency_penalty_scales_with_the_count() {
    // Token 0 leads by 1.0. Frequency penalty 0.4: once -> 0.4 (still ahead), three times -> 1.2 (behind).
    let logits = [3.0, 2.0];
    let params = SamplingParams {
        frequency_penalty: 0.4,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0]), 0);
    assert_eq!(Sampler::new(&params).sample(&logits, &[0, 0, 0]), 1);
}

#[test]
fn presence_penalty_is_flat() {
    // Presence penalty 0.6 does not grow with the count: 3.0 - 0.6 = 2.4 > 2.0 however often it occurs.
    let logits = [3.0, 2.0];
    let params = SamplingParams {
        presence_penalty: 0.6,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0, 0, 0, 0, 0]), 0);
    let params = SamplingParams {
        presence_penalty: 1.5,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&logits, &[0]), 1);
}

#[test]
fn history_ids_outside_the_vocabulary_are_ignored() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 1.0,
        penalty_last_n: 64,
        ..SamplingParams::greedy()
    };
    assert_eq!(Sampler::new(&params).sample(&[1.0, 0.0], &[7, u32::MAX]), 0);
}

#[test]
fn degenerate_logits_do_not_panic() {
    let mut sampler = Sampler::new(&SamplingParams {
        seed: Some(1),
        ..Default::default()
    });
    assert_eq!(sampler.sample(&[], &[]), 0);
    assert_eq!(sampler.sample(&[f32::NEG_INFINITY; 4], &[]), 0);
    assert_eq!(sampler.sample(&[0.0, f32::INFINITY, 1.0], &[]), 1);
    assert_eq!(sampler.sample(&[f32::NAN, f32::NAN, 2.0], &[]), 2);
    let token = sampler.sample(&[f32::NEG_INFINITY, 0.0, 0.0], &[]);
    assert!(token == 1 || token == 2);
}
