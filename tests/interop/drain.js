'use strict';
// Graceful drain with the real npm clients: subscribers (v14 and v20) on `news`, a publisher
// keeping ARGS.inFlight acknowledged publishes in flight. Prints `STOP` once ARGS.acksBeforeStop
// publishes were acknowledged (the test then sends SIGTERM to the server), and, once every
// socket has closed, ONE JSON line: {acked: [...], received: [[...], ...], closes: [...]}.
//
//   node drain.js '{"url":"ws://127.0.0.1:PORT/socketcluster/","v14":10,"v20":10,"inFlight":8,"acksBeforeStop":200}'

const ARGS = JSON.parse(process.argv[2] || '{}');

function create(major) {
  const u = new URL(ARGS.url);
  const options = {hostname: u.hostname, port: Number(u.port), path: u.pathname, autoReconnect: false, ackTimeout: 10000};
  if (major === 14) options.multiplex = false;
  return require(major === 14 ? 'sc-client-14' : 'sc-client-20').create(options);
}

// The code of the server's close frame, read from the underlying `ws` WebSocket (its 'close'
// event carries the frame's code): a client that sends while its WebSocket is already closing
// reports 1005 itself (v14 sctransport.js and v20 transport.js `send`), whatever the server sent.
async function opened(major, socket) {
  if (major === 14) {
    socket.on('error', () => {});  // (an unhandled 'error' would throw)
    if (socket.state !== 'open') await new Promise((resolve) => socket.once('connect', resolve));
  } else if (socket.state !== 'open') {
    await socket.listener('connect').once();
  }
  const ws = socket.transport.socket;
  return {closed: new Promise((resolve) => ws.once('close', (code) => resolve(code)))};
}

async function subscriber(major, received) {
  const socket = create(major);
  const {closed} = await opened(major, socket);
  const ch = socket.subscribe('news');
  if (major === 14) {
    ch.watch((data) => received.add(data));
    if (ch.state !== 'subscribed') await new Promise((resolve) => ch.once('subscribe', resolve));
  } else {
    (async () => { for await (const data of ch) received.add(data); })();
    if (ch.state !== 'subscribed') await ch.listener('subscribe').once();
  }
  return {closed};
}

function publish(major, socket, data) {
  if (major === 14) {
    return new Promise((resolve, reject) => socket.publish('news', data, (err) => (err ? reject(err) : resolve())));
  }
  return socket.invokePublish('news', data);
}

function invoke(major, socket, event, data) {
  if (major === 14) {
    return new Promise((resolve, reject) => socket.emit(event, data, (err, res) => (err ? reject(err) : resolve(res))));
  }
  return socket.invoke(event, data);
}

(async () => {
  const majors = [...Array(ARGS.v14).fill(14), ...Array(ARGS.v20).fill(20)];
  const received = majors.map(() => new Set());
  const subscribers = await Promise.all(majors.map((major, i) => subscriber(major, received[i])));
  const pubMajor = ARGS.pubMajor || 20;
  const pub = create(pubMajor);
  const pubClosed = (await opened(pubMajor, pub)).closed;
  await invoke(pubMajor, pub, 'login', {username: 'alice', password: 'alice-pass'});
  const acked = [];
  let next = 0;
  let stopped = false;
  let open = true;
  pubClosed.then(() => { open = false; });
  async function loop() {
    while (open) {
      const n = next++;
      try {
        await publish(pubMajor, pub, n);
      } catch (err) {
        return;
      }
      acked.push(n);
      if (!stopped && acked.length >= ARGS.acksBeforeStop) {
        stopped = true;
        process.stdout.write('STOP\n');
      }
    }
  }
  await Promise.all(Array.from({length: ARGS.inFlight}, loop));
  const closes = await Promise.all([...subscribers.map((s) => s.closed), pubClosed]);
  process.stdout.write(JSON.stringify({acked, received: received.map((s) => [...s]), closes}) + '\n');
  process.exit(0);
})().catch((err) => {
  process.stdout.write(JSON.stringify({error: String(err && err.stack || err)}) + '\n');
  process.exit(1);
});
