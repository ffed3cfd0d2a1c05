'use strict';
// A subscriber for the recovery chaos tests: the real npm socketcluster-client (v14 or v20)
// with the recovery helper (src/trio_socketcluster/static/recovery.js), reconnecting fast.
//
//   node recover_sub.js <14|20> <ws-url> <channel> <recovery.js path>
//
// Prints `SUBSCRIBED` once the first subscription is confirmed, then collects every
// publication's data on <channel> until one equals {"end": true}; then prints ONE JSON line:
// {received: [...data], connects, subscribes, position}. Exits 1 with {failure} on a crash.

const [, , majorArg, wsUrl, channelName, recoveryPath] = process.argv;
const MAJOR = Number(majorArg);
if ((MAJOR !== 14 && MAJOR !== 20) || !wsUrl || !channelName || !recoveryPath) {
  console.error('usage: node recover_sub.js <14|20> <ws-url> <channel> <recovery.js>');
  process.exit(2);
}
const SC = require(MAJOR === 14 ? 'sc-client-14' : 'sc-client-20');
const SCRecovery = require(recoveryPath);

const u = new URL(wsUrl);
const socket = SC.create({
  hostname: u.hostname,
  port: Number(u.port),
  path: u.pathname,
  ackTimeout: 5000,
  connectTimeout: 5000,
  multiplex: false,
  autoReconnectOptions: {initialDelay: 100, randomness: 50, multiplier: 1, maxDelay: 200},
});
const recovery = SCRecovery.create();
const received = [];
let connects = 0;
let subscribes = 0;

function finish() {
  console.log(JSON.stringify({received, connects, subscribes, position: recovery.position(channelName)}));
  if (MAJOR === 14) {
    socket.destroy();
  } else {
    socket.disconnect();
    socket.killAllListeners();
    socket.closeAllChannels();
  }
  process.exit(0);
}

function onData(data) {
  if (data && typeof data === 'object' && data.end === true) {
    finish();
    return;
  }
  received.push(data);
}

function onSubscribed() {
  subscribes += 1;
  if (subscribes === 1) console.log('SUBSCRIBED');
}

try {
  if (MAJOR === 14) {
    socket.on('message', recovery.onMessage);
    socket.on('error', () => {}); // a reset connection is reported as an error event
    socket.on('connect', () => { connects += 1; });
    const channel = socket.subscribe(channelName, {data: recovery.data(channelName)});
    channel.on('subscribe', onSubscribed);
    channel.watch(onData);
  } else {
    (async () => {
      for await (const {message} of socket.listener('message')) recovery.onMessage(message);
    })();
    (async () => {
      for await (const _ of socket.listener('connect')) connects += 1; // eslint-disable-line no-unused-vars
    })();
    const channel = socket.subscribe(channelName, {data: recovery.data(channelName)});
    (async () => {
      for await (const _ of channel.listener('subscribe')) onSubscribed(); // eslint-disable-line no-unused-vars
    })();
    (async () => {
      for await (const data of channel) onData(data);
    })();
  }
} catch (err) {
  console.log(JSON.stringify({failure: String(err && err.stack || err)}));
  process.exit(1);
}
