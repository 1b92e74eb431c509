// Drives the router worker with the official OpenAI Node client (used by tests/e2e_workerd.rs):
// one streamed answer and one plain completion. Prints what the client saw as JSON.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.TOKEN, maxRetries: 0 });
const model = process.env.MODEL;
const prompt = process.env.PROMPT;

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: prompt }],
  stream: true,
  stream_options: { include_usage: true },
});
let streamText = "";
let finishReason = null;
let usage = null;
const providers = [];
for await (const chunk of stream) {
  if (chunk.edgechat?.event === "restart") streamText = "";
  const choice = chunk.choices[0];
  if (choice?.delta?.content) {
    streamText += choice.delta.content;
    if (providers.at(-1) !== chunk.provider) providers.push(chunk.provider);
  }
  if (choice?.finish_reason) finishReason = choice.finish_reason;
  if (chunk.usage) usage = chunk.usage;
}

const completion = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: prompt.replace(/\[t:([^\]]*)\]/, "[t:$1-2]") }],
});

if (!completion.choices) {
  console.error("unexpected completion:", JSON.stringify(completion));
  process.exit(1);
}
console.log(JSON.stringify({
  stream_text: streamText,
  finish_reason: finishReason,
  providers,
  usage,
  completion_text: completion.choices[0].message.content,
}));
