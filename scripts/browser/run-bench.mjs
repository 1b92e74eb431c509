#!/usr/bin/env node
// Browser benchmark driver: edgechat (our wasm package, WebGPU and CPU) vs
// wllama (llama.cpp in wasm, 1 and 2 threads) on the same GGUF, in the same
// headless Chromium. Writes target/bench/browser.{md,json}.
//
//   node scripts/browser/run-bench.mjs [--model PATH] [--prompt N] [--decode N]
//        [--reps N] [--timeout SECONDS] [--only wllama|edgechat] [--no-wllama-webgpu]
//        [--out DIR (target/bench)] [--pkg DIR (crate/npm/wasm)]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer } from './server.mjs';
import { launchChromium, pipeConsole } from './chromium.mjs';
import { describeModel } from './gguf.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');

function parseArgs(argv) {
  const a = {
    model: path.join(repo, 'models/smollm2-135m-instruct-q4_1.gguf'),
    prompt: 64, decode: 32, reps: 2, timeout: 600, only: null, wllamaWebgpu: true,
    out: path.join(repo, 'target/bench'), pkg: path.join(repo, 'crate/npm/wasm'),
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i], v = () => argv[++i];
    if (k === '--model') a.model = path.resolve(v());
    else if (k === '--prompt') a.prompt = Number(v());
    else if (k === '--decode') a.decode = Number(v());
    else if (k === '--reps') a.reps = Number(v());
    else if (k === '--timeout') a.timeout = Number(v());
    else if (k === '--only') a.only = v();
    else if (k === '--out') a.out = path.resolve(v());
    else if (k === '--pkg') a.pkg = path.resolve(v());
    else if (k === '--no-wllama-webgpu') a.wllamaWebgpu = false;
    else if (k === '-h' || k === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1).filter((l, i, a) => a.slice(0, i + 1).every((x) => x.startsWith('//'))).join('\n'));
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  if (!(a.prompt > 0 && a.decode > 1 && a.reps > 0)) throw new Error('--prompt > 0, --decode > 1, --reps > 0');
  return a;
}

const args = parseArgs(process.argv.slice(2));
if (!fs.existsSync(args.model)) throw new Error(`no model at ${args.model}`);
const model = describeModel(args.model);
const modelName = path.basename(args.model);
const pkgDir = args.pkg;
const havePkg = fs.existsSync(path.join(pkgDir, 'edgechat.js')) && fs.existsSync(path.join(pkgDir, 'edgechat_bg.wasm'));

const server = await startServer({
  isolation: true, // COOP/COEP: crossOriginIsolated, so wllama can use 2 threads
  mounts: {
    '/pkg/': pkgDir,
    '/models/': path.dirname(args.model),
    '/wllama/': path.join(here, 'node_modules/@wllama/wllama'),
    '/': here,
  },
});
const browser = await launchChromium({ webgpu: true });
const pageUrl = `${server.origin}/bench.html`;
const modelUrl = `/models/${encodeURIComponent(modelName)}`;

// One fresh browser context (and page) per configuration: nothing survives
// from a previous engine (wasm memory, GPU buffers, OPFS, HTTP cache).
async function inFreshPage(label, fn) {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  pipeConsole(page, `[${label}]`);
  try {
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.benchReady === true, null, { timeout: 30000 });
    let timer;
    const timeout = new Promise((_, ko) => { timer = setTimeout(() => ko(new Error(`timed out after ${args.timeout}s`)), args.timeout * 1000); });
    return await Promise.race([fn(page), timeout]).finally(() => clearTimeout(timer));
  } catch (e) {
    return { error: String(e.message || e) };
  } finally {
    await ctx.close().catch(() => {});
  }
}

const env = await inFreshPage('env', (p) => p.evaluate(() => window.bench.env()));
env.chromium = browser.version();
console.log('chromium', env.chromium, '| crossOriginIsolated', env.crossOriginIsolated,
  '| adapter', JSON.stringify(env.adapter), '| shader-f16', env.shaderF16, '| subgroups', env.subgroups);

const common = { modelUrl, prompt: args.prompt, decode: args.decode, reps: args.reps };
const configs = [];
if (args.only !== 'edgechat') {
  configs.push({ label: 'wllama cpu x1', engine: 'wllama', opts: { ...common, threads: 1, gpuLayers: 0 } });
  configs.push({ label: 'wllama cpu x2', engine: 'wllama', opts: { ...common, threads: 2, gpuLayers: 0 } });
  // llama.cpp's WebGPU backend wants shader-f16; try it anyway and report what it did.
  if (args.wllamaWebgpu) configs.push({ label: 'wllama webgpu', engine: 'wllama', opts: { ...common, threads: 2, gpuLayers: 999 } });
}
if (args.only !== 'wllama') {
  for (const backend of ['webgpu', 'cpu']) {
    configs.push({ label: `edgechat ${backend}`, engine: 'edgechat', skip: !havePkg && 'crate/npm/wasm not built (scripts/build-wasm)', opts: { ...common, backend } });
  }
}

// Other work on this machine skews the figures (2 cores): record the load.
const loadBefore = os.loadavg()[0];
const results = [];
for (const c of configs) {
  if (c.skip) { console.log(`-- ${c.label}: skipped: ${c.skip}`); results.push({ label: c.label, engine: c.engine, error: `skipped: ${c.skip}` }); continue; }
  console.log(`-- ${c.label} ...`);
  const t = Date.now();
  const r = await inFreshPage(c.label, (p) => p.evaluate(([engine, opts]) => window.bench[engine](opts), [c.engine, c.opts]));
  results.push({ label: c.label, ...r, engine: c.engine });
  console.log(`-- ${c.label}: ${r.error ? 'ERROR ' + r.error : r.notTimed ? r.notTimed : `prefill ${fmt(r.prefillTokS)} tok/s, decode ${fmt(r.decodeTokS)} tok/s, backend ${r.backend}`} (${((Date.now() - t) / 1000).toFixed(0)} s)`);
}

const loadAfter = os.loadavg()[0];
await browser.close();
await server.close();

// Effective decode bandwidth. wllama: llama.cpp reads the GGUF weights as
// stored, so bytes/token = tensor bytes in the file, less the embedding table
// unless it is tied to the LM head (gguf.mjs). edgechat: its own figure.
const ggufBytes = model.bytes;
for (const r of results) {
  if (r.error || r.notTimed) continue;
  if (r.backend === 'webgpu' && env.adapter) r.backend = `webgpu (${env.adapter.architecture || env.adapter.vendor})`;
  if (r.engine === 'wllama') r.weightBytesPerToken = ggufBytes;
  if (r.decodeGbS == null && r.weightBytesPerToken) r.decodeGbS = r.weightBytesPerToken * r.decodeTokS / 1e9;
}
const wllamaCpu = results.filter((r) => r.engine === 'wllama' && r.decodeTokS && r.backend.startsWith('cpu'));
const bestCpu = wllamaCpu.length ? Math.max(...wllamaCpu.map((r) => r.decodeTokS)) : null;

const md = [];
md.push(`## Browser benchmark: edgechat vs wllama`);
md.push('');
md.push(`- model: \`${modelName}\` (${model.arch}, ${model.nLayer} layers, d=${model.nEmbd}, vocab ${model.nVocab}, ${(model.fileBytes / 1e6).toFixed(1)} MB, embeddings ${model.tied ? 'tied' : 'untied'})`);
md.push(`- prompt ${args.prompt} tokens, decode ${args.decode} tokens, greedy; one warm-up run, then best of ${args.reps}; each configuration in a fresh browser context`);
md.push(`- Chromium ${env.chromium} (headless, ${env.hardwareConcurrency} cores, crossOriginIsolated=${env.crossOriginIsolated}, JSPI=${env.jspi}); 1-min load average ${loadBefore.toFixed(2)} before, ${loadAfter.toFixed(2)} after`);
md.push(`- WebGPU adapter: ${env.adapter ? `${env.adapter.vendor} / ${env.adapter.architecture}${env.adapter.description ? ' / ' + env.adapter.description : ''}` : 'none'}; shader-f16: ${env.shaderF16 ? 'yes' : 'no'}; subgroups: ${env.subgroups ? 'yes' : 'no'}`);
if (results.some((r) => r.engine === 'wllama')) md.push(`- wllama ${results.find((r) => r.version)?.version ?? ''} (@wllama/wllama ${wllamaVersion()}); llama.cpp's own timings (prompt_n / prompt_ms, predicted_per_second), prompt text calibrated to exactly ${args.prompt} tokens`);
if (results.some((r) => r.engine === 'edgechat')) md.push(`- edgechat: \`WasmModel.bench\` (its own pseudo-random prompt ids; decode = steps / time, run as generation runs them: each step on the token the previous one chose, queued on the device while the host reads), single-threaded wasm for the CPU backend`);
md.push(`- GB/s = weight bytes per token x decode tok/s; wllama bytes/token from the GGUF tensor sizes (${(ggufBytes / 1e6).toFixed(1)} MB: all tensors${model.tied ? ', the tied embedding read as LM head' : ' less the token embedding table'}); edgechat's from its own report`);
md.push('');
md.push('| engine | backend | threads | prefill tok/s | decode tok/s | weight MB/token | decode GB/s | decode vs wllama best CPU |');
md.push('|---|---|---:|---:|---:|---:|---:|---:|');
for (const r of results) {
  if (r.error) { md.push(`| ${r.label} | – | – | – | – | – | – | ${r.error.split('\n')[0].replace(/\|/g, '/').slice(0, 120)} |`); continue; }
  if (r.notTimed) { md.push(`| ${r.engine} | ${r.backend}, asked for ${r.requested} | ${r.threads ?? '–'} | – | – | – | – | not timed (see below) |`); continue; }
  const ratio = bestCpu ? `${(r.decodeTokS / bestCpu).toFixed(2)}x` : '–';
  md.push(`| ${r.engine} | ${r.backend} | ${r.threads ?? '–'} | ${fmt(r.prefillTokS)} | ${fmt(r.decodeTokS)} | ${r.weightBytesPerToken ? (r.weightBytesPerToken / 1e6).toFixed(1) : '–'} | ${r.decodeGbS != null ? r.decodeGbS.toFixed(2) : '–'} | ${ratio} |`);
}
const notes = [];
for (const r of results) {
  if (r.engine === 'wllama' && r.requested === 'webgpu' && !r.error) {
    const enumerated = r.evidence.find((l) => /backend_ptrs/.test(l));
    notes.push(`- ${r.label}: n_gpu_layers=999 requested; ${r.backend.startsWith('webgpu') ? `ran on ${r.backend}` : `llama.cpp registered no WebGPU device (${enumerated ? enumerated.trim() : 'no GPU backend in its log'}) and offloaded 0 layers${env.shaderF16 ? '' : '; most likely because ggml-webgpu requires shader-f16, which this adapter lacks'}`}.`);
  }
  if (r.engine === 'wllama' && r.runs && r.runs.some((x) => x.promptN !== args.prompt)) notes.push(`- ${r.label}: prompt was ${r.runs.map((x) => x.promptN).join('/')} tokens, not ${args.prompt}.`);
  if (r.engine === 'edgechat' && r.describe) notes.push(`- ${r.label}: ${r.describe}${r.dispatchesPerToken ? `; ${fmt(r.dispatchesPerToken)} dispatches, ${fmt(r.submissionsPerToken)} submissions per decoded token` : ''}; load ${(r.loadMs / 1000).toFixed(1)} s`);
}
const ec = results.find((r) => r.engine === 'edgechat' && r.weightBytesPerToken && !r.error);
if (ec) notes.push(`- weight bytes per token: edgechat reports ${ec.weightBytesPerToken.toLocaleString('en')}, the GGUF tensor sizes give ${ggufBytes.toLocaleString('en')} (${((ec.weightBytesPerToken / ggufBytes - 1) * 100).toFixed(2)}%).`);
if (notes.length) md.push('', ...notes);
const mdText = md.join('\n') + '\n';

fs.mkdirSync(args.out, { recursive: true });
fs.writeFileSync(path.join(args.out, 'browser.md'), mdText);
fs.writeFileSync(path.join(args.out, 'browser.json'), JSON.stringify({
  args: { ...args, model: path.relative(repo, args.model) }, model: { ...model, tokenTypes: undefined }, env, results,
}, null, 2) + '\n');
console.log('\n' + mdText);
console.log(`wrote ${path.join(args.out, 'browser.md')} and browser.json`);

function fmt(x) { return x == null || !isFinite(x) ? '–' : x >= 100 ? x.toFixed(0) : x.toFixed(1); }
function wllamaVersion() {
  try { return JSON.parse(fs.readFileSync(path.join(here, 'node_modules/@wllama/wllama/package.json'), 'utf8')).version; } catch { return '?'; }
}
