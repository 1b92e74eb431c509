// The floor for scripts/bench-router's "passthrough-js" path: the least a Worker can do to proxy
// a chat request. It forwards the request body to the upstream and returns the upstream's
// response as it is, both bodies piped by workerd without passing through JavaScript. What this
// adds to a direct call is workerd's own cost for one proxied request on this machine; the
// router's added latency is read against it. (The router always asks the upstream for a stream
// with usage; this forwards the caller's body, so in JSON mode it relays one JSON reply.)
export default {
  async fetch(request, env) {
    const { pathname } = new URL(request.url);
    if (pathname === "/health") return Response.json({ status: "ok" });
    return fetch(`${env.UPSTREAM}${pathname.replace(/^\/v1/, "")}`, {
      method: request.method,
      headers: { "content-type": "application/json", accept: "text/event-stream" },
      body: request.body,
    });
  },
};
