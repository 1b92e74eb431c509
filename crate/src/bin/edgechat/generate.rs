//! `edgechat generate`: write a random-weight Mistral-shaped GGUF model.

use std::path::PathBuf;
use std::time::Instant;

use edgechat::generate::{generate_model_file, GenerateOptions, Preset};

use crate::common::{CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: `tiny` (4 layers, full Tekken vocabulary, ~100 MB) or `ministral-8b` (the real
    /// Ministral-8B-Instruct-2410 shape, ~4.9 GB)
    #[arg(long)]
    preset: Preset,
    /// mistral-common's tekken.json (tekken_240911.json): the vocabulary written into the model
    #[arg(long)]
    tekken: PathBuf,
    /// Output GGUF file (written to OUT.tmp, then renamed)
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights: the same seed gives the same bytes
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn main(args: Args) -> CliResult {
    let tekken_json = std::fs::read(&args.tekken).map_err(|source| CliError::ReadFile {
        path: args.tekken.clone(),
        source,
    })?;
    let options = GenerateOptions {
        preset: args.preset,
        seed: args.seed,
        tekken_json,
    };
    let started = Instant::now();
    let bytes = generate_model_file(&options, &args.out)?;
    eprintln!(
        "wrote {} ({} preset, seed {}): {:.1} MB in {:.1} s",
        args.out.display(),
        args.preset,
        args.seed,
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
