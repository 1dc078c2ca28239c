// Drives semgate with the official openai npm client: non-streaming and
// streaming, miss then hit, and checks the text is identical. Prints one
// JSON line with what it saw; exits non-zero on any mismatch.
import OpenAI from "openai";

const base = process.env.SEMGATE_URL;
if (!base) {
  console.error("SEMGATE_URL is not set");
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "sk-compat-test", maxRetries: 0 });
const model = "mock-1";
const out = {};
const fail = (msg) => {
  console.log(JSON.stringify(out));
  console.error(msg);
  process.exit(1);
};

async function plain(question) {
  const { data, response } = await client.chat.completions
    .create({ model, messages: [{ role: "user", content: question }] })
    .withResponse();
  return { text: data.choices[0].message.content, cache: response.headers.get("x-semgate-cache") };
}

async function streamed(question) {
  const { data: stream, response } = await client.chat.completions
    .create({ model, stream: true, stream_options: { include_usage: true },
              messages: [{ role: "user", content: question }] })
    .withResponse();
  let text = "";
  let chunks = 0;
  let usage = null;
  for await (const chunk of stream) {
    chunks++;
    for (const c of chunk.choices) text += c.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, chunks, usage, cache: response.headers.get("x-semgate-cache") };
}

const tag = process.env.COMPAT_TAG ?? String(Date.now());
const q1 = `compat plain ${tag}`;
const q2 = `compat stream ${tag}`;
out.plainMiss = await plain(q1);
out.plainHit = await plain(q1);
out.streamMiss = await streamed(q2);
out.streamHit = await streamed(q2);
out.crossHit = await plain(q2);

if (out.plainMiss.cache !== "miss" || out.plainHit.cache !== "hit-exact") fail("plain: expected miss then hit-exact");
if (out.plainMiss.text !== out.plainHit.text || !out.plainMiss.text) fail("plain: texts differ");
if (out.streamMiss.cache !== "miss" || out.streamHit.cache !== "hit-exact") fail("stream: expected miss then hit-exact");
if (out.streamMiss.text !== out.streamHit.text || !out.streamMiss.text) fail("stream: texts differ");
if (out.streamHit.chunks < 3) fail("stream: hit was not replayed as several chunks");
if (!out.streamHit.usage || out.streamHit.usage.total_tokens !== out.streamMiss.usage?.total_tokens) fail("stream: usage differs");
if (out.crossHit.cache !== "hit-exact" || out.crossHit.text !== out.streamMiss.text) fail("cross: plain request did not hit the streamed answer");
console.log(JSON.stringify(out));
