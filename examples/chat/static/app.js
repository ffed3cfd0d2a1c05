// The chat page: socketcluster-client v20 (protocol 2), loaded as an ES module from vendor/.
//
// The seed's two promises, from the browser's side:
// * Lost connection: the client keeps the signed token in localStorage
//   ("socketcluster.authToken.<host:port>") and presents it in the handshake of every
//   reconnect, so the page stays logged in; the login form is only shown when the server says
//   the socket is not authenticated.
// * Several tabs: the stock client reads localStorage only when it (re)connects. This page
//   listens to the `storage` event, which fires in every *other* tab of the origin when the
//   token changes: a new token is handed to the server with socket.authenticate(token), a
//   removed one ends this tab's session too with socket.deauthenticate().
// * Missed messages: every channel keeps history on the server. recovery.js (loaded before this
//   module; it defines SCRecovery) reads the raw #publish messages, keeps each channel's last
//   {offset, epoch} and puts it in the subscribe data, so the client's automatic resubscribe
//   after a reconnect gets what this tab missed. Messages are shown from those raw messages,
//   keyed by epoch and offset: each once, in order, however it came (live, replayed, or from
//   the `history` procedure, which fills a freshly opened page and, on every reconnect, what
//   a restarted server no longer had to replay).
//
// document.body carries the state as data attributes (view, connection, auth, user) for CSS
// and for the browser tests; window.chat exposes the socket and a history of the views shown.

const $ = (id) => document.getElementById(id);
const body = document.body;

let sc;
try {
  sc = await import('./vendor/socketcluster-client.min.js');
} catch (err) {
  const box = $('load-error');
  box.hidden = false;
  box.textContent = 'The socketcluster-client bundle is missing: run `python -m examples.chat.vendor` ' +
    'in the repository, then reload this page.';
  $('loading-view').hidden = true;
  throw err;
}

const socket = sc.create({
  // Reconnect quickly after a lost connection (the stock default waits 10 to 20 s).
  autoReconnectOptions: { initialDelay: 300, randomness: 300, multiplier: 1.5, maxDelay: 2000 },
});

const state = {
  connectedOnce: false,
  channels: [],          // from the token's `channels` claim
  current: null,         // the selected channel
  messages: new Map(),   // channel -> [{rank, offset, message: {from, text, at}}], in order
  seen: new Map(),       // channel -> Set of "epoch:offset" shown
  epochs: new Map(),     // channel -> [epoch, ...] in the order seen (a restart starts one)
  unread: new Map(),     // channel -> count
  wanted: new Set(),     // channels subscribed to (from the token)
};
const recovery = SCRecovery.create({ onPublication: addMessage });
(async () => {
  // Before any subscribe: every raw message, for the positions and the messages.
  for await (const { message } of socket.listener('message')) recovery.onMessage(message);
})();
const viewHistory = [{ view: body.dataset.view, at: Date.now() }];  // 'loading'
window.chat = { socket, viewHistory, state, recovery };

// ------------------------------------------------------------------ rendering

function showView(view) {
  if (body.dataset.view === view) return;
  body.dataset.view = view;
  viewHistory.push({ view, at: Date.now() });
  for (const name of ['loading', 'login', 'chat']) {
    $(`${name}-view`).hidden = name !== view;
  }
  if (view === 'login') $('username').focus();
  if (view === 'chat') $('message-input').focus();
}

function render() {
  const authenticated = socket.authState === socket.AUTHENTICATED;
  const token = authenticated ? socket.authToken : null;
  body.dataset.auth = authenticated ? 'authenticated' : 'unauthenticated';
  body.dataset.user = token ? token.username : '';
  $('auth-state').textContent = token ? `signed in as ${token.username}` : 'signed out';
  $('logout').hidden = !authenticated;
  renderExpiry();

  const connection = { open: 'open', connecting: 'connecting', closed: 'closed' }[socket.state] ?? 'closed';
  body.dataset.connection = connection;
  $('connection').textContent = {
    open: 'connected',
    connecting: state.connectedOnce ? 'reconnecting…' : 'connecting…',
    closed: socket.pendingReconnect ? 'disconnected, retrying…' : 'disconnected',
  }[connection];
  $('send-button').disabled = connection !== 'open';

  if (!state.connectedOnce) showView('loading');
  else showView(authenticated ? 'chat' : 'login');
  renderChannels();
}

function renderExpiry() {
  const exp = socket.authState === socket.AUTHENTICATED ? socket.authToken?.exp : null;
  $('token-expiry').textContent = exp
    ? `token valid until ${new Date(exp * 1000).toLocaleTimeString()}`
    : '';
}

function renderChannels() {
  const list = $('channels');
  list.replaceChildren(...state.channels.map((name) => {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.channel = name;
    button.textContent = `#${name}`;
    button.setAttribute('aria-current', String(name === state.current));
    const unread = state.unread.get(name) || 0;
    if (unread) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = unread;
      button.append(badge);
    }
    button.addEventListener('click', () => selectChannel(name));
    li.append(button);
    return li;
  }));
  $('room-title').textContent = state.current ? `#${state.current}` : '';
}

function renderMessages() {
  const list = $('messages');
  list.replaceChildren(...(state.messages.get(state.current) || []).map(({ message: m }) => {
    const li = document.createElement('li');
    li.dataset.from = m.from;
    const from = document.createElement('span');
    from.className = 'from';
    from.textContent = m.from;
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = m.text;
    const time = document.createElement('time');
    time.className = 'muted';
    time.textContent = new Date(m.at).toLocaleTimeString();
    li.append(from, text, time);
    return li;
  }));
  list.scrollTop = list.scrollHeight;
}

function selectChannel(name) {
  state.current = name;
  state.unread.set(name, 0);
  renderChannels();
  renderMessages();
}

// ------------------------------------------------------------------ channels

// A publication on a channel with history (live, replayed after a reconnect, or fetched):
// shown once, ordered by epoch (in the order seen) then offset.
function addMessage(name, { data, offset, epoch }) {
  if (!state.wanted.has(name) || !data || typeof data.text !== 'string') return;
  const seen = state.seen.get(name);
  const key = `${epoch}:${offset}`;
  if (seen.has(key)) return;
  seen.add(key);
  const epochs = state.epochs.get(name);
  if (!epochs.includes(epoch)) epochs.push(epoch);
  const list = state.messages.get(name);
  const entry = { rank: epochs.indexOf(epoch), offset, message: data };
  const later = (e) => e.rank > entry.rank || (e.rank === entry.rank && e.offset > offset);
  const at = list.findIndex(later);
  if (at === -1) list.push(entry); else list.splice(at, 0, entry);
  if (name === state.current) renderMessages();
  else {
    state.unread.set(name, (state.unread.get(name) || 0) + 1);
    renderChannels();
  }
}

// The channel's recent messages and position, from the server's history. The subscription
// is already asked for (the same socket answers in order), so with the live ones nothing is
// missed; the position then makes the next resubscribe ask for what follows it.
async function loadHistory(name) {
  let recent;
  try {
    recent = await socket.invoke('history', { channel: name });
  } catch (err) {
    console.debug('history of', name, 'failed:', err?.message);
    return;
  }
  if (!state.wanted.has(name) || !recent) return;
  for (const { offset, data } of recent.messages) addMessage(name, { data, offset, epoch: recent.epoch });
  recovery.seek(name, { offset: recent.offset, epoch: recent.epoch });
}

function syncChannels({ reconnected = false } = {}) {
  const token = socket.authState === socket.AUTHENTICATED ? socket.authToken : null;
  const wanted = Array.isArray(token?.channels) ? token.channels.map(String) : [];
  for (const name of state.wanted) {
    if (!wanted.includes(name)) {
      socket.unsubscribe(name);
      socket.closeChannel(name);
      recovery.forget(name);
      for (const map of [state.messages, state.seen, state.epochs, state.unread]) map.delete(name);
      state.wanted.delete(name);
    }
  }
  for (const name of wanted) {
    const fresh = !state.wanted.has(name);
    if (fresh) {
      state.wanted.add(name);
      state.messages.set(name, []);
      state.seen.set(name, new Set());
      state.epochs.set(name, []);
    }
    if (!socket.isSubscribed(name, true)) {
      socket.subscribe(name, { waitForAuth: true, data: recovery.data(name) });
    }
    if (fresh || reconnected) loadHistory(name);
  }
  state.channels = wanted;
  if (!wanted.includes(state.current)) state.current = wanted[0] ?? null;
  renderChannels();
  renderMessages();
}

// ------------------------------------------------------------------ socket events

function listen(event, fn) {
  (async () => {
    for await (const data of socket.listener(event)) fn(data);
  })();
}

listen('connecting', render);
listen('connect', () => {
  const reconnected = state.connectedOnce;
  state.connectedOnce = true;
  render();
  syncChannels({ reconnected });
});
listen('disconnect', render);
listen('close', render);
listen('connectAbort', render);
listen('authStateChange', () => { render(); syncChannels(); });
listen('authenticate', () => { renderExpiry(); syncChannels(); });  // also on renewal
// The server kicks a socket out of its channels when its token goes; subscribe again if the
// current token still lists the channel.
listen('kickOut', syncChannels);
listen('error', ({ error }) => console.debug('socket error:', error?.name, error?.message));

// ------------------------------------------------------------------ other tabs

window.addEventListener('storage', (event) => {
  if (event.storageArea !== localStorage) return;
  if (event.key !== null && event.key !== socket.authTokenName) return;  // null: clear()
  const token = localStorage.getItem(socket.authTokenName);
  if (token && token !== socket.signedAuthToken) {
    // Logged in (or renewed) in another tab. When closed, the next handshake presents it.
    if (socket.state === socket.OPEN) {
      socket.authenticate(token).catch((err) => console.debug('authenticate failed:', err?.message));
    }
  } else if (!token && socket.authState === socket.AUTHENTICATED) {
    // Logged out (or expired) in another tab: end this tab's session too.
    socket.deauthenticate();
  }
});

// ------------------------------------------------------------------ forms

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  $('login-error').textContent = '';
  $('login-button').disabled = true;
  try {
    await socket.invoke('login', { username: $('username').value, password: $('password').value });
    $('password').value = '';
  } catch (err) {
    $('login-error').textContent = err?.message || String(err);
  } finally {
    $('login-button').disabled = false;
  }
});

$('logout').addEventListener('click', async () => {
  try {
    await socket.invoke('logout');  // the server deauthenticates: #removeAuthToken
  } catch (err) {
    console.debug('logout over the socket failed:', err?.message);
  }
  if (socket.authState === socket.AUTHENTICATED) await socket.deauthenticate();
});

$('message-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value.trim();
  if (!text || !state.current) return;
  $('send-error').textContent = '';
  // Cleared at once, not after the acknowledgement: whatever is typed while this message is
  // in flight is the next message, never wiped by this one's ack.
  input.value = '';
  try {
    await socket.invokePublish(state.current, { text });
  } catch (err) {
    $('send-error').textContent = err?.message || String(err);
    if (!input.value) input.value = text;  // give the failed message back to retry
  }
});

render();
