//! `edgechat perplexity`: perplexity of a text, computed the way llama.cpp's `llama-perplexity`
//! does so the figures can be compared.
//!
//! The text is tokenized once (BOS first when the tokenizer adds one) and cut into chunks of
//! `--ctx` tokens; the tail that does not fill a chunk is dropped. Each chunk starts from an empty
//! cache, its first token is replaced by BOS (when the tokenizer adds one), and only the second
//! half is scored: the logits at positions `ctx/2 .. ctx-2` predict tokens `ctx/2+1 .. ctx-1`,
//! so every scored token has at least `ctx/2` tokens of context. The estimate is
//! `exp(mean NLL)` with standard error `ppl * sqrt(var(NLL) / (n - 1))`, as llama.cpp prints it.
//! (llama.cpp insists on at least two chunks; this accepts one.)

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::common::{load_model_and_tokenizer, read_text_file, BackendArg, CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// Text file to score
    #[arg(long, short)]
    file: PathBuf,
    /// Tokens per chunk
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks (default: all)
    #[arg(long)]
    chunks: Option<usize>,
}

pub fn main(args: Args) -> CliResult {
    let text = read_text_file(&args.file)?;
    let mut loaded = load_model_and_tokenizer(&args.model, args.backend.backend)?;
    let context_length = loaded.model.config().context_length;
    if args.ctx < 4 {
        return Err(CliError::Usage("--ctx must be at least 4".into()));
    }
    if args.ctx > context_length {
        return Err(CliError::Usage(format!(
            "--ctx {} exceeds the model's context of {context_length}",
            args.ctx
        )));
    }
    let mut tokens = loaded.tokenizer.encode_prompt(&text)?;
    let available = tokens.len() / args.ctx;
    let n_chunks = args.chunks.map_or(available, |c| c.min(available));
    if n_chunks == 0 {
        return Err(CliError::Usage(format!(
            "{} tokenizes to {} tokens; one chunk needs --ctx {} tokens",
            args.file.display(),
            tokens.len(),
            args.ctx
        )));
    }
    let bos = loaded
        .tokenizer
        .bos_id()
        .filter(|_| loaded.tokenizer.add_bos());
    let vocab = loaded.model.config().vocab_size;
    let first = args.ctx / 2;
    eprintln!(
        "{} tokens, {n_chunks} chunks of {} (scoring the last {} predictions of each)",
        tokens.len(),
        args.ctx,
        args.ctx - 1 - first
    );

    let started = Instant::now();
    let mut nll_sum = 0.0f64;
    let mut nll_sq_sum = 0.0f64;
    let mut count = 0usize;
    let mut stdout = std::io::stdout().lock();
    for chunk in 0..n_chunks {
        let start = chunk * args.ctx;
        let chunk_tokens = &mut tokens[start..start + args.ctx];
        if let Some(bos) = bos {
            chunk_tokens[0] = bos;
        }
        loaded.model.truncate_cache(0);
        // The first half is context only: its logits are never scored, so it is run with
        // `forward` (last position's logits only). Row `r` of the second call is position
        // `first + r` and predicts token `first + r + 1`. (The last row is not scored, but
        // keeping both halves' shapes equal keeps the figures equal to one whole-chunk pass more
        // often: the matmul kernels round differently for different batch sizes.)
        loaded.model.forward(&chunk_tokens[..first])?;
        let second_half = &chunk_tokens[first..];
        let logits = loaded.model.forward_all(second_half)?;
        if logits.len() != second_half.len() * vocab {
            return Err(CliError::Usage(format!(
                "the model returned {} logits for {} tokens (vocabulary {vocab})",
                logits.len(),
                second_half.len()
            )));
        }
        for position in first..args.ctx - 1 {
            let row_index = position - first;
            let row = &logits[row_index * vocab..(row_index + 1) * vocab];
            let target = chunk_tokens[position + 1] as usize;
            let nll = negative_log_likelihood(row, target).ok_or_else(|| {
                CliError::Usage(format!(
                    "token id {target} is outside the model's vocabulary of {vocab}"
                ))
            })?;
            nll_sum += nll;
            nll_sq_sum += nll * nll;
            count += 1;
        }
        write!(
            stdout,
            "[{}]{:.4},",
            chunk + 1,
            (nll_sum / count as f64).exp()
        )?;
        stdout.flush()?;
        if chunk == 0 {
            let per_chunk = started.elapsed().as_secs_f64();
            eprintln!(
                "(first chunk took {per_chunk:.2} s, about {:.1} s in all)",
                per_chunk * n_chunks as f64
            );
        }
    }
    writeln!(stdout)?;
    let mean = nll_sum / count as f64;
    let ppl = mean.exp();
    let variance = nll_sq_sum / count as f64 - mean * mean;
    if variance > 0.0 && count > 1 {
        let stderr = (variance / (count as f64 - 1.0)).sqrt() * ppl;
        writeln!(stdout, "Final estimate: PPL = {ppl:.4} +/- {stderr:.5}")?;
    } else {
        writeln!(stdout, "Final estimate: PPL = {ppl:.4}")?;
    }
    eprintln!(
        "{count} tokens scored in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `-log softmax(row)[target]`, computed stably in f64.
fn negative_log_likelihood(row: &[f32], target: usize) -> Option<f64> {
    let target_logit = *row.get(target)? as f64;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    let log_sum = max + sum.ln();
    Some(log_sum - target_logit)
}
