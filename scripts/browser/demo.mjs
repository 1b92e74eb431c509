// The whole system on one machine, offline: the router worker on workerd (local D1, a demo token)
// with `edgechat serve` on SmolLM2 as its provider, and the chat page (www/dist) with the bundled
// model. Started by scripts/demo after it has built everything; Ctrl-C stops all of it.
//   node scripts/browser/demo.mjs [--port 8000]
import { writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { startRouter } from './router.mjs';
import { startServer } from './server.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const port = Number(args[args.indexOf('--port') + 1] || 8000) || 8000;
const origins = [`http://127.0.0.1:${port}`, `http://localhost:${port}`];

console.log('starting the router on workerd and edgechat serve on SmolLM2 …');
const router = await startRouter({ allowOrigin: origins, build: false });
// The page reads this at start: the bundled model and the local router with its demo token.
writeFileSync(join(repo, 'www/dist/demo-config.json'), JSON.stringify({
  defaultModel: { label: 'SmolLM2-135M-Instruct Q4_1 (bundled)', url: './models/smollm2-135m-instruct-q4_1.gguf' },
  router: { url: router.url, token: router.token, model: router.model },
}, null, 2));
const page = await startServer({
  port,
  mounts: { '/models/': join(repo, 'models'), '/': join(repo, 'www/dist') },
});

console.log(`
edgechat is up:
  chat page      ${page.origin}/   (also http://localhost:${port}/)
  router         ${router.url}  (OpenAI-compatible; model "${router.model}")
  demo token     ${router.token}
  provider       ${router.engineUrl}  (edgechat serve, SmolLM2-135M-Instruct)
Ctrl-C stops everything.`);

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  await page.close();
  await router.close();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
