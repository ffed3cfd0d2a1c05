'use strict';
// Drives the real npm socketcluster-client (v14 = protocol 1, v20 = protocol 2) against
// tests/interop/extra_app.py through one scenario and prints ONE JSON line of observations.
//
//   node extra.js <14|20> <ws-url> <scenario>
//
// Scenarios: renew, norenew (token renewal hook), reject-4501, reject-default, reject-silent
// (HANDSHAKE_SC middleware blocks). A scenario that crashes prints {"failure": ...}.

const [, , majorArg, wsUrl, scenarioName] = process.argv;
const MAJOR = Number(majorArg);
if ((MAJOR !== 14 && MAJOR !== 20) || !wsUrl || !scenarioName) {
  console.error('usage: node extra.js <14|20> <ws-url> <scenario>');
  process.exit(2);
}
const SC = require(MAJOR === 14 ? 'sc-client-14' : 'sc-client-20');
const T0 = Date.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const errInfo = (err) => (err == null ? null : typeof err === 'object'
  ? {name: err.name, message: err.message} : {string: err});

// Both client generations behind one small interface; every event is recorded with its time.
class Client {
  constructor(opts = {}) {
    this.events = [];
    const u = new URL(wsUrl);
    const options = {
      hostname: u.hostname,
      port: Number(u.port),
      path: u.pathname,
      ackTimeout: 5000,
      connectTimeout: 5000,
      autoReconnect: opts.autoReconnect !== false,
      autoReconnectOptions: {initialDelay: 200, randomness: 0, multiplier: 1.5, maxDelay: 2000}
    };
    if (opts.query) options.query = opts.query;
    if (MAJOR === 14) options.multiplex = false;
    const s = this.socket = SC.create(options);
    const rec = (event, info = {}) => this.events.push({event, t: Date.now(), ...info});
    const signed = () => ({signed: s.signedAuthToken || null, token: s.authToken || null});
    if (MAJOR === 14) {
      s.on('connecting', () => rec('connecting'));
      s.on('connect', (st) => rec('connect', {isAuthenticated: st && st.isAuthenticated}));
      s.on('connectAbort', (code, reason) => rec('connectAbort', {code, reason}));
      s.on('disconnect', (code, reason) => rec('disconnect', {code, reason}));
      s.on('close', (code, reason) => rec('close', {code, reason}));
      s.on('authenticate', () => rec('authenticate', signed()));
      s.on('deauthenticate', () => rec('deauthenticate'));
      s.on('removeAuthToken', () => rec('removeAuthToken'));
      s.on('error', (err) => rec('error', {error: errInfo(err)}));
    } else {
      const pump = async (name, convert) => {
        for await (const d of s.listener(name)) rec(name, convert(d || {}));
      };
      pump('connecting', () => ({}));
      pump('connect', (d) => ({isAuthenticated: d.isAuthenticated}));
      pump('connectAbort', (d) => ({code: d.code, reason: d.reason}));
      pump('disconnect', (d) => ({code: d.code, reason: d.reason}));
      pump('close', (d) => ({code: d.code, reason: d.reason}));
      pump('authenticate', () => signed());
      pump('deauthenticate', () => ({}));
      pump('removeAuthToken', () => ({}));
      pump('error', (d) => ({error: errInfo(d.error)}));
    }
  }

  of(name) {
    return this.events.filter((e) => e.event === name);
  }

  async waitFor(name, n = 1, timeout = 5000) {
    const deadline = Date.now() + timeout;
    while (this.of(name).length < n) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} x ${name}`);
      await sleep(10);
    }
    return this.of(name)[n - 1];
  }

  async invoke(event, data) {
    try {
      const result = MAJOR === 14
        ? await new Promise((resolve, reject) => this.socket.emit(
          event, data, (err, res) => (err ? reject(err) : resolve(res))))
        : await this.socket.invoke(event, data);
      return {ok: true, data: result === undefined ? null : result};
    } catch (err) {
      return {ok: false, error: errInfo(err)};
    }
  }

  storedToken() {
    const s = this.socket;
    if (MAJOR === 14) {
      return new Promise((resolve) => s.auth.loadToken(s.authTokenName, (e, t) => resolve(t || null)));
    }
    return Promise.resolve(s.auth.loadToken(s.authTokenName)).then((t) => t || null);
  }

  destroy() {
    try {
      if (MAJOR === 14) {
        this.socket.destroy();
      } else {
        this.socket.disconnect();
        this.socket.killAllListeners();
      }
    } catch (err) {}
  }

  summary() {
    return this.events.map((e) => e.event + (e.code ? ':' + e.code : ''));
  }
}

let client = null;

// Log in, then send nothing past the first token's exp (+ `afterExpMs`).
async function idleAfterLogin(obs, renew, afterExpMs) {
  const c = client = new Client({autoReconnect: false});
  await c.waitFor('connect');
  obs.login = await c.invoke('login', {username: 'carol', renew});
  const first = await c.waitFor('authenticate');
  obs.first = first.token;
  obs.firstSigned = first.signed;
  const expMs = first.token.exp * 1000;
  await sleep(Math.max(expMs + afterExpMs - Date.now(), 0));
  const auths = c.of('authenticate');
  obs.authenticateCount = auths.length;
  obs.signedTokens = auths.map((e) => e.signed);
  obs.tokens = auths.map((e) => e.token);
  obs.authMsAfterFirstExp = auths.map((e) => e.t - expMs);
  const deauth = c.of('deauthenticate');
  obs.deauthMsAfterFirstExp = deauth.map((e) => e.t - expMs);
  obs.removeAuthTokenCount = c.of('removeAuthToken').length;
  obs.disconnects = c.of('disconnect').length + c.of('close').length;
  obs.authState = c.socket.authState;
  obs.signedNow = c.socket.signedAuthToken || null;
  obs.storedToken = await c.storedToken();
  obs.whoami = await c.invoke('whoami');
  obs.nowMsAfterFirstExp = Date.now() - expMs;
}

async function rejected(obs, reject, observeMs, opts = {}) {
  const c = client = new Client({query: {reject}, ...opts});
  const abort = await c.waitFor('connectAbort');
  obs.firstAbort = {code: abort.code, reason: abort.reason};
  if (opts.attempts) {
    await c.waitFor('connectAbort', opts.attempts);
    // the first 'connecting' is emitted inside create(), before any listener: each one seen
    // here is a reconnect, following the abort before it
    const aborts = c.of('connectAbort');
    obs.reconnectDelaysMs = c.of('connecting').slice(0, opts.attempts - 1)
      .map((e, i) => e.t - aborts[i].t);
  } else {
    await sleep(observeMs);
  }
  obs.errors = c.of('error').map((e) => e.error);
  obs.aborts = c.of('connectAbort').map((e) => ({code: e.code, reason: e.reason}));
  obs.connectingCount = c.of('connecting').length;
  obs.connectCount = c.of('connect').length;
  obs.state = c.socket.state;
}

const scenarios = {
  // renewals arrive every ~1 s (at exp - 1.5 s, exp having 1 s resolution): +1000 ms is
  // between two of them
  renew: (obs) => idleAfterLogin(obs, true, 1000),
  norenew: (obs) => idleAfterLogin(obs, false, 1000),
  'reject-4501': (obs) => rejected(obs, '4501', 1500),
  'reject-default': (obs) => rejected(obs, 'default', 0, {attempts: 3}),
  'reject-silent': (obs) => rejected(obs, 'silent', 300, {autoReconnect: false})
};

async function main() {
  const obs = {};
  const out = {scenario: scenarioName, client: MAJOR, obs};
  const fn = scenarios[scenarioName];
  try {
    if (!fn) throw new Error(`unknown scenario ${scenarioName}`);
    await fn(obs);
  } catch (err) {
    out.failure = errInfo(err);
  }
  out.elapsedMs = Date.now() - T0;
  out.events = client ? client.summary() : [];
  if (client) client.destroy();
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
