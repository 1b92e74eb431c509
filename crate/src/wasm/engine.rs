//! The engine the npm package drives from its Web Worker: a GGUF read through a [`JsSource`],
//! the backend chosen for this browser and model (and why), and OpenAI-shaped chat.

use std::cell::RefCell;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use super::model::GpuSettings;
use super::{coded_error, engine_error, JsSource};
use crate::chat::ChatTemplate;
use crate::gguf::GgufFile;
use crate::model::{LanguageModel, LlamaConfig};
use crate::openai::{finish_reason_name, Answer, ChatRequest, PromptError, RequestError};
use crate::session::{CancelToken, Engine, FinishReason};
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
}

/// A loaded model with its tokenizer and chat template.
#[wasm_bindgen]
pub struct WasmEngine {
    /// `None` after `unload`.
    engine: Rc<RefCell<Option<Engine>>>,
    /// The running request's token (a new one per request).
    cancel: Rc<RefCell<CancelToken>>,
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

fn to_js(value: &Value) -> JsValue {
    js_sys::JSON::parse(&value.to_string()).unwrap_or(JsValue::NULL)
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
        let wasm_fits = wasm_needed <= WASM_MEMORY_BYTES;
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;

        // WebGPU first unless the caller chose wasm; the reason for the choice is kept for info().
        let mut why_not_gpu = None;
        let mut chosen = None;
        if options.backend != BackendChoice::Wasm {
            call_phase(&on_phase, "shader-compile", 0);
            let gpu_options = crate::backend::webgpu::GpuOptions {
                matmul_threads_per_row: options.gpu.matmul_threads_per_row,
                shader_f16: options.gpu.shader_f16,
                subgroups: options.gpu.subgroups,
                ..Default::default()
            };
            match crate::backend::webgpu::WebGpuBackend::new_async(gpu_options).await {
                Err(e) => why_not_gpu = Some((e, "webgpu_unavailable", "WebGPU is not available")),
                Ok(gpu) => match gpu.check_fits(&file, &config) {
                    Err(e) => {
                        why_not_gpu =
                            Some((e, "gpu_limit", "the model does not fit the GPU adapter"))
                    }
                    Ok(()) => chosen = Some(gpu),
                },
            }
        }
        let wasm_reason = |prefix: &str| {
            format!("{prefix}; the wasm CPU backend holds it ({:.2} GiB of at most 4 GiB of wasm memory)", gib(wasm_needed))
        };
        let (model, backend_name, reason, adapter): (Box<dyn LanguageModel>, _, _, _) = match (
            chosen,
            why_not_gpu,
        ) {
            (Some(gpu), _) => {
                let adapter = gpu.adapter().clone();
                let reason = format!(
                        "WebGPU adapter {} holds the model (largest weight row and a {}-token KV cache fit its {} MiB bindings)",
                        adapter.name,
                        config.context_length.min(crate::backend::webgpu::MIN_GPU_CONTEXT),
                        adapter.max_storage_binding.min(adapter.max_buffer_size) >> 20,
                    );
                call_phase(&on_phase, "gpu-upload", weight_bytes);
                let model = crate::backend::webgpu::load_model_on(gpu, &file, &source)
                    .map_err(|e| engine_error(&e))?;
                (model, "webgpu", reason, Some(adapter))
            }
            (None, why_not) => {
                let reason = match &why_not {
                    None => "the wasm CPU backend was chosen".to_string(),
                    Some((e, _, what)) => wasm_reason(&format!("{what} ({e})")),
                };
                if !wasm_fits {
                    let too_big = format!(
                            "the model needs {:.2} GiB in the wasm CPU backend, more than its 4 GiB of memory",
                            gib(wasm_needed)
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
            "adapter": adapter.map(|a| json!({
                "name": a.name,
                "backend": a.backend,
                "driver": a.driver,
                "shader_f16": a.shader_f16,
                "subgroups": a.subgroups,
                "max_buffer_size": a.max_buffer_size,
                "max_storage_buffer_binding_size": a.max_storage_binding,
                "kernel_variant": a.kernel_variant,
                "matmul_threads_per_row": a.matmul_threads_per_row,
            })),
            "model": facts,
            "model_name": model_name,
        });
        call_phase(&on_phase, "ready", 0);
        Ok(WasmEngine {
            engine: Rc::new(RefCell::new(Some(engine))),
            cancel: Rc::new(RefCell::new(CancelToken::new())),
            info,
            model_name,
        })
    }

    /// `{backend: "webgpu"|"wasm", reason, description, adapter, model, model_name}`.
    pub fn info(&self) -> JsValue {
        to_js(&self.info)
    }

    /// Runs an OpenAI chat-completions request (JSON). With `stream: true`, `on_chunk(chunk)` gets
    /// each `chat.completion.chunk` (the usage in a last chunk when `stream_options.include_usage`)
    /// and the promise resolves to null; otherwise it resolves to the `chat.completion`. Each
    /// answer also carries `edgechat: {backend, stats}`. A cancelled request rejects with code
    /// `aborted`.
    pub fn chat(&self, request: String, on_chunk: js_sys::Function) -> js_sys::Promise {
        let engine = self.engine.clone();
        let cancel = CancelToken::new();
        *self.cancel.borrow_mut() = cancel.clone();
        let backend = self.info["backend"].clone();
        let model_name = self.model_name.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut slot = engine.try_borrow_mut().map_err(|_| {
                coded_error("busy", "the engine is answering another request", None)
            })?;
            let engine = slot
                .as_mut()
                .ok_or_else(|| coded_error("unloaded", "the model was unloaded", None))?;
            let context_length = engine.config().context_length;
            let request = serde_json::from_str(&request)
                .map_err(|e| RequestError::invalid(format!("the request is not JSON: {e}"), None))
                .and_then(|value| ChatRequest::from_value(value, context_length))
                .map_err(|e| coded_error("invalid_request", &e.message, e.param))?;
            let prompt = request.prompt(engine).map_err(|e| match e {
                PromptError::Request(e) => {
                    coded_error(e.code.unwrap_or("invalid_request"), &e.message, e.param)
                }
                PromptError::Engine(e) => engine_error(&e),
            })?;
            let answer = Answer {
                id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
                created: (js_sys::Date::now() / 1000.0) as u64,
                model: model_name,
                include_usage: request.include_usage,
            };
            let emit = |chunk: Value| {
                let _ = on_chunk.call1(&JsValue::NULL, &to_js(&chunk));
            };
            if request.stream {
                emit(answer.chunk(json!({ "role": "assistant", "content": "" }), None));
            }
            let completion = engine
                .generate_async(&prompt, &request.params, &cancel, &mut |text: &str| {
                    if request.stream {
                        emit(answer.chunk(json!({ "content": text }), None));
                    }
                })
                .await
                .map_err(|e| engine_error(&e))?;
            if completion.finish_reason == FinishReason::Cancelled {
                return Err(coded_error("aborted", "the request was aborted", None));
            }
            let stats = &completion.stats;
            let extra = json!({ "backend": backend, "stats": stats });
            let finish = finish_reason_name(completion.finish_reason);
            if request.stream {
                let mut last = answer.chunk(json!({}), Some(finish));
                if request.include_usage {
                    emit(last);
                    last = answer.usage_chunk(stats.prompt_tokens, stats.completion_tokens);
                }
                last["edgechat"] = extra;
                emit(last);
                Ok(JsValue::NULL)
            } else {
                let mut done = answer.completion(
                    &completion.text,
                    finish,
                    stats.prompt_tokens,
                    stats.completion_tokens,
                );
                done["edgechat"] = extra;
                Ok(to_js(&done))
            }
        })
    }

    /// Stops the running request at its next token (it rejects with code `aborted`).
    pub fn cancel(&self) {
        self.cancel.borrow().cancel();
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
