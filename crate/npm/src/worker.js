// The package's Web Worker: owns the wasm engine, the model file and the GPU device, and answers
// the page's messages one at a time, in order (a load, a chat request, an unload). An abort is
// handled at once: the engine stops at its next token, since it yields to this event loop between
// tokens.
//
// Messages in:  {id, type: 'load', model, options} | {id, type: 'chat', request} |
//               {id, type: 'abort', target} | {id, type: 'unload'}
// Messages out: {id, type: 'progress', progress} | {id, type: 'chunk', chunk} |
//               {id, type: 'result', value} | {id, type: 'error', error}

import init, { Sha256, WasmEngine } from '../wasm/edgechat.js';
import { serializeError, EdgechatError } from './errors.js';
import { openModel, deleteCachedModel } from './loader.js';

const wasmReady = init(); // resolves to the wasm exports (its `memory` among them)
let current = null; // { engine: WasmEngine, source, info }
// A local model loading while the hosted route answers ({ controller, placeholder }: the hosted
// engine it is to replace). A later load or unload cancels it.
let background = null;
let queue = Promise.resolve();
const pending = new Map(); // id -> { aborted, abort() }: requests queued or running

function post(message) {
  self.postMessage(message);
}

// Progress events, at most one per 50 ms per phase (and always the last of a phase).
function progressReporter(id) {
  let last = { phase: null, at: 0 };
  return (phase, loaded, total, force = false) => {
    const now = performance.now();
    const finished = total != null && loaded >= total;
    if (!force && phase === last.phase && now - last.at < 50 && !finished) return;
    last = { phase, at: now };
    post({ id, type: 'progress', progress: { phase, loaded, total, fraction: total ? Math.min(1, loaded / total) : null } });
  };
}

async function load(id, model, options, control) {
  const wasm = await wasmReady;
  const fallback = options.fallback ? JSON.stringify(options.fallback) : null;
  const mode = options.fallback?.mode ?? 'prefer-local';
  const hosted = (reason, localError = null) => {
    unloadCurrent();
    const engine = WasmEngine.hosted(fallback, reason);
    const info = { ...engine.info(), local_error: localError, wasm_memory_bytes: wasm.memory.buffer.byteLength };
    current = { engine, source: null, info };
    return info;
  };
  cancelBackground();
  if (fallback && mode === 'hosted-only') return hosted('hosted-only mode');
  if (fallback && mode === 'prefer-local' && options.fallback.answerWhileLoading && !current) {
    // Answer from the hosted route now; the local model takes over once it has loaded.
    const info = { ...hosted('the local model is still loading'), loading: true };
    loadInBackground(model, options, wasm, fallback, current);
    return info;
  }
  try {
    const loaded = await loadLocal(id, model, options, control, wasm, fallback, { replace: true });
    current = loaded;
    return loaded.info;
  } catch (e) {
    // Local first: a model that cannot run here (or fails to load) leaves the hosted route, unless
    // a model already loaded is still in place (its file was not at fault).
    if (fallback && mode === 'prefer-local' && e.code !== 'aborted' && !current) {
      return hosted(`the local model could not be loaded: ${e.message}`, serializeError(e));
    }
    throw e;
  }
}

// Loads a local model and returns it ({ engine, source, info }) for the caller to put in use. With
// `replace`, the model in use is given up once the file has passed its checks (its memory is needed
// for the new one); without, it stays (the background load replaces a hosted engine, which holds
// no model, when it is done).
async function loadLocal(id, model, options, control, wasm, fallback, { replace }) {
  const progress = progressReporter(id);
  const source = await openModel(model, {
    sha256: options.sha256, size: options.size, progress, signal: control.signal, newHasher: () => new Sha256(),
    stallMs: options.stallTimeoutMs ?? undefined,
  });
  try {
    // A bad or unsupported file fails here, before the model in use is given up.
    try {
      WasmEngine.inspect(source.size, source.read);
    } catch (e) {
      if (source.id && (e.code === 'bad_model_file' || e.code === 'unsupported_model')) {
        source.close();
        await deleteCachedModel(source.id).catch(() => {});
      }
      throw e;
    }
    if (control.aborted) throw new EdgechatError('aborted', 'the load was aborted');
    if (replace) unloadCurrent();
    let phase = null;
    let phaseTotal = 0;
    let phaseRead = 0;
    const read = (offset, view) => {
      source.read(offset, view);
      phaseRead += view.length;
      if (phase) progress(phase, Math.min(phaseRead, phaseTotal || phaseRead), phaseTotal || null);
    };
    const onPhase = (enginePhase, total) => {
      phase = source.phaseOf(enginePhase);
      phaseTotal = total;
      phaseRead = 0;
      progress(phase, 0, total || null, true);
    };
    const engineOptions = {
      backend: options.backend ?? 'auto', gpu: options.gpu ?? {}, name: options.name ?? undefined,
      wasmMemoryLimit: options.wasmMemoryLimit ?? undefined,
    };
    const engine = await WasmEngine.load(source.size, read, JSON.stringify(engineOptions), onPhase);
    if (fallback) engine.setFallback(fallback);
    // wasm memory only grows, so its size now is the peak while loading.
    const info = {
      ...engine.info(),
      source: { fromCache: source.fromCache, cacheId: source.id ?? null, url: source.url ?? null },
      wasm_memory_bytes: wasm.memory.buffer.byteLength,
    };
    return { engine, source, info };
  } catch (e) {
    source.close();
    throw e;
  }
}

// Progress and the outcome of a background load go to the engine, not to a call (id 0). The model
// goes into use between requests (never under an answer the hosted engine is giving), and only if
// the hosted engine it was to replace is still the one in use.
function loadInBackground(model, options, wasm, fallback, placeholder) {
  const controller = new AbortController();
  const control = { aborted: false, controller, signal: controller.signal, abort: null };
  const job = { control, placeholder };
  background = job;
  loadLocal(0, model, options, control, wasm, fallback, { replace: false }).then(
    (loaded) => {
      queue = queue.then(() => {
        try {
          if (background !== job || current !== placeholder) {
            release(loaded); // a later load or unload took over meanwhile
            return;
          }
          background = null;
          unloadCurrent();
          current = loaded;
          post({ id: 0, type: 'local-ready', info: loaded.info });
        } catch (error) {
          post({ id: 0, type: 'local-failed', error: serializeError(error) });
        }
      });
    },
    (error) => {
      if (background !== job) return; // cancelled by a later load or unload: not this engine's news
      background = null;
      post({ id: 0, type: 'local-failed', error: serializeError(error) });
    },
  );
}

function cancelBackground() {
  if (!background) return;
  background.control.aborted = true;
  background.control.controller.abort();
  background = null;
}

function release(loaded) {
  loaded.engine.unload();
  loaded.engine.free();
  loaded.source?.close();
}

function unloadCurrent() {
  if (!current) return;
  release(current);
  current = null;
}

async function chat(id, request, control) {
  if (!current) throw new EdgechatError('not_loaded', 'no model is loaded');
  const { engine } = current;
  // A background load never replaces the engine while it answers (see loadInBackground).
  control.abort = () => engine.cancel();
  if (control.aborted) throw new EdgechatError('aborted', 'the request was aborted');
  return engine.chat(JSON.stringify(request), (chunk) => post({ id, type: 'chunk', chunk }));
}

const handlers = {
  load: (m, control) => load(m.id, m.model, m.options ?? {}, control),
  chat: (m, control) => chat(m.id, m.request, control),
  unload: async () => {
    cancelBackground();
    unloadCurrent();
    return null;
  },
  info: async () => current?.info ?? null,
};

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === 'abort') {
    const control = pending.get(message.target);
    if (control) {
      control.aborted = true;
      control.controller.abort();
      control.abort?.();
    }
    return;
  }
  const handler = handlers[message.type];
  if (!handler) {
    post({ id: message.id, type: 'error', error: serializeError(new EdgechatError('invalid_request', `unknown message ${message.type}`)) });
    return;
  }
  const controller = new AbortController();
  const control = { aborted: false, controller, signal: controller.signal, abort: null };
  pending.set(message.id, control);
  queue = queue.then(async () => {
    try {
      const value = await handler(message, control);
      post({ id: message.id, type: 'result', value });
    } catch (e) {
      post({ id: message.id, type: 'error', error: serializeError(e) });
    } finally {
      pending.delete(message.id);
    }
  });
};
