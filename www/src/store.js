// Conversations in IndexedDB (one object per conversation), settings in localStorage.

const DB_NAME = 'edgechat';
const STORE = 'conversations';

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: 'id' });
      store.createIndex('updated', 'updated');
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

const dbPromise = open();

async function run(mode, action) {
  const db = await dbPromise;
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const request = action(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(request?.result);
    tx.onerror = () => reject(tx.error);
  });
}

export const conversations = {
  /** Newest first. */
  list: async () => (await run('readonly', (s) => s.getAll())).sort((a, b) => b.updated - a.updated),
  get: (id) => run('readonly', (s) => s.get(id)),
  put: (conversation) => run('readwrite', (s) => s.put({ ...conversation, updated: Date.now() })),
  remove: (id) => run('readwrite', (s) => s.delete(id)),
};

export function newConversation() {
  return { id: crypto.randomUUID(), title: 'New chat', messages: [], updated: Date.now() };
}

const SETTINGS_KEY = 'edgechat.settings';

export const DEFAULT_SETTINGS = {
  model: 'default',
  modelUrl: '',
  routerUrl: '',
  routerToken: '',
  routerModel: '',
  policy: '',
  mode: 'prefer-local',
  minTokensPerSecond: 0,
  temperature: 0.7,
  topP: 0.95,
  maxTokens: 512,
};

export function loadSettings(defaults = {}) {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}');
  } catch {
    saved = {};
  }
  return { ...DEFAULT_SETTINGS, ...defaults, ...saved };
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
}
