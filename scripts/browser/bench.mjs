// Page side of the browser benchmark. Each exported runner measures one
// configuration; run-bench.mjs opens a fresh page for every configuration so
// that one engine's memory (wasm heaps, GPU buffers) never affects the next.

const logEl = document.getElementById('log');
function log(...args) {
  const line = args.map((a) => (typeof a === 'string' ? a : JSON.stringify(a))).join(' ');
  if (logEl) logEl.textContent += line + '\n';
  console.log(line);
}

// Browser, threading and WebGPU adapter facts, printed with the results.
async function env() {
  const out = {
    userAgent: navigator.userAgent,
    crossOriginIsolated: self.crossOriginIsolated,
    hardwareConcurrency: navigator.hardwareConcurrency,
    jspi: !!WebAssembly.Suspending,
    webgpu: !!navigator.gpu,
  };
  if (navigator.gpu) {
    const adapter = await navigator.gpu.requestAdapter();
    if (adapter) {
      const i = adapter.info || {};
      out.adapter = { vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description };
      out.features = [...adapter.features].sort();
      out.shaderF16 = adapter.features.has('shader-f16');
      out.subgroups = adapter.features.has('subgroups');
      out.maxStorageBufferBindingSize = adapter.limits.maxStorageBufferBindingSize;
      out.maxBufferSize = adapter.limits.maxBufferSize;
    } else {
      out.adapter = null;
    }
  }
  return out;
}

// wllama 3 has no tokenizer API and its completion endpoint takes text only
// (token-id arrays are rejected), so the prompt is a run of common English
// words that are one token each in llama/tekken-style BPE vocabularies; the
// word count is then calibrated against llama.cpp's reported prompt_n.
const WORDS = ' the of and to in is that for it on with as was at by be this from or are an but not have you'.split(' ').slice(1);
function promptText(nWords) {
  return Array.from({ length: nWords }, (_, i) => ' ' + WORDS[(i * 7) % WORDS.length]).join('');
}

// wllama = llama.cpp in wasm. gpuLayers 0 keeps it on the CPU path; a
// positive value asks for its WebGPU backend (which llama.cpp may refuse).
async function wllama({ modelUrl, threads = 1, gpuLayers = 0, prompt = 64, decode = 32, reps = 2 }) {
  const { Wllama } = await import('/wllama/esm/index.js');
  const nativeLog = [];
  const keep = (...a) => nativeLog.push(a.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(' '));
  const logger = { debug: keep, log: keep, warn: keep, error: keep };
  const w = new Wllama({ default: '/wllama/esm/wasm/wllama.wasm' }, { logger });
  try {
    return await wllamaRun(w, nativeLog, { modelUrl, threads, gpuLayers, prompt, decode, reps });
  } catch (e) {
    // The worker's error says little; llama.cpp's last log lines say why.
    e.message += '\n-- wllama log tail:\n' + nativeLog.slice(-25).join('\n');
    throw e;
  }
}

async function wllamaRun(w, nativeLog, { modelUrl, threads, gpuLayers, prompt, decode, reps }) {
  const t0 = performance.now();
  await w.loadModelFromUrl(new URL(modelUrl, location.href).href, {
    n_threads: threads,
    n_gpu_layers: gpuLayers,
    n_ctx: Math.max(256, prompt + decode + 16),
    n_parallel: 1,
    // llama.cpp says which backends it enumerated only at debug level; that is
    // the evidence we want from the WebGPU attempt (debug logging would slow
    // the CPU runs, so those stay at the default level).
    log_level: gpuLayers > 0 ? 1 : undefined,
    useCache: false, // fresh download each page; we measure inference, not OPFS
  });
  const loadMs = performance.now() - t0;

  // Which backend really runs: llama.cpp logs the layers it offloaded, the
  // backends it enumerated and the buffers it allocated.
  const off = nativeLog.map((l) => /offloaded (\d+)\/(\d+) layers to GPU/.exec(l)).find(Boolean);
  const gpuOffloaded = off ? Number(off[1]) : 0;
  const evidence = nativeLog.filter((l) => /offloaded|ggml_webgpu|backend_ptrs|model buffer size|KV buffer size|compute buffer size|Multithread enabled/i.test(l));
  const base = {
    engine: 'wllama',
    version: safe(() => w.constructor.getLibllamaVersion?.()),
    backend: gpuOffloaded > 0 ? `webgpu (${off[1]}/${off[2]} layers)` : 'cpu (wasm simd)',
    requested: gpuLayers > 0 ? 'webgpu' : 'cpu',
    threads: safe(() => w.getNumThreads()),
    multithread: safe(() => w.isMultithread()),
    loadMs,
    evidence,
  };
  if (gpuLayers > 0 && gpuOffloaded === 0) {
    // WebGPU refused: the run would repeat the CPU rows (with debug logging
    // on), so report what happened instead of timing it.
    await w.exit();
    return { ...base, notTimed: 'WebGPU requested, llama.cpp kept every layer on the CPU' };
  }

  const request = (p, n) => w.createCompletion({
    prompt: p,
    max_tokens: n,
    temperature: 0,       // greedy
    top_k: 1,
    ignore_eos: true,     // always produce exactly n tokens
    cache_prompt: false,  // re-process the whole prompt on every run
  });

  // Warm-up (first touch of all weights) doubling as prompt-length
  // calibration: adjust the word count until llama.cpp sees `prompt` tokens.
  let nWords = prompt, calib = [];
  for (let i = 0; i < 4; i++) {
    const got = (await request(promptText(nWords), 2)).timings?.prompt_n;
    calib.push([nWords, got]);
    if (got == null || got === prompt) break;
    nWords = Math.max(1, nWords + (prompt - got));
  }
  const text = promptText(nWords);

  // Best of `reps` timed runs, using llama.cpp's own server timings:
  // prefill = prompt_n / prompt_ms; decode = predicted_per_second (llama.cpp
  // times the n-1 decode steps after the token sampled from the prompt).
  const runs = [];
  for (let r = 0; r < reps; r++) {
    const s = performance.now();
    const res = await request(text, decode);
    const wallMs = performance.now() - s;
    const t = res.timings || {};
    runs.push({
      wallMs,
      promptN: t.prompt_n,
      prefillTokS: t.prompt_n / t.prompt_ms * 1000,
      predictedN: t.predicted_n,
      decodeTokS: t.predicted_per_second,
      predictedMs: t.predicted_ms,
      finish: res.choices?.[0]?.finish_reason,
      text: res.choices?.[0]?.text?.slice(0, 60),
    });
  }
  const best = (k) => Math.max(...runs.map((r) => r[k]));
  const info = {
    ...base,
    prefillTokS: best('prefillTokS'),
    decodeTokS: best('decodeTokS'),
    runs,
    promptCalibration: calib,
  };
  await w.exit();
  return info;
}

// edgechat's own wasm package (crate/npm/wasm, mounted at /pkg/).
async function edgechat({ modelUrl, backend = 'webgpu', prompt = 64, decode = 32, reps = 2 }) {
  const mod = await import('/pkg/edgechat.js');
  await mod.default();
  const t0 = performance.now();
  const bytes = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
  const fetchMs = performance.now() - t0;
  // A CPU-emulated adapter (SwiftShader) runs a workgroup's threads as SIMD lanes: one thread per
  // weight row is what is fast there (measured: 1.7 vs 1.0 tok/s with 8 per row). wgpu picks that
  // when the browser flags the adapter as a fallback; the page also checks adapter.info, so the
  // choice holds where SwiftShader is selected without that flag.
  let gpuOptions;
  if (backend === 'webgpu' && navigator.gpu) {
    const adapter = await navigator.gpu.requestAdapter();
    const info = adapter?.info || {};
    if (info.isFallbackAdapter || /swiftshader/i.test(`${info.architecture} ${info.device} ${info.description}`)) {
      gpuOptions = JSON.stringify({ matmul_threads_per_row: 1 });
    }
  }
  const model = await mod.WasmModel.load(bytes, backend, gpuOptions);
  const loadMs = performance.now() - t0;
  const describe = model.describe();

  // Warm-up: pipelines compile and buffers are created on first use.
  await model.bench(Math.min(8, prompt), Math.min(4, decode));
  const runs = [];
  for (let r = 0; r < reps; r++) {
    const s = performance.now();
    const rep = JSON.parse(await model.bench(prompt, decode));
    runs.push({ wallMs: performance.now() - s, ...rep });
  }
  const best = runs.reduce((a, b) => (b.decode_tok_s > a.decode_tok_s ? b : a));
  model.free?.();
  // The report's backend is the model's description ("webgpu on <adapter> (...)"
  // or the CPU backend's name); the table wants its first word.
  const kind = String(best.backend).split(/[\s(]/)[0];
  return {
    engine: 'edgechat',
    backend: kind === 'webgpu' ? 'webgpu' : `${kind} (wasm)`,
    backendDescription: best.backend,
    requested: backend,
    describe,
    gpuOptions,
    threads: 1, // the wasm build is single-threaded
    fetchMs,
    loadMs,
    prefillTokS: Math.max(...runs.map((r) => r.prefill_tok_s)),
    decodeTokS: best.decode_tok_s,
    weightBytesPerToken: best.weight_bytes_per_token,
    decodeGbS: best.decode_gb_s,
    dispatchesPerToken: best.dispatches_per_token,
    submissionsPerToken: best.submissions_per_token,
    runs,
  };
}

function safe(f) { try { return f(); } catch { return undefined; } }

// Errors come back as data so one failing configuration doesn't end the run.
const guard = (f) => async (opts) => {
  try { return await f(opts); } catch (e) {
    log('error:', String(e && e.stack || e));
    return { error: String(e && e.message || e) };
  }
};

window.bench = { env, wllama: guard(wllama), edgechat: guard(edgechat), log };
window.benchReady = true;
log('bench page ready; crossOriginIsolated =', String(self.crossOriginIsolated));
