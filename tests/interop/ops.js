'use strict';
// Operations scenarios for the real npm socketcluster-client (v14 or v20).
//
//   node ops.js wss <14|20> <url>      connect over wss:// (trust the CA in NODE_EXTRA_CA_CERTS),
//                                      invoke "echo", print {connected, echo, protocolSecure}
//   node ops.js refused <14|20> <url>  connect with short reconnect delays to a server that
//                                      refuses the upgrade (503); print {aborts, codes,
//                                      connected, elapsedMs} once connected (or timed out)
//
// Prints ONE JSON line. Exit status 0 unless the script itself crashes.

const [, , mode, majorArg, wsUrl] = process.argv;
const MAJOR = Number(majorArg);
if (!['wss', 'refused'].includes(mode) || (MAJOR !== 14 && MAJOR !== 20) || !wsUrl) {
  console.error('usage: node ops.js <wss|refused> <14|20> <url>');
  process.exit(2);
}
const SC = require(MAJOR === 14 ? 'sc-client-14' : 'sc-client-20');
const TIMEOUT_MS = Number(process.env.OPS_TIMEOUT_MS || 15000);
const u = new URL(wsUrl);
const options = {
  hostname: u.hostname,
  port: Number(u.port),
  path: u.pathname,
  secure: u.protocol === 'wss:',
  autoReconnect: true,
  autoReconnectOptions: {initialDelay: 200, randomness: 100, multiplier: 1.5, maxDelay: 1000},
};
const socket = SC.create(options);
const started = Date.now();
const out = {connected: false, aborts: 0, codes: []};

function finish() {
  out.elapsedMs = Date.now() - started;
  console.log(JSON.stringify(out));
  try {
    socket.disconnect();
  } catch (e) { /* already closed */ }
  process.exit(0);
}
setTimeout(finish, TIMEOUT_MS);

function onAbort(code) {
  out.aborts += 1;
  out.codes.push(code);
}

function invokeEcho(data) {
  if (MAJOR === 14) {
    return new Promise((resolve, reject) => {
      socket.emit('echo', data, (err, res) => (err ? reject(err) : resolve(res)));
    });
  }
  return socket.invoke('echo', data);
}

async function onConnect() {
  out.connected = true;
  if (mode === 'wss') {
    try {
      out.echo = await invokeEcho({secure: true});
    } catch (err) {
      out.echoError = String(err && err.message);
    }
  }
  finish();
}

if (MAJOR === 14) {
  socket.on('connectAbort', (code) => onAbort(code));
  socket.on('error', () => {});
  socket.on('connect', () => onConnect());
} else {
  (async () => {
    for await (const {code} of socket.listener('connectAbort')) onAbort(code);
  })();
  (async () => {
    for await (const _ of socket.listener('error')) { /* counted as aborts */ }
  })();
  (async () => {
    for await (const _ of socket.listener('connect')) {
      await onConnect();
    }
  })();
}
