'use strict';
// The stop of a server with many sockets, for benchmarks/stop.py: `count` clients connect,
// each presenting its own HS256 token in `#handshake` (and checking `isAuthenticated: true`),
// optionally subscribe to `news`; optionally one more client (its token lists `news`) keeps
// `inFlight` acknowledged publishes in flight on `news`. Then the runner stops the server
// (SIGTERM) and this records how every connection ended.
//
// Usage: node stop.js '<json config>'   (see stop.py for the fields)
// stdout: READY (all connected; the publish stream, if any, has `acksBeforeStop` acks), then,
// after a line on stdin (written by the runner just before its SIGTERM), once every connection
// has closed or `deadline_s` passed: RESULT {json}

const WebSocket = require('ws');
const jwt = require('jsonwebtoken');
const {performance} = require('perf_hooks');

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.now();
const say = (line) => process.stdout.write(line + '\n');

let t0 = null;  // the runner's stop (stdin line)
let open = 0;
let onAllClosed = null;
const codes = {};  // close code -> count (subscribers and idle clients)
const closeMs = [];  // t0 -> close event, per client
let early = 0;  // closed before the stop

class Client {
  constructor(i, token) {
    this.i = i;
    this.token = token;
    this.source = cfg.sources[i % cfg.sources.length];
    this.received = null;  // subscribers: the set of publication numbers
    this.ws = null;
    this.code = null;
  }

  // cb(null) once authenticated (and subscribed), cb(kind) on a failure (socket terminated).
  connect(subscribe, cb) {
    let settled = false;
    const ws = new WebSocket(cfg.url, {
      perMessageDeflate: false, localAddress: this.source, generateMask: (m) => m.fill(0),
    });
    this.ws = ws;
    const settle = (kind) => {
      if (settled) return;
      settled = true;
      if (kind !== null) { ws.removeAllListeners('close'); ws.on('error', () => {}); ws.terminate(); }
      cb(kind);
    };
    ws.on('open', () => {
      ws.send(JSON.stringify({event: '#handshake', data: {authToken: this.token}, cid: 1}));
    });
    ws.on('message', (buf) => {
      const text = buf.toString();
      if (text === '#1') { ws.send('#2'); return; }
      if (text === '') { ws.send(''); return; }
      let p;
      try { p = JSON.parse(text); } catch (err) { return; }
      if (p.event === '#publish' && this.received !== null) {
        this.received.add(p.data.data);
        return;
      }
      if (this.onPacket && this.onPacket(p)) return;
      if (p.rid === 1) {
        if (!(p.data && p.data.isAuthenticated === true)) { settle('not authenticated'); return; }
        if (!subscribe) { settle(null); return; }
        this.received = new Set();
        ws.send(JSON.stringify({event: '#subscribe', data: {channel: 'news'}, cid: 2}));
      } else if (p.rid === 2) {
        settle(p.error === undefined ? null : 'subscribe failed');
      }
    });
    ws.on('error', (err) => settle(err.code || 'error'));
    ws.on('close', (code) => {
      if (!settled) { settle(`close ${code}`); return; }
      this.code = code;
      open -= 1;
      if (t0 === null) { early += 1; } else { closeMs.push(now() - t0); }
      codes[code] = (codes[code] || 0) + 1;
      if (open === 0 && onAllClosed) onAllClosed();
    });
  }
}

function connectOne(c, subscribe) {
  return new Promise((resolve) => {
    const go = () => c.connect(subscribe, (kind) => {
      if (kind === null) { open += 1; resolve(); } else setTimeout(go, 100);
    });
    go();
  });
}

async function connectAll(clients, subscribe) {
  let next = 0;
  async function worker() {
    while (next < clients.length) await connectOne(clients[next++], subscribe);
  }
  await Promise.all(Array.from({length: 200}, worker));
}

function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * p / 100) - 1)]);
}

async function main() {
  const iat = Math.floor(Date.now() / 1000);
  const sign = (i) => jwt.sign({username: `user${i}`, channels: ['news'], iat}, cfg.auth_key,
    {algorithm: 'HS256', expiresIn: 86400});
  const clients = [];
  for (let i = 0; i < cfg.count; i++) clients.push(new Client(i, sign(i)));
  await connectAll(clients, cfg.subscribe);

  const acked = new Set();
  let publisher = null;
  if (cfg.publish) {
    publisher = new Client(cfg.count, sign(cfg.count));
    await connectOne(publisher, false);
    let cid = 10;
    let n = 0;
    const inflight = new Map();  // cid -> n
    let reached = null;
    const reachedP = new Promise((r) => { reached = r; });
    const publishOne = () => {
      if (publisher.ws.readyState !== WebSocket.OPEN) return;
      const c = cid++;
      inflight.set(c, n);
      publisher.ws.send(JSON.stringify({event: '#publish', data: {channel: 'news', data: n++}, cid: c}));
    };
    publisher.onPacket = (p) => {
      if (p.rid === undefined || !inflight.has(p.rid)) return false;
      const m = inflight.get(p.rid);
      inflight.delete(p.rid);
      if (p.error === undefined) {
        acked.add(m);
        if (acked.size === cfg.acksBeforeStop) reached();
        publishOne();
      }
      return true;
    };
    for (let i = 0; i < cfg.inFlight; i++) publishOne();
    await reachedP;
  }

  say(`READY ${open}`);
  const allClosed = new Promise((resolve) => { onAllClosed = resolve; });
  const lines = [];
  let wake = null;
  process.stdin.on('data', (buf) => {
    for (const l of buf.toString().split('\n')) if (l) lines.push(l);
    if (wake) { const w = wake; wake = null; w(); }
  });
  const nextLine = async () => {
    while (lines.length === 0) await new Promise((r) => { wake = r; });
    return lines.shift();
  };
  await nextLine();  // the runner's stop
  t0 = now();
  if (cfg.stall) {  // stop reading: the server's close frames and closes wait in the kernel
    for (const c of clients) c.ws._socket.pause();
    if (publisher) publisher.ws._socket.pause();
    say('STALLED');
    await nextLine();  // the server has exited: read what it wrote
    for (const c of clients) c.ws._socket.resume();
    if (publisher) publisher.ws._socket.resume();
  }
  const timeout = new Promise((resolve) => setTimeout(resolve, cfg.deadline_s * 1000));
  await Promise.race([allClosed, timeout]);
  closeMs.sort((a, b) => a - b);
  let lost = 0;
  if (cfg.subscribe) {
    for (const c of clients) for (const m of acked) if (!c.received.has(m)) lost += 1;
  }
  const pubCode = publisher ? publisher.code : null;
  if (publisher && pubCode !== null) {  // counted with the others above: report it apart
    codes[pubCode] -= 1;
    if (codes[pubCode] === 0) delete codes[pubCode];
  }
  say('RESULT ' + JSON.stringify({
    count: clients.length,
    still_open: open,
    closed_before_stop: early,
    codes,
    publisher_code: pubCode,
    acked: acked.size,
    lost_deliveries: lost,
    close_ms: {p50: pct(closeMs, 50), p99: pct(closeMs, 99), max: pct(closeMs, 100)},
  }));
  process.exit(0);
}

main().catch((err) => {
  say('RESULT ' + JSON.stringify({fatal: String(err.stack || err)}));
  process.exit(1);
});
