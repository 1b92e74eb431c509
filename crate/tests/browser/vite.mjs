// `npm pack` of the package installs into a fresh Vite project, which builds and answers in
// headless Chromium: the tarball carries the wasm, the worker and the types, and a bundler finds
// them (`new Worker(new URL(...))` and the wasm file by `import.meta.url`).
//
// Run by scripts/test-browser after scripts/build-wasm (which fills crate/npm/wasm/).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium, pipeConsole } from '../../../scripts/browser/chromium.mjs';
import { startServer } from '../../../scripts/browser/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const MODEL = 'smollm2-135m-instruct-q4_1.gguf';
// The Vite version scripts/browser pins (npm ci there fills the npm cache, so this install is offline).
const viteVersion = JSON.parse(readFileSync(resolve(root, 'scripts/browser/package.json'))).dependencies.vite;

const project = mkdtempSync(join(tmpdir(), 'edgechat-vite-'));
const run = (command, args, cwd) => execFileSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

let server;
let browser;
try {
  run('npm', ['pack', '--silent', '--pack-destination', project], resolve(root, 'crate/npm'));
  const tarball = readdirSync(project).find((f) => f.endsWith('.tgz'));
  const listing = run('tar', ['-tzf', join(project, tarball)], project);
  for (const file of ['package/src/index.js', 'package/src/worker.js', 'package/src/index.d.ts', 'package/wasm/edgechat_bg.wasm']) {
    if (!listing.includes(file)) throw new Error(`${tarball} lacks ${file}`);
  }

  writeFileSync(join(project, 'package.json'), JSON.stringify({
    name: 'edgechat-vite-check', private: true, type: 'module',
    dependencies: { edgechat: `file:./${tarball}` },
    devDependencies: { vite: viteVersion },
  }, null, 2));
  writeFileSync(join(project, 'index.html'), `<!doctype html>
<meta charset="utf-8"><title>edgechat in Vite</title>
<pre id="answer"></pre>
<script type="module" src="/src/main.js"></script>
`);
  mkdirSync(join(project, 'src'));
  // What the package's README tells a user to write.
  writeFileSync(join(project, 'src/main.js'), `import { createEngine } from 'edgechat';

const model = new URLSearchParams(location.search).get('model');
window.progress = [];
window.result = (async () => {
  const engine = await createEngine({ model, onProgress: (p) => window.progress.push(p.phase + ' ' + p.loaded) });
  const messages = [{ role: 'user', content: 'What is 2 + 2?' }];
  let text = '';
  for await (const chunk of await engine.chat.completions.create({ messages, stream: true, temperature: 0, max_tokens: 24 })) {
    text += chunk.choices[0]?.delta?.content ?? '';
    document.getElementById('answer').textContent = text;
  }
  return { text, backend: engine.info().backend };
})().catch((e) => ({ error: e.code + ': ' + e.message }));
`);
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--silent'], project);
  run('npx', ['vite', 'build', '--logLevel', 'warn'], project);

  server = await startServer({ mounts: { '/models/': resolve(root, 'models'), '/': join(project, 'dist') } });
  browser = await launchChromium({ webgpu: true });
  const page = await browser.newPage();
  pipeConsole(page, '[vite]');
  await page.goto(`${server.origin}/?model=/models/${MODEL}`);
  // Never wait forever: a stuck page says where it stopped.
  const result = await Promise.race([
    page.evaluate(() => window.result),
    new Promise((ok) => setTimeout(ok, 180_000)).then(() => page.evaluate(() => ({
      error: `no answer in 180 s; progress ${JSON.stringify(window.progress?.slice(-5))}; page ${document.body.innerText.slice(0, 200)}`,
    }))),
  ]);
  if (result.error || !/\b4\b/.test(result.text)) throw new Error(`the Vite build answered ${JSON.stringify(result)}`);
  console.log(`ok the packed package installs into a fresh Vite ${viteVersion} project and answers there (${result.backend}): ${JSON.stringify(result.text)}`);
} catch (e) {
  console.error(`FAILED the Vite project: ${e.stack ?? e}`);
  process.exitCode = 1;
} finally {
  await browser?.close();
  await server?.close();
  rmSync(project, { recursive: true, force: true });
}
