//! The engine the npm package drives from its Web Worker: a GGUF read through a [`JsSource`],
//! the backend chosen for this browser and model (and why), and OpenAI-shaped chat.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use super::answer::{answer, Context};
use super::gpu;
use super::model::GpuSettings;
use super::{coded_error, engine_error, to_js, JsSource};
use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use crate::hybrid::{Fallback, Local};
use crate::model::{LanguageModel, LlamaConfig};
use crate::session::{CancelToken, Engine};
use crate::tokenizer::Tokenizer;

/// wasm32 memory ends at 4 GiB; the CPU backend holds the weights, the KV cache and the
/// tokenizer there, with room left for activations.
const WASM_MEMORY_BYTES: u64 = 4 << 30;
const WASM_HEADROOM_BYTES: u64 = 512 << 20;
/// The KV cache the CPU backend must be able to grow to (or the model's context, if shorter).
const MIN_WASM_CONTEXT: u64 = 4096;

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum BackendChoice {
    /// WebGPU when the browser has it and the model fits the adapter, else the wasm CPU backend.
    /// An adapter that runs on the CPU (the browser's fallback adapter, such as SwiftShader) is
    /// used only for a model the wasm backend cannot hold: the wasm backend's SIMD kernels are
    /// several times faster there (SmolLM2 in Chromium: decode 24.6 against 4.3 tok/s, prefill
    /// 112 against 8.4; `scripts/bench-browser`).
    #[default]
    Auto,
    Webgpu,
    Wasm,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct LoadOptions {
    backend: BackendChoice,
    gpu: GpuSettings,
    /// The name answers carry in `model` (else the GGUF's `general.name`).
    name: Option<String>,
    /// The most wasm memory the CPU backend may use (default and most: 4 GiB).
    wasm_memory_limit: Option<u64>,
}

/// A loaded model with its tokenizer and chat template.
#[wasm_bindgen]
pub struct WasmEngine {
    /// `None` after `unload`, and for the hosted route alone.
    engine: Rc<RefCell<Option<Engine>>>,
    /// Whether the local model can answer (a lost device makes it unavailable).
    local: Rc<RefCell<Local>>,
    /// The hosted route, when the caller gave one.
    fallback: Option<Fallback>,
    /// The running request's tokens: the caller's abort, and the local generation's stop.
    cancel: Rc<RefCell<Vec<CancelToken>>>,
    info: Value,
    model_name: String,
}

/// What a GGUF header says about a model, and what it needs to run.
fn model_facts(file: &GgufFile, config: &LlamaConfig) -> Value {
    let weight_bytes: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    let parameters: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    json!({
        "name": file.get_str("general.name").ok().flatten(),
        "architecture": "llama",
        "file_bytes": file.file_len,
        "weight_bytes": weight_bytes,
        "parameters": parameters,
        "context_length": config.context_length,
        "vocab_size": config.vocab_size,
        "layers": config.block_count,
        "embedding_length": config.embedding_length,
        "head_count": config.head_count,
        "head_count_kv": config.head_count_kv,
        "head_dim": config.head_dim,
        "kv_bytes_per_token": kv_bytes_per_token(config),
        "wasm_bytes_needed": wasm_bytes_needed(file, config),
    })
}

/// Keys and values of every layer for one position, in f32.
fn kv_bytes_per_token(config: &LlamaConfig) -> u64 {
    (2 * config.block_count * config.head_count_kv * config.head_dim * 4) as u64
}

/// What the CPU backend would hold in wasm memory: the weights (the GGUF's tensor data), the KV
/// cache for [`MIN_WASM_CONTEXT`] positions, and headroom for everything else.
fn wasm_bytes_needed(file: &GgufFile, config: &LlamaConfig) -> u64 {
    let weights = file.file_len.saturating_sub(file.data_offset);
    let positions = (config.context_length as u64).min(MIN_WASM_CONTEXT);
    weights + positions * kv_bytes_per_token(config) + WASM_HEADROOM_BYTES
}

fn read_header(source: &JsSource) -> Result<(GgufFile, LlamaConfig), JsValue> {
    let file = GgufFile::read(source).map_err(|e| engine_error(&e.into()))?;
    let config = LlamaConfig::from_gguf(&file).map_err(|e| engine_error(&e))?;
    Ok((file, config))
}

fn call_phase(on_phase: &js_sys::Function, phase: &str, total: u64) {
    let _ = on_phase.call2(
        &JsValue::NULL,
        &phase.into(),
        &JsValue::from_f64(total as f64),
    );
}

fn parse_fallback(json: &str) -> Result<Fallback, JsValue> {
    serde_json::from_str(json)
        .map_err(|e| coded_error("invalid_options", &format!("fallback: {e}"), None))
}

#[wasm_bindgen]
impl WasmEngine {
    /// Reads and checks a GGUF's header, tokenizer and chat template without its weights: a bad
    /// or unsupported file fails here, before anything else is given up for it. Returns the
    /// model's facts (see `info().model`).
    pub fn inspect(size: f64, read: js_sys::Function) -> Result<JsValue, JsValue> {
        let source = JsSource::new(size as u64, read);
        let (file, config) = read_header(&source)?;
        let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| engine_error(&e))?;
        ChatTemplate::from_gguf(&file, &tokenizer).map_err(|e| engine_error(&e))?;
        Ok(to_js(&model_facts(&file, &config)))
    }

    /// Loads a GGUF of `size` bytes that `read(offset, into)` supplies. `options` (JSON):
    /// `{backend: "auto"|"webgpu"|"wasm", gpu: {...}, name}`. `on_phase(phase, totalBytes)` is
    /// called as loading moves on: `header`, `shader-compile`, then `gpu-upload` or `wasm-load`
    /// (the weights are read then), then `ready`.
    pub async fn load(
        size: f64,
        read: js_sys::Function,
        options: String,
        on_phase: js_sys::Function,
    ) -> Result<WasmEngine, JsValue> {
        let options: LoadOptions = serde_json::from_str(&options)
            .map_err(|e| coded_error("invalid_options", &format!("load options: {e}"), None))?;
        let source = JsSource::new(size as u64, read);
        call_phase(&on_phase, "header", size as u64);
        let (file, config) = read_header(&source)?;
        let tokenizer = Tokenizer::from_gguf(&file).map_err(|e| engine_error(&e))?;
        let template = ChatTemplate::from_gguf(&file, &tokenizer).map_err(|e| engine_error(&e))?;
        let facts = model_facts(&file, &config);
        let weight_bytes = file.file_len.saturating_sub(file.data_offset);
        let wasm_needed = wasm_bytes_needed(&file, &config);
        let wasm_limit = options
            .wasm_memory_limit
            .unwrap_or(WASM_MEMORY_BYTES)
            .min(WASM_MEMORY_BYTES);
        let wasm_fits = wasm_needed <= wasm_limit;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;

        // WebGPU first unless the caller chose wasm; the reason for the choice is kept for info().
        let (mut chosen, mut why_not_gpu) = (None, None);
        if options.backend != BackendChoice::Wasm {
            call_phase(&on_phase, "shader-compile", 0);
            match gpu::open(&options.gpu, &file, &config).await {
                Ok(gpu)
                    if gpu.runs_on_cpu() && options.backend == BackendChoice::Auto && wasm_fits =>
                {
                    why_not_gpu = Some((
                        crate::Error::Backend(
                            "its kernels run on the CPU, where the wasm backend's are faster"
                                .into(),
                        ),
                        "webgpu_unavailable",
                        "the WebGPU adapter is the browser's CPU fallback",
                    ));
                }
                Ok(gpu) => chosen = Some(gpu),
                Err(not_used) => why_not_gpu = Some(not_used),
            }
        }
        let wasm_reason = |prefix: &str| {
            format!(
                "{prefix}; the wasm CPU backend holds it ({:.2} GiB of at most {:.2} GiB of wasm memory)",
                gib(wasm_needed),
                gib(wasm_limit)
            )
        };
        let (model, backend_name, reason, adapter): (Box<dyn LanguageModel>, _, _, _) = match (
            chosen,
            why_not_gpu,
        ) {
            (Some(gpu), _) => {
                let (reason, adapter) = gpu.describe(&config);
                call_phase(&on_phase, "gpu-upload", weight_bytes);
                let model = gpu.load(&file, &source).map_err(|e| engine_error(&e))?;
                (model, "webgpu", reason, Some(adapter))
            }
            (None, why_not) => {
                let reason = match &why_not {
                    None => "the wasm CPU backend was chosen".to_string(),
                    Some((e, _, what)) => wasm_reason(&format!("{what} ({e})")),
                };
                if !wasm_fits {
                    let too_big = format!(
                            "the model needs {:.2} GiB in the wasm CPU backend, more than its {:.2} GiB of memory",
                            gib(wasm_needed),
                            gib(wasm_limit)
                        );
                    let (code, message) = match &why_not {
                        Some((e, code, what)) if options.backend == BackendChoice::Webgpu => {
                            (*code, format!("{what}: {e}"))
                        }
                        Some((e, _, what)) => {
                            ("model_too_large", format!("{what} ({e}), and {too_big}"))
                        }
                        None => ("model_too_large", too_big),
                    };
                    return Err(coded_error(code, &message, None));
                }
                if let (Some((e, code, what)), BackendChoice::Webgpu) = (&why_not, options.backend)
                {
                    return Err(coded_error(code, &format!("{what}: {e}"), None));
                }
                call_phase(&on_phase, "wasm-load", weight_bytes);
                let model =
                    crate::backend::load_model(crate::backend::BackendKind::Cpu, &file, &source)
                        .map_err(|e| engine_error(&e))?;
                (model, "wasm", reason, None)
            }
        };
        let description = model.backend_description();
        let engine = Engine::from_parts(model, tokenizer, template);
        let model_name = options
            .name
            .or_else(|| facts["name"].as_str().map(str::to_string))
            .unwrap_or_else(|| "local-model".into());
        let info = json!({
            "backend": backend_name,
            "reason": reason,
            "description": description,
            "adapter": adapter,
            "model": facts,
            "model_name": model_name,
        });
        call_phase(&on_phase, "ready", 0);
        Ok(WasmEngine {
            engine: Rc::new(RefCell::new(Some(engine))),
            local: Rc::new(RefCell::new(Local::Ready)),
            fallback: None,
            cancel: Rc::new(RefCell::new(Vec::new())),
            info,
            model_name,
        })
    }

    /// `{backend: "webgpu"|"wasm", reason, description, adapter, model, model_name}`.
    pub fn info(&self) -> JsValue {
        to_js(&self.info)
    }

    /// An engine with no local model: every request goes to the hosted route. `fallback` is the
    /// route (JSON, see [`Fallback`]); `reason` says why there is no local model.
    pub fn hosted(fallback: String, reason: String) -> Result<WasmEngine, JsValue> {
        let fallback = parse_fallback(&fallback)?;
        let info = json!({
            "backend": "hosted",
            "reason": reason,
            "adapter": null,
            "model": null,
            "model_name": fallback.model,
            "mode": fallback.mode,
        });
        Ok(WasmEngine {
            engine: Rc::new(RefCell::new(None)),
            local: Rc::new(RefCell::new(Local::Unavailable(reason))),
            model_name: fallback.model.clone(),
            fallback: Some(fallback),
            cancel: Rc::new(RefCell::new(Vec::new())),
            info,
        })
    }

    /// Gives a loaded engine a hosted route (JSON, see [`Fallback`]): requests follow its mode,
    /// and a local answer that fails or is too slow goes on there.
    #[wasm_bindgen(js_name = setFallback)]
    pub fn set_fallback(&mut self, fallback: String) -> Result<(), JsValue> {
        let fallback = parse_fallback(&fallback)?;
        self.info["mode"] = json!(fallback.mode);
        self.fallback = Some(fallback);
        Ok(())
    }

    /// Runs an OpenAI chat-completions request (JSON) on the route the policy picks (see
    /// [`super::answer`]). With `stream: true`, `on_chunk(chunk)` gets each
    /// `chat.completion.chunk` (the usage in a last chunk when `stream_options.include_usage`) and
    /// the promise resolves to null; otherwise it resolves to the `chat.completion`. Each chunk
    /// carries `edgechat: {backend, provider}`, and the last `edgechat: {backend, stats, cost_usd,
    /// hosted}`. A cancelled request rejects with code `aborted`.
    pub fn chat(&self, request: String, on_chunk: js_sys::Function) -> js_sys::Promise {
        let (cancel, local_stop) = (CancelToken::new(), CancelToken::new());
        *self.cancel.borrow_mut() = vec![cancel.clone(), local_stop.clone()];
        let context = Context {
            engine: self.engine.clone(),
            local: self.local.clone(),
            fallback: self.fallback.clone(),
            backend: self.info["backend"].as_str().unwrap_or("local").to_string(),
            model_name: self.model_name.clone(),
            cancel,
            local_stop,
        };
        wasm_bindgen_futures::future_to_promise(answer(context, request, on_chunk))
    }

    /// Stops the running request at its next token (it rejects with code `aborted`).
    pub fn cancel(&self) {
        for token in self.cancel.borrow().iter() {
            token.cancel();
        }
    }

    /// Frees the model (GPU buffers and device, or wasm memory). False while a request runs:
    /// cancel it and wait for it first.
    pub fn unload(&self) -> bool {
        match self.engine.try_borrow_mut() {
            Ok(mut slot) => {
                slot.take();
                true
            }
            Err(_) => false,
        }
    }
}
