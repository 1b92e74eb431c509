// Serves the built router worker (worker/build) on workerd like `wrangler dev`, but through
// wrangler's programmatic API with the DevTools inspector off: `wrangler dev` always attaches an
// inspector with the Network domain enabled, and wrangler's inspector proxy relays every runtime
// message (one per subrequest event) to wrangler's Node process, which costs CPU per request that
// a deployed worker does not pay. Used by scripts/bench-router for its "bare" path.
//
//   node scripts/bench_router_dev.mjs PORT PERSIST_DIR ROUTER_CONFIG_JSON
//
// Prints "ready on URL" once serving; stops on SIGTERM/SIGINT.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { unstable_startWorker } = createRequire(path.join(root, "worker/package.json"))("wrangler");

const [port, persist, routerConfig] = process.argv.slice(2);
if (!port || !persist || !routerConfig) {
  console.error("usage: node scripts/bench_router_dev.mjs PORT PERSIST_DIR ROUTER_CONFIG_JSON");
  process.exit(2);
}
const worker = await unstable_startWorker({
  config: path.join(root, "worker/wrangler.toml"),
  bindings: { ROUTER_CONFIG: { type: "plain_text", value: routerConfig } },
  dev: {
    inspector: false,
    persist,
    server: { hostname: "127.0.0.1", port: Number(port) },
    watch: false,
    liveReload: false,
    logLevel: "warn",
  },
});
await worker.ready;
console.log(`ready on ${await worker.url}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, async () => {
    await worker.dispose().catch(() => {});
    process.exit(0);
  });
}
