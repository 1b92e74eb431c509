// A fast fake OpenAI-compatible upstream for scripts/bench-router: POST /v1/chat/completions
// answers a short fixed reply at once (no artificial delay), as SSE chat.completion.chunk events
// when the body asks for `stream: true` (role chunk, 8 content chunks, finish chunk, usage chunk,
// [DONE]), as one chat.completion JSON otherwise. GET /health answers "ok". Keep-alive on.
//
//   node scripts/bench_router_upstream.mjs PORT
import http from "node:http";

const port = Number(process.argv[2] ?? 0);
const PIECES = ["The", " quick", " brown", " fox", " jumps", " over", " the", " dog."];
const USAGE = { prompt_tokens: 12, completion_tokens: PIECES.length, total_tokens: 12 + PIECES.length };
const CREATED = Math.floor(Date.now() / 1000);
let served = 0;

function chunk(id, model, delta, finish, usage) {
  const body = {
    id,
    object: "chat.completion.chunk",
    created: CREATED,
    model,
    choices: delta === null ? [] : [{ index: 0, delta, finish_reason: finish }],
  };
  if (usage) body.usage = usage;
  return `data: ${JSON.stringify(body)}\n\n`;
}

function sse(id, model, includeUsage) {
  let out = chunk(id, model, { role: "assistant", content: "" }, null);
  for (const piece of PIECES) out += chunk(id, model, { content: piece }, null);
  out += chunk(id, model, {}, "stop");
  if (includeUsage) out += chunk(id, model, null, null, USAGE);
  return out + "data: [DONE]\n\n";
}

function json(id, model) {
  return JSON.stringify({
    id,
    object: "chat.completion",
    created: CREATED,
    model,
    choices: [{ index: 0, message: { role: "assistant", content: PIECES.join("") }, finish_reason: "stop" }],
    usage: USAGE,
  });
}

const server = http.createServer((req, res) => {
  if (req.method === "GET" && (req.url === "/health" || req.url === "/v1/health")) {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  if (req.method !== "POST" || !req.url.endsWith("/chat/completions")) {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { message: `no route for ${req.method} ${req.url}` } }));
    return;
  }
  const parts = [];
  req.on("data", (d) => parts.push(d));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(parts).toString("utf8"));
    } catch {
      res.writeHead(400, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: "invalid JSON" } }));
      return;
    }
    served += 1;
    const id = `chatcmpl-fake${served}`;
    const model = typeof body.model === "string" ? body.model : "bench";
    if (body.stream === true) {
      const text = sse(id, model, body.stream_options?.include_usage === true);
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      res.end(text);
    } else {
      const text = json(id, model);
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
      res.end(text);
    }
  });
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    console.log(`served ${served} chat requests`);
    process.exit(0);
  });
}
