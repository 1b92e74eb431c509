// Drives `edgechat serve` with the official OpenAI Node client.
// Usage: node stream.mjs <baseURL>   (baseURL like http://127.0.0.1:8080/v1)
// Prints one JSON object: what a streamed and a non-streamed chat completion returned.
import OpenAI from "openai";

const baseURL = process.argv[2];
if (!baseURL) {
  console.error("usage: node stream.mjs <baseURL>");
  process.exit(2);
}
const client = new OpenAI({ baseURL, apiKey: "not-needed", maxRetries: 0, timeout: 120_000 });

// A system message as in OpenAI's examples; without one SmolLM2's template inserts its own
// default system prompt, after which the 135M model wanders off at temperature 0. Not "What is
// the capital of France?": its first answer token is a near-tie that float rounding decides.
const messages = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "Name the capital of France." },
];

const stream = await client.chat.completions.create({
  model: "edgechat",
  messages,
  temperature: 0,
  max_tokens: 32,
  stream: true,
  stream_options: { include_usage: true },
});
let streamText = "";
let streamFinishReason = null;
let firstRole = null;
let chunks = 0;
let usage = null;
for await (const chunk of stream) {
  chunks += 1;
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices[0];
  if (!choice) continue;
  if (chunks === 1) firstRole = choice.delta?.role ?? null;
  streamText += choice.delta?.content ?? "";
  if (choice.finish_reason) streamFinishReason = choice.finish_reason;
}

const completion = await client.chat.completions.create({
  model: "edgechat",
  messages,
  temperature: 0,
  max_tokens: 32,
});

const models = await client.models.list();

console.log(
  JSON.stringify({
    stream_text: streamText,
    stream_finish_reason: streamFinishReason,
    stream_first_role: firstRole,
    stream_chunks: chunks,
    stream_usage: usage,
    text: completion.choices[0].message.content,
    finish_reason: completion.choices[0].finish_reason,
    id: completion.id,
    usage: completion.usage,
    models: models.data.map((m) => m.id),
  }),
);
