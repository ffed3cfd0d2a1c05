'use strict';
// The conformance application (its contract: docs/conformance.md) written on the public
// API of socketcluster-server 14.x (protocol 1). It is the reference the interop scenarios are
// validated against, and the Node opponent in the benchmarks.
//
// Environment: PORT (0 = pick a free port), AUTH_KEY (HS256 secret), HOST (default 127.0.0.1).
// Prints `READY <port>` once listening; SIGTERM/SIGINT shut down and exit 0.

const {http, requireDep, USERS, SERVER_OPTIONS, tokenChannels, listenAndServe} = require('./common');

const socketClusterServer = requireDep('sc-server-14');

const httpServer = http.createServer();
const scServer = socketClusterServer.attach(httpServer, SERVER_OPTIONS);

// --- Middleware -------------------------------------------------------------------------------

scServer.addMiddleware(scServer.MIDDLEWARE_HANDSHAKE_WS, (req, next) => {
  const query = new URL(req.url, 'http://localhost').searchParams;
  if (query.get('ban') === '1') {
    next(new Error('Banned'));  // refused with HTTP 401
  } else {
    next();
  }
});

scServer.addMiddleware(scServer.MIDDLEWARE_PUBLISH_IN, (req, next) => {
  if (tokenChannels(req.socket).includes(req.channel)) {
    next();
  } else {
    next(new Error(`You are not authorized to publish to ${req.channel}`));
  }
});

scServer.addMiddleware(scServer.MIDDLEWARE_SUBSCRIBE, (req, next) => {
  const channel = req.channel;
  if (typeof channel === 'string' && channel.startsWith('private-') &&
      !tokenChannels(req.socket).includes(channel)) {
    next(new Error(`You are not authorized to subscribe to ${channel}`));
  } else {
    next();
  }
});

scServer.addMiddleware(scServer.MIDDLEWARE_PUBLISH_OUT, (req, next) => {
  const data = req.data;
  const isSecret = data !== null && typeof data === 'object' && data.secret === true;
  if (isSecret && !req.socket.authToken) {
    next(true);  // silently dropped for this subscriber
  } else {
    next();
  }
});

// --- Procedures -------------------------------------------------------------------------------

function checkLogin(data) {
  if (!data || typeof data !== 'object') return null;
  const user = USERS[data.username];
  if (!user || user.password !== data.password) return null;
  return {username: data.username, channels: user.channels.slice()};
}

scServer.on('connection', (socket) => {
  socket.on('login', (data, respond) => {
    const token = checkLogin(data);
    if (!token) {
      respond('Login failed');
      return;
    }
    socket.setAuthToken(token);
    respond();
  });

  socket.on('loginShort', (data, respond) => {
    const token = checkLogin(data);
    if (!token) {
      respond('Login failed');
      return;
    }
    socket.setAuthToken(token, {expiresIn: Number(data.ttl)});
    respond();
  });

  socket.on('whoami', (data, respond) => {
    respond(null, socket.authToken || null);
  });

  socket.on('echo', (data, respond) => {
    respond(null, data);
  });

  socket.on('fail', (data, respond) => {
    const err = new Error('it failed');
    err.name = 'CustomError';
    respond(err);
  });

  socket.on('logout', (data, respond) => {
    socket.deauthenticate();
    respond();
  });

  socket.on('serverPublish', (data, respond) => {
    scServer.exchange.publish(data.channel, data.data, (err) => {
      respond(err || null);
    });
  });

  socket.on('kick', (data, respond) => {
    socket.kickOut(data.channel, 'kicked');
    respond();
  });

  socket.on('disconnectMe', (data, respond) => {
    respond();
    setImmediate(() => socket.disconnect(data.code, data.reason));
  });

  socket.on('emitBack', (data, respond) => {
    socket.emit(data.event, data.data);
    respond();
  });
});

scServer.on('warning', () => {});
scServer.on('error', (err) => console.error('server error:', err));

// --- Lifecycle --------------------------------------------------------------------------------

listenAndServe(httpServer, scServer);
