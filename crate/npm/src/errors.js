// Errors the package gives its caller: an `EdgechatError` with a machine-readable `code`.
//
// Codes: download_failed, quota_exceeded, integrity, bad_model_file, unsupported_model,
// model_too_large, webgpu_unavailable, gpu_limit, device_lost, invalid_request,
// context_length_exceeded, read_error, backend_error, not_loaded, worker_error, invalid_options.

export class EdgechatError extends Error {
  constructor(code, message, { param, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'EdgechatError';
    this.code = code;
    if (param) this.param = param;
  }
}

// Errors cross the worker boundary as plain objects.
export function serializeError(error) {
  return {
    name: error?.name ?? 'Error',
    message: error?.message ?? String(error),
    code: error?.code ?? (error?.name === 'AbortError' ? 'aborted' : 'internal_error'),
    param: error?.param,
  };
}

export function deserializeError(data) {
  return new EdgechatError(data.code, data.message, { param: data.param });
}
