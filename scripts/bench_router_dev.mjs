// Serves the built router worker (worker/build) on workerd like `wrangler dev`, but through
// wrangler's programmatic API with the DevTools inspector off: `wrangler dev` always attaches an
// inspector with the Network domain enabled, and wrangler's inspector proxy relays every runtime
// message (one per subrequest event) to wrangler's Node process, which costs CPU per request that
// a deployed worker does not pay. Used by scripts/bench-router for its "bare" paths, and with
// --passthrough for its floor: scripts/bench_router_passthrough.js on the same workerd.
//
//   node scripts/bench_router_dev.mjs PORT PERSIST_DIR ROUTER_CONFIG_JSON
//   node scripts/bench_router_dev.mjs --passthrough PORT UPSTREAM_BASE_URL
//
// Prints "ready on URL" once serving; stops on SIGTERM/SIGINT.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { unstable_startWorker } = createRequire(path.join(root, "worker/package.json"))("wrangler");

const args = process.argv.slice(2);
const passthrough = args[0] === "--passthrough";
const [port, second, third] = passthrough ? args.slice(1) : args;
if (!port || !second || (!passthrough && !third)) {
  console.error(
    "usage: node scripts/bench_router_dev.mjs PORT PERSIST_DIR ROUTER_CONFIG_JSON\n" +
      "       node scripts/bench_router_dev.mjs --passthrough PORT UPSTREAM_BASE_URL",
  );
  process.exit(2);
}
const dev = {
  inspector: false,
  server: { hostname: "127.0.0.1", port: Number(port) },
  watch: false,
  liveReload: false,
  logLevel: "warn",
};
const options = passthrough
  ? {
      // Its own config file: without one, wrangler would look for a wrangler.toml upwards.
      config: path.join(root, "scripts/bench_router_passthrough.toml"),
      bindings: { UPSTREAM: { type: "plain_text", value: second } },
      // It keeps no state; miniflare's cache files go under target/, not next to the config.
      dev: { ...dev, persist: path.join(root, "target/bench-router/state-passthrough") },
    }
  : {
      config: path.join(root, "worker/wrangler.toml"),
      bindings: { ROUTER_CONFIG: { type: "plain_text", value: third } },
      dev: { ...dev, persist: second },
    };
const worker = await unstable_startWorker(options);
await worker.ready;
console.log(`ready on ${await worker.url}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    await worker.dispose().catch(() => {});
    process.exit(0);
  });
}
