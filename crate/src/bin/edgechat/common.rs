//! Pieces every subcommand shares: the error type and opening a model file.

use std::path::{Path, PathBuf};

use edgechat::backend::BackendKind;
use edgechat::gguf::{FileSource, GgufError, GgufFile};
use edgechat::model::LanguageModel;
use edgechat::sampling::SamplingParams;
use edgechat::session::{Engine, Stats};
use edgechat::tokenizer::Tokenizer;

/// What can go wrong in a subcommand. Every variant prints as one readable line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Engine(#[from] edgechat::Error),
    #[error("cannot open model `{path}`: {source}")]
    OpenModel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}` is not a usable GGUF model: {source}")]
    BadModel { path: PathBuf, source: GgufError },
    #[error("cannot read `{path}`: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// A model file opened and its GGUF header parsed (tensor data stays on disk).
pub struct OpenedModel {
    pub path: PathBuf,
    pub source: FileSource,
    pub file: GgufFile,
}

pub fn open_model(path: &Path) -> CliResult<OpenedModel> {
    let source = FileSource::open(path).map_err(|source| CliError::OpenModel {
        path: path.to_owned(),
        source,
    })?;
    let file = GgufFile::read(&source).map_err(|source| CliError::BadModel {
        path: path.to_owned(),
        source,
    })?;
    Ok(OpenedModel {
        path: path.to_owned(),
        source,
        file,
    })
}

pub fn read_text_file(path: &Path) -> CliResult<String> {
    std::fs::read_to_string(path).map_err(|source| CliError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// Which backend runs the model (`--backend cpu|webgpu`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct BackendArg {
    /// Where the model runs: cpu, or webgpu (the GPU through wgpu: Vulkan, Metal or DX12)
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    pub backend: BackendKind,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    s.parse().map_err(|e: edgechat::Error| e.to_string())
}

/// A model ready to run, with its tokenizer, for subcommands that drive the model directly
/// rather than through an [`Engine`].
pub struct LoadedModel {
    pub model: Box<dyn LanguageModel>,
    pub tokenizer: Tokenizer,
}

pub fn load_model_and_tokenizer(path: &Path, backend: BackendKind) -> CliResult<LoadedModel> {
    let opened = open_model(path)?;
    let tokenizer = Tokenizer::from_gguf(&opened.file)?;
    let model = edgechat::backend::load_model(backend, &opened.file, &opened.source)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Sampling options shared by `run` and `chat` (defaults: llama.cpp's).
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely token every time
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off)
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the most likely tokens up to this total probability (1 = off)
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off)
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalize tokens seen in the last 64 tokens (llama.cpp's repeat penalty; 1 = off)
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed (default: a fresh one each run)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeat the option for several)
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> CliResult<SamplingParams> {
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(CliError::Usage("--temperature must be 0 or more".into()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(CliError::Usage("--top-p must be in (0, 1]".into()));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(CliError::Usage("--min-p must be in [0, 1]".into()));
        }
        if self.repeat_penalty.is_nan() || self.repeat_penalty <= 0.0 {
            return Err(CliError::Usage("--repeat-penalty must be above 0".into()));
        }
        Ok(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        })
    }
}

/// Loads a model into an [`Engine`] (tokenizer and chat template included), with a clear error
/// for a path that cannot be opened.
pub fn load_engine(path: &Path, backend: BackendKind) -> CliResult<Engine> {
    let opened = open_model(path)?;
    Ok(Engine::from_gguf_on(backend, &opened.file, &opened.source)?)
}

/// One line of figures for stderr.
pub fn stats_line(stats: &Stats) -> String {
    format!(
        "prompt {} tokens ({} reused), prefill {:.1} tok/s, decode {:.1} tok/s, {} generated, TTFT {:.0} ms",
        stats.prompt_tokens,
        stats.reused_tokens,
        stats.prefill_tok_s,
        stats.decode_tok_s,
        stats.completion_tokens,
        stats.time_to_first_token_ms
    )
}
