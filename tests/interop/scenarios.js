'use strict';
// Drives the real npm socketcluster-client (v14 = protocol 1, v20 = protocol 2) through one
// interop scenario and prints ONE JSON line of observations on stdout.
//
//   node scenarios.js <14|20> <ws-url> <scenario-name> [args-json]
//
// args-json (all optional): {"timeout": ms, "authKey": "<HS256 secret for bad-token>"}
// Exit status is 0 unless the script itself crashes; a scenario that runs out of time still
// prints its partial observations with "timedOut": true.

const crypto = require('crypto');

const [, , majorArg, wsUrl, scenarioName, argsJson] = process.argv;
if (!majorArg || !wsUrl || !scenarioName) {
  console.error('usage: node scenarios.js <14|20> <ws-url> <scenario> [args-json]');
  process.exit(2);
}
const MAJOR = Number(majorArg);
if (MAJOR !== 14 && MAJOR !== 20) {
  console.error('client major must be 14 or 20');
  process.exit(2);
}
const ARGS = argsJson ? JSON.parse(argsJson) : {};
const SC = require(MAJOR === 14 ? 'sc-client-14' : 'sc-client-20');
const T0 = Date.now();
// Several scenarios may share one server and the channel `news`: every payload we publish carries
// this run's tag, and subscribers keep only tagged messages (with the tag stripped).
const TAG = crypto.randomBytes(6).toString('hex');
const tagged = (data) => ({...data, tag: TAG});
function untag(data, push) {
  if (data !== null && typeof data === 'object' && data.tag === TAG) {
    const rest = {...data};
    delete rest.tag;
    push(rest);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const elapsed = () => Date.now() - T0;

function errInfo(err) {
  if (err == null) return null;
  if (typeof err !== 'object') return {string: err};
  const info = {name: err.name, message: err.message};
  return info;
}

// ---------------------------------------------------------------------------------------------
// Token storage: a tiny in-memory auth engine speaking both client generations' interfaces
// (v14: callbacks, v20: promises). Used for "connect with this token" scenarios.

class MemoryAuthEngine {
  constructor(token) {
    this.token = token == null ? null : token;
    this.removed = false;
  }
  _done(value, cb) {
    if (typeof cb === 'function') {
      setImmediate(() => cb(null, value));
      return undefined;
    }
    return Promise.resolve(value);
  }
  saveToken(name, token, options, cb) {
    this.token = token;
    return this._done(token, cb);
  }
  removeToken(name, cb) {
    const old = this.token;
    this.token = null;
    this.removed = true;
    return this._done(old, cb);
  }
  loadToken(name, cb) {
    return this._done(this.token, cb);
  }
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

function signHS256(payload, key) {
  const header = b64url(JSON.stringify({alg: 'HS256', typ: 'JWT'}));
  const body = b64url(JSON.stringify(payload));
  const sig = b64url(crypto.createHmac('sha256', key).update(`${header}.${body}`).digest());
  return `${header}.${body}.${sig}`;
}

// ---------------------------------------------------------------------------------------------
// A uniform wrapper over both client generations. Events are normalised to objects:
//   connect {id, isAuthenticated, pingTimeout, authError, hasAuthErrorKey}
//   connectAbort / disconnect / close {code, reason}
//   authenticate {authToken}, deauthenticate {}, removeAuthToken {}, authStateChange {oldState, newState}
//   kickOut {channel, message}, subscribe {channel}, subscribeFail {channel, error}, error {error}
//   connecting {}

const EVENT_NAMES = [
  'connecting', 'connect', 'connectAbort', 'disconnect', 'close', 'authenticate', 'deauthenticate',
  'removeAuthToken', 'authStateChange', 'kickOut', 'subscribe', 'subscribeFail', 'unsubscribe', 'error'
];

function urlOptions(url) {
  const u = new URL(url);
  return {
    hostname: u.hostname,
    port: Number(u.port || (u.protocol === 'wss:' ? 443 : 80)),
    secure: u.protocol === 'wss:',
    path: u.pathname || '/socketcluster/'
  };
}

class Client {
  constructor(label, opts = {}) {
    this.label = label;
    this.events = [];
    this.waiters = [];
    this.received = {};  // channel -> [data]
    const options = {
      ...urlOptions(wsUrl),
      ackTimeout: opts.ackTimeout || 5000,
      connectTimeout: 5000,
      autoReconnect: opts.autoReconnect !== false,
      autoReconnectOptions: opts.autoReconnectOptions || {
        initialDelay: 100, randomness: 0, multiplier: 1.5, maxDelay: 1000
      }
    };
    if (opts.query) options.query = opts.query;
    if (opts.authEngine) options.authEngine = opts.authEngine;
    if (MAJOR === 14) options.multiplex = false;
    this.socket = SC.create(options);
    this._listen();
  }

  _record(name, info) {
    const ev = {event: name, t: elapsed(), ...info};
    this.events.push(ev);
    for (const w of this.waiters.slice()) {
      if (w.name === name && this.events.length - 1 >= w.since && w.pred(ev)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(ev);
      }
    }
  }

  _listen() {
    const s = this.socket;
    if (MAJOR === 14) {
      s.on('connecting', () => this._record('connecting', {}));
      s.on('connect', (status) => this._record('connect', connectInfo(status)));
      s.on('connectAbort', (code, data) => this._record('connectAbort', {code, reason: data}));
      s.on('disconnect', (code, data) => this._record('disconnect', {code, reason: data}));
      s.on('close', (code, data) => this._record('close', {code, reason: data}));
      s.on('authenticate', () => this._record('authenticate', {authToken: s.authToken}));
      s.on('deauthenticate', () => this._record('deauthenticate', {}));
      s.on('removeAuthToken', () => this._record('removeAuthToken', {}));
      s.on('authStateChange', (d) => this._record('authStateChange', {oldState: d.oldState, newState: d.newState}));
      s.on('kickOut', (message, channel) => this._record('kickOut', {channel, message}));
      s.on('subscribe', (channel) => this._record('subscribe', {channel}));
      s.on('subscribeFail', (err, channel) => this._record('subscribeFail', {channel, error: errInfo(err)}));
      s.on('unsubscribe', (channel) => this._record('unsubscribe', {channel}));
      s.on('error', (err) => this._record('error', {error: errInfo(err)}));
    } else {
      const pump = async (name, convert) => {
        for await (const data of s.listener(name)) this._record(name, convert(data || {}));
      };
      pump('connecting', () => ({}));
      pump('connect', (d) => connectInfo(d));
      pump('connectAbort', (d) => ({code: d.code, reason: d.reason}));
      pump('disconnect', (d) => ({code: d.code, reason: d.reason}));
      pump('close', (d) => ({code: d.code, reason: d.reason}));
      pump('authenticate', (d) => ({authToken: d.authToken}));
      pump('deauthenticate', () => ({}));
      pump('removeAuthToken', () => ({}));
      pump('authStateChange', (d) => ({oldState: d.oldAuthState, newState: d.newAuthState}));
      pump('kickOut', (d) => ({channel: d.channel, message: d.message}));
      pump('subscribe', (d) => ({channel: d.channel}));
      pump('subscribeFail', (d) => ({channel: d.channel, error: errInfo(d.error)}));
      pump('unsubscribe', (d) => ({channel: d.channel}));
      pump('error', (d) => ({error: errInfo(d.error)}));
    }
  }

  mark() {
    return this.events.length;
  }

  count(name, pred = () => true) {
    return this.events.filter((e) => e.event === name && pred(e)).length;
  }

  has(name, since = 0, pred = () => true) {
    return this.events.slice(since).some((e) => e.event === name && pred(e));
  }

  // Resolves with the first `name` event at index >= since matching pred (rejects after timeout).
  waitFor(name, {since = 0, pred = () => true, timeout = 5000} = {}) {
    const found = this.events.slice(since).find((e) => e.event === name && pred(e));
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = {name, since, pred, resolve};
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`${this.label}: timed out waiting for ${name}`));
      }, timeout);
      this.waiters.push(w);
    });
  }

  // Like waitFor but resolves with null instead of rejecting.
  maybe(name, opts) {
    return this.waitFor(name, opts).catch(() => null);
  }

  invoke(event, data) {
    if (MAJOR === 14) {
      return new Promise((resolve, reject) => {
        this.socket.emit(event, data, (err, res) => (err ? reject(err) : resolve(res)));
      });
    }
    return this.socket.invoke(event, data);
  }

  // {ok, data} or {ok: false, error}
  async tryInvoke(event, data) {
    try {
      return {ok: true, data: await this.invoke(event, data)};
    } catch (err) {
      return {ok: false, error: errInfo(err)};
    }
  }

  publish(channel, data) {
    if (MAJOR === 14) {
      return new Promise((resolve, reject) => {
        this.socket.publish(channel, data, (err) => (err ? reject(err) : resolve()));
      });
    }
    return this.socket.invokePublish(channel, data);
  }

  async tryPublish(channel, data) {
    try {
      await this.publish(channel, data);
      return {ok: true};
    } catch (err) {
      return {ok: false, error: errInfo(err)};
    }
  }

  subscribe(channelName) {
    const list = this.received[channelName] || (this.received[channelName] = []);
    if (MAJOR === 14) {
      const ch = this.socket.subscribe(channelName);
      if (!ch.watchers().length) ch.watch((data) => untag(data, (d) => list.push(d)));
      return ch;
    }
    const ch = this.socket.subscribe(channelName);
    if (!this._consumed) this._consumed = new Set();
    if (!this._consumed.has(channelName)) {
      this._consumed.add(channelName);
      (async () => {
        for await (const data of ch) untag(data, (d) => list.push(d));
      })();
    }
    return ch;
  }

  channelState(channelName) {
    if (MAJOR === 14) {
      const ch = this.socket.channels[channelName];
      return ch ? ch.getState() : null;
    }
    return this.socket.getChannelState(channelName);
  }

  async waitReceived(channelName, n, timeout = 3000) {
    const deadline = Date.now() + timeout;
    while ((this.received[channelName] || []).length < n && Date.now() < deadline) await sleep(10);
    return (this.received[channelName] || []).slice();
  }

  onReceive(event, fn) {
    if (MAJOR === 14) {
      this.socket.on(event, (data) => fn(data));
    } else {
      (async () => {
        for await (const data of this.socket.receiver(event)) fn(data);
      })();
    }
  }

  get authState() {
    return this.socket.authState;
  }

  get authToken() {
    return this.socket.authToken == null ? null : this.socket.authToken;
  }

  get state() {
    return this.socket.state;
  }

  storedToken() {
    const s = this.socket;
    if (MAJOR === 14) {
      return new Promise((resolve) => s.auth.loadToken(s.authTokenName, (err, t) => resolve(t || null)));
    }
    return Promise.resolve(s.auth.loadToken(s.authTokenName)).then((t) => t || null);
  }

  disconnect() {
    this.socket.disconnect();
  }

  connect() {
    this.socket.connect();
  }

  destroy() {
    try {
      if (MAJOR === 14) {
        this.socket.destroy();
      } else {
        this.socket.autoReconnect = false;
        this.socket.disconnect();
        this.socket.killAllListeners && this.socket.killAllListeners();
      }
    } catch (err) {}
  }

  summary() {
    return this.events.map((e) => e.event);
  }
}

function connectInfo(status) {
  status = status || {};
  return {
    id: status.id,
    isAuthenticated: status.isAuthenticated,
    pingTimeout: status.pingTimeout,
    authError: status.authError ? {name: status.authError.name, message: status.authError.message} : null,
    hasAuthErrorKey: Object.prototype.hasOwnProperty.call(status, 'authError')
  };
}

const clients = [];
function client(label, opts) {
  const c = new Client(label, opts);
  clients.push(c);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Scenarios. Each fills `obs` (so that a timeout still reports what was seen).

const scenarios = {};

scenarios.connect = async (obs) => {
  const c = client('A');
  const st = await c.waitFor('connect');
  obs.idPresent = typeof st.id === 'string' && st.id.length > 0;
  obs.isAuthenticated = st.isAuthenticated;
  obs.pingTimeout = st.pingTimeout;
  obs.hasAuthErrorKey = st.hasAuthErrorKey;
  obs.authState = c.authState;
  obs.state = c.state;
  c.disconnect();
  const d = await c.waitFor('disconnect');
  obs.disconnectCode = d.code;
  obs.stateAfter = c.state;
  obs.events = c.summary();
};

const ECHO_VALUE = {
  a: 1, f: 1.5, neg: -7, big: 9007199254740991, s: 'h\u00e9llo \u2713 "q" \\', t: true, n: null,
  list: [1, 'two', {three: [3, {}]}, [], false], nested: {deep: {deeper: {deepest: 'x'}}}
};

scenarios.echo = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  obs.echo = await c.tryInvoke('echo', ECHO_VALUE);
  obs.echoMatches = JSON.stringify(obs.echo.data) === JSON.stringify(ECHO_VALUE);
  obs.echoString = await c.tryInvoke('echo', 'plain');
  obs.echoNull = await c.tryInvoke('echo', null);
  obs.fail = await c.tryInvoke('fail', {x: 1});
  obs.badLogin = await c.tryInvoke('login', {username: 'alice', password: 'wrong'});
  obs.authState = c.authState;
};

scenarios.nohandler = async (obs) => {
  const c = client('A', {ackTimeout: 3000});
  await c.waitFor('connect');
  const t = Date.now();
  obs.result = await c.tryInvoke('noSuchProcedure', {x: 1});
  obs.elapsedMs = Date.now() - t;
  // the connection is still usable afterwards
  obs.echoAfter = await c.tryInvoke('echo', 'still-alive');
};

scenarios.pubsub = async (obs) => {
  const a = client('A');
  const b = client('B');
  await Promise.all([a.waitFor('connect'), b.waitFor('connect')]);
  a.subscribe('news');
  await a.waitFor('subscribe', {pred: (e) => e.channel === 'news'});
  obs.login = await b.tryInvoke('login', {username: 'bob', password: 'bob-pass'});
  await b.waitFor('authenticate');
  const results = await Promise.all(
    Array.from({length: 20}, (_, i) => b.tryPublish('news', tagged({n: i})))
  );
  obs.acks = results.map((r) => r.ok);
  obs.forbidden = await b.tryPublish('alice-room', tagged({n: 'nope'}));
  obs.unauthenticated = await a.tryPublish('news', tagged({n: 'anon'}));
  await a.waitReceived('news', 20);
  await sleep(300);  // let anything extra (duplicates, blocked publishes) arrive
  obs.received = a.received.news.map((d) => d.n);
};

scenarios['subscribe-private'] = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  c.subscribe('private-x');
  const fail = await c.maybe('subscribeFail', {pred: (e) => e.channel === 'private-x'});
  obs.privateError = fail && fail.error;
  obs.privateState = c.channelState('private-x');
  c.subscribe('news');
  const ok = await c.maybe('subscribe', {pred: (e) => e.channel === 'news'});
  obs.newsSubscribed = !!ok;
  obs.newsState = c.channelState('news');
  obs.privateSubscribeEvent = c.has('subscribe', 0, (e) => e.channel === 'private-x');
};

scenarios.emitback = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  const got = new Promise((resolve) => c.onReceive('hello', resolve));
  obs.reply = await c.tryInvoke('emitBack', {event: 'hello', data: {x: 1}});
  obs.received = await Promise.race([got, sleep(3000).then(() => 'TIMEOUT')]);
};

scenarios.kick = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  c.subscribe('news');
  await c.waitFor('subscribe', {pred: (e) => e.channel === 'news'});
  obs.stateBefore = c.channelState('news');
  obs.reply = await c.tryInvoke('kick', {channel: 'news'});
  const k = await c.maybe('kickOut', {timeout: 3000});
  obs.kickOut = k && {channel: k.channel, message: k.message};
  obs.stateAfter = c.channelState('news');
};

scenarios['disconnect-me'] = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  obs.reply = await c.tryInvoke('disconnectMe', {code: 4567, reason: 'bye'});
  const d = await c.waitFor('disconnect');
  obs.disconnect = {code: d.code, reason: d.reason};
  await sleep(800);  // a reconnect would start after ~100 ms
  obs.connectCount = c.count('connect');
  obs.connectingCount = c.count('connecting');
  obs.state = c.state;
};

scenarios['login-whoami-reconnect'] = async (obs) => {
  const c = client('A');
  const st = await c.waitFor('connect');
  obs.firstIsAuthenticated = st.isAuthenticated;
  c.subscribe('news');
  await c.waitFor('subscribe', {pred: (e) => e.channel === 'news'});
  let m = c.mark();
  obs.login = await c.tryInvoke('login', {username: 'alice', password: 'alice-pass'});
  const auth = await c.waitFor('authenticate', {since: m});
  const tok = auth.authToken || {};
  obs.token = {username: tok.username, channels: tok.channels, ttl: tok.exp - tok.iat};
  obs.authState = c.authState;
  obs.storedTokenPresent = !!(await c.storedToken());
  const who = await c.tryInvoke('whoami');
  obs.whoami = who.ok && who.data ? {username: who.data.username, channels: who.data.channels,
    ttl: who.data.exp - who.data.iat} : who;

  // drop and reconnect the same client object: it must reuse the stored token
  m = c.mark();
  c.disconnect();
  await c.waitFor('disconnect', {since: m});
  m = c.mark();
  c.connect();
  const st2 = await c.waitFor('connect', {since: m});
  obs.reconnectIsAuthenticated = st2.isAuthenticated;
  obs.reconnectAuthState = c.authState;
  await c.waitFor('subscribe', {since: m, pred: (e) => e.channel === 'news'});
  obs.newsStateAfter = c.channelState('news');
  const who2 = await c.tryInvoke('whoami');
  obs.whoamiAfter = who2.ok && who2.data ? {username: who2.data.username} : who2;
  obs.serverPublish = await c.tryInvoke('serverPublish', {channel: 'news', data: tagged({after: 'reconnect'})});
  obs.received = await c.waitReceived('news', 1);
};

scenarios.logout = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  obs.login = await c.tryInvoke('login', {username: 'bob', password: 'bob-pass'});
  await c.waitFor('authenticate');
  const m = c.mark();
  obs.logout = await c.tryInvoke('logout');
  obs.removeAuthToken = !!(await c.maybe('removeAuthToken', {since: m, timeout: 2000}));
  obs.deauthenticate = !!(await c.maybe('deauthenticate', {since: m, timeout: 2000}));
  obs.authState = c.authState;
  obs.authToken = c.authToken;
  obs.storedToken = await c.storedToken();
  obs.whoami = await c.tryInvoke('whoami');
};

scenarios.expiry = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  obs.login = await c.tryInvoke('loginShort', {username: 'bob', password: 'bob-pass', ttl: 2});
  const auth = await c.waitFor('authenticate');
  const tok = auth.authToken || {};
  obs.ttl = tok.exp - tok.iat;
  const m = c.mark();
  // send nothing: the server alone must notice the expiry
  const de = await c.maybe('deauthenticate', {since: m, timeout: 15000});
  obs.deauthenticated = !!de;
  if (de) {
    obs.msAfterExp = Date.now() - tok.exp * 1000;
  }
  obs.removeAuthToken = c.has('removeAuthToken', m);
  obs.authState = c.authState;
  obs.storedToken = await c.storedToken();
  obs.whoami = await c.tryInvoke('whoami');
};

async function connectWithToken(label, token) {
  const engine = new MemoryAuthEngine(token);
  const c = client(label, {authEngine: engine, autoReconnect: false});
  const st = await c.waitFor('connect');
  await c.maybe('removeAuthToken', {timeout: 500});
  const out = {
    isAuthenticated: st.isAuthenticated,
    authError: st.authError,
    authState: c.authState,
    removeAuthToken: c.has('removeAuthToken'),
    tokenRemoved: engine.removed,
    storedToken: engine.token
  };
  if (st.isAuthenticated) {
    const who = await c.tryInvoke('whoami');
    out.whoami = who.ok && who.data ? {username: who.data.username, channels: who.data.channels} : who;
  }
  return out;
}

scenarios['bad-token'] = async (obs) => {
  const key = ARGS.authKey;
  if (!key) throw new Error('bad-token needs {"authKey": ...} in args');
  const now = Math.floor(Date.now() / 1000);
  obs.garbage = await connectWithToken('garbage', 'abc.def.ghi');
  obs.expired = await connectWithToken('expired',
    signHS256({username: 'bob', channels: ['news'], iat: now - 7200, exp: now - 3600}, key));
  obs.wrongKey = await connectWithToken('wrongKey',
    signHS256({username: 'bob', channels: ['news'], iat: now, exp: now + 3600}, key + '-wrong'));
  obs.valid = await connectWithToken('valid',
    signHS256({username: 'mallory', channels: ['news'], iat: now, exp: now + 3600}, key));
};

scenarios['secret-publish-out'] = async (obs) => {
  const a = client('A');
  const c = client('C');
  await Promise.all([a.waitFor('connect'), c.waitFor('connect')]);
  obs.login = await c.tryInvoke('login', {username: 'bob', password: 'bob-pass'});
  await c.waitFor('authenticate');
  a.subscribe('news');
  c.subscribe('news');
  await Promise.all([
    a.waitFor('subscribe', {pred: (e) => e.channel === 'news'}),
    c.waitFor('subscribe', {pred: (e) => e.channel === 'news'})
  ]);
  obs.pub1 = await c.tryPublish('news', tagged({secret: true, n: 1}));
  obs.pub2 = await c.tryPublish('news', tagged({n: 2}));
  await c.waitReceived('news', 2);
  await a.waitReceived('news', 1);
  await sleep(300);
  obs.receivedA = a.received.news.slice();
  obs.receivedC = c.received.news.slice();
};

scenarios.banned = async (obs) => {
  const c = client('A', {query: {ban: '1'}, autoReconnect: false});
  const ev = await Promise.race([
    c.waitFor('connectAbort', {timeout: 5000}),
    c.waitFor('connect', {timeout: 5000})
  ]);
  obs.firstEvent = ev.event;
  obs.code = ev.code;
  await sleep(200);
  obs.connected = c.has('connect');
  obs.state = c.state;
};

scenarios['reconnect-resubscribe'] = async (obs) => {
  const c = client('A');
  await c.waitFor('connect');
  c.subscribe('news');
  await c.waitFor('subscribe', {pred: (e) => e.channel === 'news'});
  const m = c.mark();
  obs.reply = await c.tryInvoke('disconnectMe', {code: 4321, reason: 'again'});
  const d = await c.waitFor('disconnect', {since: m});
  obs.disconnect = {code: d.code, reason: d.reason};
  const st = await c.waitFor('connect', {since: m});
  obs.reconnectMs = st.t - d.t;
  await c.waitFor('subscribe', {since: m, pred: (e) => e.channel === 'news'});
  obs.newsState = c.channelState('news');
  obs.serverPublish = await c.tryInvoke('serverPublish', {channel: 'news', data: tagged({n: 'after'})});
  obs.received = await c.waitReceived('news', 1);
};

// ---------------------------------------------------------------------------------------------

async function main() {
  const fn = scenarios[scenarioName];
  const obs = {};
  const out = {scenario: scenarioName, client: MAJOR, obs};
  if (!fn) {
    out.error = `unknown scenario ${scenarioName}`;
    out.known = Object.keys(scenarios);
    finish(out, 0);
    return;
  }
  const timeout = ARGS.timeout || 25000;
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve('TIMEOUT'), timeout);
  });
  try {
    const r = await Promise.race([fn(obs).then(() => 'DONE'), timedOut]);
    if (r === 'TIMEOUT') out.timedOut = true;
  } catch (err) {
    out.failure = errInfo(err);
  }
  clearTimeout(timer);
  out.elapsedMs = elapsed();
  out.events = {};
  for (const c of clients) out.events[c.label] = c.events.map((e) => e.event + (e.code ? ':' + e.code : ''));
  finish(out, 0);
}

function finish(out, code) {
  for (const c of clients) c.destroy();
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(code));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
