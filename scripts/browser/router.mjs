// The hosted route for browser tests: the real router worker on workerd (`wrangler dev`, a fresh
// local D1 with one caller token) in front of `edgechat serve` on SmolLM2 as its provider.
//
//   const router = await startRouter({ allowOrigin: 'http://127.0.0.1:1234' }); // or an array
//   router.url (…/v1), router.token, router.model, router.engineUrl (the provider itself),
//   await router.restartProvider(), await router.usage(), await router.close()
//
// With `withRestartModel`, a second model, router.restartModel, goes first to a cheaper provider that sends two words and
// drops the connection, then to the same `edgechat serve` configured as unable to continue a
// text: the router's rescue must start the answer over, visibly.
//
// Needs scripts/worker build's tools (scripts/setup), target/release/edgechat and scripts/models.
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const wranglerJs = join(repo, 'worker/node_modules/wrangler/bin/wrangler.js');
export const ROUTER_MODEL = 'smollm2-135m';
export const RESTART_MODEL = 'smollm2-restart';
// What the provider that breaks off sends before it does.
export const CUT_STREAM_TEXT = 'Let me';

// An OpenAI-compatible provider whose every answer is two streamed words and then a dropped
// connection (no finish reason, no [DONE]).
async function startCutStreamProvider() {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
      for (const content of ['Let', ' me']) {
        const chunk = { id: 'cut', object: 'chat.completion.chunk', created: 0, model: 'cut',
          choices: [{ index: 0, delta: { content }, finish_reason: null }] };
        res.write(`data: ${JSON.stringify(chunk)}\n\n`);
      }
      setTimeout(() => res.destroy(), 50);
    });
  });
  await new Promise((ok, ko) => {
    server.once('error', ko);
    server.listen(0, '127.0.0.1', ok);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}/v1`,
    close: () => { server.closeAllConnections(); server.close(); },
  };
}

async function freePort() {
  return new Promise((ok, ko) => {
    const server = net.createServer();
    server.once('error', ko);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

// A child process that dies with this one's group when stopped.
function start(command, args, options = {}) {
  return spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], ...options });
}

function stop(child) {
  if (child.exitCode != null) return;
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    child.kill('SIGTERM');
  }
}

export async function startRouter({ allowOrigin, build = true, withRestartModel = false } = {}) {
  if (build) execFileSync(join(repo, 'scripts/worker'), ['build'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const state = mkdtempSync(join(tmpdir(), 'edgechat-router-'));
  const children = [];
  let cutStream = null;
  try {
    if (withRestartModel) cutStream = await startCutStreamProvider();
    // The provider: edgechat serve on SmolLM2, on a port of its own so it can be restarted.
    const enginePort = await freePort();
    let engine = null;
    const startEngine = async () => {
      engine = start(join(repo, 'target/release/edgechat'), [
        'serve', '--port', String(enginePort), '--model-name', 'smollm2-135m-instruct',
        '--model', join(repo, 'models/smollm2-135m-instruct-q4_1.gguf'),
      ]);
      children.push(engine);
      await new Promise((ok, ko) => {
        createInterface({ input: engine.stdout }).once('line', ok);
        engine.once('exit', (code) => ko(new Error(`edgechat serve exited (${code})`)));
      });
    };
    await startEngine();
    const engineUrl = `http://127.0.0.1:${enginePort}/v1`;

    const wrangler = (args) => execFileSync('node', [wranglerJs, ...args], { cwd: join(repo, 'worker'), stdio: ['ignore', 'ignore', 'inherit'] });
    wrangler(['d1', 'migrations', 'apply', 'edgechat-ledger', '--local', '--persist-to', state]);
    const secret = randomBytes(16).toString('hex');
    const hash = createHash('sha256').update(secret).digest('hex');
    wrangler(['d1', 'execute', 'edgechat-ledger', '--local', '--persist-to', state, '--command',
      `INSERT INTO tokens (id, name, secret_sha256, rpm_limit, budget_usd, created_ms) VALUES ('browser', 'browser', '${hash}', 100000, 1000, 0)`]);

    const config = {
      default_policy: 'cheapest',
      cors_allow_origins: [allowOrigin ?? []].flat(),
      providers: [{
        name: 'local-engine', base_url: engineUrl, prefill: 'trailing_assistant',
        models: [{ model: ROUTER_MODEL, upstream_model: 'smollm2-135m-instruct', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2, context_length: 8192 }],
      }, ...(cutStream ? [{
        name: 'cut-stream', base_url: cutStream.url, prefill: 'trailing_assistant',
        models: [{ model: RESTART_MODEL, upstream_model: 'cut', input_usd_per_mtok: 0.01, output_usd_per_mtok: 0.02, context_length: 8192 }],
      }, {
        name: 'local-engine-restarts', base_url: engineUrl, prefill: 'none',
        models: [{ model: RESTART_MODEL, upstream_model: 'smollm2-135m-instruct', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2, context_length: 8192 }],
      }] : [])],
    };
    const port = await freePort();
    const dev = start('node', [wranglerJs, 'dev', '--ip', '127.0.0.1', '--port', String(port),
      '--inspector-port', String(await freePort()), '--persist-to', state,
      '--show-interactive-dev-session=false', '--var', `ROUTER_CONFIG:${JSON.stringify(config)}`],
    { cwd: join(repo, 'worker') });
    children.push(dev);
    let log = '';
    dev.stdout.on('data', (d) => { log += d; });
    dev.stderr.on('data', (d) => { log += d; });
    const origin = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        if ((await fetch(`${origin}/health`)).ok) break;
      } catch { /* not up yet */ }
      if (Date.now() > deadline || dev.exitCode != null) throw new Error(`wrangler dev did not come up:\n${log}`);
      await new Promise((ok) => setTimeout(ok, 300));
    }
    const token = `ec_browser_${secret}`;
    return {
      url: `${origin}/v1`,
      token,
      model: ROUTER_MODEL,
      restartModel: cutStream ? RESTART_MODEL : null,
      engineUrl,
      // A fresh provider process (an empty KV cache): a small model's greedy answer can depend on
      // how much of a prompt was cached, so answers compared with each other start alike.
      restartProvider: async () => {
        const stopped = new Promise((ok) => engine.once('exit', ok));
        stop(engine);
        await stopped;
        await startEngine();
      },
      // The caller's ledger: one entry per request that reached the router.
      usage: async () => (await fetch(`${origin}/v1/usage`, { headers: { Authorization: `Bearer ${token}` } })).json(),
      close: async () => {
        children.forEach(stop);
        cutStream?.close();
        rmSync(state, { recursive: true, force: true });
      },
    };
  } catch (e) {
    children.forEach(stop);
    cutStream?.close();
    rmSync(state, { recursive: true, force: true });
    throw e;
  }
}
