// Load generator and report for scripts/bench-router (see there for what is measured and why).
//
//   node scripts/bench_router.mjs PLAN.json OUT_DIR
//
// PLAN.json: {"duration_s", "warmup_s", "concurrency": [..], "meta": {..}, "paths": [{name, label,
// url, headers, modes: ["json"|"stream"|"get"], cpu: {slot: [pid, ..]}}]}; the CPU slots are
// "server" (the router's workerd, the passthrough's, or LiteLLM), "dev proxy" (wrangler's proxy workerd), "node"
// (wrangler's Node processes: the workerd processes' parent) and "upstream".
// Each cell (path × mode × concurrency) runs closed-loop: C loops, each sending its next request
// as soon as the previous answer's body has been read in full, through a keep-alive pool of C
// connections (undici). Warm-up first, not recorded; then `duration_s` of recorded requests.
// Latency is send → last body byte; for streams also send → first body byte (TTFB). The CPU time
// each process on the path used during the recorded window (from /proc) is reported per
// request, which is less noisy than latency on a small shared machine.
// Writes OUT_DIR/router.json (raw) and OUT_DIR/router.md (tables), and prints the tables.
import { createRequire } from "node:module";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { performance } from "node:perf_hooks";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const { Pool } = createRequire(path.join(root, "worker/package.json"))("undici");

const [planPath, outDir] = process.argv.slice(2);
if (!planPath || !outDir) {
  console.error("usage: node scripts/bench_router.mjs PLAN.json OUT_DIR");
  process.exit(2);
}
const plan = JSON.parse(readFileSync(planPath, "utf8"));

const MESSAGES = [
  { role: "system", content: "You are a terse assistant." },
  { role: "user", content: "Say something short about foxes." },
];
const BODIES = {
  json: JSON.stringify({ model: "bench", messages: MESSAGES, max_tokens: 16 }),
  stream: JSON.stringify({ model: "bench", messages: MESSAGES, max_tokens: 16, stream: true }),
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const TICK_MS = 1000 / 100; // USER_HZ; 100 on Linux

function cpuTicks(pids) {
  let total = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      total += Number(fields[11]) + Number(fields[12]); // utime, stime
    } catch {
      // gone
    }
  }
  return total;
}

const SLOTS = ["server", "dev proxy", "node", "upstream"];

function cpuSnapshot(cpu) {
  const snap = {};
  for (const [slot, pids] of Object.entries(cpu ?? {})) snap[slot] = cpuTicks(pids);
  return snap;
}

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

function summary(values) {
  const s = Float64Array.from(values).sort();
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  const r = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  return {
    p50: r(percentile(s, 0.5)),
    p90: r(percentile(s, 0.9)),
    p99: r(percentile(s, 0.99)),
    // The tail past p99: a stall that hits under 1 % of requests (a periodic flush) shows here.
    p999: r(percentile(s, 0.999)),
    mean: r(mean),
    min: r(s[0] ?? null),
    max: r(s[s.length - 1] ?? null),
  };
}

function requestOptions(target, mode) {
  const url = new URL(target.url);
  const options = {
    path: url.pathname + url.search,
    method: mode === "get" ? "GET" : "POST",
    headers: { ...(target.headers ?? {}) },
  };
  if (mode !== "get") {
    options.body = BODIES[mode];
    options.headers["content-type"] = "application/json";
  }
  return options;
}

/** One request: [status, latency ms, ttfb ms, body text]. */
async function once(pool, options) {
  const start = performance.now();
  const { statusCode, body } = await pool.request(options);
  let ttfb = null;
  const parts = [];
  for await (const chunk of body) {
    if (ttfb === null) ttfb = performance.now() - start;
    parts.push(chunk);
  }
  const latency = performance.now() - start;
  return [statusCode, latency, ttfb ?? latency, Buffer.concat(parts).toString("utf8")];
}

async function cell(target, mode, concurrency) {
  const pool = new Pool(new URL(target.url).origin, {
    connections: concurrency,
    pipelining: 1,
    keepAliveTimeout: 60_000,
  });
  const options = requestOptions(target, mode);
  const latencies = [];
  const ttfbs = [];
  const errorSamples = new Map();
  let errors = 0;
  let recording = false;
  let stop = false;
  const loop = async () => {
    while (!stop) {
      let result;
      try {
        result = await once(pool, options);
      } catch (e) {
        result = [0, 0, 0, String(e?.code ?? e?.message ?? e)];
      }
      if (!recording) continue;
      const [status, latency, ttfb, text] = result;
      if (status >= 200 && status < 300) {
        latencies.push(latency);
        ttfbs.push(ttfb);
      } else {
        errors += 1;
        const key = `${status} ${text.slice(0, 160)}`;
        errorSamples.set(key, (errorSamples.get(key) ?? 0) + 1);
      }
    }
  };
  const loops = Array.from({ length: concurrency }, loop);
  await sleep(plan.warmup_s * 1000);
  const cpu0 = cpuSnapshot(target.cpu);
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  recording = true;
  await sleep(plan.duration_s * 1000);
  recording = false;
  const wall = (performance.now() - t0) / 1000;
  const cpu1 = cpuSnapshot(target.cpu);
  const client1 = process.cpuUsage(client0);
  stop = true;
  await Promise.all(loops);
  await pool.close();
  const ok = latencies.length;
  const perReq = (ms) => (ok ? Math.round((ms / ok) * 1000) / 1000 : null);
  const cpuMsPerReq = {};
  for (const slot of Object.keys(cpu0)) cpuMsPerReq[slot] = perReq((cpu1[slot] - cpu0[slot]) * TICK_MS);
  cpuMsPerReq.client = perReq((client1.user + client1.system) / 1000);
  return {
    path: target.name,
    mode,
    concurrency,
    duration_s: Math.round(wall * 1000) / 1000,
    requests: ok,
    errors,
    error_samples: Object.fromEntries(errorSamples),
    rps: Math.round((ok / wall) * 10) / 10,
    latency_ms: summary(latencies),
    ttfb_ms: mode === "stream" ? summary(ttfbs) : undefined,
    cpu_ms_per_request: cpuMsPerReq,
    client_cpu_pct: Math.round(((client1.user + client1.system) / 1e6 / wall) * 1000) / 10,
  };
}

/** One request per path and mode before measuring: answers must be 200 and carry the reply. */
async function check(target, mode) {
  const pool = new Pool(new URL(target.url).origin, { connections: 1 });
  try {
    const [status, , , text] = await once(pool, requestOptions(target, mode));
    const expected = mode === "get" ? /./ : mode === "stream" ? /" quick"[\s\S]*\[DONE\]/ : /quick brown fox/;
    if (status !== 200 || !expected.test(text)) {
      throw new Error(`${target.name} ${mode}: HTTP ${status}: ${text.slice(0, 400)}`);
    }
  } finally {
    await pool.close();
  }
}

// --- run ---------------------------------------------------------------------------------------
const cells = [];
for (const target of plan.paths) for (const mode of target.modes) await check(target, mode);
const total = plan.paths.reduce((n, t) => n + t.modes.length, 0) * plan.concurrency.length;
const started = performance.now();
for (const target of plan.paths) {
  for (const mode of target.modes) {
    for (const c of plan.concurrency) {
      const result = await cell(target, mode, c);
      cells.push(result);
      const l = result.latency_ms;
      console.error(
        `[${cells.length}/${total}] ${target.name} ${mode} c=${c}: ${result.rps} req/s, ` +
          `p50 ${l.p50} ms, p99 ${l.p99} ms, errors ${result.errors}, client CPU ${result.client_cpu_pct}%`,
      );
      await sleep(1000); // let background work (ledger writes, GC) settle between cells
    }
  }
}
const elapsed_s = Math.round((performance.now() - started) / 1000);

// --- report ------------------------------------------------------------------------------------
const find = (p, mode, c) => cells.find((x) => x.path === p && x.mode === mode && x.concurrency === c);
const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const added = (x, base) => (x === null || base === null || x === undefined ? null : x - base);

const lines = [];
lines.push(`# Router overhead (scripts/bench-router)`);
lines.push("");
lines.push(`- date: ${plan.meta?.date ?? new Date().toISOString()}; machine: ${plan.meta?.machine ?? "?"}`);
lines.push(`- versions: ${Object.entries(plan.meta?.versions ?? {}).map(([k, v]) => `${k} ${v}`).join(", ")}`);
lines.push(
  `- each cell: ${plan.warmup_s} s warm-up, then ${plan.duration_s} s recorded, closed loop, ` +
    `keep-alive (undici pool of C connections); latency = send → last body byte, in ms`,
);
lines.push(`- load average before: ${plan.meta?.loadavg_before ?? "?"}; after: ${readFileSync("/proc/loadavg", "utf8").trim()}`);
lines.push(`- measured in ${elapsed_s} s`);
lines.push("");
lines.push("Paths:");
for (const t of plan.paths) lines.push(`- **${t.name}**: ${t.label ?? ""}`);
lines.push("");

for (const mode of ["json", "stream", "get"]) {
  const paths = plan.paths.filter((t) => t.modes.includes(mode));
  if (paths.length === 0) continue;
  const title = { json: "Chat, non-streaming", stream: "Chat, streaming (SSE)", get: "GET (no upstream call)" }[mode];
  const ttfb = mode === "stream";
  lines.push(`## ${title}`);
  lines.push("");
  lines.push(
    `| path | C | req/s | p50 | p99 | p99.9 | added p50 | added p99 |${ttfb ? " TTFB p50 | TTFB p99 |" : ""} errors | CPU ms/req: ${SLOTS.join(" / ")} / client |`,
  );
  lines.push(`|---|--:|--:|--:|--:|--:|--:|--:|${ttfb ? "--:|--:|" : ""}--:|---|`);
  for (const t of paths) {
    for (const c of plan.concurrency) {
      const x = find(t.name, mode, c);
      const base = find("direct", mode === "get" ? "json" : mode, c);
      const isBase = t.name === "direct" || mode === "get";
      const cpu = [...SLOTS, "client"].map((k) => fmt(x.cpu_ms_per_request[k], 2)).join(" / ");
      lines.push(
        `| ${t.name} | ${c} | ${fmt(x.rps, 0)} | ${fmt(x.latency_ms.p50)} | ${fmt(x.latency_ms.p99)} | ${fmt(x.latency_ms.p999)} | ` +
          `${isBase ? "–" : fmt(added(x.latency_ms.p50, base?.latency_ms.p50))} | ` +
          `${isBase ? "–" : fmt(added(x.latency_ms.p99, base?.latency_ms.p99))} |` +
          `${ttfb ? ` ${fmt(x.ttfb_ms.p50)} | ${fmt(x.ttfb_ms.p99)} |` : ""} ${x.errors} | ${cpu} |`,
      );
    }
  }
  lines.push("");
}

// Against the project's goals: added latency at C=1 (no queueing), throughput at the top C.
const top = Math.max(...plan.concurrency);
const goals = [];
const routers = plan.paths.map((t) => t.name).filter((n) => n.startsWith("edgechat"));
for (const p of routers) {
  for (const mode of ["json", "stream"]) {
    const x = find(p, mode, 1);
    const base = find("direct", mode, 1);
    if (!x || !base) continue;
    const a50 = added(x.latency_ms.p50, base.latency_ms.p50);
    const a99 = added(x.latency_ms.p99, base.latency_ms.p99);
    goals.push(
      `- ${p} ${mode}, C=1: added p50 ${fmt(a50)} ms (goal ≤ 1: ${a50 <= 1 ? "met" : "NOT met"}), ` +
        `added p99 ${fmt(a99)} ms (goal ≤ 5: ${a99 <= 5 ? "met" : "NOT met"})`,
    );
  }
}
// What workerd itself adds to one proxied request (the passthrough worker), and the routers'
// latency beyond it: the part the router's own code can shorten. Only the paths on their own
// workerd socket compare: `edgechat` also crosses wrangler's dev proxy.
const floorLines = [];
for (const mode of ["json", "stream"]) {
  const floor = find("passthrough-js", mode, 1);
  const base = find("direct", mode, 1);
  if (!floor || !base) continue;
  const floor50 = added(floor.latency_ms.p50, base.latency_ms.p50);
  const beyond = routers
    .filter((p) => p !== "edgechat")
    .map((p) => [p, find(p, mode, 1)])
    .filter(([, x]) => x)
    .map(([p, x]) => `${p} ${fmt(added(x.latency_ms.p50, floor.latency_ms.p50))}`);
  floorLines.push(
    `- passthrough-js ${mode}, C=1: workerd adds p50 ${fmt(floor50)} ms, ` +
      `p99 ${fmt(added(floor.latency_ms.p99, base.latency_ms.p99))} ms; ` +
      `router p50 beyond the floor, ms: ${beyond.join(", ")}`,
  );
}
const ratios = {};
for (const p of routers) {
  for (const mode of ["json", "stream"]) {
    const x = find(p, mode, top);
    const l = find("litellm", mode, top);
    if (!x || !l || !l.rps) continue;
    const ratio = x.rps / l.rps;
    ratios[`${p}/${mode}`] = Math.round(ratio * 100) / 100;
    goals.push(
      `- ${p} ${mode}, C=${top}: ${fmt(x.rps, 0)} req/s vs LiteLLM ${fmt(l.rps, 0)} req/s = ` +
        `${fmt(ratio)}× (goal ≥ 5×: ${ratio >= 5 ? "met" : "NOT met"})`,
    );
  }
}
const anchor = find("direct", "json", top);
const fastest = Math.max(...cells.filter((x) => x.path !== "direct" && x.mode !== "get").map((x) => x.rps));
if (anchor && Number.isFinite(fastest)) {
  goals.push(
    `- load generator headroom: direct reached ${fmt(anchor.rps, 0)} req/s at C=${top}, ` +
      `${fmt(anchor.rps / fastest, 0)}× the fastest proxied cell (${fmt(fastest, 0)} req/s)`,
  );
}
if (goals.length) {
  lines.push("## Against the goals (added p50 ≤ 1 ms, added p99 ≤ 5 ms, throughput ≥ 5× LiteLLM)");
  lines.push("");
  lines.push(...goals);
  lines.push("");
}
if (floorLines.length) {
  lines.push("## The floor: workerd alone (passthrough-js), and the routers beyond it");
  lines.push("");
  lines.push(...floorLines);
  lines.push("");
}
const markdown = lines.join("\n");

mkdirSync(outDir, { recursive: true });
writeFileSync(path.join(outDir, "router.md"), markdown);
writeFileSync(
  path.join(outDir, "router.json"),
  JSON.stringify(
    {
      meta: { ...plan.meta, loadavg_after: readFileSync("/proc/loadavg", "utf8").trim(), elapsed_s },
      duration_s: plan.duration_s,
      warmup_s: plan.warmup_s,
      paths: plan.paths.map(({ headers, cpu, ...t }) => ({ ...t, cpu_pids: cpu })),
      throughput_ratio_vs_litellm: ratios,
      cells,
    },
    null,
    2,
  ),
);
console.log(markdown);
