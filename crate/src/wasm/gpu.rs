//! The WebGPU side of loading: open the adapter, check the model fits it, upload. In a build
//! without the `webgpu` feature there is no GPU (`Gpu` has no values) and opening says so.

use serde_json::Value;

use super::model::GpuSettings;
use crate::gguf::{ByteSource, GgufFile};
use crate::model::{LanguageModel, LlamaConfig};
use crate::{Error, Result};

/// Why WebGPU is not used: the error, its code for the caller, and what it means.
pub(super) type NotUsed = (Error, &'static str, &'static str);

#[cfg(feature = "webgpu")]
pub(super) struct Gpu(crate::backend::webgpu::WebGpuBackend);

#[cfg(not(feature = "webgpu"))]
pub(super) enum Gpu {}

/// Opens the browser's adapter and checks the model against its limits (nothing uploaded yet).
#[cfg(feature = "webgpu")]
pub(super) async fn open(
    settings: &GpuSettings,
    file: &GgufFile,
    config: &LlamaConfig,
) -> Result<Gpu, NotUsed> {
    use crate::backend::webgpu::{GpuOptions, WebGpuBackend};
    let options = GpuOptions {
        matmul_threads_per_row: settings.matmul_threads_per_row,
        shader_f16: settings.shader_f16,
        subgroups: settings.subgroups,
        ..Default::default()
    };
    let gpu = WebGpuBackend::new_async(options)
        .await
        .map_err(|e| (e, "webgpu_unavailable", "WebGPU is not available"))?;
    gpu.check_fits(file, config)
        .map_err(|e| (e, "gpu_limit", "the model does not fit the GPU adapter"))?;
    Ok(Gpu(gpu))
}

#[cfg(not(feature = "webgpu"))]
pub(super) async fn open(
    _settings: &GpuSettings,
    _file: &GgufFile,
    _config: &LlamaConfig,
) -> Result<Gpu, NotUsed> {
    Err((
        Error::Backend("this build has no WebGPU backend (feature `webgpu`)".into()),
        "webgpu_unavailable",
        "WebGPU is not available",
    ))
}

#[cfg(feature = "webgpu")]
impl Gpu {
    /// Why this adapter runs the model, and the adapter as `info().adapter`.
    pub(super) fn describe(&self, config: &LlamaConfig) -> (String, Value) {
        let a = self.0.adapter();
        let reason = format!(
            "WebGPU adapter {} holds the model (largest weight row and a {}-token KV cache fit its {} MiB bindings)",
            a.name,
            config
                .context_length
                .min(crate::backend::webgpu::MIN_GPU_CONTEXT),
            a.max_storage_binding.min(a.max_buffer_size) >> 20,
        );
        let adapter = serde_json::json!({
            "name": a.name,
            "backend": a.backend,
            "driver": a.driver,
            "shader_f16": a.shader_f16,
            "subgroups": a.subgroups,
            "max_buffer_size": a.max_buffer_size,
            "max_storage_buffer_binding_size": a.max_storage_binding,
            "kernel_variant": a.kernel_variant,
            "matmul_threads_per_row": a.matmul_threads_per_row,
        });
        (reason, adapter)
    }

    /// The adapter runs on the CPU (a browser's fallback adapter, such as SwiftShader).
    pub(super) fn runs_on_cpu(&self) -> bool {
        self.0.adapter().runs_on_cpu
    }

    pub(super) fn load(
        self,
        file: &GgufFile,
        source: &dyn ByteSource,
    ) -> Result<Box<dyn LanguageModel>> {
        crate::backend::webgpu::load_model_on(self.0, file, source)
    }
}

#[cfg(not(feature = "webgpu"))]
impl Gpu {
    pub(super) fn describe(&self, _config: &LlamaConfig) -> (String, Value) {
        match *self {}
    }

    pub(super) fn runs_on_cpu(&self) -> bool {
        match *self {}
    }

    pub(super) fn load(
        self,
        _file: &GgufFile,
        _source: &dyn ByteSource,
    ) -> Result<Box<dyn LanguageModel>> {
        match self {}
    }
}
