//! A bare model for tests and benchmarks in the browser: load a GGUF on WebGPU or the CPU, decode
//! greedily (teacher forcing allowed), and measure. The package's API is [`super::WasmEngine`].

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::backend::{self, BackendKind};
use crate::bench::bench_run;
use crate::gguf::{GgufFile, MemorySource};
use crate::model::{Forwarded, LanguageModel, Output};
use crate::sampling::{argmax, DeviceSampling};

/// A model loaded in the page.
#[wasm_bindgen]
pub struct WasmModel {
    /// Borrowed mutably for a whole call, awaits included: the borrow is the model's lock, and a
    /// call that comes meanwhile gets a "busy" error from `try_borrow_mut` (never a panic).
    model: Rc<RefCell<Box<dyn LanguageModel>>>,
    description: String,
}

fn js_error(e: crate::Error) -> JsError {
    JsError::new(&e.to_string())
}

/// GPU settings a page may force (otherwise chosen for the adapter).
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct GpuSettings {
    pub matmul_threads_per_row: Option<u32>,
    pub shader_f16: Option<bool>,
    pub subgroups: Option<bool>,
}

const GREEDY: Output = Output::Sample(DeviceSampling::GREEDY);

#[wasm_bindgen]
impl WasmModel {
    /// Loads a GGUF from its bytes onto `backend` (`"webgpu"` or `"cpu"`). `gpu_options` (JSON,
    /// optional) forces GPU settings chosen for the adapter otherwise, e.g.
    /// `{"matmul_threads_per_row": 1}`.
    pub async fn load(
        bytes: Vec<u8>,
        backend: String,
        gpu_options: Option<String>,
    ) -> Result<WasmModel, JsError> {
        let options: GpuSettings = match gpu_options {
            Some(json) => serde_json::from_str(&json)
                .map_err(|e| JsError::new(&format!("gpu options: {e}")))?,
            None => GpuSettings::default(),
        };
        let kind: BackendKind = backend.parse().map_err(js_error)?;
        let source = MemorySource::new(bytes);
        let file = GgufFile::read(&source).map_err(|e| js_error(e.into()))?;
        let model = match kind {
            BackendKind::Cpu => backend::load_model(kind, &file, &source),
            #[cfg(feature = "webgpu")]
            BackendKind::WebGpu => {
                let options = backend::webgpu::GpuOptions {
                    matmul_threads_per_row: options.matmul_threads_per_row,
                    shader_f16: options.shader_f16,
                    subgroups: options.subgroups,
                    ..Default::default()
                };
                let gpu = backend::webgpu::WebGpuBackend::new_async(options)
                    .await
                    .map_err(js_error)?;
                backend::webgpu::load_model_on(gpu, &file, &source)
            }
            #[cfg(not(feature = "webgpu"))]
            BackendKind::WebGpu => {
                let _ = options;
                Err(crate::Error::Backend(
                    "this build has no WebGPU backend (feature `webgpu`)".into(),
                ))
            }
        }
        .map_err(js_error)?;
        Ok(WasmModel {
            description: model.backend_description(),
            model: Rc::new(RefCell::new(model)),
        })
    }

    /// What the model runs on (backend, GPU adapter and its features).
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// Greedy tokens after `prompt` (token ids), from an empty cache: the token chosen at each of
    /// `steps` steps. Each step feeds the chosen token, or `forced[i]` when given (teacher forcing:
    /// compares step by step with another run even after a near-tie).
    #[allow(clippy::await_holding_refcell_ref)] // the model's lock (see `model`)
    pub fn greedy(
        &self,
        prompt: Vec<u32>,
        steps: u32,
        forced: Option<Vec<u32>>,
    ) -> js_sys::Promise {
        let model = self.model.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut model = model
                .try_borrow_mut()
                .map_err(|_| JsError::new("the model is busy with another call"))?;
            let model = model.as_mut();
            model.truncate_cache(0);
            let mut tokens = Vec::with_capacity(steps as usize);
            let mut input = prompt;
            for step in 0..steps as usize {
                let pending = model.start_forward(&input, GREEDY).map_err(js_error)?;
                let token = match pending.wait_async().await.map_err(js_error)? {
                    Forwarded::Token(token) => token,
                    Forwarded::Logits(logits) => argmax(&logits),
                };
                tokens.push(token);
                let fed = forced.as_ref().and_then(|f| f.get(step).copied());
                input = vec![fed.unwrap_or(token)];
            }
            Ok(js_sys::Uint32Array::from(&tokens[..]).into())
        })
    }

    /// The last row's logits after `prompt` (token ids), from an empty cache.
    #[allow(clippy::await_holding_refcell_ref)] // the model's lock (see `model`)
    pub fn logits(&self, prompt: Vec<u32>) -> js_sys::Promise {
        let model = self.model.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut model = model
                .try_borrow_mut()
                .map_err(|_| JsError::new("the model is busy with another call"))?;
            model.truncate_cache(0);
            let pending = model
                .start_forward(&prompt, Output::Logits)
                .map_err(js_error)?;
            let logits = match pending.wait_async().await.map_err(js_error)? {
                Forwarded::Logits(logits) => logits,
                Forwarded::Token(_) => {
                    return Err(JsError::new("asked for logits, got a token").into())
                }
            };
            Ok(js_sys::Float32Array::from(&logits[..]).into())
        })
    }

    /// Times a prefill of `prompt_tokens` and `gen_tokens` decode steps (see `edgechat bench`):
    /// a JSON report.
    #[allow(clippy::await_holding_refcell_ref)] // the model's lock (see `model`)
    pub fn bench(&self, prompt_tokens: u32, gen_tokens: u32) -> js_sys::Promise {
        let model = self.model.clone();
        let description = self.description.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut model = model
                .try_borrow_mut()
                .map_err(|_| JsError::new("the model is busy with another call"))?;
            let run = bench_run(model.as_mut(), prompt_tokens as usize, gen_tokens as usize)
                .await
                .map_err(js_error)?;
            let weight_bytes = model.weight_bytes_per_token();
            let report = serde_json::json!({
                "backend": description,
                "prompt_tokens": prompt_tokens,
                "gen_tokens": gen_tokens,
                "prefill_tok_s": run.prefill_tok_s,
                "decode_tok_s": run.decode_tok_s,
                "weight_bytes_per_token": weight_bytes,
                "decode_gb_s": weight_bytes as f64 * run.decode_tok_s / 1e9,
                "dispatches_per_token": run.dispatches_per_token,
                "submissions_per_token": run.submissions_per_token,
            });
            Ok(JsValue::from_str(&report.to_string()))
        })
    }
}
