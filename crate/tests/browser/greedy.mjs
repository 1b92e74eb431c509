// The wasm build in real headless Chromium must choose the same greedy tokens as the native build.
// WebGPU runs on SwiftShader there (no shader-f16: the f32 kernels), and the CPU backend on wasm
// SIMD128. Expectations are the native CPU run's (target/wasm-expected/, written by
// crate/tests/wasm_expected_logits.rs); each step feeds the native token (teacher forcing), so a
// near-tie reordered by float rounding does not derail the steps after it.
//
// Run by scripts/test-browser after scripts/build-wasm.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium, pipeConsole } from '../../../scripts/browser/chromium.mjs';
import { startServer } from '../../../scripts/browser/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

// Same rule as crate/tests/wasm/cases.rs: a step's token may differ only where the native top two
// logits are closer than this fraction of the largest logit magnitude.
const NEAR_TIE = 0.01;

const CASES = [
  { model: 'smollm2-135m-instruct-q4_1.gguf', backends: ['webgpu', 'cpu'] },
  { model: 'tiny-mistral.gguf', backends: ['webgpu', 'cpu'] },
];

function compare(name, got, expected) {
  const nearTies = [];
  got.forEach((token, step) => {
    const want = expected.greedy_tokens[step];
    if (token === want) return;
    const logits = expected.logits[step];
    const maxAbs = logits.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const gap = logits[want] - logits[token];
    if (!(gap <= NEAR_TIE * maxAbs)) {
      throw new Error(`${name}: step ${step}: token ${token}, native ${want} ` +
        `(native logits ${logits[token]} vs ${logits[want]}: not a near-tie)`);
    }
    nearTies.push(`step ${step}: ${token} for ${want} (native gap ${gap.toFixed(4)})`);
  });
  return nearTies;
}

const server = await startServer({
  mounts: {
    '/pkg/': resolve(root, 'crate/npm/wasm'),
    '/models/': resolve(root, 'models'),
    '/': resolve(root, 'crate/tests/browser'),
  },
});
const browser = await launchChromium({ webgpu: true });
let failures = 0;
try {
  for (const { model, backends } of CASES) {
    const expected = JSON.parse(readFileSync(resolve(root, `target/wasm-expected/${model}.json`)));
    for (const backend of backends) {
      const name = `${model} on ${backend}`;
      const page = await browser.newPage();
      pipeConsole(page, `[${name}]`);
      try {
        await page.goto(`${server.origin}/greedy.html`);
        await page.waitForFunction(() => window.ready === true);
        const result = await page.evaluate((args) => window.runGreedy(args), {
          model: `/models/${model}`,
          backend,
          prompt: expected.prompt,
          forced: expected.greedy_tokens,
        });
        if (result.tokens.length !== expected.greedy_tokens.length) {
          throw new Error(`${name}: ${result.tokens.length} tokens, expected ${expected.greedy_tokens.length}`);
        }
        if (backend === 'webgpu' && !/webgpu/.test(result.description)) {
          throw new Error(`${name}: ran on ${result.description}`);
        }
        const nearTies = compare(name, result.tokens, expected);
        console.log(`ok ${name} (${result.description}): tokens ${JSON.stringify(result.tokens)} ` +
          (nearTies.length ? `identical except near-ties: ${nearTies.join('; ')}` : 'identical to native') +
          `; load ${result.loadMs.toFixed(0)} ms, ${result.tokens.length} steps ${result.runMs.toFixed(0)} ms`);
      } catch (e) {
        failures += 1;
        console.error(`FAILED ${name}: ${e.message}`);
      } finally {
        await page.close();
      }
    }
  }
} finally {
  await browser.close();
  await server.close();
}
if (failures) {
  console.error(`${failures} browser case(s) failed`);
  process.exit(1);
}
