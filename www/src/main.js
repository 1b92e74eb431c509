// The chat page: picks and loads a model through the edgechat package (local WebGPU or wasm, the
// hosted router as fallback), streams answers, keeps conversations in IndexedDB.
import { createEngine } from 'edgechat';

import { renderMarkdown } from './markdown.js';
import { conversations, loadSettings, newConversation, saveSettings } from './store.js';
import './style.css';

const $ = (id) => document.getElementById(id);

// What the page is served with: `scripts/demo` writes demo-config.json (the bundled model, the
// local router and its demo token); without it the page starts empty.
const demo = await fetch('./demo-config.json').then((r) => (r.ok ? r.json() : {})).catch(() => ({}));

const MODELS = [
  { id: 'default', label: demo.defaultModel?.label ?? 'SmolLM2-135M-Instruct (bundled)', url: demo.defaultModel?.url ?? './models/smollm2-135m-instruct-q4_1.gguf' },
  { id: 'ministral', label: 'Ministral-8B-Instruct-2410 Q4_K_M (Hugging Face, 4.9 GB)', url: 'https://huggingface.co/bartowski/Ministral-8B-Instruct-2410-GGUF/resolve/main/Ministral-8B-Instruct-2410-Q4_K_M.gguf' },
  { id: 'url', label: 'Another GGUF URL…' },
  { id: 'file', label: 'A file on this computer…' },
];

let settings = loadSettings({
  routerUrl: demo.router?.url ?? '',
  routerToken: demo.router?.token ?? '',
  routerModel: demo.router?.model ?? '',
});
let engine = null;
let conversation = null;
let answering = null; // AbortController of the running answer
let droppedFile = null;
let loadGeneration = 0; // callbacks of a replaced engine are ignored

// ---------------------------------------------------------------------------------------------
// Small helpers.

function showError(error) {
  const box = $('error');
  if (!error) {
    box.hidden = true;
    return;
  }
  box.textContent = error.code ? `${error.message} (${error.code})` : (error.message ?? String(error));
  box.hidden = false;
}

const bytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`);
const seconds = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(0, Math.round(s))} s`);

const PHASES = {
  download: 'Downloading', verify: 'Checking', 'cache-read': 'Reading from the cache', 'file-read': 'Reading the file',
  'shader-compile': 'Preparing the GPU', 'gpu-upload': 'Uploading to the GPU', 'wasm-load': 'Loading into memory', ready: 'Ready',
};

// Progress with bytes, speed and time left (speed over the current phase).
function progressReporter() {
  let phase = null;
  let started = 0;
  return (p) => {
    const now = performance.now();
    if (p.phase !== phase) {
      phase = p.phase;
      started = now;
    }
    $('progress-box').hidden = false;
    $('progress').value = p.fraction ?? 0;
    $('progress').setAttribute('aria-valuenow', String(p.fraction ?? 0));
    let text = PHASES[p.phase] ?? p.phase;
    if (p.total) {
      const elapsed = (now - started) / 1000;
      const speed = elapsed > 0.2 ? p.loaded / elapsed : 0;
      text += ` ${bytes(p.loaded)} of ${bytes(p.total)}`;
      if (speed > 0 && p.loaded < p.total) text += ` · ${bytes(speed)}/s · ${seconds((p.total - p.loaded) / speed)} left`;
    }
    $('progress-text').textContent = text;
  };
}

function fallbackSettings() {
  if (!settings.routerUrl || !settings.routerToken || !settings.routerModel) return undefined;
  return {
    url: settings.routerUrl, token: settings.routerToken, model: settings.routerModel,
    policy: settings.policy || undefined, mode: settings.mode,
    minTokensPerSecond: Number(settings.minTokensPerSecond) || 0, answerWhileLoading: settings.mode === 'prefer-local',
  };
}

// ---------------------------------------------------------------------------------------------
// The model and the engine.

function fillModelPicker() {
  const select = $('model-select');
  select.replaceChildren(...MODELS.map((m) => new Option(m.label, m.id)));
  select.value = settings.model;
  select.onchange = () => {
    $('model-url').hidden = select.value !== 'url';
    $('model-file').hidden = select.value !== 'file';
  };
  $('model-url').value = settings.modelUrl;
  select.onchange();
}

function chosenModel() {
  const id = $('model-select').value;
  if (id === 'url') return $('model-url').value.trim() || null;
  if (id === 'file') return droppedFile ?? $('model-file').files[0] ?? null;
  return MODELS.find((m) => m.id === id).url;
}

async function loadEngine() {
  showError(null);
  const model = chosenModel();
  const fallback = fallbackSettings();
  if (!model && fallback?.mode !== 'hosted-only') {
    showError(new Error('Choose a model: a URL or a .gguf file.'));
    return;
  }
  settings = { ...settings, model: $('model-select').value, modelUrl: $('model-url').value };
  saveSettings(settings);
  $('load').disabled = true;
  const generation = ++loadGeneration;
  const current = () => generation === loadGeneration;
  engine?.terminate();
  engine = null;
  renderRoute(null);
  $('progress-box').hidden = true;
  $('progress-text').textContent = '';
  try {
    const report = progressReporter();
    const onProgress = (p) => current() && report(p);
    engine = await createEngine({ model: fallback?.mode === 'hosted-only' ? undefined : model, fallback, onProgress });
    renderRoute(engine.info());
    if (engine.info().loading) {
      // The hosted route answers until the local model has loaded.
      engine.localReady.then((info) => {
        if (!current()) return;
        renderRoute(info);
        renderCapabilities();
        $('progress-box').hidden = true;
        window.edgechatPage.loads += 1;
      }, (e) => current() && showError(e));
    } else {
      $('progress-box').hidden = true;
      window.edgechatPage.loads += 1;
    }
  } catch (e) {
    showError(e);
    $('progress-box').hidden = true;
  } finally {
    $('load').disabled = false;
  }
  renderCapabilities();
}

function renderRoute(info) {
  const badge = $('route-badge');
  if (!info) {
    badge.textContent = 'no model';
    badge.dataset.backend = '';
    return;
  }
  badge.textContent = `${info.backend} · ${info.model_name}${info.loading ? ' (the local model is loading)' : ''}`;
  badge.dataset.backend = info.backend;
  badge.title = info.reason;
}

async function renderCapabilities() {
  const rows = [];
  const add = (name, value) => rows.push([name, value]);
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  add('WebGPU', adapter ? 'available' : navigator.gpu ? 'no adapter' : 'not in this browser');
  if (adapter) {
    const info = adapter.info ?? {};
    add('Adapter', [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unnamed');
    add('shader-f16', adapter.features.has('shader-f16') ? 'yes' : 'no (f32 kernels)');
    add('subgroups', adapter.features.has('subgroups') ? 'yes' : 'no');
    add('Largest buffer', bytes(adapter.limits.maxBufferSize));
    add('Largest storage binding', bytes(adapter.limits.maxStorageBufferBindingSize));
  }
  const estimate = await navigator.storage?.estimate?.().catch(() => null);
  if (estimate) add('Storage', `${bytes(estimate.usage)} used of ${bytes(estimate.quota)}`);
  const info = engine?.info();
  if (info) {
    add('Engine', `${info.backend}: ${info.reason}`);
    if (info.model) add('Model', `${info.model.name ?? info.model_name} · ${(info.model.parameters / 1e9).toFixed(2)} B parameters · ${bytes(info.model.file_bytes)}`);
  }
  $('capability-list').replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement('dt');
    dt.textContent = k;
    const dd = document.createElement('dd');
    dd.textContent = v;
    return [dt, dd];
  }));
}

// ---------------------------------------------------------------------------------------------
// Conversations.

async function renderConversationList() {
  const list = $('conversations');
  const all = await conversations.list();
  list.replaceChildren(...all.map((c) => {
    const li = document.createElement('li');
    const open = document.createElement('button');
    open.className = 'conversation';
    open.textContent = c.title;
    open.dataset.testid = 'conversation';
    if (c.id === conversation?.id) open.setAttribute('aria-current', 'true');
    open.onclick = async () => {
      conversation = await conversations.get(c.id);
      renderMessages();
      renderConversationList();
      closeSidebarOnPhone();
    };
    const remove = document.createElement('button');
    remove.className = 'icon';
    remove.textContent = '✕';
    remove.setAttribute('aria-label', `Delete ${c.title}`);
    remove.onclick = async () => {
      await conversations.remove(c.id);
      if (conversation?.id === c.id) startConversation();
      renderConversationList();
    };
    li.append(open, remove);
    return li;
  }));
}

function startConversation() {
  conversation = newConversation();
  renderMessages();
}

function statsLine(stats) {
  if (!stats) return '';
  const parts = [stats.backend === 'hosted' ? `hosted · ${stats.providers?.join(' → ') || 'router'}` : stats.backend];
  if (stats.handoff) parts.push(`handed off: ${stats.handoff}`);
  if (stats.ttftMs != null) parts.push(`first token ${(stats.ttftMs / 1000).toFixed(2)} s`);
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats.completionTokens != null) parts.push(`${stats.completionTokens} tokens`);
  if (stats.costUsd) parts.push(`$${stats.costUsd.toFixed(6)}`);
  if (stats.stopped) parts.push('stopped');
  return parts.join(' · ');
}

function messageElement(message, index) {
  const article = document.createElement('article');
  article.className = `message ${message.role}`;
  article.dataset.testid = 'message';
  article.dataset.role = message.role;
  const body = document.createElement('div');
  body.className = 'body';
  if (message.role === 'assistant') body.innerHTML = renderMarkdown(message.content || '…');
  else body.textContent = message.content;
  article.append(body);
  if (message.role === 'assistant' && message.stats) {
    const stats = document.createElement('p');
    stats.className = 'stats';
    stats.dataset.testid = 'stats';
    stats.textContent = statsLine(message.stats);
    article.append(stats);
  }
  if (message.role === 'user') {
    const edit = document.createElement('button');
    edit.className = 'edit';
    edit.textContent = 'Edit';
    edit.dataset.testid = 'edit';
    edit.setAttribute('aria-label', 'Edit this message and resend');
    edit.onclick = () => {
      if (answering) return;
      // Edit and resend: the conversation goes back to before this message.
      $('prompt').value = message.content;
      conversation.messages = conversation.messages.slice(0, index);
      renderMessages();
      $('prompt').focus();
    };
    article.append(edit);
  }
  return article;
}

function renderMessages() {
  const box = $('messages');
  if (!conversation.messages.length) {
    box.innerHTML = '<p class="empty">Ask something. Drop a .gguf file anywhere to load it.</p>';
    return;
  }
  box.replaceChildren(...conversation.messages.map(messageElement));
  box.scrollTop = box.scrollHeight;
}

// ---------------------------------------------------------------------------------------------
// Asking.

async function send(text) {
  if (!engine) {
    showError(new Error('Load a model first (or choose the hosted route in Settings).'));
    return;
  }
  showError(null);
  conversation.messages.push({ role: 'user', content: text });
  if (conversation.title === 'New chat') conversation.title = text.slice(0, 48);
  const reply = { role: 'assistant', content: '', stats: null };
  conversation.messages.push(reply);
  renderMessages();
  const replyElement = $('messages').lastElementChild;
  const replyBody = replyElement.querySelector('.body');

  answering = new AbortController();
  setAnswering(true);
  const started = performance.now();
  const stats = { backend: engine.info()?.backend, providers: [] };
  let pending = false;
  const paint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      replyBody.innerHTML = renderMarkdown(reply.content || '…');
      $('messages').scrollTop = $('messages').scrollHeight;
    });
  };
  try {
    const messages = conversation.messages.slice(0, -1).map(({ role, content }) => ({ role, content }));
    const stream = await engine.chat.completions.create({
      messages, stream: true, signal: answering.signal,
      temperature: Number(settings.temperature), top_p: Number(settings.topP), max_tokens: Number(settings.maxTokens),
    });
    for await (const chunk of stream) {
      const label = chunk.edgechat;
      if (label?.event === 'handoff') stats.handoff = label.reason;
      if (label?.event === 'restart') {
        // The hosted route started its part over on another provider: the answer is `text` now.
        reply.content = label.text ?? '';
        stats.providers = [];
        paint();
      }
      if (label?.backend) stats.backend = label.backend;
      if (label?.provider && label.backend === 'hosted' && !stats.providers.includes(label.provider)) stats.providers.push(label.provider);
      const delta = chunk.choices[0]?.delta?.content;
      if (delta) {
        stats.ttftMs ??= performance.now() - started;
        reply.content += delta;
        paint();
      }
      if (chunk.usage) {
        stats.completionTokens = chunk.usage.completion_tokens;
        stats.costUsd = label?.cost_usd ?? 0;
        const local = label?.stats;
        const elapsed = (performance.now() - started - (stats.ttftMs ?? 0)) / 1000;
        stats.tokensPerSecond = local?.decode_tok_s || (elapsed > 0 ? (chunk.usage.completion_tokens - 1) / elapsed : 0);
        if (local?.time_to_first_token_ms && !stats.handoff && stats.backend !== 'hosted') stats.ttftMs = local.time_to_first_token_ms;
      }
    }
  } catch (e) {
    if (e.name === 'AbortError') stats.stopped = true;
    else showError(e);
  } finally {
    reply.stats = stats;
    answering = null;
    setAnswering(false);
    renderMessages();
    await conversations.put(conversation);
    renderConversationList();
  }
}

function setAnswering(on) {
  $('send').hidden = on;
  $('stop').hidden = !on;
  $('prompt').disabled = false;
}

// ---------------------------------------------------------------------------------------------
// Settings, theme, layout.

function openSettings() {
  const fields = {
    'router-url': 'routerUrl', 'router-token': 'routerToken', 'router-model': 'routerModel', policy: 'policy',
    mode: 'mode', 'min-speed': 'minTokensPerSecond', temperature: 'temperature', 'top-p': 'topP', 'max-tokens': 'maxTokens',
  };
  for (const [id, key] of Object.entries(fields)) $(id).value = settings[key];
  const dialog = $('settings');
  dialog.onclose = () => {
    if (dialog.returnValue !== 'save') return;
    for (const [id, key] of Object.entries(fields)) settings[key] = $(id).value;
    saveSettings(settings);
    loadEngine();
  };
  dialog.showModal();
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem('edgechat.theme', theme);
}

function closeSidebarOnPhone() {
  document.body.classList.remove('sidebar-open');
  $('toggle-sidebar').setAttribute('aria-expanded', 'false');
}

function wire() {
  $('load').onclick = loadEngine;
  $('new-chat').onclick = () => {
    startConversation();
    renderConversationList();
    closeSidebarOnPhone();
    $('prompt').focus();
  };
  $('composer').onsubmit = (event) => {
    event.preventDefault();
    const text = $('prompt').value.trim();
    if (!text || answering) return;
    $('prompt').value = '';
    send(text);
  };
  $('prompt').onkeydown = (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('composer').requestSubmit();
    }
  };
  $('stop').onclick = () => answering?.abort();
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && answering) answering.abort();
  });
  $('open-settings').onclick = openSettings;
  $('theme').onclick = () => applyTheme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark');
  $('toggle-sidebar').onclick = () => {
    const open = document.body.classList.toggle('sidebar-open');
    $('toggle-sidebar').setAttribute('aria-expanded', String(open));
  };
  // Drop a .gguf anywhere to load it.
  document.addEventListener('dragover', (event) => event.preventDefault());
  document.addEventListener('drop', (event) => {
    event.preventDefault();
    const file = [...(event.dataTransfer?.files ?? [])].find((f) => f.name.endsWith('.gguf'));
    if (!file) return;
    droppedFile = file;
    $('model-select').value = 'file';
    $('model-select').onchange();
    loadEngine();
  });
}

// For tests and curious users: how many loads have finished (the engine they gave is in use).
window.edgechatPage = { loads: 0 };
applyTheme(localStorage.getItem('edgechat.theme') ?? (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
fillModelPicker();
wire();
const saved = await conversations.list();
conversation = saved[0] ?? newConversation();
renderMessages();
renderConversationList();
renderCapabilities();
// The bundled default model loads at once (a demo); others wait for the Load button.
if (settings.model === 'default' && demo.autoload !== false) loadEngine();
