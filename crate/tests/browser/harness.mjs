// What the browser test scripts share: named tests that report and count failures, checks, and
// the package's test page opened in a browser (or context).
import { pipeConsole } from '../../../scripts/browser/chromium.mjs';

let failures = 0;

/** Runs one named test; a failure is reported and counted, and the next test still runs. */
export async function test(name, body) {
  const started = Date.now();
  try {
    const detail = await body();
    console.log(`ok ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)${detail ? `: ${detail}` : ''}`);
  } catch (e) {
    failures += 1;
    console.error(`FAILED ${name}: ${e.stack ?? e}`);
  }
}

export const failed = () => failures;

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** crate/tests/browser/package.html (the package as window.edgechat) from `origin`. */
export async function openPackagePage(browserOrContext, origin, label) {
  const page = await browserOrContext.newPage();
  pipeConsole(page, `[${label}]`);
  await page.goto(`${origin}/package.html`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}
