// Model sources, inside the package's Web Worker. Each gives the engine `{ size, read(offset, view) }`
// with a synchronous `read` (worker-only APIs), so weights go from storage to the GPU in bounded
// pieces and the model is never whole in memory:
// - a URL is downloaded with HTTP range requests, several at a time, into the Origin Private File
//   System, and read back through a `FileSystemSyncAccessHandle`. A download that breaks off
//   resumes where it stopped (within a run, and in the next run from the chunks already stored).
//   The next load of the same URL reads the stored copy and makes no request at all.
// - a `File` or `Blob` is read in place with `FileReaderSync`.
// - `cache:<id>` names a model already stored (see `listCachedModels`).

import { EdgechatError } from './errors.js';

export const CACHE_DIRECTORY = 'edgechat-models';
// Download piece and parallelism: 8 MiB ranges keep each request's memory small and make a resume
// lose little; 4 at a time fills a fast link without tripping per-host connection limits.
const CHUNK_BYTES = 8 << 20;
const PARALLEL_REQUESTS = 4;
const MAX_RETRIES = 5;
// A request with no data for this long is given up and asked again (`stallTimeoutMs` of `load`).
const STALL_MS = 30_000;
const VERIFY_PIECE_BYTES = 8 << 20;
// A call into the browser's storage that has not answered in this long is an error, not a hang.
// (Chromium's createSyncAccessHandle was seen never to resolve: about once in 150 downloads
// when a handle was opened per chunk.)
const STORAGE_ANSWER_MS = 30_000;

// Awaits a storage call, or fails with a clear error once it has not answered in time;
// `release(value)` frees what a call that answers too late gives (an open handle).
async function storageCall(promise, what, release = null) {
  let timer;
  let late = false;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      late = true;
      reject(new EdgechatError('read_error',
        `the browser's storage did not answer (${what}) in ${STORAGE_ANSWER_MS / 1000} s`));
    }, STORAGE_ANSWER_MS);
  });
  if (release) promise.then((value) => { if (late) release(value); }, () => {});
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
const closeHandle = (access) => access.close();

export async function cacheDirectory() {
  if (!navigator.storage?.getDirectory) {
    throw new EdgechatError('download_failed',
      'this browser has no Origin Private File System (navigator.storage.getDirectory) to keep a downloaded model in');
  }
  const root = await storageCall(navigator.storage.getDirectory(), 'getDirectory');
  return storageCall(root.getDirectoryHandle(CACHE_DIRECTORY, { create: true }), 'getDirectoryHandle');
}

// A cache entry's id: the first 32 hex digits of the SHA-256 of its URL.
export async function cacheId(url) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(url));
  return [...new Uint8Array(digest)].slice(0, 16).map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function readMeta(dir, id) {
  try {
    const handle = await storageCall(dir.getFileHandle(`${id}.json`), 'getFileHandle');
    const file = await storageCall(handle.getFile(), 'getFile');
    return JSON.parse(await file.text());
  } catch {
    return null;
  }
}

// The record of a download (`<id>.json`: its URL, size, validator and the chunks stored), kept
// open through one sync access handle for the whole download and rewritten in place after each
// chunk: opening a handle per write was where Chromium's storage was seen to stop answering.
async function openMetaFile(dir, id) {
  const handle = await storageCall(dir.getFileHandle(`${id}.json`, { create: true }), 'getFileHandle');
  const access = await storageCall(handle.createSyncAccessHandle(), 'createSyncAccessHandle', closeHandle);
  let closed = false;
  return {
    write(meta) {
      const bytes = new TextEncoder().encode(JSON.stringify(meta));
      access.truncate(0);
      writeAll(access, bytes, 0);
      access.flush();
    },
    close() {
      if (closed) return;
      closed = true;
      access.close();
    },
  };
}

export async function listCachedModels() {
  const dir = await cacheDirectory();
  const models = [];
  for await (const [name] of dir.entries()) {
    if (!name.endsWith('.json')) continue;
    const id = name.slice(0, -5);
    const meta = await readMeta(dir, id);
    if (meta) models.push({ id, url: meta.url, size: meta.size, complete: !!meta.complete, sha256: meta.sha256 ?? null });
  }
  return models;
}

export async function deleteCachedModel(idOrUrl) {
  const dir = await cacheDirectory();
  // A URL is known by its absolute form, as `load` keeps it (a relative one is the page's).
  const id = /^[0-9a-f]{32}$/.test(idOrUrl)
    ? idOrUrl
    : await cacheId(new URL(idOrUrl, globalThis.document?.baseURI ?? self.location.href).href);
  let removed = false;
  for (const name of [`${id}.gguf`, `${id}.json`]) {
    try {
      await storageCall(dir.removeEntry(name), 'removeEntry');
      removed = true;
    } catch (e) {
      if (e?.name !== 'NotFoundError') throw e;
    }
  }
  return removed;
}

// Open sync access handles by cache id: a file has at most one, so a reload of the model in use
// shares it.
const openFiles = new Map();

async function openCacheFile(dir, id) {
  let entry = openFiles.get(id);
  if (!entry) {
    const handle = await storageCall(dir.getFileHandle(`${id}.gguf`, { create: true }), 'getFileHandle');
    let access;
    try {
      access = await storageCall(handle.createSyncAccessHandle(), 'createSyncAccessHandle', closeHandle);
    } catch (e) {
      if (e instanceof EdgechatError) throw e;
      throw new EdgechatError('read_error',
        `the cached model is in use elsewhere (another tab?): ${e.message}`);
    }
    entry = { access, users: 0 };
    openFiles.set(id, entry);
  }
  entry.users += 1;
  let closed = false;
  return {
    access: entry.access,
    close() {
      if (closed) return;
      closed = true;
      entry.users -= 1;
      if (entry.users === 0) {
        entry.access.close();
        openFiles.delete(id);
      }
    },
  };
}

function fileSource(file, size, phaseOf) {
  return {
    size,
    read(offset, view) {
      // A read may return fewer bytes than asked for (seen on large reads): go on until full.
      for (let done = 0; done < view.length;) {
        const n = file.access.read(done === 0 ? view : view.subarray(done), { at: offset + done });
        if (n === 0) throw new Error(`the cached file ended at byte ${offset + done}`);
        done += n;
      }
    },
    close: () => file.close(),
    phaseOf,
  };
}

// Opens a model: `model` is a URL string, `cache:<id>`, a File or a Blob.
// `progress(phase, loaded, total)` reports download and verification.
export async function openModel(model, { sha256, size: expectedSize, progress, signal, newHasher, stallMs = STALL_MS } = {}) {
  if (typeof Blob !== 'undefined' && model instanceof Blob) {
    return blobSource(model);
  }
  if (typeof model !== 'string' || model.length === 0) {
    throw new EdgechatError('invalid_options', '`model` must be a URL, a File or Blob, or "cache:<id>"');
  }
  const dir = await cacheDirectory();
  if (model.startsWith('cache:')) {
    const id = model.slice(6);
    const meta = await readMeta(dir, id);
    if (!meta?.complete) throw new EdgechatError('not_cached', `no complete model with id ${id} in the cache`);
    const file = await openCacheFile(dir, id);
    return { ...fileSource(file, meta.size, cachedPhase), id, url: meta.url, fromCache: true };
  }
  const url = new URL(model, self.location.href).href;
  const id = await cacheId(url);
  let meta = await readMeta(dir, id);
  const wanted = (m) => m?.complete
    && (expectedSize == null || m.size === expectedSize)
    && (sha256 == null || m.sha256 === sha256.toLowerCase());
  if (wanted(meta)) {
    const file = await openCacheFile(dir, id);
    return { ...fileSource(file, meta.size, cachedPhase), id, url, fromCache: true };
  }
  if (meta?.complete) meta = null; // complete but not what the caller asks for: fetch again
  const file = await openCacheFile(dir, id);
  let metaFile = null;
  try {
    metaFile = await openMetaFile(dir, id);
    meta = await download({ url, meta, file, metaFile, progress, signal, stallMs });
    const bad = (why) => new EdgechatError('integrity', `${url}: ${why}; the download was discarded`);
    if (expectedSize != null && meta.size !== expectedSize) {
      throw bad(`${meta.size} bytes where ${expectedSize} were expected`);
    }
    if (sha256 != null) {
      const digest = await hashFile(file.access, meta.size, progress, newHasher);
      if (digest !== sha256.toLowerCase()) throw bad(`SHA-256 ${digest} where ${sha256} was expected`);
      meta.sha256 = digest;
    }
    meta.complete = true;
    metaFile.write(meta);
    metaFile.close();
  } catch (e) {
    metaFile?.close();
    file.close();
    if (e.code === 'integrity') await deleteCachedModel(id).catch(() => {});
    throw e;
  }
  return { ...fileSource(file, meta.size, cachedPhase), id, url, fromCache: false };
}

// The engine reads the header and weights from storage in every case but a File/Blob.
function cachedPhase(enginePhase) {
  return enginePhase === 'header' ? 'cache-read' : enginePhase;
}

function blobSource(blob) {
  const reader = new FileReaderSync();
  return {
    size: blob.size,
    read(offset, view) {
      const bytes = reader.readAsArrayBuffer(blob.slice(offset, offset + view.length));
      if (bytes.byteLength !== view.length) throw new Error(`the file ended at byte ${offset + bytes.byteLength}`);
      view.set(new Uint8Array(bytes));
    },
    close() {},
    phaseOf: (enginePhase) => (enginePhase === 'header' ? 'file-read' : enginePhase),
    fromCache: false,
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function httpError(url, response) {
  return new EdgechatError('download_failed',
    `GET ${url}: HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`);
}

// Whether an HTTP status is worth retrying (the server is busy or failing, not refusing).
const retryable = (status) => status === 408 || status === 429 || status >= 500;

function throwIfAborted(signal) {
  if (signal?.aborted) throw new EdgechatError('aborted', 'the download was aborted');
}

// Downloads `url` into the open cache file, resuming from `meta` (chunks already stored).
async function download({ url, meta, file, metaFile, progress, signal, stallMs }) {
  const { response: probe, guard } = await probeFile(url, signal, stallMs);
  try {
    return await downloadFrom(probe, { url, meta, file, metaFile, progress, signal, stallMs, guard });
  } finally {
    guard.done();
  }
}

async function downloadFrom(probe, { url, meta, file, metaFile, progress, signal, stallMs, guard }) {
  const ranged = probe.status === 206;
  if (ranged) {
    // The ranges are fetched anew below: the probe's one byte is not read.
    await probe.body?.cancel().catch(() => {});
    guard.done();
    throwIfAborted(signal);
  }
  let size = null;
  if (ranged) {
    const total = /\/(\d+)\s*$/.exec(probe.headers.get('content-range') ?? '');
    size = total ? Number(total[1]) : null;
  } else {
    const length = probe.headers.get('content-length');
    size = length != null ? Number(length) : null;
  }
  const validator = probe.headers.get('etag') ?? probe.headers.get('last-modified') ?? '';
  if (meta && !(ranged && meta.size === size && meta.validator === validator && meta.url === url)) {
    meta = null; // the file changed, or the server no longer serves ranges: start over
  }
  if (!meta) meta = { url, size, validator, chunkBytes: CHUNK_BYTES, done: [], complete: false };
  const stored = meta.done.reduce((sum, i) => sum + chunkLength(meta, i), 0);
  await checkQuota(size, stored);

  if (!ranged) {
    // No range support: one sequential stream (no parallelism, no resume), still to disk. A stall
    // cannot be resumed from where it stopped: it fails the download.
    file.access.truncate(0);
    let written = 0;
    const reader = probe.body.getReader();
    for (;;) {
      throwIfAborted(signal);
      guard.arm();
      let piece;
      try {
        piece = await reader.read();
      } catch (e) {
        throwIfAborted(signal);
        const why = guard.stalled ? `no data for ${stallMs / 1000} s` : e.message;
        throw new EdgechatError('download_failed', `GET ${url}: ${why} after ${written} bytes (the server does not serve ranges, so the download cannot resume)`);
      }
      const { done, value } = piece;
      if (done) break;
      writeAll(file.access, value, written);
      written += value.length;
      progress?.('download', written, size);
    }
    if (size != null && written !== size) {
      throw new EdgechatError('download_failed', `${url}: the connection closed after ${written} of ${size} bytes`);
    }
    file.access.flush();
    return { ...meta, size: written, done: [] };
  }
  if (size == null) throw new EdgechatError('download_failed', `${url}: the server did not say the file's size (Content-Range)`);
  if (file.access.getSize() !== size) file.access.truncate(size);

  const chunks = Math.ceil(size / meta.chunkBytes);
  const done = new Set(meta.done);
  const todo = [];
  for (let i = 0; i < chunks; i++) if (!done.has(i)) todo.push(i);
  let loaded = stored;
  progress?.('download', loaded, size);
  // The first range that fails stops the others (their writes would go to a closed file).
  const failed = new AbortController();
  const rangeSignal = signal ? AbortSignal.any([signal, failed.signal]) : failed.signal;
  const worker = async () => {
    while (todo.length > 0 && !failed.signal.aborted) {
      const i = todo.shift();
      const start = i * meta.chunkBytes;
      await fetchRange(url, start, start + chunkLength(meta, i), size, rangeSignal, stallMs, (at, bytes) => {
        writeAll(file.access, bytes, at);
        loaded += bytes.length;
        progress?.('download', loaded, size);
      });
      done.add(i);
      meta.done = [...done];
      // The record of stored chunks lets a later run resume: a chunk is flushed before the
      // record names it.
      file.access.flush();
      metaFile.write(meta);
    }
  };
  const stopOthers = (e) => {
    failed.abort();
    throw e;
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL_REQUESTS, todo.length) }, () => worker().catch(stopOthers)));
  return meta;
}

// Stores bytes at an offset; storage that takes fewer (full disk, quota) is an error, not a hole.
function writeAll(access, bytes, at) {
  const n = access.write(bytes, { at });
  if (n !== bytes.length) {
    throw new EdgechatError('quota_exceeded', `the browser stored ${n} of ${bytes.length} bytes at offset ${at}: its storage is full`);
  }
}

function chunkLength(meta, i) {
  return Math.min(meta.chunkBytes, meta.size - i * meta.chunkBytes);
}

async function checkQuota(size, stored) {
  if (size == null || !navigator.storage?.estimate) return;
  const { quota, usage } = await navigator.storage.estimate();
  const needed = size - stored;
  if (quota != null && usage != null && quota - usage < needed) {
    const gb = (b) => `${(b / 1e9).toFixed(2)} GB`;
    throw new EdgechatError('quota_exceeded',
      `the model needs ${gb(needed)} more of storage but this site has ${gb(Math.max(0, quota - usage))} left of its ${gb(quota)} quota`);
  }
}

// With a stall `guard`, its timer counts from each attempt (not through the backoff between them).
async function fetchWithRetries(url, init, signal, guard = null) {
  for (let attempt = 0; ; attempt++) {
    throwIfAborted(signal);
    guard?.arm();
    let response;
    try {
      response = await fetch(url, { ...init, cache: 'no-store', signal });
    } catch (e) {
      throwIfAborted(signal);
      if (attempt >= MAX_RETRIES) {
        throw new EdgechatError('download_failed', `GET ${url}: ${e.message} (after ${MAX_RETRIES} retries)`);
      }
      await sleep(backoff(attempt));
      continue;
    }
    if (response.ok) return response;
    if (!retryable(response.status) || attempt >= MAX_RETRIES) throw httpError(url, response);
    await response.body?.cancel();
    await sleep(backoff(attempt));
  }
}

const backoff = (attempt) => Math.min(250 * 2 ** attempt, 4000);

// A request that is given up when no data arrives for `stallMs`: `arm()` (re)starts the timer;
// `signal` ends the request on the caller's abort or on a stall (then `stalled` is true); `done()`
// ends it and lets go of the caller's signal.
function stallGuard(signal, stallMs) {
  const request = new AbortController();
  const stop = () => request.abort();
  signal?.addEventListener('abort', stop, { once: true });
  let timer = null;
  const guard = {
    signal: request.signal,
    stalled: false,
    arm() {
      clearTimeout(timer);
      timer = setTimeout(() => { guard.stalled = true; request.abort(); }, stallMs);
    },
    done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', stop);
      request.abort(); // nothing more is read from this request, whatever ended it
    },
  };
  return guard;
}

// The first byte of the file (its size, and whether the server serves ranges), asked again when
// no answer comes for `stallMs`. Returns the response and its guard, still armed for the body.
async function probeFile(url, signal, stallMs) {
  for (let stalls = 0; ; stalls++) {
    const guard = stallGuard(signal, stallMs);
    try {
      const response = await fetchWithRetries(url, { headers: { Range: 'bytes=0-0' } }, guard.signal, guard);
      guard.arm(); // from here the timer waits for the body
      return { response, guard };
    } catch (e) {
      guard.done();
      throwIfAborted(signal);
      if (!guard.stalled) throw e;
      if (stalls >= MAX_RETRIES) {
        throw new EdgechatError('download_failed', `GET ${url}: no answer in ${stallMs / 1000} s (after ${MAX_RETRIES} retries)`);
      }
    }
  }
}

// Fetches bytes [start, end) of a file of `size` bytes and hands them to `write(at, bytes)` as
// they arrive. A connection that breaks off, or stalls for `stallMs`, is asked again for the rest
// only; retries count from the last progress.
async function fetchRange(url, start, end, size, signal, stallMs, write) {
  let at = start;
  let failures = 0;
  while (at < end) {
    const guard = stallGuard(signal, stallMs);
    try {
      const response = await fetchWithRetries(url, { headers: { Range: `bytes=${at}-${end - 1}` } }, guard.signal, guard);
      if (response.status !== 206) {
        await response.body?.cancel();
        throw new EdgechatError('download_failed', `GET ${url}: the server stopped serving byte ranges (HTTP ${response.status})`);
      }
      // Bytes of another version of the file must not be mixed in (where the server lets the
      // page read Content-Range).
      const range = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(response.headers.get('content-range')?.trim() ?? '');
      if (range && (Number(range[1]) !== at || (range[2] !== '*' && Number(range[2]) !== size))) {
        await response.body?.cancel();
        throw new EdgechatError('download_failed',
          `GET ${url}: asked for bytes from ${at} of ${size}, got "${response.headers.get('content-range')}" (the file changed on the server?)`);
      }
      const reader = response.body.getReader();
      for (;;) {
        if (at >= end) {
          await reader.cancel(); // a server that sends more than was asked: the rest is not ours
          break;
        }
        const { done, value } = await reader.read();
        if (done) break;
        guard.arm();
        const take = Math.min(value.length, end - at);
        write(at, take === value.length ? value : value.subarray(0, take));
        at += take;
        failures = 0;
      }
      if (at < end) throw new Error(`the connection closed ${end - at} bytes early`);
    } catch (e) {
      if (signal?.aborted) throw new EdgechatError('aborted', 'the download was aborted');
      if (e instanceof EdgechatError && !guard.stalled) throw e;
      if (++failures > MAX_RETRIES) {
        const why = guard.stalled ? `no data for ${stallMs / 1000} s` : e.message;
        throw new EdgechatError('download_failed', `GET ${url} bytes ${at}-${end - 1}: ${why} (after ${MAX_RETRIES} retries)`);
      }
      await sleep(backoff(failures));
    } finally {
      guard.done();
    }
  }
}

// SHA-256 of the stored file, read in pieces (`newHasher()` gives the wasm incremental hasher).
async function hashFile(access, size, progress, newHasher) {
  const hasher = newHasher();
  const piece = new Uint8Array(VERIFY_PIECE_BYTES);
  try {
    for (let at = 0; at < size;) {
      const n = access.read(piece.subarray(0, Math.min(piece.length, size - at)), { at });
      if (n === 0) throw new EdgechatError('integrity', `the stored file ended at byte ${at}`);
      hasher.update(piece.subarray(0, n));
      at += n;
      progress?.('verify', at, size);
      if ((at / VERIFY_PIECE_BYTES) % 16 === 0) await sleep(0); // let an abort through
    }
    return hasher.finish();
  } finally {
    hasher.free();
  }
}
