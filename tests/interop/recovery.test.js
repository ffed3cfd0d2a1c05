// Tests of the recovery helper for the stock JS clients (src/trio_socketcluster/static/recovery.js):
// its pure tracking, then the real socketcluster-client v14 and v20 against a scripted `ws`
// server that checks what every #subscribe carries across a reconnect.
// Run by tests/test_recovery_js.py: node --test recovery.test.js RECOVERY_JS_PATH
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const WebSocket = require('ws');

const RECOVERY = process.env.RECOVERY_JS || path.join(
  __dirname, '..', '..', 'src', 'trio_socketcluster', 'static', 'recovery.js');
const SCRecovery = require(RECOVERY);

function pub(channel, offset, epoch, data) {
  return JSON.stringify({event: '#publish', data: {channel, data: data ?? null, offset, epoch}});
}

test('tracks the last offset per channel and writes it into the subscribe data', () => {
  const r = SCRecovery.create();
  const news = r.data('news', {token: 't', recover: 'ignored'});
  assert.deepEqual(news, {token: 't'});
  r.onMessage(pub('news', 1, 'E'));
  r.onMessage(pub('news', 2, 'E'));
  assert.deepEqual(news, {token: 't', recover: {offset: 2, epoch: 'E'}});
  r.onMessage(pub('news', 1, 'E')); // never backwards within an epoch
  assert.deepEqual(r.position('news'), {offset: 2, epoch: 'E'});
  r.onMessage(pub('news', 1, 'F')); // a new epoch replaces the position
  assert.deepEqual(news.recover, {offset: 1, epoch: 'F'});
  assert.equal(r.data('news'), news, 'the same object every time');
});

test('reads batches, ignores pings, responses, other events and malformed positions', () => {
  const r = SCRecovery.create();
  const d = r.data('c');
  for (const m of ['#1', '', '{"rid":1,"data":{"offset":9,"epoch":"E"}}', 'not json #publish',
    '{"event":"#publish","data":{"channel":"c","data":1}}',
    pub('c', -1, 'E'), pub('c', 1.5, 'E'), pub('c', 3, ''), pub('c', 3, 5), null, undefined]) {
    r.onMessage(m);
  }
  assert.deepEqual(d, {});
  assert.equal(r.position('c'), null);
  r.onMessage('[' + pub('c', 4, 'E') + ',' + pub('other', 9, 'X') + ']');
  assert.deepEqual(d.recover, {offset: 4, epoch: 'E'});
  assert.deepEqual(r.position('other'), {offset: 9, epoch: 'X'});
  r.onMessage(Buffer.from(pub('c', 5, 'E')));
  assert.equal(d.recover.offset, 5);
});

test('data asked after publications starts with the known position; forget drops it', () => {
  const r = SCRecovery.create();
  r.onMessage(pub('late', 7, 'E'));
  const d = r.data('late');
  assert.deepEqual(d, {recover: {offset: 7, epoch: 'E'}});
  r.forget('late');
  assert.deepEqual(d, {});
  assert.equal(r.position('late'), null);
  assert.notEqual(r.data('late'), d);
});

test('channelPrefix is stripped from wire names', () => {
  const r = SCRecovery.create({channelPrefix: 'app/'});
  const d = r.data('news');
  r.onMessage(pub('app/news', 3, 'E'));
  r.onMessage(pub('news', 9, 'E')); // not ours: no prefix
  assert.deepEqual(d.recover, {offset: 3, epoch: 'E'});
});

test('seek sets a position (never backwards within an epoch); onPublication sees each one', () => {
  const seen = [];
  const r = SCRecovery.create({channelPrefix: 'app/', onPublication: (name, p) => seen.push([name, p])});
  const d = r.data('room');
  r.seek('room', {offset: 10, epoch: 'E'});
  assert.deepEqual(d.recover, {offset: 10, epoch: 'E'});
  r.seek('room', {offset: 4, epoch: 'E'});
  r.seek('room', {offset: 'x', epoch: 'E'});
  r.seek('room', null);
  assert.deepEqual(r.position('room'), {offset: 10, epoch: 'E'});
  r.onMessage(pub('app/room', 9, 'E', 'old'));  // reported, the position stays
  r.onMessage('[' + pub('app/room', 11, 'E', 'new') + ',' + pub('room', 12, 'E', 'not ours') + ']');
  r.seek('room', {offset: 2, epoch: 'F'});  // another epoch replaces it
  assert.deepEqual(d.recover, {offset: 2, epoch: 'F'});
  assert.deepEqual(seen, [
    ['room', {data: 'old', offset: 9, epoch: 'E'}],
    ['room', {data: 'new', offset: 11, epoch: 'E'}],
  ]);
});

// A scripted server: answers the handshake and every #subscribe, records the subscribes,
// sends two publications on the first connection, then drops it (code 4000).
function scriptedServer() {
  const server = new WebSocket.Server({host: '127.0.0.1', port: 0});
  const subscribes = [];
  let connections = 0;
  let onSecond;
  const second = new Promise((resolve) => { onSecond = resolve; });
  server.on('connection', (ws) => {
    const n = ++connections;
    ws.on('message', (raw) => {
      const text = raw.toString();
      if (text === '#2' || text === '') return;
      const packets = [].concat(JSON.parse(text));
      for (const p of packets) {
        if (p.event === '#handshake') {
          ws.send(JSON.stringify({rid: p.cid, data: {id: 's' + n, pingTimeout: 20000, isAuthenticated: false}}));
        } else if (p.event === '#subscribe') {
          subscribes.push({connection: n, data: p.data});
          ws.send(JSON.stringify({rid: p.cid, data: {recovered: n > 1, offset: 2, epoch: 'E1'}}));
          if (n === 1) {
            ws.send(pub(p.data.channel, 1, 'E1', 'one'));
            ws.send('[' + pub(p.data.channel, 2, 'E1', 'two') + ']');
            setTimeout(() => ws.close(4000, 'bye'), 50);
          } else {
            onSecond();
          }
        }
      }
    });
  });
  return new Promise((resolve) => server.on('listening', () => resolve({
    server, subscribes, second, port: server.address().port,
  })));
}

const RECONNECT = {initialDelay: 20, randomness: 10, multiplier: 1, maxDelay: 50};

test('v14 resubscribes with {recover: {offset, epoch}} after a reconnect', async () => {
  const {server, subscribes, second, port} = await scriptedServer();
  const client = require('sc-client-14');
  const socket = client.create({hostname: '127.0.0.1', port, autoReconnectOptions: RECONNECT});
  const recovery = SCRecovery.create();
  socket.on('message', recovery.onMessage);
  socket.on('error', () => {}); // the dropped connection is reported as an error event
  const got = [];
  const channel = socket.subscribe('news', {data: recovery.data('news', {mine: 1})});
  channel.watch((data) => got.push(data));
  try {
    await second;
    assert.deepEqual(subscribes.map((s) => s.connection), [1, 2]);
    assert.deepEqual(subscribes[0].data, {channel: 'news', data: {mine: 1}});
    assert.deepEqual(subscribes[1].data,
      {channel: 'news', data: {mine: 1, recover: {offset: 2, epoch: 'E1'}}});
    assert.deepEqual(got, ['one', 'two']);
  } finally {
    socket.destroy();
    server.close();
  }
});

test('v20 resubscribes with {recover: {offset, epoch}} after a reconnect', async () => {
  const {server, subscribes, second, port} = await scriptedServer();
  const client = require('sc-client-20');
  const socket = client.create({hostname: '127.0.0.1', port, autoReconnectOptions: RECONNECT});
  const recovery = SCRecovery.create();
  (async () => {
    for await (const {message} of socket.listener('message')) recovery.onMessage(message);
  })();
  const channel = socket.subscribe('news', {data: recovery.data('news')});
  const got = [];
  (async () => { for await (const data of channel) got.push(data); })();
  try {
    await second;
    assert.deepEqual(subscribes.map((s) => s.connection), [1, 2]);
    assert.deepEqual(subscribes[0].data, {channel: 'news', data: {}});
    assert.deepEqual(subscribes[1].data,
      {channel: 'news', data: {recover: {offset: 2, epoch: 'E1'}}});
    assert.deepEqual(got, ['one', 'two']);
  } finally {
    socket.disconnect();
    socket.killAllListeners();
    socket.closeAllChannels();
    server.close();
  }
});
