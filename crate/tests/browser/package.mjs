// The npm package (crate/npm/) as a page uses it, in real headless Chromium: WebGPU on SwiftShader,
// the engine in its Web Worker, the model downloaded over HTTP ranges into the Origin Private File
// System. SmolLM2-135M-Instruct answers greedily (temperature 0), so answers are reproducible.
//
// Run by scripts/test-browser after scripts/build-wasm and scripts/models.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readSync, writeFileSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium } from '../../../scripts/browser/chromium.mjs';
import { check, failed, openPackagePage, test } from './harness.mjs';
import { startServer } from '../../../scripts/browser/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const MODEL = 'smollm2-135m-instruct-q4_1.gguf';
const QUESTION = [{ role: 'user', content: 'What is the capital of France?' }];
// For comparisons with the native CPU backend: SmolLM2's greedy answer to this one has no near-tie
// (its top two logits lie at least 1.1 apart at every step, natively), so summation order
// cannot flip a token. QUESTION's first token is a near-tie (0.05 on the CPU).
const CLEAR_QUESTION = [{ role: 'user', content: 'Name the capital of France.' }];
// Enough for SmolLM2's one-sentence answer (it ends with its end-of-turn token before this).
const MAX_TOKENS = 24;
// Tokens compared between the wasm backend and the native CPU backend.
const WASM_TOKENS = 12;

// Broken model files, made from the real one: a copy cut after 30 MB (its header says its tensors
// go further) and the first MiB with a damaged magic number.
const broken = mkdtempSync(join(tmpdir(), 'edgechat-broken-'));
function head(bytes) {
  const buffer = Buffer.alloc(bytes);
  const fd = openSync(resolve(root, 'models', MODEL), 'r');
  readSync(fd, buffer, 0, bytes, 0);
  closeSync(fd);
  return buffer;
}
writeFileSync(join(broken, 'truncated.gguf'), head(30 << 20));
const corrupt = head(1 << 20);
corrupt.write('GGXX', 0, 'latin1');
writeFileSync(join(broken, 'corrupt-header.gguf'), corrupt);
const modelSha256 = createHash('sha256').update(readFileSync(resolve(root, 'models', MODEL))).digest('hex');

// Pages and the package from one server; models from another, so a test can take the network
// to the models away.
const pages = await startServer({
  mounts: { '/npm/': resolve(root, 'crate/npm'), '/': resolve(root, 'crate/tests/browser') },
});
const modelLog = [];
const modelsMounts = { '/models/': resolve(root, 'models'), '/broken/': broken, '/flaky/': resolve(root, 'models'), '/stall/': resolve(root, 'models') };
const faults = { flaky: { prefix: '/flaky/', cutAfter: 3 << 20 }, stall: { prefix: '/stall/' } };
let models = await startServer({ mounts: modelsMounts, log: modelLog, ...faults, cors: true });
const modelsPort = new URL(models.origin).port;
const modelUrl = (path) => `${models.origin}${path}`;

const browser = await launchChromium({ webgpu: true });

const openPage = (where, label) => openPackagePage(where, pages.origin, label);

// In the page: loads a model (keeping the engine as window.engine) and reports progress seen.
// On WebGPU unless `options` say otherwise: `auto` takes the wasm backend on SwiftShader.
async function load(page, model, options = {}) {
  options = { backend: 'webgpu', ...options };
  return page.evaluate(async ({ model, options }) => {
    const phases = [];
    try {
      window.engine = await window.edgechat.createEngine({
        model, ...options, onProgress: (p) => phases.push(p),
      });
      return { info: window.engine.info(), phases };
    } catch (e) {
      return { error: { name: e.name, code: e.code, message: e.message }, phases };
    }
  }, { model, options });
}

// In the page: a streamed greedy answer, with every chunk.
async function ask(page, { messages = QUESTION, maxTokens = MAX_TOKENS, abortAfterChunks = null, stream = true } = {}) {
  return page.evaluate(async ({ messages, maxTokens, abortAfterChunks, stream }) => {
    const controller = new AbortController();
    const request = { messages, temperature: 0, max_tokens: maxTokens, stream, signal: controller.signal };
    const chunks = [];
    try {
      if (!stream) {
        const completion = await window.engine.chat.completions.create(request);
        return { text: completion.choices[0].message.content, completion };
      }
      const started = performance.now();
      let abortedAt = null;
      for await (const chunk of await window.engine.chat.completions.create(request)) {
        chunks.push(chunk);
        if (abortAfterChunks != null && chunks.length === abortAfterChunks) {
          controller.abort();
          abortedAt = performance.now();
        }
      }
      return { text: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''), chunks, ms: performance.now() - started };
    } catch (e) {
      return {
        error: { name: e.name, code: e.code, message: e.message },
        text: chunks.map((c) => c.choices[0]?.delta?.content ?? '').join(''),
        chunks,
      };
    }
  }, { messages, maxTokens, abortAfterChunks, stream });
}

let webgpuAnswer = null;
const context = await browser.newContext();
let page = await openPage(context, 'webgpu');

await test('a URL loads on WebGPU with progress, and a streamed greedy answer says Paris with usage', async () => {
  const { info, phases, error } = await load(page, modelUrl(`/models/${MODEL}`));
  check(!error, `load failed: ${JSON.stringify(error)}`);
  check(info.backend === 'webgpu', `backend ${info.backend}: ${info.reason}`);
  check(info.adapter?.max_storage_buffer_binding_size > 0, `no adapter limits: ${JSON.stringify(info.adapter)}`);
  const seen = [...new Set(phases.map((p) => p.phase))];
  for (const phase of ['download', 'cache-read', 'shader-compile', 'gpu-upload', 'ready']) {
    check(seen.includes(phase), `no ${phase} progress (saw ${seen})`);
  }
  const downloads = phases.filter((p) => p.phase === 'download');
  check(downloads.at(-1).loaded === downloads.at(-1).total && downloads.length > 2, 'download progress did not reach its total');
  check(downloads.every((p, i) => i === 0 || p.loaded >= downloads[i - 1].loaded), 'download progress went backwards');
  const ranges = modelLog.filter((r) => r.path === `/models/${MODEL}` && r.range);
  check(ranges.length > 4, `expected range requests, saw ${ranges.length}`);

  const answer = await ask(page);
  check(!answer.error, `answer failed: ${JSON.stringify(answer.error)}`);
  check(/Paris/.test(answer.text), `no Paris in ${JSON.stringify(answer.text)}`);
  const last = answer.chunks.at(-1);
  check(last.choices.length === 0 && last.usage?.completion_tokens > 0 && last.usage.prompt_tokens > 0,
    `the last chunk has no usage: ${JSON.stringify(last)}`);
  check(answer.chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === answer.chunks[0].id), 'chunks are not one answer');
  check(answer.chunks.filter((c) => c.choices[0]?.finish_reason).length === 1, 'not exactly one finish_reason');
  webgpuAnswer = answer.text;

  const whole = await ask(page, { stream: false });
  check(whole.completion?.object === 'chat.completion', `not a chat.completion: ${JSON.stringify(whole)}`);
  check(whole.text === answer.text, `non-streamed ${JSON.stringify(whole.text)} != streamed ${JSON.stringify(answer.text)}`);
  check(whole.completion.usage.total_tokens === last.usage.total_tokens, 'usage differs between calls');
  return `${info.description}; ${ranges.length} range requests; answer ${JSON.stringify(answer.text)}; usage ${JSON.stringify(last.usage)}`;
});

await test('stop, seed, top_p and max_tokens work as in OpenAI', async () => {
  const result = await page.evaluate(async (messages) => {
    const create = (extra) => window.engine.chat.completions.create({ messages, ...extra });
    const stopped = await create({ temperature: 0, max_tokens: 24, stop: [' Paris'] });
    const short = await create({ temperature: 0, max_tokens: 3 });
    const seeded = [];
    for (let i = 0; i < 2; i++) seeded.push((await create({ temperature: 1, top_p: 0.9, seed: 7, max_tokens: 6 })).choices[0].message.content);
    const bad = await create({ temperature: 5 }).then(() => null, (e) => ({ code: e.code, param: e.param, message: e.message }));
    return {
      stopped: [stopped.choices[0].message.content, stopped.choices[0].finish_reason],
      short: [short.choices[0].message.content, short.choices[0].finish_reason, short.usage.completion_tokens],
      seeded,
      bad,
    };
  }, QUESTION);
  check(result.stopped[0] === 'The capital of France is' && result.stopped[1] === 'stop', `stop: ${JSON.stringify(result.stopped)}`);
  check(result.short[1] === 'length' && result.short[2] === 3, `max_tokens: ${JSON.stringify(result.short)}`);
  check(result.seeded[0] === result.seeded[1], `seed: ${JSON.stringify(result.seeded)}`);
  check(result.bad?.code === 'invalid_request' && result.bad.param === 'temperature', `bad request: ${JSON.stringify(result.bad)}`);
  return JSON.stringify(result);
});

await test('abort stops an answer mid-way and the next request works', async () => {
  const aborted = await ask(page, { maxTokens: 200, abortAfterChunks: 3 });
  check(aborted.error?.name === 'AbortError', `expected an AbortError, got ${JSON.stringify(aborted.error)}`);
  check(aborted.chunks.length <= 5, `${aborted.chunks.length} chunks arrived after the abort`);
  const after = await ask(page);
  check(after.text === webgpuAnswer, `after the abort: ${JSON.stringify(after.text)}`);
  const early = await page.evaluate(async (messages) => {
    const controller = new AbortController();
    controller.abort();
    try {
      await window.engine.chat.completions.create({ messages, signal: controller.signal });
      return 'resolved';
    } catch (e) {
      return e.name;
    }
  }, QUESTION);
  check(early === 'AbortError', `an already aborted signal gave ${early}`);
  return `aborted after ${aborted.chunks.length} chunks; then ${JSON.stringify(after.text)}`;
});

await test('a 404, a truncated file and a corrupted header give clear errors and the engine stays usable', async () => {
  const cases = [
    ['/models/missing.gguf', 'download_failed', /404/],
    ['/broken/truncated.gguf', 'bad_model_file', /past the end|truncat|extends/i],
    ['/broken/corrupt-header.gguf', 'bad_model_file', /magic|GGUF/i],
  ];
  const seen = [];
  for (const [path, code, pattern] of cases) {
    const error = await page.evaluate(async (url) => {
      try {
        await window.engine.load(url);
        return null;
      } catch (e) {
        return { name: e.name, code: e.code, message: e.message };
      }
    }, modelUrl(path));
    check(error?.code === code && pattern.test(error.message), `${path}: ${JSON.stringify(error)}`);
    const after = await ask(page, { maxTokens: 8 });
    check(!after.error && after.text.length > 0 && webgpuAnswer.startsWith(after.text), `after ${path}: ${JSON.stringify(after)}`);
    seen.push(`${path}: ${error.code}: ${error.message}`);
  }
  const fresh = await load(page, modelUrl('/models/missing.gguf'));
  check(fresh.error?.code === 'download_failed', `createEngine on a 404: ${JSON.stringify(fresh.error)}`);
  return seen.join(' | ');
});

await test('a wrong SHA-256 is refused and the right one is checked and kept', async () => {
  const wrong = await load(page, modelUrl(`/models/${MODEL}?copy=2`), { sha256: '0'.repeat(64) });
  check(wrong.error?.code === 'integrity', `wrong hash: ${JSON.stringify(wrong.error)}`);
  const right = await load(page, modelUrl(`/models/${MODEL}?copy=2`), { sha256: modelSha256 });
  check(!right.error, `right hash: ${JSON.stringify(right.error)}`);
  check(right.phases.some((p) => p.phase === 'verify'), 'no verify progress');
  const answer = await ask(page, { maxTokens: 8 });
  check(!answer.error && answer.text.length > 0 && webgpuAnswer.startsWith(answer.text), `answer ${JSON.stringify(answer)}`);
});

await test('the second load comes from the cache with the models server gone', async () => {
  await page.close();
  await models.close();
  modelLog.length = 0;
  page = await openPage(context, 'cached');
  const { info, phases, error } = await load(page, modelUrl(`/models/${MODEL}`));
  check(!error, `cached load failed: ${JSON.stringify(error)}`);
  check(info.source.fromCache, 'not from the cache');
  check(!phases.some((p) => p.phase === 'download'), 'downloaded again');
  const answer = await ask(page);
  check(answer.text === webgpuAnswer, `cached answer ${JSON.stringify(answer.text)}`);
  const cached = await page.evaluate(() => window.edgechat.listCachedModels());
  check(cached.some((m) => m.complete && m.url.endsWith(MODEL)), `listCachedModels: ${JSON.stringify(cached)}`);
  return `${cached.length} cached models`;
});

await test('unload frees the model and a request after it is refused', async () => {
  const result = await page.evaluate(async (messages) => {
    await window.engine.unload();
    try {
      await window.engine.chat.completions.create({ messages });
      return 'answered';
    } catch (e) {
      return e.code;
    }
  }, QUESTION);
  check(result === 'not_loaded', `after unload: ${result}`);
});
await page.close();

await test('auto takes the wasm backend over the CPU fallback adapter and says why', async () => {
  const autoPage = await openPage(context, 'auto');
  try {
    const { info, error } = await load(autoPage, modelUrl(`/models/${MODEL}`), { backend: 'auto' });
    check(!error, `auto load failed: ${JSON.stringify(error)}`);
    check(info.backend === 'wasm' && /CPU fallback/.test(info.reason), `auto chose ${info.backend}: ${info.reason}`);
    const answer = await ask(autoPage, { maxTokens: 8 });
    check(!answer.error && answer.text.length > 0, `auto answer ${JSON.stringify(answer)}`);
    return info.reason;
  } finally {
    await autoPage.close();
  }
});

// The models server again, on the same port (the cache is keyed by URL).
models = await startServer({ mounts: modelsMounts, port: Number(modelsPort), log: modelLog, ...faults, cors: true });

await test('a download whose connections break off resumes and gives the same answer', async () => {
  page = await openPage(context, 'flaky');
  modelLog.length = 0;
  const { error } = await load(page, modelUrl(`/flaky/${MODEL}`));
  check(!error, `flaky load failed: ${JSON.stringify(error)}`);
  const answer = await ask(page);
  check(answer.text === webgpuAnswer, `flaky answer ${JSON.stringify(answer.text)}`);
  // A resumed request starts where a cut one stopped, inside an 8 MiB chunk.
  const starts = modelLog.filter((r) => r.path === `/flaky/${MODEL}` && r.range)
    .map((r) => Number(/^bytes=(\d+)-/.exec(r.range)[1]));
  const resumed = starts.filter((start) => start % (8 << 20) !== 0);
  check(resumed.length > 0, `no resumed requests among ${starts.length}`);
  await page.close();
  return `${starts.length} range requests, ${resumed.length} resuming a cut one`;
});

await test('a download whose server stops answering is asked again after stallTimeoutMs', async () => {
  page = await openPage(context, 'stall');
  modelLog.length = 0;
  const started = Date.now();
  const { error } = await load(page, modelUrl(`/stall/${MODEL}`), { stallTimeoutMs: 1000 });
  check(!error, `stalled load failed: ${JSON.stringify(error)}`);
  const answer = await ask(page);
  check(answer.text === webgpuAnswer, `stalled answer ${JSON.stringify(answer.text)}`);
  // The size probe and the first range were each held unanswered once, then asked again.
  const asked = (range) => modelLog.filter((r) => r.path === `/stall/${MODEL}` && r.range === range).length;
  const probes = asked('bytes=0-0');
  const firstRange = asked(`bytes=0-${(8 << 20) - 1}`);
  check(probes === 2 && firstRange === 2, `asked ${probes} times for the first byte, ${firstRange} for the first range`);
  await page.close();
  return `loaded in ${((Date.now() - started) / 1000).toFixed(1)} s with two stalls of 1 s`;
});

await test('a load aborted half-way resumes in a new page from the chunks it stored', async () => {
  const url = modelUrl(`/models/${MODEL}?copy=resume`);
  page = await openPage(context, 'abort-load');
  modelLog.length = 0;
  const first = await page.evaluate(async (url) => {
    const controller = new AbortController();
    let loaded = 0;
    try {
      await window.edgechat.createEngine({
        model: url,
        signal: controller.signal,
        onProgress: (p) => {
          if (p.phase !== 'download') return;
          loaded = p.loaded;
          if (p.loaded > p.total / 2) controller.abort();
        },
      });
      return { loaded, error: null };
    } catch (e) {
      return { loaded, error: e.name };
    }
  }, url);
  check(first.error === 'AbortError', `the aborted load gave ${JSON.stringify(first)}`);
  const cached = await page.evaluate(() => window.edgechat.listCachedModels());
  check(cached.some((m) => m.url.endsWith('copy=resume') && !m.complete), `no partial entry: ${JSON.stringify(cached)}`);
  await page.close();

  modelLog.length = 0;
  page = await openPage(context, 'resume-load');
  const { phases, error } = await load(page, url);
  check(!error, `the resumed load failed: ${JSON.stringify(error)}`);
  const size = phases.find((p) => p.phase === 'download').total;
  const firstReport = phases.find((p) => p.phase === 'download').loaded;
  const requested = modelLog.filter((r) => r.range && r.range !== 'bytes=0-0')
    .reduce((sum, r) => { const [, a, b] = /^bytes=(\d+)-(\d+)$/.exec(r.range); return sum + Number(b) - Number(a) + 1; }, 0);
  check(firstReport > 0 && requested <= size - firstReport, `the second load started at ${firstReport} and asked for ${requested} of ${size} bytes`);
  const answer = await ask(page);
  check(answer.text === webgpuAnswer, `resumed answer ${JSON.stringify(answer.text)}`);
  await page.close();
  return `stopped at ${first.loaded} of ${size} bytes; the next page started at ${firstReport} and fetched ${requested} bytes`;
});
await context.close();

// The wasm backend computes as the native CPU backend does (activations quantized per 32 values),
// so its greedy tokens must be the native ones on a question without near-ties: the two sum in
// different orders (their own SIMD kernels), which can flip a near-tie. candle is held to its AVX2
// kernels natively, the algorithm of its simd128 ones.
function nativeAnswer(messages, maxTokens) {
  const run = spawnSync(resolve(root, 'target/release/edgechat'), [
    'run', '--model', resolve(root, 'models', MODEL), '--chat', '--prompt', messages[0].content,
    '--max-tokens', String(maxTokens), '--temperature', '0',
  ], { encoding: 'utf8', env: { ...process.env, MISTRALRS_FORCE_AVX2: '1' } });
  if (run.status !== 0) throw new Error(`edgechat run failed: ${run.stderr}`);
  return run.stdout.replace(/\n$/, '');
}

await test('without WebGPU the wasm backend is chosen and answers the native greedy tokens', async () => {
  const expected = nativeAnswer(CLEAR_QUESTION, WASM_TOKENS);
  const plain = await launchChromium({ webgpu: false });
  try {
    const wasmContext = await plain.newContext();
    const wasmPage = await openPage(wasmContext, 'wasm');
    const { info, error } = await load(wasmPage, modelUrl(`/models/${MODEL}`), { backend: 'auto' });
    check(!error, `load failed: ${JSON.stringify(error)}`);
    check(info.backend === 'wasm', `backend ${info.backend}`);
    check(/WebGPU/.test(info.reason), `reason ${info.reason}`);
    const answer = await ask(wasmPage, { messages: CLEAR_QUESTION, maxTokens: WASM_TOKENS });
    check(answer.text === expected, `wasm ${JSON.stringify(answer.text)} != native ${JSON.stringify(expected)}`);
    return `${JSON.stringify(answer.text)}; ${info.reason}`;
  } finally {
    await plain.close();
  }
});

await browser.close();
await pages.close();
await models.close();
rmSync(broken, { recursive: true, force: true });
if (failed() > 0) {
  console.error(`${failed()} package test(s) failed`);
  process.exit(1);
}
console.log('all package tests passed');
