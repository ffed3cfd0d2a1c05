'use strict';
// What the two Node reference conformance apps (conformance14.js, conformance19.js) share:
// the environment, the users, the server options, and the READY/SIGTERM lifecycle.

const http = require('http');
const path = require('path');

function requireDep(name) {
  // Prefer benchmarks/node/node_modules, fall back to the interop test install.
  try {
    return require(name);
  } catch (err) {
    return require(path.join(__dirname, '..', '..', 'tests', 'interop', 'node_modules', name));
  }
}

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 0);
const AUTH_KEY = process.env.AUTH_KEY;
if (!AUTH_KEY) {
  console.error('AUTH_KEY must be set');
  process.exit(2);
}

const USERS = {
  alice: {password: 'alice-pass', channels: ['news', 'alice-room']},
  bob: {password: 'bob-pass', channels: ['news']}
};

const SERVER_OPTIONS = {
  authKey: AUTH_KEY,
  authAlgorithm: 'HS256',
  authVerifyAlgorithms: ['HS256'],
  authDefaultExpiry: 86400,
  pingInterval: Number(process.env.PING_INTERVAL_MS || 8000),
  middlewareEmitWarnings: false
};

function tokenChannels(socket) {
  const token = socket.authToken;
  return token && Array.isArray(token.channels) ? token.channels : [];
}

// Listen, print `READY <port>`, and exit 0 on SIGTERM/SIGINT.
function listenAndServe(httpServer, scServer) {
  httpServer.listen(PORT, HOST, () => {
    process.stdout.write(`READY ${httpServer.address().port}\n`);
  });
  function shutdown() {
    try {
      scServer.close();
    } catch (err) {}
    httpServer.close();
    process.exit(0);
  }
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

module.exports = {http, requireDep, USERS, SERVER_OPTIONS, tokenChannels, listenAndServe};
