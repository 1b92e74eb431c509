// The hybrid route in real headless Chromium: the npm package's engine, local first, with the real
// router worker on workerd as its hosted route and `edgechat serve` (SmolLM2, native) as the
// router's provider. Answers are greedy, so the hosted part can be checked against the provider
// asked directly with the same request.
//
// Run by scripts/test-browser after scripts/build-wasm and scripts/models.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium } from '../../../scripts/browser/chromium.mjs';
import { check, failed, openPackagePage, test } from './harness.mjs';
import { CUT_STREAM_TEXT, startRouter } from '../../../scripts/browser/router.mjs';
import { startServer } from '../../../scripts/browser/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const MODEL = 'smollm2-135m-instruct-q4_1.gguf';
const QUESTION = [{ role: 'user', content: 'What is 2 + 2?' }];
const MAX_TOKENS = 16;

const pages = await startServer({
  mounts: { '/npm/': resolve(root, 'crate/npm'), '/': resolve(root, 'crate/tests/browser') },
});
const models = await startServer({ mounts: { '/models/': resolve(root, 'models') }, cors: true });
const modelUrl = `${models.origin}/models/${MODEL}`;
const router = await startRouter({ allowOrigin: pages.origin, withRestartModel: true });
const fallback = { url: router.url, token: router.token, model: router.model };

// Requests in the caller's router ledger (the ledger is written just after an answer: wait for it).
async function ledgerCount(atLeast = 0) {
  for (let tries = 0; ; tries++) {
    const usage = await router.usage();
    if (!Array.isArray(usage.requests)) throw new Error(`no ledger: ${JSON.stringify(usage)}`);
    if (usage.requests.length >= atLeast || tries >= 25) return usage.requests.length;
    await new Promise((ok) => setTimeout(ok, 200));
  }
}

// The router's provider asked directly (no router), fresh as it was when the router asked it:
// what the hosted route must have produced.
async function providerAnswer(messages, maxTokens) {
  await router.restartProvider();
  const response = await fetch(`${router.engineUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages, temperature: 0, max_tokens: maxTokens }),
  });
  return (await response.json()).choices[0].message.content;
}

const openPage = (where, label) => openPackagePage(where, pages.origin, label);

async function load(page, options) {
  return page.evaluate(async (options) => {
    try {
      window.engine = await window.edgechat.createEngine(options);
      return { info: window.engine.info() };
    } catch (e) {
      return { error: { code: e.code, message: e.message } };
    }
  }, options);
}

// A streamed greedy answer with every chunk; `onChunk(n)` may run in the page after chunk n.
async function ask(page, { maxTokens = MAX_TOKENS, timeoutMs = 120_000 } = {}) {
  return page.evaluate(async ({ messages, maxTokens, timeoutMs }) => {
    const chunks = [];
    const timeout = new Promise((_, ko) => setTimeout(() => ko(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs));
    try {
      await Promise.race([timeout, (async () => {
        const stream = await window.engine.chat.completions.create({ messages, temperature: 0, max_tokens: maxTokens, stream: true });
        for await (const chunk of stream) {
          chunks.push(chunk);
          if (chunks.length === 3) await window.afterThirdChunk?.();
        }
      })()]);
      return { chunks };
    } catch (e) {
      return { chunks, error: { code: e.code, message: e.message } };
    }
  }, { messages: QUESTION, maxTokens, timeoutMs });
}

const textOf = (chunks, backend) => chunks
  .filter((c) => backend == null || c.edgechat?.backend === backend)
  .map((c) => c.choices[0]?.delta?.content ?? '').join('');

const plain = await launchChromium({ webgpu: false });
const gpu = await launchChromium({ webgpu: true });
try {
  await test('without WebGPU and with the model too big for wasm, the hosted route answers, labelled so', async () => {
    await router.restartProvider();
    const page = await openPage(plain, 'hosted');
    const before = await ledgerCount();
    const { info, error } = await load(page, { model: modelUrl, wasmMemoryLimit: 1 << 20, fallback });
    check(!error, `createEngine: ${JSON.stringify(error)}`);
    check(info.backend === 'hosted', `backend ${info.backend}`);
    check(info.local_error?.code === 'model_too_large' && /WebGPU/.test(info.reason), `reason ${info.reason}`);
    const { chunks, error: failed } = await ask(page);
    check(!failed, `answer: ${JSON.stringify(failed)}`);
    const text = textOf(chunks);
    const content = chunks.filter((c) => c.choices[0]?.delta?.content);
    check(content.length > 0 && content.every((c) => c.edgechat?.backend === 'hosted' && c.edgechat.provider === 'local-engine'),
      `chunks not labelled hosted: ${JSON.stringify(content.slice(0, 2))}`);
    const expected = await providerAnswer(QUESTION, MAX_TOKENS);
    check(text === expected, `hosted ${JSON.stringify(text)} != provider ${JSON.stringify(expected)}`);
    const last = chunks.at(-1);
    check(last.usage?.completion_tokens > 0 && last.edgechat.cost_usd > 0, `usage/cost: ${JSON.stringify(last)}`);
    const after = await ledgerCount(before + 1);
    check(after === before + 1, `the router's ledger went from ${before} to ${after} requests`);
    await page.close();
    return `${JSON.stringify(text)}; ${info.reason}; router ledger ${before} -> ${after}`;
  });

  await test('a local engine below the speed threshold hands off mid-answer: one stream, no text repeated or lost', async () => {
    await router.restartProvider();
    const page = await openPage(plain, 'handoff');
    const { info, error } = await load(page, {
      model: modelUrl, fallback: { ...fallback, minTokensPerSecond: 1e9, warmupTokens: 2 },
    });
    check(!error && info.backend === 'wasm', `createEngine: ${JSON.stringify(error ?? info.backend)}`);
    const { chunks, error: failed } = await ask(page);
    check(!failed, `answer: ${JSON.stringify(failed)}`);
    const local = textOf(chunks, 'wasm');
    const hosted = textOf(chunks, 'hosted');
    const handoffs = chunks.filter((c) => c.edgechat?.event === 'handoff');
    check(local.length > 0 && hosted.length > 0, `local ${JSON.stringify(local)}, hosted ${JSON.stringify(hosted)}`);
    check(handoffs.length === 1 && /tokens\/s/.test(handoffs[0].edgechat.reason), `handoff markers: ${JSON.stringify(handoffs)}`);
    const firstHosted = chunks.findIndex((c) => c.edgechat?.backend === 'hosted');
    check(chunks.slice(firstHosted).every((c) => c.edgechat?.backend !== 'wasm'), 'local text after the hand-off');
    const localTokens = chunks.filter((c) => c.edgechat?.backend === 'wasm' && c.choices[0]?.delta?.content).length;
    const expected = await providerAnswer([...QUESTION, { role: 'assistant', content: local }], MAX_TOKENS - localTokens);
    check(hosted === expected, `hosted part ${JSON.stringify(hosted)} != the provider continuing ${JSON.stringify(local)}: ${JSON.stringify(expected)}`);
    const usage = chunks.at(-1).usage;
    check(usage.completion_tokens === localTokens + chunks.at(-1).edgechat.hosted.completion_tokens, `usage ${JSON.stringify(usage)}`);
    await page.close();
    return `local ${JSON.stringify(local)} + hosted ${JSON.stringify(hosted)}; usage ${JSON.stringify(usage)}`;
  });

  await test('a hosted answer cut off mid-way is started over by a provider that cannot continue it: the restart marker says what stands', async () => {
    await router.restartProvider();
    const page = await openPage(plain, 'restart');
    const { info, error } = await load(page, { fallback: { ...fallback, model: router.restartModel, mode: 'hosted-only' } });
    check(!error && info.backend === 'hosted', `createEngine: ${JSON.stringify(error ?? info.backend)}`);
    const { chunks, error: failed } = await ask(page);
    check(!failed, `answer: ${JSON.stringify(failed)}`);
    const restarts = chunks.filter((c) => c.edgechat?.event === 'restart');
    check(restarts.length === 1, `restart markers: ${JSON.stringify(chunks.map((c) => c.edgechat))}`);
    // Nothing was local, so nothing of the answer stands at the restart.
    check(restarts[0].edgechat.text === '', `the marker's text ${JSON.stringify(restarts[0].edgechat.text)}`);
    const at = chunks.indexOf(restarts[0]);
    const voided = textOf(chunks.slice(0, at));
    check(voided === CUT_STREAM_TEXT, `text before the restart ${JSON.stringify(voided)}`);
    const answer = textOf(chunks.slice(at + 1));
    const expected = await providerAnswer(QUESTION, MAX_TOKENS);
    check(answer === expected, `after the restart ${JSON.stringify(answer)} != provider ${JSON.stringify(expected)}`);
    const content = chunks.slice(at + 1).filter((c) => c.choices[0]?.delta?.content);
    check(content.every((c) => c.edgechat?.provider === 'local-engine-restarts'), `providers after the restart: ${JSON.stringify(content.map((c) => c.edgechat))}`);
    check(chunks.at(-1).edgechat.hosted?.providers?.join() === 'local-engine-restarts', `providers of the answer: ${JSON.stringify(chunks.at(-1).edgechat)}`);
    await page.close();
    return `${JSON.stringify(voided)} voided, then ${JSON.stringify(answer)}`;
  });

  await test('a working local engine makes no request to the router', async () => {
    const page = await openPage(plain, 'local');
    const before = await ledgerCount();
    const { info, error } = await load(page, { model: modelUrl, fallback });
    check(!error && info.backend === 'wasm', `createEngine: ${JSON.stringify(error ?? info.backend)}`);
    const { chunks, error: failed } = await ask(page);
    check(!failed, `answer: ${JSON.stringify(failed)}`);
    check(chunks.filter((c) => c.choices[0]?.delta?.content).every((c) => c.edgechat?.backend === 'wasm'), 'not all local');
    await new Promise((ok) => setTimeout(ok, 1000)); // time for a ledger write, were there one
    const after = await ledgerCount();
    check(after === before, `the router saw requests: ${before} -> ${after}`);
    await page.close();
    return JSON.stringify(textOf(chunks));
  });

  await test('router down and local unavailable: a clear error, nothing hangs', async () => {
    const page = await openPage(plain, 'down');
    const { info, error } = await load(page, {
      model: modelUrl, wasmMemoryLimit: 1 << 20, fallback: { ...fallback, url: 'http://127.0.0.1:9/v1' },
    });
    check(!error && info.backend === 'hosted', `createEngine: ${JSON.stringify(error ?? info)}`);
    const started = Date.now();
    const { error: failed } = await ask(page, { timeoutMs: 30_000 });
    check(failed?.code === 'hosted_unreachable' && /cannot be reached/.test(failed.message), `error: ${JSON.stringify(failed)}`);
    const local = await load(page, { model: modelUrl, wasmMemoryLimit: 1 << 20, fallback: { ...fallback, mode: 'local-only' } });
    check(local.error?.code === 'model_too_large', `local-only: ${JSON.stringify(local)}`);
    await page.close();
    return `${failed.message} (${Date.now() - started} ms)`;
  });

  await test('while the local model downloads the hosted route answers, then the local model takes over', async () => {
    let release;
    const until = new Promise((ok) => { release = ok; });
    const slow = await startServer({ mounts: { '/models/': resolve(root, 'models') }, cors: true, hold: { prefix: '/models/', until } });
    try {
      const page = await openPage(plain, 'while-loading');
      const { info, error } = await load(page, {
        model: `${slow.origin}/models/${MODEL}`, fallback: { ...fallback, answerWhileLoading: true },
      });
      check(!error && info.backend === 'hosted' && info.loading, `createEngine: ${JSON.stringify(error ?? info)}`);
      const early = await ask(page);
      check(!early.error && textOf(early.chunks, 'hosted').length > 0 && textOf(early.chunks, 'wasm') === '',
        `while loading: ${JSON.stringify(early)}`);
      release();
      const ready = await page.evaluate(() => window.engine.localReady.then((i) => i.backend));
      check(ready === 'wasm', `local ready on ${ready}`);
      const later = await ask(page);
      const content = later.chunks.filter((c) => c.choices[0]?.delta?.content);
      check(!later.error && content.length > 0 && content.every((c) => c.edgechat?.backend === 'wasm'), `after loading: ${JSON.stringify(later)}`);
      await page.close();
      return `hosted ${JSON.stringify(textOf(early.chunks))}, then local ${JSON.stringify(textOf(later.chunks))}`;
    } finally {
      release();
      await slow.close();
    }
  });

  await test('a load made while a model loads in the background wins: the background one never replaces it', async () => {
    let release;
    const until = new Promise((ok) => { release = ok; });
    const slow = await startServer({ mounts: { '/models/': resolve(root, 'models') }, cors: true, hold: { prefix: '/models/', until } });
    try {
      const page = await openPage(plain, 'load-over-background');
      const held = `${slow.origin}/models/${MODEL}`;
      const { info, error } = await load(page, { model: held, fallback: { ...fallback, answerWhileLoading: true } });
      check(!error && info.backend === 'hosted' && info.loading, `createEngine: ${JSON.stringify(error ?? info)}`);
      const second = await page.evaluate(async (url) => {
        const info = await window.engine.load(url, { backend: 'wasm' });
        return { url: info.source?.url, backend: info.backend, ready: (await window.engine.localReady).source?.url };
      }, modelUrl);
      check(second.backend === 'wasm' && second.url === modelUrl && second.ready === modelUrl, `second load: ${JSON.stringify(second)}`);
      release();
      // Time for the held download to run to its end, were it still going.
      await new Promise((ok) => setTimeout(ok, 3000));
      const after = await page.evaluate(() => window.engine.info().source?.url);
      check(after === modelUrl, `the model in use is ${after}`);
      const answer = await ask(page);
      check(!answer.error && textOf(answer.chunks, 'wasm').length > 0, `answer: ${JSON.stringify(answer)}`);
      await page.close();
      return `in use: ${after}; answer ${JSON.stringify(textOf(answer.chunks))}`;
    } finally {
      release();
      await slow.close();
    }
  });

  await test('a GPU device lost during an answer: the answer completes through the hosted route', async () => {
    const page = await openPage(gpu, 'device-lost');
    const { info, error } = await load(page, { model: modelUrl, backend: 'webgpu', fallback });
    check(!error && info.backend === 'webgpu', `createEngine: ${JSON.stringify(error ?? info.backend)}`);
    // The engine's worker: remember the GPU device it uses, and destroy it after the third chunk.
    const [worker] = page.workers();
    await worker.evaluate(() => {
      const original = GPUDevice.prototype.createCommandEncoder;
      GPUDevice.prototype.createCommandEncoder = function (...args) {
        self.engineDevice = this;
        return original.apply(this, args);
      };
    });
    await page.exposeFunction('loseDevice', () => worker.evaluate(() => self.engineDevice.destroy()));
    await page.evaluate(() => { window.afterThirdChunk = () => window.loseDevice(); });
    const { chunks, error: failed } = await ask(page, { maxTokens: 24 });
    check(!failed, `answer: ${JSON.stringify(failed)}`);
    const handoff = chunks.find((c) => c.edgechat?.event === 'handoff');
    check(handoff && /failed/.test(handoff.edgechat.reason), `no hand-off: ${JSON.stringify(chunks.map((c) => c.edgechat))}`);
    const local = textOf(chunks, 'webgpu');
    const hosted = textOf(chunks, 'hosted');
    check(hosted.length > 0, 'no hosted text');
    check(chunks.at(-1).usage?.completion_tokens > 0, 'no usage');
    // The next request goes to the hosted route at once (the local engine is gone).
    const next = await ask(page, { maxTokens: 8 });
    check(!next.error && textOf(next.chunks, 'hosted').length > 0 && textOf(next.chunks, 'webgpu') === '', `after the loss: ${JSON.stringify(next)}`);
    await page.close();
    return `local ${JSON.stringify(local)} + hosted ${JSON.stringify(hosted)} (${handoff.edgechat.reason})`;
  });
} finally {
  await plain.close();
  await gpu.close();
  await router.close();
  await pages.close();
  await models.close();
}
if (failed() > 0) {
  console.error(`${failed()} hybrid test(s) failed`);
  process.exit(1);
}
console.log('all hybrid tests passed');
