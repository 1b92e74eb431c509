//! Random-weight, Mistral-shaped llama GGUF generator.
//!
//! It writes what llama.cpp would write for Ministral-8B-Instruct-2410 quantized to Q4_K_M
//! (metadata, Tekken vocabulary, chat template, tensor names and a Q4_K_M-like type mix), with
//! weights drawn from a seeded normal distribution. `Preset::TinyMistral` is a small model with
//! the full 131072-token vocabulary for tests; `Preset::Ministral8B` has the real 8B shape for
//! memory and speed measurements. Tensors are generated and quantized a chunk of rows at a time
//! and streamed out, so memory stays bounded whatever the model size.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::tokenizer::{tekken_gguf_vocab, GgufVocab};

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
const FILE_TYPE_MOSTLY_Q4_K_M: u32 = 15;
/// Random values generated (and quantized) per work item; whole rows, about 4 MiB of f32.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// Which model shape to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 4 layers, embedding 512, 4 heads × 128 (2 KV heads), FFN 1024, full Tekken vocabulary (~100 MB).
    TinyMistral,
    /// The real Ministral-8B-Instruct-2410 shape (~4.9 GB).
    Ministral8B,
}

impl Preset {
    pub fn shape(self) -> ModelShape {
        match self {
            Preset::TinyMistral => ModelShape {
                vocab_size: 131_072,
                embedding_length: 512,
                block_count: 4,
                feed_forward_length: 1024,
                head_count: 4,
                head_count_kv: 2,
                head_dim: 128,
                context_length: 4096,
            },
            Preset::Ministral8B => ModelShape {
                vocab_size: 131_072,
                embedding_length: 4096,
                block_count: 36,
                feed_forward_length: 12_288,
                head_count: 32,
                head_count_kv: 8,
                head_dim: 128,
                context_length: 32_768,
            },
        }
    }

    /// `general.name` in the generated file.
    pub fn model_name(self) -> &'static str {
        match self {
            Preset::TinyMistral => "Tiny Mistral (random weights)",
            Preset::Ministral8B => "Ministral 8B shape (random weights)",
        }
    }

    /// The short name used on the command line.
    pub fn cli_name(self) -> &'static str {
        match self {
            Preset::TinyMistral => "tiny",
            Preset::Ministral8B => "8b",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" | "tiny-mistral" => Ok(Preset::TinyMistral),
            "8b" | "ministral-8b" | "ministral8b" => Ok(Preset::Ministral8B),
            other => Err(Error::Model(format!(
                "unknown preset `{other}` (expected `tiny` or `8b`)"
            ))),
        }
    }
}

/// Hyper-parameters of a generated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    pub vocab_size: usize,
    pub embedding_length: usize,
    pub block_count: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    pub context_length: usize,
}

pub struct GenerateOptions {
    pub preset: Preset,
    /// Same seed, same bytes.
    pub seed: u64,
    /// The contents of `tekken_240911.json` (mistral-common); becomes `tokenizer.ggml.*`.
    pub tekken_json: Vec<u8>,
}

/// The Ministral-8B-Instruct-2410 chat template without tool calling: `<s>[INST]user[/INST]assistant</s>`,
/// with the system message placed before the last user message (as mistral-common's V3-Tekken does).
pub const MINISTRAL_CHAT_TEMPLATE: &str = r#"{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(last_user_index=-1) %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {%- set ns.last_user_index = loop.index0 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.index0 == ns.last_user_index and system_message is defined %}
            {{- '[INST]' + system_message + '\n\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST]' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"#;

/// How one tensor's values are drawn.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Normal(0, std).
    Normal { std: f32 },
    /// 1 + Normal(0, std): RMSNorm weights.
    AroundOne { std: f32 },
}

/// One tensor of the generated model.
#[derive(Debug, Clone)]
struct TensorPlan {
    name: String,
    /// Columns (the contiguous dimension) and rows; a vector has one row.
    cols: usize,
    rows: usize,
    is_vector: bool,
    dtype: GgmlType,
    init: Init,
}

impl TensorPlan {
    fn matrix(name: String, cols: usize, rows: usize, dtype: GgmlType, init: Init) -> Self {
        Self {
            name,
            cols,
            rows,
            is_vector: false,
            dtype,
            init,
        }
    }

    fn norm(name: String, len: usize) -> Self {
        Self {
            name,
            cols: len,
            rows: 1,
            is_vector: true,
            dtype: GgmlType::F32,
            init: Init::AroundOne { std: 0.05 },
        }
    }

    fn dims(&self) -> Vec<u64> {
        if self.is_vector {
            vec![self.cols as u64]
        } else {
            vec![self.cols as u64, self.rows as u64]
        }
    }

    fn rows_per_chunk(&self) -> usize {
        (CHUNK_ELEMENTS / self.cols).max(1)
    }
}

/// llama.cpp's `use_more_bits`: Q4_K_M gives these layers' attn_v and ffn_down Q6_K.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    // The subtraction is reached only when `layer >= n_layers / 8`.
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The tensors, in file order, with a Q4_K_M-like type mix.
fn tensor_plan(preset: Preset) -> Vec<TensorPlan> {
    let s = preset.shape();
    let n_embd = s.embedding_length;
    let q_dim = s.head_count * s.head_dim;
    let kv_dim = s.head_count_kv * s.head_dim;
    let n_layers = s.block_count;
    let tiny = preset == Preset::TinyMistral;
    // Projections keep activations at unit scale: std = 1/sqrt(fan_in).
    let proj = |fan_in: usize| Init::Normal {
        std: 1.0 / (fan_in as f32).sqrt(),
    };

    let mut plan = vec![TensorPlan::matrix(
        "token_embd.weight".into(),
        n_embd,
        s.vocab_size,
        GgmlType::Q4K,
        Init::Normal { std: 1.0 },
    )];
    for layer in 0..n_layers {
        let name = |t: &str| format!("blk.{layer}.{t}.weight");
        let more_bits = if use_more_bits(layer, n_layers) {
            GgmlType::Q6K
        } else {
            GgmlType::Q4K
        };
        // The tiny model also carries Q8_0, Q4_0 and F16 so tests reach those types through a real model.
        let attn_v_type = if tiny && layer == 0 {
            GgmlType::Q8_0
        } else {
            more_bits
        };
        let ffn_down_type = if tiny && layer == 1 {
            GgmlType::Q4_0
        } else {
            more_bits
        };
        let attn_k_type = if tiny && layer == n_layers - 1 {
            GgmlType::F16
        } else {
            GgmlType::Q4K
        };
        plan.push(TensorPlan::norm(name("attn_norm"), n_embd));
        plan.push(TensorPlan::matrix(
            name("attn_q"),
            n_embd,
            q_dim,
            GgmlType::Q4K,
            proj(n_embd),
        ));
        plan.push(TensorPlan::matrix(
            name("attn_k"),
            n_embd,
            kv_dim,
            attn_k_type,
            proj(n_embd),
        ));
        plan.push(TensorPlan::matrix(
            name("attn_v"),
            n_embd,
            kv_dim,
            attn_v_type,
            proj(n_embd),
        ));
        plan.push(TensorPlan::matrix(
            name("attn_output"),
            q_dim,
            n_embd,
            GgmlType::Q4K,
            proj(q_dim),
        ));
        plan.push(TensorPlan::norm(name("ffn_norm"), n_embd));
        plan.push(TensorPlan::matrix(
            name("ffn_gate"),
            n_embd,
            s.feed_forward_length,
            GgmlType::Q4K,
            proj(n_embd),
        ));
        plan.push(TensorPlan::matrix(
            name("ffn_up"),
            n_embd,
            s.feed_forward_length,
            GgmlType::Q4K,
            proj(n_embd),
        ));
        plan.push(TensorPlan::matrix(
            name("ffn_down"),
            s.feed_forward_length,
            n_embd,
            ffn_down_type,
            proj(s.feed_forward_length),
        ));
    }
    plan.push(TensorPlan::norm("output_norm.weight".into(), n_embd));
    plan.push(TensorPlan::matrix(
        "output.weight".into(),
        n_embd,
        s.vocab_size,
        GgmlType::Q6K,
        proj(n_embd),
    ));
    plan
}

/// The metadata llama.cpp writes for a Ministral GGUF, plus the generator's provenance.
fn metadata(opts: &GenerateOptions, vocab: GgufVocab) -> Result<Vec<(String, Value)>> {
    let s = opts.preset.shape();
    if vocab.tokens.len() != s.vocab_size || vocab.token_types.len() != s.vocab_size {
        return Err(Error::Model(format!(
            "the Tekken vocabulary has {} tokens ({} types); the {} preset needs {}",
            vocab.tokens.len(),
            vocab.token_types.len(),
            opts.preset,
            s.vocab_size
        )));
    }
    let u32_of = |n: usize| Value::U32(n as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.type".into(), Value::String("model".into())),
        (
            "general.name".into(),
            Value::String(opts.preset.model_name().into()),
        ),
        (
            "general.file_type".into(),
            Value::U32(FILE_TYPE_MOSTLY_Q4_K_M),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(32)),
        (
            "edgechat.generator.preset".into(),
            Value::String(opts.preset.cli_name().into()),
        ),
        ("edgechat.generator.seed".into(), Value::U64(opts.seed)),
        ("llama.block_count".into(), u32_of(s.block_count)),
        ("llama.context_length".into(), u32_of(s.context_length)),
        ("llama.embedding_length".into(), u32_of(s.embedding_length)),
        (
            "llama.feed_forward_length".into(),
            u32_of(s.feed_forward_length),
        ),
        ("llama.attention.head_count".into(), u32_of(s.head_count)),
        (
            "llama.attention.head_count_kv".into(),
            u32_of(s.head_count_kv),
        ),
        ("llama.rope.freq_base".into(), Value::F32(1.0e8)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1.0e-5),
        ),
        ("llama.attention.key_length".into(), u32_of(s.head_dim)),
        ("llama.attention.value_length".into(), u32_of(s.head_dim)),
        ("llama.vocab_size".into(), u32_of(s.vocab_size)),
        ("llama.rope.dimension_count".into(), u32_of(s.head_dim)),
        ("tokenizer.ggml.model".into(), Value::String(vocab.model)),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(vocab.tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.token_types.into_iter().map(Value::I32).collect()),
        ),
    ];
    if !vocab.merges.is_empty() {
        m.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(vocab.merges.into_iter().map(Value::String).collect()),
        ));
    }
    m.push((
        "tokenizer.ggml.bos_token_id".into(),
        Value::U32(vocab.bos_id),
    ));
    m.push((
        "tokenizer.ggml.eos_token_id".into(),
        Value::U32(vocab.eos_id),
    ));
    if let Some(unk) = vocab.unk_id {
        m.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(unk)));
    }
    if let Some(pad) = vocab.pad_id {
        m.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(pad)));
    }
    m.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(vocab.add_bos),
    ));
    m.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    m.push((
        "tokenizer.chat_template".into(),
        Value::String(MINISTRAL_CHAT_TEMPLATE.into()),
    ));
    Ok(m)
}

/// Writes a whole random-weight model to `out`. Progress goes to stderr.
pub fn generate_model(opts: &GenerateOptions, out: &mut impl Write) -> Result<()> {
    let started = web_time::Instant::now();
    let vocab = tekken_gguf_vocab(&opts.tekken_json)?;
    let metadata = metadata(opts, vocab)?;
    let plan = tensor_plan(opts.preset);
    let mut writer = GgufWriter::new(
        metadata,
        plan.iter()
            .map(|t| (t.name.clone(), t.dims(), t.dtype))
            .collect(),
    )?;
    let total_bytes: u64 = writer.tensors().iter().map(|t| t.n_bytes).sum();
    writer.write_header(out)?;
    eprintln!(
        "generate: {} preset, header written, {:.1} s",
        opts.preset,
        started.elapsed().as_secs_f64()
    );

    let mut done_bytes = 0u64;
    for (index, tensor) in plan.iter().enumerate() {
        let n_chunks = tensor.rows.div_ceil(tensor.rows_per_chunk());
        // A few chunks at a time: in parallel where threads exist, always written in order.
        let batch = worker_count();
        for first in (0..n_chunks).step_by(batch) {
            let chunks: Vec<usize> = (first..(first + batch).min(n_chunks)).collect();
            for bytes in produce_chunks(opts.seed, index, tensor, &chunks)? {
                writer.write_tensor_part(out, &tensor.name, &bytes)?;
            }
        }
        done_bytes += writer.tensors()[index].n_bytes;
        if tensor.name.ends_with("ffn_down.weight") || index + 1 == plan.len() {
            eprintln!(
                "generate: {} written, {:.0}/{:.0} MB, {:.1} s",
                tensor.name,
                done_bytes as f64 / 1e6,
                total_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
    }
    writer.finish(out)?;
    Ok(())
}

/// Generates into `path` through `path.tmp`, renamed into place only when complete.
/// Returns the file length in bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn generate_model_file(
    opts: &GenerateOptions,
    path: impl AsRef<std::path::Path>,
) -> Result<u64> {
    let path = path.as_ref();
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    // I/O errors name the file, so "No such file or directory" says which one.
    let with_path = |e: std::io::Error, p: &std::path::Path| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", p.display()),
        ))
    };
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| with_path(e, &tmp))?;
        let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
        generate_model(opts, &mut out).map_err(|e| match e {
            Error::Io(io) => with_path(io, &tmp),
            other => other,
        })?;
        let file = out
            .into_inner()
            .map_err(|e| with_path(e.into_error(), &tmp))?;
        file.sync_all().map_err(|e| with_path(e, &tmp))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| with_path(e, path))?;
    Ok(std::fs::metadata(path)
        .map_err(|e| with_path(e, path))?
        .len())
}

fn worker_count() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// The encoded bytes of the given chunks of one tensor, in order.
fn produce_chunks(
    seed: u64,
    tensor_index: usize,
    tensor: &TensorPlan,
    chunks: &[usize],
) -> Result<Vec<Vec<u8>>> {
    #[cfg(not(target_arch = "wasm32"))]
    if chunks.len() > 1 {
        return std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&chunk| scope.spawn(move || encode_chunk(seed, tensor_index, tensor, chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Model("a generator thread panicked".into())))
                })
                .collect()
        });
    }
    chunks
        .iter()
        .map(|&chunk| encode_chunk(seed, tensor_index, tensor, chunk))
        .collect()
}

/// Draws and encodes rows `[chunk * rows_per_chunk, ...)` of a tensor. Each chunk has its own
/// RNG stream, so the output does not depend on how many threads ran.
fn encode_chunk(
    seed: u64,
    tensor_index: usize,
    tensor: &TensorPlan,
    chunk: usize,
) -> Result<Vec<u8>> {
    let rows_per_chunk = tensor.rows_per_chunk();
    let first_row = chunk * rows_per_chunk;
    let rows = rows_per_chunk.min(tensor.rows - first_row);
    let stream = splitmix64(splitmix64(seed ^ splitmix64(tensor_index as u64)) ^ chunk as u64);
    let mut rng = StdRng::seed_from_u64(stream);
    let mut values = vec![0f32; rows * tensor.cols];
    fill_normal(&mut rng, &mut values);
    match tensor.init {
        Init::Normal { std } => values.iter_mut().for_each(|v| *v *= std),
        Init::AroundOne { std } => values.iter_mut().for_each(|v| *v = 1.0 + *v * std),
    }
    encode(values, rows, tensor.cols, tensor.dtype)
}

/// Encodes `rows × cols` row-major values as `dtype` (ggml block layout for quantized types).
fn encode(values: Vec<f32>, rows: usize, cols: usize, dtype: GgmlType) -> Result<Vec<u8>> {
    match dtype {
        GgmlType::F32 => return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        GgmlType::F16 => {
            return Ok(values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect())
        }
        GgmlType::BF16 => {
            return Ok(values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect())
        }
        _ => {}
    }
    let candle_type = crate::backend::cpu::candle_dtype(dtype);
    let tensor = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
    let quantized = QTensor::quantize(&tensor, candle_type)?;
    Ok(quantized.data()?.into_owned())
}

/// Standard normal values by Box–Muller, two per 64 random bits.
fn fill_normal(rng: &mut StdRng, out: &mut [f32]) {
    const TWO_POW_24: f32 = (1u32 << 24) as f32;
    for pair in out.chunks_mut(2) {
        let bits = rng.next_u64();
        // u1 in (0, 1] so ln(u1) is finite; u2 in [0, 1).
        let u1 = (((bits >> 40) as u32) + 1) as f32 / TWO_POW_24;
        let u2 = ((bits >> 8) as u32 & 0xFF_FFFF) as f32 / TWO_POW_24;
        let radius = (-2.0 * u1.ln()).sqrt();
        let (sin, cos) = (std::f32::consts::TAU * u2).sin_cos();
        pair[0] = radius * cos;
        if let Some(second) = pair.get_mut(1) {
            *second = radius * sin;
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_layers_match_llama_cpp() {
        // llama.cpp for 36 layers: the first 4, the last 5 and every third in between.
        let layers: Vec<usize> = (0..36).filter(|&l| use_more_bits(l, 36)).collect();
        assert_eq!(
            layers,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31, 32, 33, 34, 35]
        );
        let tiny: Vec<usize> = (0..4).filter(|&l| use_more_bits(l, 4)).collect();
        assert_eq!(tiny, vec![2, 3]);
    }

    #[test]
    fn normals_have_unit_variance() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut values = vec![0f32; 1 << 16];
        fill_normal(&mut rng, &mut values);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        // 65536 samples: the standard errors are ~0.004 (mean) and ~0.006 (variance).
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "variance {var}");
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn eight_b_plan_has_the_real_shape() {
        let plan = tensor_plan(Preset::Ministral8B);
        assert_eq!(plan.len(), 2 + 36 * 9 + 1);
        let bytes: u64 = plan
            .iter()
            .map(|t| t.dtype.bytes_for((t.cols * t.rows) as u64).unwrap())
            .sum();
        // Real Ministral-8B-Instruct-2410 Q4_K_M files are ~4.9 GB.
        assert!((4.5e9..5.3e9).contains(&(bytes as f64)), "{bytes} bytes");
    }
}
