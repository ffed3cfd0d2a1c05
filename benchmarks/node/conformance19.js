'use strict';
// The conformance application (its contract: docs/conformance.md) written on the public
// API of socketcluster-server 19.x (protocol 2). It is the reference the interop scenarios are
// validated against, and the Node opponent in the benchmarks.
//
// Environment: PORT (0 = pick a free port), AUTH_KEY (HS256 secret), HOST (default 127.0.0.1).
// Prints `READY <port>` once listening; SIGTERM/SIGINT shut down and exit 0.

const {http, requireDep, USERS, SERVER_OPTIONS, tokenChannels, listenAndServe} = require('./common');

const socketClusterServer = requireDep('sc-server-19');

const httpServer = http.createServer();
const agServer = socketClusterServer.attach(httpServer, SERVER_OPTIONS);

// --- Middleware -------------------------------------------------------------------------------

agServer.setMiddleware(agServer.MIDDLEWARE_HANDSHAKE, async (stream) => {
  for await (const action of stream) {
    if (action.type === action.HANDSHAKE_WS) {
      const query = new URL(action.request.url, 'http://localhost').searchParams;
      if (query.get('ban') === '1') {
        action.block(new Error('Banned'));  // refused with HTTP 401
        continue;
      }
    }
    action.allow();
  }
});

agServer.setMiddleware(agServer.MIDDLEWARE_INBOUND, async (stream) => {
  for await (const action of stream) {
    if (action.type === action.PUBLISH_IN) {
      if (!tokenChannels(action.socket).includes(action.channel)) {
        action.block(new Error(`You are not authorized to publish to ${action.channel}`));
        continue;
      }
    } else if (action.type === action.SUBSCRIBE) {
      const channel = action.channel;
      if (typeof channel === 'string' && channel.startsWith('private-') &&
          !tokenChannels(action.socket).includes(channel)) {
        action.block(new Error(`You are not authorized to subscribe to ${channel}`));
        continue;
      }
    }
    action.allow();
  }
});

agServer.setMiddleware(agServer.MIDDLEWARE_OUTBOUND, async (stream) => {
  for await (const action of stream) {
    if (action.type === action.PUBLISH_OUT) {
      const data = action.data;
      const isSecret = data !== null && typeof data === 'object' && data.secret === true;
      if (isSecret && !action.socket.authToken) {
        const err = new Error('secret');
        err.silent = true;  // not delivered to this subscriber, nothing reported
        action.block(err);
        continue;
      }
    }
    action.allow();
  }
});

// --- Procedures -------------------------------------------------------------------------------

function checkLogin(data) {
  if (!data || typeof data !== 'object') return null;
  const user = USERS[data.username];
  if (!user || user.password !== data.password) return null;
  return {username: data.username, channels: user.channels.slice()};
}

function serve(socket, name, handler) {
  (async () => {
    for await (const request of socket.procedure(name)) {
      try {
        await handler(request.data, request);
      } catch (err) {
        if (!request.sent) request.error(err);
      }
    }
  })();
}

(async () => {
  for await (const {socket} of agServer.listener('connection')) {
    serve(socket, 'login', async (data, request) => {
      const token = checkLogin(data);
      if (!token) {
        request.error('Login failed');
        return;
      }
      await socket.setAuthToken(token);
      request.end();
    });

    serve(socket, 'loginShort', async (data, request) => {
      const token = checkLogin(data);
      if (!token) {
        request.error('Login failed');
        return;
      }
      await socket.setAuthToken(token, {expiresIn: Number(data.ttl)});
      request.end();
    });

    serve(socket, 'whoami', (data, request) => request.end(socket.authToken || null));

    serve(socket, 'echo', (data, request) => request.end(data));

    serve(socket, 'fail', (data, request) => {
      const err = new Error('it failed');
      err.name = 'CustomError';
      request.error(err);
    });

    serve(socket, 'logout', async (data, request) => {
      await socket.deauthenticate();
      request.end();
    });

    serve(socket, 'serverPublish', async (data, request) => {
      await agServer.exchange.invokePublish(data.channel, data.data);
      request.end();
    });

    serve(socket, 'kick', (data, request) => {
      socket.kickOut(data.channel, 'kicked');
      request.end();
    });

    serve(socket, 'disconnectMe', (data, request) => {
      request.end();
      setImmediate(() => socket.disconnect(data.code, data.reason));
    });

    serve(socket, 'emitBack', (data, request) => {
      socket.transmit(data.event, data.data);
      request.end();
    });
  }
})();

(async () => {
  for await (const {error} of agServer.listener('error')) console.error('server error:', error);
})();

// --- Lifecycle --------------------------------------------------------------------------------

listenAndServe(httpServer, agServer);
