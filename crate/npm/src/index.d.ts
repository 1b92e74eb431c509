// Types of the edgechat package. The request and response objects follow OpenAI's chat
// completions API (https://platform.openai.com/docs/api-reference/chat).

export type Role = 'system' | 'developer' | 'user' | 'assistant';

export interface ChatMessage {
  role: Role;
  content: string | Array<{ type: 'text'; text: string }> | null;
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  /** Ignored: the engine answers with the model it has loaded. */
  model?: string;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  /** 0 to 2 (default 1); 0 always picks the most likely token. */
  temperature?: number;
  /** (0, 1] (default 1). */
  top_p?: number;
  max_tokens?: number;
  max_completion_tokens?: number;
  /** Up to 4 strings; the answer stops before the first one it would contain. */
  stop?: string | string[];
  /** The same seed and request give the same answer. */
  seed?: number;
  frequency_penalty?: number;
  presence_penalty?: number;
  n?: 1;
  /** Stops the answer: a stream throws the signal's reason, a plain call rejects with it. */
  signal?: AbortSignal;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** Where and how fast an answer was made (not part of OpenAI's objects). */
export interface AnswerDetails {
  backend: 'webgpu' | 'wasm';
  stats: {
    prompt_tokens: number;
    reused_tokens: number;
    prefilled_tokens: number;
    completion_tokens: number;
    prefill_tok_s: number;
    decode_tok_s: number;
    time_to_first_token_ms: number;
    total_ms: number;
  };
}

export type FinishReason = 'stop' | 'length';

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: Array<{
    index: 0;
    message: { role: 'assistant'; content: string };
    logprobs: null;
    finish_reason: FinishReason;
  }>;
  usage: Usage;
  edgechat: AnswerDetails;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** Empty in the last chunk of a stream, which carries `usage`. */
  choices: Array<{
    index: 0;
    delta: { role?: 'assistant'; content?: string };
    logprobs: null;
    finish_reason: FinishReason | null;
  }>;
  usage?: Usage | null;
  /** In the last chunk only. */
  edgechat?: AnswerDetails;
}

export interface ChatCompletionStream extends AsyncIterable<ChatCompletionChunk> {
  /** Aborting it stops the answer (as does leaving the `for await` loop early). */
  controller: AbortController;
}

export type LoadPhase =
  | 'download'
  | 'verify'
  | 'cache-read'
  | 'file-read'
  | 'shader-compile'
  | 'gpu-upload'
  | 'wasm-load'
  | 'ready';

export interface LoadProgress {
  phase: LoadPhase;
  loaded: number;
  total: number | null;
  fraction: number | null;
}

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /**
   * 'auto' (default): WebGPU when the browser has it and the model fits the adapter, else wasm;
   * wasm also over the browser's CPU fallback adapter (SwiftShader) when the model fits wasm.
   */
  backend?: 'auto' | 'webgpu' | 'wasm';
  /** Expected SHA-256 (hex) of the file: checked after download, and the copy kept only if it matches. */
  sha256?: string;
  /** Expected size in bytes. */
  size?: number;
  /** The name answers carry in `model` (default: the GGUF's general.name). */
  name?: string;
  /** GPU kernel settings, chosen for the adapter unless forced. */
  gpu?: { matmul_threads_per_row?: number; shader_f16?: boolean; subgroups?: boolean };
  /** Stops a download. */
  signal?: AbortSignal;
  /** The hosted route (the edgechat router): used as `fallback.mode` says. */
  fallback?: Fallback;
  /** The most wasm memory the CPU backend may use, in bytes (default and most: 4 GiB). */
  wasmMemoryLimit?: number;
  /** A download request that sends nothing for this long is asked again (default 30000 ms). */
  stallTimeoutMs?: number;
}

export interface Fallback {
  /** The router's base URL, e.g. "https://router.example.com/v1". */
  url: string;
  /** The caller's router token. */
  token: string;
  /** The router's name for this model, e.g. "ministral-8b". */
  model: string;
  /** "cheapest", "fastest" or a provider's name. */
  policy?: string;
  /**
   * prefer-local (default): local when it works and keeps up, else hosted (mid-answer too);
   * local-only: never hosted; hosted-only: no local model at all.
   */
  mode?: 'prefer-local' | 'local-only' | 'hosted-only';
  /** Hand a local answer off to the hosted route when decoding runs slower than this (tokens/s). */
  minTokensPerSecond?: number;
  /** Tokens decoded before speed is judged (default 8). */
  warmupTokens?: number;
  /** prefer-local: answer from the hosted route while the local model downloads and loads. */
  answerWhileLoading?: boolean;
}

export interface EngineOptions extends LoadOptions {
  /** A GGUF URL (downloaded with range requests and kept in the Origin Private File System), a File or Blob, or "cache:<id>". */
  model: string | Blob;
  /** A worker running `edgechat/worker` (for bundlers that cannot start the package's own). */
  worker?: Worker;
}

export interface EngineInfo {
  /** hosted: no local model (hosted-only, could not load, or still loading). */
  backend: 'webgpu' | 'wasm' | 'hosted';
  /** Why this backend: the adapter that holds the model, or why WebGPU was not used. */
  reason: string;
  description: string;
  adapter: null | {
    name: string;
    backend: string;
    driver: string;
    shader_f16: boolean;
    subgroups: boolean;
    max_buffer_size: number;
    max_storage_buffer_binding_size: number;
    kernel_variant: string;
    matmul_threads_per_row: number;
  };
  /** Null without a local model. */
  model: null | {
    name: string | null;
    architecture: 'llama';
    file_bytes: number;
    weight_bytes: number;
    parameters: number;
    context_length: number;
    vocab_size: number;
    layers: number;
    embedding_length: number;
    head_count: number;
    head_count_kv: number;
    head_dim: number;
    kv_bytes_per_token: number;
    wasm_bytes_needed: number;
  };
  model_name: string;
  source: { fromCache: boolean; cacheId: string | null; url: string | null };
  /** Why the local model could not load, when the hosted route took over. */
  local_error?: { code: string; message: string } | null;
  /** The local model is still loading (see `localReady`). */
  loading?: boolean;
  /** The worker's wasm memory after loading: its peak, since wasm memory never shrinks. */
  wasm_memory_bytes: number;
}

export declare class EdgechatError extends Error {
  name: 'EdgechatError';
  /**
   * download_failed, quota_exceeded, integrity, not_cached, bad_model_file, unsupported_model,
   * model_too_large, webgpu_unavailable, gpu_limit, device_lost, invalid_request,
   * context_length_exceeded, read_error, backend_error, not_loaded, worker_error, terminated,
   * invalid_options, aborted.
   */
  code: string;
  /** The request field at fault. */
  param?: string;
}

export declare class Engine {
  constructor(options?: { worker?: Worker });
  chat: {
    completions: {
      create(request: ChatCompletionRequest & { stream: true }): Promise<ChatCompletionStream>;
      create(request: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  /** Loads a model, replacing the one loaded; a bad file leaves the loaded one in place. */
  load(model: string | Blob, options?: LoadOptions): Promise<EngineInfo>;
  /** The last load's backend, adapter and model; null before a load and after unload. */
  info(): EngineInfo | null;
  /** Frees the model's GPU (or wasm) memory. */
  unload(): Promise<void>;
  /** Settles when the local model is in use (later with `fallback.answerWhileLoading`). */
  readonly localReady: Promise<EngineInfo>;
  /** Stops the worker; the engine cannot be used after. */
  terminate(): void;
}

/** Creates an engine in a Web Worker and loads `options.model` into it. */
export declare function createEngine(options: EngineOptions): Promise<Engine>;

export interface CachedModel {
  id: string;
  url: string;
  size: number;
  complete: boolean;
  sha256: string | null;
}

/** Models kept in the Origin Private File System; load one with `model: "cache:<id>"`. */
export declare function listCachedModels(): Promise<CachedModel[]>;
/** Removes a cached model by id or URL; false if there was none. */
export declare function deleteCachedModel(idOrUrl: string): Promise<boolean>;
