//! `edgechat inspect`: metadata, tensor table and model configuration of a GGUF file.

use std::io::Write;
use std::path::PathBuf;

use edgechat::gguf::{GgufFile, Value};
use edgechat::model::LlamaConfig;
use serde_json::{json, Map};

use crate::common::{open_model, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model file
    #[arg(long, short)]
    model: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// Arrays longer than this are summarized as their length and first items
    #[arg(long, default_value_t = 8)]
    array_items: usize,
}

/// Strings longer than this are cut in the text output (the JSON output keeps them whole).
const TEXT_STRING_CHARS: usize = 160;

pub fn main(args: Args) -> CliResult {
    let opened = open_model(&args.model)?;
    let file = &opened.file;
    let config = LlamaConfig::from_gguf(file);
    if args.json {
        let report = json!({
            "path": opened.path.display().to_string(),
            "gguf_version": file.version,
            "file_bytes": file.file_len,
            "alignment": file.alignment,
            "data_offset": file.data_offset,
            "metadata": file.metadata.iter()
                .map(|(k, v)| (k.clone(), value_json(v, args.array_items)))
                .collect::<Map<_, _>>(),
            "tensors": file.tensors.iter().map(|t| json!({
                "name": t.name,
                "type": t.dtype.name(),
                "dims": t.dims,
                "shape": t.shape(),
                "bytes": t.n_bytes,
                "offset": t.offset,
            })).collect::<Vec<_>>(),
            "tensor_bytes": file.tensors.iter().map(|t| t.n_bytes).sum::<u64>(),
            "parameters": file.tensors.iter().map(|t| t.n_elements()).sum::<u64>(),
            "config": match &config {
                Ok(c) => config_json(c),
                Err(e) => json!({ "error": e.to_string() }),
            },
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_text(
            &mut std::io::stdout().lock(),
            &opened.path,
            file,
            &config,
            args.array_items,
        )?;
    }
    Ok(())
}

fn print_text(
    out: &mut impl Write,
    path: &std::path::Path,
    file: &GgufFile,
    config: &edgechat::Result<LlamaConfig>,
    array_items: usize,
) -> std::io::Result<()> {
    writeln!(out, "file: {}", path.display())?;
    writeln!(
        out,
        "GGUF v{}, {} bytes, alignment {}, tensor data at {}",
        file.version, file.file_len, file.alignment, file.data_offset
    )?;
    writeln!(out)?;
    writeln!(out, "metadata ({} keys):", file.metadata.len())?;
    for (key, value) in &file.metadata {
        writeln!(out, "  {key} = {}", value_text(value, array_items))?;
    }
    writeln!(out)?;
    writeln!(out, "tensors ({}):", file.tensors.len())?;
    let name_width = file
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "  {:<name_width$}  {:<5}  {:<24}  {:>12}",
        "name", "type", "shape", "bytes"
    )?;
    for t in &file.tensors {
        let shape = format!("{:?}", t.shape());
        writeln!(
            out,
            "  {:<name_width$}  {:<5}  {:<24}  {:>12}",
            t.name,
            t.dtype.name(),
            shape,
            t.n_bytes
        )?;
    }
    let total_bytes: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    let parameters: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    writeln!(
        out,
        "  total: {parameters} parameters, {total_bytes} bytes ({:.1} MiB)",
        total_bytes as f64 / (1 << 20) as f64
    )?;
    writeln!(out)?;
    match config {
        Ok(c) => {
            writeln!(out, "config (llama):")?;
            if let serde_json::Value::Object(fields) = config_json(c) {
                for (k, v) in fields {
                    writeln!(out, "  {k}: {v}")?;
                }
            }
        }
        Err(e) => writeln!(out, "config: not a runnable llama model: {e}")?,
    }
    Ok(())
}

fn config_json(c: &LlamaConfig) -> serde_json::Value {
    json!({
        "architecture": "llama",
        "vocab_size": c.vocab_size,
        "context_length": c.context_length,
        "embedding_length": c.embedding_length,
        "block_count": c.block_count,
        "feed_forward_length": c.feed_forward_length,
        "head_count": c.head_count,
        "head_count_kv": c.head_count_kv,
        "head_dim": c.head_dim,
        "rope_dim": c.rope_dim,
        "rope_freq_base": c.rope_freq_base,
        "rms_norm_eps": c.rms_norm_eps,
        "sliding_window": c.sliding_window,
    })
}

fn scalar_json(v: &Value) -> serde_json::Value {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        // Non-finite floats have no JSON number; serde_json turns them into null.
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(items) => json!(items.iter().map(scalar_json).collect::<Vec<_>>()),
    }
}

/// Arrays up to `array_items` long are written whole; longer ones as `{length, first}`.
fn value_json(v: &Value, array_items: usize) -> serde_json::Value {
    match v {
        Value::Array(items) if items.len() > array_items => json!({
            "array_length": items.len(),
            "first": items.iter().take(array_items).map(scalar_json).collect::<Vec<_>>(),
        }),
        _ => scalar_json(v),
    }
}

fn value_text(v: &Value, array_items: usize) -> String {
    match v {
        Value::String(s) => {
            let shown: String = s.chars().take(TEXT_STRING_CHARS).collect();
            let quoted = serde_json::to_string(&shown).unwrap_or_default();
            let total = s.chars().count();
            if total > TEXT_STRING_CHARS {
                format!("{quoted}… ({total} chars)")
            } else {
                quoted
            }
        }
        Value::Array(items) => {
            let first: Vec<String> = items
                .iter()
                .take(array_items)
                .map(|i| value_text(i, array_items))
                .collect();
            if items.len() > array_items {
                format!("[{}, …] ({} items)", first.join(", "), items.len())
            } else {
                format!("[{}]", first.join(", "))
            }
        }
        other => scalar_json(other).to_string(),
    }
}
