// Headless Debian Chromium via playwright-core (no bundled browser download).
// WebGPU runs on SwiftShader (a CPU Vulkan implementation) because the
// machines have no GPU; the flags below are what Chromium needs to expose it.
import { chromium } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

const BASE_ARGS = [
  '--no-sandbox',                     // we run as root in a container
  '--disable-background-networking',  // no internet: avoid stalls/noise
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

const WEBGPU_ARGS = [
  '--enable-unsafe-webgpu',           // WebGPU on Linux is behind this flag
  '--enable-unsafe-swiftshader',      // allow the software adapter
  '--use-webgpu-adapter=swiftshader',
  '--enable-features=Vulkan',
];

export async function launchChromium({ webgpu = true } = {}) {
  const args = webgpu ? [...BASE_ARGS, ...WEBGPU_ARGS] : BASE_ARGS;
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args });
}

// A browser with a profile on disk (a temporary one here), as a user's: an ordinary context is
// off the record, and its Origin Private File System lives in memory with a small quota.
export async function launchPersistentChromium(userDataDir, { webgpu = true } = {}) {
  const args = webgpu ? [...BASE_ARGS, ...WEBGPU_ARGS] : BASE_ARGS;
  return chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM_PATH, headless: true, args });
}

// Forward the page's console and uncaught errors to the Node console.
export function pipeConsole(page, prefix = '[page]') {
  page.on('console', (msg) => {
    const type = msg.type();
    const line = `${prefix} ${type === 'log' ? '' : type + ': '}${msg.text()}`;
    if (type === 'error' || type === 'warning') console.error(line);
    else console.log(line);
  });
  page.on('pageerror', (err) => console.error(`${prefix} pageerror: ${err.stack || err}`));
  page.on('crash', () => console.error(`${prefix} page crashed`));
}
