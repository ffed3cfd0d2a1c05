'use strict';
// Token scenarios on several server processes joined by Redis: revocation, logout everywhere,
// renewal, per-user sends, identity-provider tokens. Real npm socketcluster-clients (v14 and
// v20); tokens are presented at the handshake through a custom authEngine. Prints ONE JSON
// line of observations on stdout.
//
//   node tokens.js revoke '{"urls":["ws://..","ws://.."]}'
//   node tokens.js present '{"urls":[...],"token":"..."}'
//   node tokens.js logout|renew|transmit '{"urls":[...]}'
//   node tokens.js oidc '{"urls":[...],"token":"..."}'

const { scenario, ARGS, TAG, sleep, withTimeout } = require('./common');

// Token storage both generations accept (v14 passes callbacks, v20 awaits promises).
class MemoryEngine {
  constructor(token) { this.token = token || null; this.removed = false; }
  _done(value, cb) {
    if (cb) { cb(null, value); return undefined; }
    return Promise.resolve(value);
  }
  saveToken(name, token, options, cb) { this.token = token; return this._done(token, cb); }
  removeToken(name, cb) {
    const old = this.token;
    this.token = null;
    this.removed = true;
    return this._done(old, cb);
  }
  loadToken(name, cb) { return this._done(this.token, cb); }
}

class Client {
  constructor(major, url, token) {
    const u = new URL(url);
    this.major = major;
    this.engine = new MemoryEngine(token);
    const options = {
      hostname: u.hostname, port: Number(u.port), path: u.pathname, autoReconnect: false,
      ackTimeout: 10000, authEngine: this.engine
    };
    if (major === 14) options.multiplex = false;
    this.socket = require(major === 14 ? 'sc-client-14' : 'sc-client-20').create(options);
    this.status = this.once('connect');
    this.events = [];
  }

  once(event) {
    if (this.major === 14) return new Promise((resolve) => this.socket.once(event, resolve));
    return this.socket.listener(event).once();
  }

  on(event, fn) {
    if (this.major === 14) this.socket.on(event, fn);
    else (async () => { for await (const data of this.socket.receiver(event)) fn(data); })();
  }

  async connected() {
    const status = await withTimeout(this.status, 5000, 'connect');
    return {isAuthenticated: !!status.isAuthenticated,
      authError: status.authError ? status.authError.message : null};
  }

  deauthenticated() {
    if (this.socket.authState === 'unauthenticated') return Promise.resolve(true);
    return withTimeout(this.once('deauthenticate'), 5000, 'deauthenticate').then(() => true, () => false);
  }

  invoke(event, data) {
    if (this.major === 14) {
      return new Promise((resolve, reject) => {
        this.socket.emit(event, data, (err, res) => (err ? reject(err) : resolve(res)));
      });
    }
    return this.socket.invoke(event, data);
  }

  close() {
    if (this.major === 14) this.socket.destroy();
    else { this.socket.disconnect(); this.socket.killAllListeners(); }
  }
}

async function present(urls, token) {
  // The token at the handshake on every url with both generations.
  const out = [];
  for (const url of urls) {
    for (const major of [20, 14]) {
      const c = new Client(major, url, token);
      try {
        const status = await c.connected();
        const who = await c.invoke('whoami');
        out.push({...status, removed: c.engine.removed, whoami: who});
      } finally { c.close(); }
    }
  }
  return out;
}

async function login(c, username) {
  await c.connected();
  await c.invoke('login', {username, password: `${username}-pass`});
  return c.socket.signedAuthToken;
}

async function revoke() {
  const [u0, u1] = ARGS.urls;
  const a = new Client(20, u0);
  const clients = [a];
  const out = {};
  try {
    out.token = await login(a, 'alice');
    const b = new Client(14, u1, out.token);
    clients.push(b);
    out.otherWorker = await b.connected();
    await b.invoke('waitSynced');
    const order = [];
    a.once('deauthenticate').then(() => order.push('deauthenticate'));
    const waits = [a.deauthenticated(), b.deauthenticated()];
    await a.invoke('revokeMe');
    order.push('response');
    out.deauthenticated = await Promise.all(waits);
    out.order = order;
    out.refused = await present([u1, u0], out.token);
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    for (const c of clients) c.close();
  }
  return out;
}

async function logout() {
  const [u0, u1] = ARGS.urls;
  const a0 = new Client(20, u0);
  const a1 = new Client(14, u1);
  const b1 = new Client(20, u1);
  const clients = [a0, a1, b1];
  const out = {};
  try {
    out.old = await login(a0, 'alice');
    await login(a1, 'alice');
    await login(b1, 'bob');
    await a1.invoke('waitSynced');
    const waits = [a0.deauthenticated(), a1.deauthenticated()];
    await a0.invoke('logoutEverywhere');
    out.deauthenticated = await Promise.all(waits);
    out.bob = b1.socket.authState;
    out.refused = await present([u1, u0], out.old);
    const fresh = await login(a0, 'alice');  // a new login works at once
    out.whoami = await a0.invoke('whoami');
    out.fresh = await present([u1], fresh);
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    for (const c of clients) c.close();
  }
  return out;
}

async function renew() {
  // The apps renew 2 s before expiry; both tokens live 4 s.
  const [u0, u1] = ARGS.urls;
  const a = new Client(20, u0);
  const b = new Client(14, u1);
  const out = {};
  try {
    for (const c of [a, b]) {
      await c.connected();
      await c.invoke('loginShort', {username: 'alice', password: 'alice-pass', ttl: 4});
    }
    const before = b.socket.signedAuthToken;
    await b.invoke('waitSynced');
    const gone = a.deauthenticated();
    await a.invoke('revokeMe');
    out.revokedDeauthenticated = await gone;
    await sleep(5000);  // past the first token's exp: only a renewal keeps b authenticated
    out.renewed = b.socket.signedAuthToken !== before && !!b.socket.signedAuthToken;
    out.state = b.socket.authState;
    out.whoami = await b.invoke('whoami');
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    a.close();
    b.close();
  }
  return out;
}

async function transmit() {
  const [u0, u1] = ARGS.urls;
  const a0 = new Client(20, u0);
  const a1 = new Client(14, u1);
  const b1 = new Client(20, u1);
  const anon = new Client(14, u0);
  const clients = [a0, a1, b1, anon];
  const got = clients.map(() => []);
  const out = {};
  try {
    await login(a0, 'alice');
    await login(a1, 'alice');
    await login(b1, 'bob');
    await anon.connected();
    clients.forEach((c, i) => c.on('note', (data) => { if (data && data.tag === TAG) got[i].push(data.n); }));
    await a1.invoke('waitSynced');
    out.count = await b1.invoke('transmitToUser', {username: 'alice', event: 'note', data: {tag: TAG, n: 1}});
    const deadline = Date.now() + 5000;
    while ((got[0].length < 1 || got[1].length < 1) && Date.now() < deadline) await sleep(10);
    await sleep(300);  // a duplicate or a stray copy would arrive now
    out.got = got;
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    for (const c of clients) c.close();
  }
  return out;
}

async function oidc() {
  return {present: await present(ARGS.urls, ARGS.token)};
}

const SCENARIOS = {
  revoke, logout, renew, transmit, oidc,
  present: async () => ({present: await present(ARGS.urls, ARGS.token)})
};
(async () => {
  const fn = SCENARIOS[scenario];
  if (!fn) {
    console.error(`unknown scenario ${scenario}`);
    process.exit(2);
  }
  let out;
  try { out = await fn(); } catch (err) { out = {error: String(err && err.message || err)}; }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
})();
