// Minimal static file server for browser tests and benchmarks.
// Node's `http` only. Streams files (models can be several GB), supports
// Range requests (wllama and fetch-based loaders use them) and, optionally,
// the cross-origin isolation headers that SharedArrayBuffer / wasm threads need.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json; charset=utf-8',
  '.gguf': 'application/octet-stream',
  '.css': 'text/css; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

// Map a URL path onto a file using the longest matching mount prefix.
// Returns null when nothing matches or the path tries to escape.
function resolve(mounts, urlPath) {
  let decoded;
  try { decoded = decodeURIComponent(urlPath); } catch { return null; }
  if (decoded.includes('\0')) return null;
  const prefixes = Object.keys(mounts).sort((a, b) => b.length - a.length);
  for (const prefix of prefixes) {
    if (!decoded.startsWith(prefix)) continue;
    const rest = decoded.slice(prefix.length);
    // Reject any `..` segment outright rather than normalising it away.
    if (rest.split(/[\\/]/).includes('..')) return null;
    const root = path.resolve(mounts[prefix]);
    const file = path.resolve(root, '.' + path.sep + rest);
    if (file !== root && !file.startsWith(root + path.sep)) return null;
    return file;
  }
  return null;
}

// Parse a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
// Returns {start,end}, 'invalid' (unsatisfiable) or null (ignore header).
function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null; // multi-range etc.: send whole file
  let start, end;
  if (m[1] === '') { // suffix range: last n bytes
    const n = Number(m[2]);
    if (n === 0) return 'invalid';
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return 'invalid';
  return { start, end };
}

// `hold: { prefix, until }`: requests under `prefix` wait for the promise `until` (a slow network).
// `cors`: any origin may fetch (as from a model host such as Hugging Face), Range included.
// Options for tests: `log` (an array) records each request's path and Range header; under a
// `flaky.prefix` path, the first response to each distinct request is cut off after
// `flaky.cutAfter` bytes (a dropped connection, for resumable downloads); under a `stall.prefix`
// path, the first request to each distinct Range from byte 0 gets no answer at all (a server that
// stops answering: the client must give up on it).
export async function startServer({ mounts, isolation = true, port = 0, log = null, flaky = null, cors = false, hold = null, stall = null } = {}) {
  if (!mounts || typeof mounts !== 'object') throw new Error('startServer: mounts required');
  const cutOnce = new Set();
  const stalledOnce = new Set();

  const server = http.createServer((req, res) => {
    log?.push({ method: req.method, path: new URL(req.url, 'http://x').pathname, range: req.headers.range ?? null });
    const headers = { 'Accept-Ranges': 'bytes', 'Cache-Control': 'no-store' };
    if (isolation) {
      headers['Cross-Origin-Opener-Policy'] = 'same-origin';
      headers['Cross-Origin-Embedder-Policy'] = 'require-corp';
      headers['Cross-Origin-Resource-Policy'] = cors ? 'cross-origin' : 'same-origin';
    }
    if (cors) {
      headers['Access-Control-Allow-Origin'] = '*';
      headers['Access-Control-Allow-Headers'] = 'Range';
      headers['Access-Control-Expose-Headers'] = 'Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified';
      if (req.method === 'OPTIONS') {
        res.writeHead(204, { ...headers, 'Access-Control-Allow-Methods': 'GET, HEAD' });
        return res.end();
      }
    }
    const fail = (code, msg) => {
      res.writeHead(code, { ...headers, 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(req.method === 'HEAD' ? undefined : msg + '\n');
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, 'method not allowed');

    const urlPath = new URL(req.url, 'http://x').pathname;
    if (stall && urlPath.startsWith(stall.prefix) && /^bytes=0-/.test(req.headers.range ?? '')) {
      const key = `${urlPath} ${req.headers.range}`;
      if (!stalledOnce.has(key)) {
        stalledOnce.add(key);
        return; // held open, never answered
      }
    }
    if (hold && urlPath.startsWith(hold.prefix)) hold.until.then(() => serveFile(urlPath));
    else serveFile(urlPath);

    function serveFile(urlPath) {
      let file = resolve(mounts, urlPath);
      if (!file) return fail(urlPath.includes('..') ? 403 : 404, 'not found');

      fs.stat(file, (err, st) => {
        if (!err && st.isDirectory()) {
          file = path.join(file, 'index.html');
          return fs.stat(file, (err2, st2) => send(err2, st2));
        }
        send(err, st);
      });

      function send(err, st) {
        if (err || !st.isFile()) return fail(404, 'not found');
        const size = st.size;
        headers['Content-Type'] = TYPES[path.extname(file).toLowerCase()] || 'application/octet-stream';
        headers['Last-Modified'] = st.mtime.toUTCString();

        let status = 200, start = 0, end = size - 1;
        if (req.headers.range) {
          const r = parseRange(req.headers.range, size);
          if (r === 'invalid') {
            res.writeHead(416, { ...headers, 'Content-Range': `bytes */${size}`, 'Content-Length': 0 });
            return res.end();
          }
          if (r) {
            status = 206; start = r.start; end = r.end;
            headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
          }
        }
        headers['Content-Length'] = size === 0 ? 0 : end - start + 1;
        res.writeHead(status, headers);
        if (req.method === 'HEAD' || size === 0) return res.end();
        const key = `${urlPath} ${req.headers.range ?? ''}`;
        const cut = flaky && urlPath.startsWith(flaky.prefix) && !cutOnce.has(key) && end - start + 1 > flaky.cutAfter;
        if (cut) cutOnce.add(key);
        const stream = fs.createReadStream(file, { start, end: cut ? start + flaky.cutAfter - 1 : end });
        if (cut) stream.on('end', () => res.destroy());
        stream.on('error', () => res.destroy());
        res.on('close', () => stream.destroy()); // client went away: stop reading
        stream.pipe(res, { end: !cut });
      }
    }
  });

  await new Promise((ok, ko) => {
    server.once('error', ko);
    server.listen(port, '127.0.0.1', ok);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    server,
    close: () => new Promise((ok) => {
      server.closeAllConnections?.();
      server.close(() => ok());
    }),
  };
}

// `node server.mjs [port]`: serve the repo for manual poking.
if (import.meta.url === `file://${process.argv[1]}`) {
  const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
  const { origin } = await startServer({
    port: Number(process.argv[2] || 8080),
    mounts: {
      '/pkg/': path.join(repo, 'crate/npm/wasm'),
      '/models/': path.join(repo, 'models'),
      '/wllama/': path.join(repo, 'scripts/browser/node_modules/@wllama/wllama'),
      '/': path.join(repo, 'scripts/browser'),
    },
  });
  console.log(`serving on ${origin}`);
}
