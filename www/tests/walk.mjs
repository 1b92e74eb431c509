// A user's walk through the chat page in headless Chromium (WebGPU on SwiftShader), on the system
// scripts/demo starts: the page (www/dist) with the bundled SmolLM2, and the router worker on
// workerd with `edgechat serve` as its provider. Each step leaves a screenshot in
// target/test-output/chat-page/.
//
// Run by scripts/test-browser after scripts/build-wasm, scripts/build-www and scripts/models.
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { launchChromium, pipeConsole } from '../../scripts/browser/chromium.mjs';
import { startRouter } from '../../scripts/browser/router.mjs';
import { startServer } from '../../scripts/browser/server.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const shots = join(repo, 'target/test-output/chat-page');
mkdirSync(shots, { recursive: true });

const port = await new Promise((ok) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const { port: p } = s.address();
    s.close(() => ok(p));
  });
});
const origin = `http://127.0.0.1:${port}`;
const router = await startRouter({ allowOrigin: origin, build: false });
writeFileSync(join(repo, 'www/dist/demo-config.json'), JSON.stringify({
  router: { url: router.url, token: router.token, model: router.model },
}));
const server = await startServer({ port, mounts: { '/models/': join(repo, 'models'), '/': join(repo, 'www/dist') } });
const browser = await launchChromium({ webgpu: true });
const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
const page = await context.newPage();
pipeConsole(page, '[page]');

let step = 0;
async function shot(name) {
  step += 1;
  await page.screenshot({ path: join(shots, `${String(step).padStart(2, '0')}-${name}.png`) });
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// Whether a layout condition holds within 10 s (CSS transitions run late on a loaded machine).
async function settles(condition) {
  return page.waitForFunction(condition, null, { timeout: 10_000 }).then(() => true, () => false);
}

const messages = () => page.locator('[data-testid="message"]');
const lastAnswer = () => page.locator('[data-testid="message"][data-role="assistant"]').last();

async function waitForBackend(pattern) {
  await page.waitForFunction((source) => new RegExp(source).test(document.querySelector('[data-testid="route-badge"]').dataset.backend ?? ''),
    pattern.source, { timeout: 180_000 });
}

async function ask(text) {
  const before = await messages().count();
  await page.fill('[data-testid="prompt"]', text);
  await page.keyboard.press('Enter');
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid="message"]').length >= n + 2, before);
}

// Changes settings in the dialog; saving reloads the engine, and this waits for that load.
async function settings(values) {
  const loads = await page.evaluate(() => window.edgechatPage.loads);
  await page.click('[data-testid="open-settings"]');
  for (const [field, value] of Object.entries(values)) {
    const selector = `[data-testid="${field}"]`;
    if (await page.locator(selector).evaluate((e) => e.tagName === 'SELECT')) await page.selectOption(selector, value);
    else await page.fill(selector, String(value));
  }
  await page.click('[data-testid="save-settings"]');
  await page.waitForFunction((n) => window.edgechatPage.loads > n, loads, { timeout: 180_000 });
}

let failed = false;
try {
  // 1. The default model downloads with a moving progress bar (the router answers meanwhile).
  await page.goto(`${origin}/`);
  const seen = new Set();
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    const value = await page.locator('[data-testid="progress"]').evaluate((p) => (p.closest('[hidden]') ? null : p.value));
    if (value != null) seen.add(value);
    if (seen.size === 3) await shot('downloading');
    const backend = await page.locator('[data-testid="route-badge"]').evaluate((b) => b.dataset.backend);
    if (backend === 'webgpu' || backend === 'wasm') break;
    await page.waitForTimeout(50);
  }
  check(seen.size >= 3, `the progress bar did not move: ${[...seen]}`);
  await waitForBackend(/^(webgpu|wasm)$/);
  await page.click('[data-testid="capabilities"] summary');
  const capabilities = await page.locator('#capability-list').innerText();
  check(/WebGPU/.test(capabilities) && /Storage/.test(capabilities) && /Engine/.test(capabilities), `capabilities: ${capabilities}`);
  await shot('loaded');
  console.log(`ok the default model downloads (${seen.size} progress values) and loads; capabilities listed`);

  // 2. Greedy, short answers (a test on SwiftShader), then a question with a streamed answer and its stats.
  await settings({ temperature: 0, 'max-tokens': 24 });
  await ask('What is 2 + 2?');
  await lastAnswer().locator('[data-testid="stats"]').waitFor({ timeout: 180_000 });
  const answer = await lastAnswer().locator('.body').innerText();
  const stats = await lastAnswer().locator('[data-testid="stats"]').innerText();
  check(/4/.test(answer), `answer: ${answer}`);
  check(/(webgpu|wasm) · first token [\d.]+ s · [\d.]+ tok\/s/.test(stats), `stats: ${stats}`);
  await shot('answer');
  console.log(`ok a streamed answer with its stats: ${JSON.stringify(answer)} (${stats})`);

  // 3. Stop an answer.
  await settings({ 'max-tokens': 400 });
  await ask('Write a long story about a dragon who learns to cook.');
  await page.waitForFunction(() => {
    const answers = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    return answers[answers.length - 1].querySelector('.body').innerText.trim().length > 20;
  }, null, { timeout: 180_000 });
  await page.click('[data-testid="stop"]');
  await lastAnswer().locator('[data-testid="stats"]').waitFor();
  const stopped = await lastAnswer().locator('[data-testid="stats"]').innerText();
  check(/stopped/.test(stopped), `after stop: ${stopped}`);
  check(await page.locator('[data-testid="send"]').isVisible(), 'the send button did not come back');
  await shot('stopped');
  console.log(`ok an answer stopped part-way (${stopped})`);

  // 4. Reload: the conversation is still there.
  await page.reload();
  await page.locator('[data-testid="conversation"]').first().waitFor();
  await page.locator('[data-testid="conversation"]').first().click();
  const kept = await page.locator('[data-testid="messages"]').innerText();
  check(kept.includes('What is 2 + 2?') && kept.includes('dragon'), `after reload: ${kept.slice(0, 200)}`);
  await shot('reloaded');
  console.log('ok after a reload the conversation is kept (IndexedDB)');

  // 5. Edit and resend the first question.
  await page.locator('[data-testid="edit"]').first().click();
  check((await page.inputValue('[data-testid="prompt"]')) === 'What is 2 + 2?', 'edit did not fill the composer');
  check(await messages().count() === 0, 'edit did not go back to before the message');
  await page.fill('[data-testid="prompt"]', 'What is 3 + 3?');

  // 6. Hosted only: the answer is labelled with the router's provider.
  await settings({ mode: 'hosted-only', 'max-tokens': 24 });
  await waitForBackend(/^hosted$/);
  await page.click('[data-testid="send"]');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="stats"]').length >= 1, null, { timeout: 60_000 });
  const hostedStats = await lastAnswer().locator('[data-testid="stats"]').innerText();
  check(/hosted · local-engine/.test(hostedStats), `hosted stats: ${hostedStats}`);
  check(/\$\d/.test(hostedStats), `no cost: ${hostedStats}`);
  check(await page.locator('#progress-box').isHidden(), 'a progress bar is left over from the local model');
  await shot('hosted');
  console.log(`ok edit-and-resend, hosted only: ${JSON.stringify(await lastAnswer().locator('.body').innerText())} (${hostedStats})`);

  // 7. Dark theme and a phone-sized screen.
  await page.click('[data-testid="theme"]');
  await page.setViewportSize({ width: 390, height: 844 });
  // The conversation list slides away (a 0.15 s transition); a busy machine may take longer to
  // settle, so wait for the layout itself rather than a fixed time.
  check(await settles(() => document.getElementById('sidebar').getBoundingClientRect().right <= 0),
    'the conversation list covers the chat');
  await shot('phone-dark');
  await page.click('#toggle-sidebar');
  check(await settles(() => document.getElementById('sidebar').getBoundingClientRect().left >= 0),
    'the conversation list does not open');
  await shot('phone-conversations');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  check(!overflow, 'the page is wider than a phone screen');
  console.log('ok dark theme and a phone-sized screen');
} catch (e) {
  failed = true;
  console.error(`FAILED the chat page walk: ${e.stack ?? e}`);
  await page.screenshot({ path: join(shots, 'failure.png') }).catch(() => {});
} finally {
  await browser.close();
  await server.close();
  await router.close();
}
console.log(`screenshots in ${shots}`);
if (failed) process.exit(1);
