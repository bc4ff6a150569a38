"""The chat page served at ``/``: one static HTML file with its script, no build step.

It keeps the conversation in the page, sends it to ``/v1/chat/completions``
with ``"stream": true``, and appends each server-sent event's text to the
reply as it arrives (``fetch`` and a stream reader: the browser's
``EventSource`` cannot POST). ``__MODEL__`` is replaced by the model's name.
"""

CHAT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tinygrad-llm chat</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.2rem; }
  #log { border: 1px solid #ccc; border-radius: 6px; padding: 0.5rem 1rem; min-height: 12rem; }
  .turn { margin: 0.6rem 0; white-space: pre-wrap; }
  .user b { color: #0a5; } .assistant b { color: #05a; } .error { color: #b00; }
  form { display: flex; gap: 0.5rem; margin-top: 0.8rem; }
  #message { flex: 1; padding: 0.5rem; font: inherit; }
  details { margin-top: 0.8rem; font-size: 0.9rem; }
</style>
</head>
<body>
<h1>Chat with <span id="model"></span></h1>
<div id="log"></div>
<form id="form">
  <input id="message" autocomplete="off" placeholder="Type a message and press Enter" autofocus>
  <button id="send" type="submit">Send</button>
  <button id="reset" type="button">Reset</button>
</form>
<details>
  <summary>Settings</summary>
  <label>System message <input id="system" size="40"></label><br>
  <label>Temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0"></label>
  <label>Max tokens <input id="max_tokens" type="number" min="1" placeholder="as many as fit"></label>
  <label>Seed <input id="seed" type="number" placeholder="random"></label><br>
  <label>API key <input id="key" type="password" size="30"></label>
</details>
<script>
const MODEL = __MODEL__;
document.getElementById("model").textContent = MODEL;
const log = document.getElementById("log");
let history = [];

function addTurn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  const who = document.createElement("b");
  who.textContent = role + ": ";
  const body = document.createElement("span");
  body.textContent = text;
  div.append(who, body);
  log.append(div);
  return body;
}

async function send(text) {
  history.push({role: "user", content: text});
  addTurn("user", text);
  const reply = addTurn("assistant", "");
  const system = document.getElementById("system").value.trim();
  const messages = system ? [{role: "system", content: system}, ...history] : history;
  const headers = {"Content-Type": "application/json"};
  const key = document.getElementById("key").value;
  if (key) headers["Authorization"] = "Bearer " + key;
  const body = {model: MODEL, messages, stream: true,
                temperature: Number(document.getElementById("temperature").value)};
  const limit = document.getElementById("max_tokens").value;
  if (limit) body.max_tokens = Number(limit);
  const seed = document.getElementById("seed").value;
  if (seed !== "") body.seed = Number(seed);
  const response = await fetch("/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
  if (!response.ok) {
    const problem = await response.json().catch(() => ({error: {message: response.statusText}}));
    reply.textContent = problem.error.message;
    reply.parentElement.classList.add("error");
    history.pop();
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const chunk = JSON.parse(event.slice(6));
      const delta = chunk.choices.length ? chunk.choices[0].delta : {};
      if (delta.content) reply.textContent += delta.content;
    }
  }
  history.push({role: "assistant", content: reply.textContent});
}

document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("message");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  document.getElementById("send").disabled = true;
  try { await send(text); } finally { document.getElementById("send").disabled = false; input.focus(); }
});
document.getElementById("reset").addEventListener("click", () => { history = []; log.textContent = ""; });
</script>
</body>
</html>
"""
