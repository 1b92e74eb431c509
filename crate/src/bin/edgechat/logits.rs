//! `edgechat logits`: the most likely next tokens after a prompt, as JSON.

use std::path::PathBuf;

use serde::Serialize;

use crate::common::{load_model_and_tokenizer, BackendArg, CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    #[command(flatten)]
    backend: BackendArg,
    /// Raw prompt (BOS first when the tokenizer adds one; no chat template)
    #[arg(long, short)]
    prompt: String,
    /// How many tokens to list
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn main(args: Args) -> CliResult {
    let mut loaded = load_model_and_tokenizer(&args.model, args.backend.backend)?;
    let tokens = loaded.tokenizer.encode_prompt(&args.prompt)?;
    if tokens.is_empty() {
        return Err(CliError::Usage(
            "the prompt is empty (and the model adds no BOS)".into(),
        ));
    }
    let context_length = loaded.model.config().context_length;
    if tokens.len() > context_length {
        return Err(edgechat::Error::ContextLength {
            needed: tokens.len(),
            limit: context_length,
        }
        .into());
    }
    let logits = loaded.model.forward(&tokens)?;
    let mut ranked: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(id, &l)| (id as u32, l))
        .collect();
    // Descending by logit (NaN last), ascending id on ties: the same order every run.
    ranked.sort_unstable_by(|a, b| nan_low(b.1).total_cmp(&nan_low(a.1)).then(a.0.cmp(&b.0)));
    ranked.truncate(args.top);
    let entries: Vec<_> = ranked
        .iter()
        .map(|&(id, logit)| {
            // The token's own bytes (a control token's text), so that every entry shows something.
            let token = String::from_utf8_lossy(&loaded.tokenizer.token_bytes(id)).into_owned();
            TopToken { id, token, logit }
        })
        .collect();
    println!("{}", serde_json::to_string_pretty(&entries)?);
    Ok(())
}

#[derive(Serialize)]
struct TopToken {
    id: u32,
    token: String,
    logit: f32,
}

fn nan_low(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}
