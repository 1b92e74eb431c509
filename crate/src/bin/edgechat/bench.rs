//! `edgechat bench`: prefill and decode speed, like `llama-bench`'s pp/tg figures.
//!
//! Prefill is one batched forward over `--prompt-tokens` tokens from an empty cache. Decode is
//! `--gen-tokens` single-token forwards right after that prompt (so attention reads a cache of
//! `prompt..prompt+gen` positions, as in a real chat). The tokens are fixed pseudo-random ids: the
//! speed of a dense model does not depend on which tokens it reads. Effective bandwidth is
//! `weight_bytes_per_token × decode tok/s`: the weight bytes each decoded token streams.

use std::path::PathBuf;
use std::time::Instant;

use edgechat::bench::bench_run;
use serde_json::json;

use crate::common::{load_model_and_tokenizer, BackendArg, CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// Prompt length for the prefill measurement
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Worker threads for the CPU kernels (default: the physical cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Measured runs (after one warm-up run)
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn main(args: Args) -> CliResult {
    if let Some(threads) = args.threads {
        if threads == 0 {
            return Err(CliError::Usage("--threads must be at least 1".into()));
        }
        // candle sizes its CPU thread pools from CANDLE_NUM_THREADS, falling back to rayon's
        // RAYON_NUM_THREADS; both are read on first use, which is after this point.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
    if args.prompt_tokens == 0 || args.gen_tokens == 0 || args.repetitions == 0 {
        return Err(CliError::Usage(
            "--prompt-tokens, --gen-tokens and --repetitions must be at least 1".into(),
        ));
    }
    // candle's default is the number of physical cores.
    let threads = args
        .threads
        .unwrap_or_else(candle_core::utils::get_num_threads);

    let load_started = Instant::now();
    let mut loaded = load_model_and_tokenizer(&args.model, args.backend.backend)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let config = loaded.model.config().clone();
    let needed = args.prompt_tokens + args.gen_tokens;
    if needed > config.context_length {
        return Err(edgechat::Error::ContextLength {
            needed,
            limit: config.context_length,
        }
        .into());
    }
    let mut prefill_rates = Vec::new();
    let mut decode_rates = Vec::new();
    let mut work = (0.0, 0.0);
    let mut kernel_time = Vec::new();
    let mut start_ms = Vec::new();
    // Run 0 warms up caches and allocations and is not counted.
    for run in 0..=args.repetitions {
        let result = pollster::block_on(bench_run(
            loaded.model.as_mut(),
            args.prompt_tokens,
            args.gen_tokens,
        ))?;
        if run > 0 {
            prefill_rates.push(result.prefill_tok_s);
            decode_rates.push(result.decode_tok_s);
            work = (result.dispatches_per_token, result.submissions_per_token);
            kernel_time = result.kernel_time_per_token;
            start_ms.push(result.start_ms_per_token);
        }
    }
    let (dispatches_per_token, submissions_per_token) = work;

    let weight_bytes = loaded.model.weight_bytes_per_token();
    let (prefill_mean, prefill_sd) = mean_and_sd(&prefill_rates);
    let (decode_mean, decode_sd) = mean_and_sd(&decode_rates);
    let decode_gbps = weight_bytes as f64 * decode_mean / 1e9;
    let backend = loaded.model.backend_name();
    let backend_description = loaded.model.backend_description();

    if args.json {
        let report = json!({
            "model": args.model.display().to_string(),
            "backend": backend,
            "backend_description": backend_description,
            "threads": threads,
            "load_seconds": load_seconds,
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "repetitions": args.repetitions,
            "prefill_tokens_per_second": prefill_mean,
            "prefill_tokens_per_second_sd": prefill_sd,
            "decode_tokens_per_second": decode_mean,
            "decode_tokens_per_second_sd": decode_sd,
            "weight_bytes_per_token": weight_bytes,
            "decode_effective_gb_per_second": decode_gbps,
            "dispatches_per_token": dispatches_per_token,
            "submissions_per_token": submissions_per_token,
            "start_ms_per_token": mean_and_sd(&start_ms).0,
            "kernel_time_per_token": kernel_time,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "model: {} (backend {backend}, {threads} threads, loaded in {load_seconds:.2} s)",
            args.model.display()
        );
        if backend_description != backend {
            println!("backend: {backend_description}");
        }
        println!(
            "prefill: {:>9.1} tok/s ± {:.1}   ({} tokens, {} runs)",
            prefill_mean, prefill_sd, args.prompt_tokens, args.repetitions
        );
        println!(
            "decode:  {:>9.1} tok/s ± {:.1}   ({} tokens after the prompt, {} runs)",
            decode_mean, decode_sd, args.gen_tokens, args.repetitions
        );
        println!(
            "decode effective bandwidth: {decode_gbps:.2} GB/s ({:.1} MB of weights per token)",
            weight_bytes as f64 / 1e6
        );
        if submissions_per_token > 0.0 {
            println!(
                "GPU work per decoded token: {dispatches_per_token:.0} dispatches, \
                 {submissions_per_token:.0} submission(s), recorded and submitted in {:.2} ms",
                mean_and_sd(&start_ms).0
            );
        }
        if !kernel_time.is_empty() {
            // Timestamps around each dispatch; waiting for them slows the decode itself down.
            let busy: f64 = kernel_time.iter().map(|k| k.microseconds).sum();
            println!("GPU time per decoded token (timestamp queries): {busy:.1} µs in all");
            println!(
                "{:<24} {:>8} {:>12} {:>7}",
                "kernel", "calls", "µs", "share"
            );
            for k in &kernel_time {
                println!(
                    "{:<24} {:>8.1} {:>12.1} {:>6.1}%",
                    k.kernel,
                    k.calls,
                    k.microseconds,
                    100.0 * k.microseconds / busy.max(1e-9)
                );
            }
        }
    }
    Ok(())
}

/// Mean and sample standard deviation (0 for a single value).
fn mean_and_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, variance.sqrt())
}
