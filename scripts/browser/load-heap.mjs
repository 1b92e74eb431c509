// How the npm package loads a big model in headless Chromium: download into the Origin Private
// File System (HTTP ranges from a local server), then a second load from that cache; the time of
// each phase and the worker's wasm memory after loading (its peak: wasm memory never shrinks).
// The weights stream from storage to the GPU in bounded pieces, so the wasm heap stays small.
//
//   node scripts/browser/load-heap.mjs [--model models/ministral-8b-shape-q4_k_m.gguf] [--out target/bench]
// Not run in CI (the 8B-shaped file is 4.9 GB: scripts/models --full).
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchPersistentChromium, pipeConsole } from './chromium.mjs';
import { startServer } from './server.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const modelPath = resolve(repo, option('--model', 'models/ministral-8b-shape-q4_k_m.gguf'));
const out = resolve(repo, option('--out', 'target/bench'));
const size = statSync(modelPath).size;

const pages = await startServer({ mounts: { '/npm/': resolve(repo, 'crate/npm'), '/': resolve(repo, 'crate/tests/browser') } });
const models = await startServer({ mounts: { '/models/': dirname(modelPath) }, cors: true });
const profile = mkdtempSync(resolve(tmpdir(), 'edgechat-profile-'));
const context = await launchPersistentChromium(profile, { webgpu: true });
const runs = [];
try {
  for (const label of ['first load (download)', 'second load (cache)']) {
    const page = await context.newPage();
    pipeConsole(page, '[load]');
    await page.goto(`${pages.origin}/package.html`);
    await page.waitForFunction(() => window.ready === true);
    const run = await page.evaluate(async (url) => {
      const phases = {};
      let last = null;
      const t0 = performance.now();
      const mark = (p) => {
        const now = performance.now();
        if (last && last.phase !== p.phase) phases[last.phase].ms = now - phases[last.phase].start;
        if (!phases[p.phase]) phases[p.phase] = { start: now, ms: 0, bytes: 0 };
        phases[p.phase].bytes = Math.max(phases[p.phase].bytes, p.loaded ?? 0);
        last = p;
      };
      try {
        const engine = await window.edgechat.createEngine({ model: url, onProgress: mark });
        const info = engine.info();
        const total = performance.now() - t0;
        await engine.unload();
        engine.terminate();
        return { info, phases, total };
      } catch (e) {
        return { error: `${e.code}: ${e.message}`, phases };
      }
    }, `${models.origin}/models/${basename(modelPath)}`);
    await page.close();
    run.label = label;
    runs.push(run);
    console.log(JSON.stringify({ label, error: run.error, total_s: run.total / 1e3, wasm_memory_mb: run.info?.wasm_memory_bytes / 2 ** 20, backend: run.info?.backend }));
    if (run.error) break;
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  await pages.close();
  await models.close();
}

const mb = (b) => (b / 2 ** 20).toFixed(0);
const lines = [
  `# Loading ${basename(modelPath)} (${(size / 1e9).toFixed(2)} GB) through the npm package in headless Chromium`,
  '',
  '| load | backend | total s | phases (s) | wasm memory after load (peak) |',
  '|---|---|---|---|---|',
];
for (const run of runs) {
  const phases = Object.entries(run.phases).map(([p, v]) => `${p} ${(v.ms / 1e3).toFixed(1)}`).join(', ');
  lines.push(run.error
    ? `| ${run.label} | failed: ${run.error} | | ${phases} | |`
    : `| ${run.label} | ${run.info.backend} | ${(run.total / 1e3).toFixed(1)} | ${phases} | ${mb(run.info.wasm_memory_bytes)} MiB |`);
}
mkdirSync(out, { recursive: true });
writeFileSync(resolve(out, 'load-heap.md'), lines.join('\n') + '\n');
writeFileSync(resolve(out, 'load-heap.json'), JSON.stringify({ model: basename(modelPath), size, runs }, null, 2));
console.log(lines.join('\n'));
