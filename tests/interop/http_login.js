'use strict';
// The client half of the HTTP login flow (examples/http_login.py): the real npm
// socketcluster-client connects with a token obtained over HTTP, placed in its token storage.
//
//   node http_login.js <14|20> <ws-url> <token-or-"">
//
// The token storage is a custom `authEngine` (loadToken/saveToken/removeToken; v14 calls them
// with callbacks, v20 awaits promises), holding the token before the client connects, exactly
// where a browser app would have stored what its login request returned.
// Prints ONE JSON line: {connect, authState, authToken, whoami, publishNews, publishForbidden,
// stored, removed, events}. Exit status 0 unless the script itself crashes.

const [, , majorArg, wsUrl, tokenArg] = process.argv;
if (!majorArg || !wsUrl || tokenArg === undefined) {
  console.error('usage: node http_login.js <14|20> <ws-url> <token-or-"">');
  process.exit(2);
}
const MAJOR = Number(majorArg);
if (MAJOR !== 14 && MAJOR !== 20) {
  console.error('client major must be 14 or 20');
  process.exit(2);
}
const SC = require(MAJOR === 14 ? 'sc-client-14' : 'sc-client-20');
const TIMEOUT_MS = 10000;

class MemoryAuthEngine {
  constructor(token) {
    this.token = token || null;
    this.removed = false;
  }
  _done(value, cb) {
    if (typeof cb === 'function') {  // v14: node-style callback
      setImmediate(() => cb(null, value));
      return undefined;
    }
    return Promise.resolve(value);  // v20: a promise
  }
  saveToken(name, token, options, cb) {
    this.token = token;
    return this._done(token, typeof options === 'function' ? options : cb);
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

function errInfo(err) {
  if (err == null) return null;
  if (typeof err !== 'object') return {string: err};
  return {name: err.name, message: err.message};
}

const u = new URL(wsUrl);
const engine = new MemoryAuthEngine(tokenArg);
const options = {
  hostname: u.hostname,
  port: Number(u.port),
  path: u.pathname,
  authEngine: engine,
  ackTimeout: 5000,
  connectTimeout: 5000,
  autoReconnect: false
};
if (MAJOR === 14) options.multiplex = false;
const socket = SC.create(options);
const events = [];

function once(name) {
  return new Promise((resolve) => {
    if (MAJOR === 14) {
      socket.once(name, (...args) => resolve(args));
    } else {
      socket.listener(name).once().then((data) => resolve([data]));
    }
  });
}

function invoke(event, data) {
  if (MAJOR === 14) {
    return new Promise((resolve, reject) => {
      socket.emit(event, data, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }
  return socket.invoke(event, data);
}

function publish(channel, data) {
  if (MAJOR === 14) {
    return new Promise((resolve, reject) => {
      socket.publish(channel, data, (err) => (err ? reject(err) : resolve()));
    });
  }
  return socket.invokePublish(channel, data);
}

async function attempt(promise) {
  try {
    return {ok: true, data: await promise};
  } catch (err) {
    return {ok: false, error: errInfo(err)};
  }
}

async function main() {
  const obs = {};
  for (const name of ['authenticate', 'deauthenticate', 'removeAuthToken']) {
    once(name).then(() => events.push(name));
  }
  const guard = setTimeout(() => {
    obs.timedOut = true;
    console.log(JSON.stringify(obs));
    process.exit(0);
  }, TIMEOUT_MS);

  const [status] = await once('connect');
  events.push('connect');
  obs.connect = {
    isAuthenticated: status.isAuthenticated,
    authError: status.authError ? errInfo(status.authError) : null
  };
  obs.authState = socket.authState;
  obs.authToken = socket.authToken == null ? null : {username: socket.authToken.username};
  obs.whoami = await attempt(invoke('whoami'));
  obs.publishNews = await attempt(publish('news', {from: 'http-login'}));
  obs.publishForbidden = await attempt(publish('alice-room', {from: 'http-login'}));
  obs.stored = engine.token === tokenArg && tokenArg !== '';
  obs.removed = engine.removed;
  obs.events = events.slice();

  clearTimeout(guard);
  socket.disconnect();
  console.log(JSON.stringify(obs));
  process.exit(0);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : err);
  process.exit(1);
});
