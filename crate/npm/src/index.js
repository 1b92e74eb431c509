// edgechat: an LLM chat in the browser with an OpenAI-shaped API.
//
//   import { createEngine } from "edgechat";
//   const engine = await createEngine({ model: "https://…/model.gguf", onProgress: (p) => … });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) …
//
// The engine runs in a dedicated Web Worker (./worker.js); this side only passes messages, so the
// page never blocks.

import { EdgechatError, deserializeError } from './errors.js';
import { listCachedModels, deleteCachedModel } from './loader.js';

export { EdgechatError, listCachedModels, deleteCachedModel };

/** Creates an engine and loads `options.model` into it. */
export async function createEngine(options = {}) {
  const engine = new Engine(options);
  try {
    await engine.load(options.model, options);
  } catch (e) {
    engine.terminate();
    throw e;
  }
  return engine;
}

function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

export class Engine {
  #worker;
  #nextId = 1;
  #calls = new Map(); // id -> { resolve, reject, onProgress, onChunk }
  #info = null;
  #broken = null;
  #onProgress = null;
  #localReady = null;

  constructor({ worker } = {}) {
    this.#worker = worker ?? new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'edgechat' });
    this.#worker.onmessage = (event) => this.#receive(event.data);
    this.#worker.onerror = (event) => this.#fail(new EdgechatError('worker_error', `the engine's worker failed: ${event.message ?? 'could not start'}`));
    this.#worker.onmessageerror = () => this.#fail(new EdgechatError('worker_error', 'a message from the engine could not be read'));
    this.chat = { completions: { create: (request) => this.#create(request) } };
  }

  #fail(error) {
    this.#broken = error;
    for (const call of this.#calls.values()) call.reject(error);
    this.#calls.clear();
    this.#localReady?.reject(error); // a no-op once it has settled
  }

  #receive(message) {
    if (message.id === 0) {
      // A model loading in the background while the hosted route answers.
      if (message.type === 'progress') this.#onProgress?.(message.progress);
      if (message.type === 'local-ready') {
        this.#info = message.info;
        this.#localReady?.resolve(message.info);
      }
      if (message.type === 'local-failed') this.#localReady?.reject(deserializeError(message.error));
      return;
    }
    const call = this.#calls.get(message.id);
    if (!call) return;
    switch (message.type) {
      case 'progress':
        call.onProgress?.(message.progress);
        break;
      case 'chunk':
        call.onChunk?.(message.chunk);
        break;
      case 'result':
        this.#calls.delete(message.id);
        call.resolve(message.value);
        break;
      case 'error':
        this.#calls.delete(message.id);
        call.reject(deserializeError(message.error));
        break;
    }
  }

  // Sends a message; the promise settles with the worker's result or error. With a `signal`, an
  // abort asks the worker to stop and rejects with the signal's reason: at once for an answer (the
  // worker's last words on it are dropped), when the worker has stopped for a load (which must not
  // seem over while it may still replace the model).
  #call(type, fields, { onProgress, onChunk, signal } = {}) {
    if (this.#broken) return Promise.reject(this.#broken);
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#worker.postMessage({ id: this.#nextId++, type: 'abort', target: id });
        if (type === 'chat') {
          this.#calls.delete(id);
          reject(abortReason(signal));
        }
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const settle = (fn) => (value) => {
        signal?.removeEventListener('abort', onAbort);
        fn(value);
      };
      this.#calls.set(id, {
        resolve: settle(resolve),
        reject: settle((error) => reject(error?.code === 'aborted' && signal?.aborted ? abortReason(signal) : error)),
        onProgress,
        onChunk,
      });
      this.#worker.postMessage({ id, type, ...fields });
    });
  }

  /**
   * Loads a model (a URL, a File or Blob, or "cache:<id>"), replacing the one loaded. A model that
   * fails to load leaves the one in use in place when its file is at fault.
   */
  async load(model, { onProgress, backend, gpu, sha256, size, name, signal, fallback, wasmMemoryLimit, stallTimeoutMs } = {}) {
    if (model == null && fallback?.mode !== 'hosted-only') {
      throw new EdgechatError('invalid_options', 'createEngine needs a `model`: a URL, a File or Blob, or "cache:<id>"');
    }
    // setTimeout takes at most 2^31 - 1 ms (about 24.8 days); a longer delay fires at once.
    if (stallTimeoutMs != null && !(Number.isFinite(stallTimeoutMs) && stallTimeoutMs > 0 && stallTimeoutMs <= 2 ** 31 - 1)) {
      throw new EdgechatError('invalid_options', '`stallTimeoutMs` must be a number of milliseconds above 0 and at most 2147483647');
    }
    // A relative URL means the page's, not the worker script's.
    if (typeof model === 'string' && !model.startsWith('cache:')) model = new URL(model, globalThis.document?.baseURI ?? location.href).href;
    const options = { backend, gpu, sha256, size, name, fallback, wasmMemoryLimit, stallTimeoutMs };
    this.#onProgress = onProgress;
    let resolve;
    let reject;
    const localReady = new Promise((ok, ko) => { resolve = ok; reject = ko; });
    localReady.catch(() => {}); // a caller that never asks is not told twice
    this.#localReady = { resolve, reject, promise: localReady };
    this.#info = await this.#call('load', { model, options }, { onProgress, signal });
    if (!this.#info.loading) resolve(this.#info);
    return this.#info;
  }

  /**
   * Settles when the local model is in use: at once after a local load, later with
   * `fallback.answerWhileLoading` (the hosted route answers meanwhile). Rejects if it failed.
   */
  get localReady() {
    return this.#localReady?.promise ?? Promise.reject(new EdgechatError('not_loaded', 'no model is loading'));
  }

  /** The backend (webgpu or wasm) and why, the adapter and its limits, and the model. */
  info() {
    return this.#info;
  }

  /** Frees the model's GPU memory (or wasm memory). The engine can load another model after. */
  async unload() {
    await this.#call('unload', {});
    this.#info = null;
  }

  /** Stops the worker; the engine cannot be used after. */
  terminate() {
    this.#worker.terminate();
    this.#fail(new EdgechatError('terminated', 'the engine was terminated'));
  }

  #create(request) {
    if (request == null || typeof request !== 'object') {
      return Promise.reject(new EdgechatError('invalid_request', 'create() needs a request object', { param: 'messages' }));
    }
    const { signal, ...body } = request;
    if (!body.stream) {
      return this.#call('chat', { request: body }, { signal });
    }
    // Streams report usage in their last chunk unless asked not to.
    body.stream_options = { include_usage: true, ...(body.stream_options ?? {}) };
    // Leaving the loop early stops generation too.
    const controller = new AbortController();
    if (signal) {
      if (signal.aborted) return Promise.reject(abortReason(signal));
      signal.addEventListener('abort', () => controller.abort(abortReason(signal)), { once: true });
    }
    const chunks = [];
    let wake = null;
    let ended = false;
    let failure = null;
    const notify = () => {
      wake?.();
      wake = null;
    };
    return new Promise((resolve, reject) => {
      const stream = {
        controller,
        async *[Symbol.asyncIterator]() {
          try {
            for (;;) {
              if (chunks.length > 0) {
                yield chunks.shift();
              } else if (ended) {
                if (failure) throw failure;
                return;
              } else {
                await new Promise((r) => { wake = r; });
              }
            }
          } finally {
            if (!ended) controller.abort();
          }
        },
      };
      // Like OpenAI's client: the stream is handed over once the request is accepted (its first
      // chunk), and a request refused before that rejects here.
      let started = false;
      this.#call('chat', { request: body }, {
        signal: controller.signal,
        onChunk: (chunk) => {
          chunks.push(chunk);
          if (!started) {
            started = true;
            resolve(stream);
          }
          notify();
        },
      }).then(() => {
        ended = true;
        if (!started) resolve(stream);
        notify();
      }, (e) => {
        failure = e;
        ended = true;
        if (!started) reject(e);
        notify();
      });
    });
  }
}
