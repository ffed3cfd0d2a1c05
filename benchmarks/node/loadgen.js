'use strict';
// Load generator for benchmarks/run.py: speaks the SocketCluster protocol directly over `ws`
// (handshake, pings `#1`->`#2` and ''->'', invoke, publish, subscribe), so it costs far less
// CPU per message than socketcluster-client and is not the bottleneck.
//
// Usage: node loadgen.js '<json config>'   (see run.py for the fields)
// stdout, one line each:  START (measurement begins)  END (measurement ends)
//                         RESULT {json}                HOLD (handshake: idle connections open;
//                         waits for a line on stdin before closing them)
// Every workload verifies what it measures; failures are counted in RESULT.errors (with a few
// samples in RESULT.error_samples) and RESULT.ok is false if any.

const WebSocket = require('ws');
const jwt = require('jsonwebtoken');
const {performance} = require('perf_hooks');

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.now();

// --- latency histogram (log buckets, 1 % wide, microseconds) --------------------------------
const LOG_STEP = Math.log(1.01);
class Histogram {
  constructor() { this.counts = new Float64Array(2200); this.n = 0; this.max = 0; }
  add(ms) {
    const us = ms * 1000;
    const i = us <= 1 ? 0 : Math.min(2199, Math.ceil(Math.log(us) / LOG_STEP));
    this.counts[i] += 1;
    this.n += 1;
    if (ms > this.max) this.max = ms;
  }
  pct(p) {
    if (this.n === 0) return null;
    const target = Math.ceil(this.n * p / 100);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= target) return Math.round(Math.exp(i * LOG_STEP)) / 1000;  // ms
    }
    return this.max;
  }
  summary() { return {n: this.n, p50_ms: this.pct(50), p99_ms: this.pct(99), max_ms: this.max}; }
}

// --- errors ---------------------------------------------------------------------------------
let errors = 0;
const errorSamples = [];
function fail(msg) {
  errors += 1;
  if (errorSamples.length < 10) errorSamples.push(msg);
}

// --- a minimal SocketCluster connection -------------------------------------------------------
class Conn {
  constructor(url, localAddress) {
    this.url = url;
    this.localAddress = localAddress;  // source address (127.0.0.x: more ephemeral ports)
    this.cid = 0;
    this.pending = new Map();  // cid -> callback(packet)
    this.onPublish = null;      // (data) => void
    this.onEvent = null;        // (packet) => void
    this.closed = false;
    this.fast = null;           // (text) => true if it handled the message (no JSON.parse)
    this.fastBuf = null;        // (buf) => true if it handled the raw message (no decoding)
    this.corked = false;
    this.pings = 0;             // heartbeats answered
  }

  open(authToken, cb) {
    // A zero masking key makes ws skip the XOR pass (servers cannot tell: the key is per frame).
    const options = {
      perMessageDeflate: false, skipUTF8Validation: true, generateMask: (m) => m.fill(0),
    };
    if (this.localAddress) options.localAddress = this.localAddress;
    const ws = new WebSocket(this.url, options);
    this.ws = ws;
    ws.on('open', () => this.invoke('#handshake', {authToken: authToken || null}, cb));
    ws.on('message', (buf) => this._onMessage(buf));
    ws.on('error', (err) => { if (!this.closed) fail(`ws error: ${err.message}`); });
    ws.on('close', (code, reason) => {
      if (!this.closed) fail(`unexpected close ${code} ${reason}`);
      this.closed = true;
    });
  }

  close() { this.closed = true; if (this.ws) this.ws.terminate(); }

  invoke(event, data, cb) { return this.invokeRaw(event, JSON.stringify(data), cb); }

  invokeRaw(event, dataJson, cb) {  // dataJson: the data, already JSON
    const cid = ++this.cid;
    this.pending.set(cid, cb);
    this.ws.send(`{"event":${JSON.stringify(event)},"data":${dataJson},"cid":${cid}}`);
    return cid;
  }

  _onMessage(buf) {
    // A delivery byte-identical to the expected one costs a memcmp: no UTF-8 decoding, no
    // JSON.parse, no cork (a subscriber has nothing to send back).
    if (this.fastBuf !== null && this.fastBuf(buf)) return;
    // Replies sent while handling what one read brought leave in one write.
    if (!this.corked && this.ws._socket) {
      this.corked = true;
      this.ws._socket.cork();
      process.nextTick(() => { this.corked = false; this.ws._socket.uncork(); });
    }
    const text = buf.toString();
    if (text === '#1') { this.pings += 1; this.ws.send('#2'); return; }
    if (text === '') { this.pings += 1; this.ws.send(''); return; }
    if (this.fast !== null && this.fast(text)) return;
    let value;
    try { value = JSON.parse(text); } catch (err) { fail(`bad JSON ${text.slice(0, 80)}`); return; }
    if (Array.isArray(value)) value.forEach((p) => this._onPacket(p)); else this._onPacket(value);
  }

  _onPacket(p) {
    if (p === null || typeof p !== 'object') { fail(`raw message ${JSON.stringify(p)}`); return; }
    if (typeof p.rid === 'number') {
      const cb = this.pending.get(p.rid);
      if (!cb) { fail(`unknown rid ${p.rid}`); return; }
      this.pending.delete(p.rid);
      cb(p);
    } else if (p.event === '#publish') {
      if (this.onPublish) this.onPublish(p.data); else fail('unexpected #publish');
    } else if (this.onEvent) {
      this.onEvent(p);
    }
  }
}

function openConn(authToken) {
  return new Promise((resolve, reject) => {
    const c = new Conn(cfg.url);
    c.open(authToken, (p) => {
      if (p.error) reject(new Error(`handshake error ${JSON.stringify(p.error)}`)); else resolve(c);
    });
  });
}

function call(c, event, data) {
  return new Promise((resolve, reject) => {
    c.invoke(event, data, (p) => {
      if (p.error !== undefined) reject(new Error(`${event}: ${JSON.stringify(p.error)}`));
      else resolve(p.data);
    });
  });
}

async function openMany(n, concurrency, setup) {
  const conns = new Array(n);
  let next = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      const c = await openConn(null);
      if (setup) await setup(c, i);
      conns[i] = c;
    }
  }
  await Promise.all(Array.from({length: Math.min(concurrency, n)}, worker));
  return conns;
}

async function login(c, i) {
  const user = i % 2 === 0 ? 'alice' : 'bob';
  const gotToken = new Promise((resolve) => {
    c.onEvent = (p) => { if (p.event === '#setAuthToken') resolve(p.data); };
  });
  await call(c, 'login', {username: user, password: `${user}-pass`});
  const data = await gotToken;
  if (!data || typeof data.token !== 'string') fail('#setAuthToken without token');
  c.onEvent = null;
  return user;
}

const FAST_OK = Symbol('verified on the fast path');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const say = (line) => process.stdout.write(line + '\n');

// --- workloads --------------------------------------------------------------------------------

// fanout: `subscribers` connections on `channel` (default `news`, which keeps history in the
// conformance app), one logged-in publisher keeping `in_flight` publishes unacknowledged;
// every subscriber must get every message exactly once, in order. On another channel the
// publisher hands over a token it signs itself, naming that channel (the app's publish rule).
async function fanout() {
  const channel = cfg.channel || 'news';
  const subs = await openMany(cfg.subscribers, 50, async (c) => {
    await call(c, '#subscribe', {channel});
  });
  let pub;
  if (channel === 'news') {
    pub = await openConn(null);
    await login(pub, 0);
  } else {
    pub = await openConn(jwt.sign({username: 'alice', channels: [channel]}, cfg.auth_key,
      {algorithm: 'HS256', expiresIn: 86400}));
  }
  const hist = new Histogram();
  const expected = new Int32Array(subs.length);  // next expected seq per subscriber
  let delivered = 0;
  let lastDelivery = 0;
  let seq = 0;
  let acked = 0;
  let running = true;
  let warmSeq = Infinity;  // messages from this seq on are measured
  // Publish `s` reaches every subscriber as the same bytes (encoded once by every server).
  // The first delivery of `s` is parsed and checked field by field (channel, the published
  // data; a server with channel history adds offset and epoch); the other subscribers' copies
  // are compared with it byte for byte (memcmp), without UTF-8 decoding or JSON.parse.
  const PREFIX = Buffer.from(`{"event":"#publish","data":{"channel":${JSON.stringify(channel)},"data":{"s":`);
  const first = [];   // seq -> the first delivery's bytes, once checked
  const sentAt = [];  // seq -> send time (ms)
  const payload = 'x'.repeat(cfg.payload_bytes || 32);
  let fastHits = 0;
  function received(k, s, sentTime) {
    const t = now();
    if (s !== expected[k]) fail(`sub ${k}: got seq ${s}, expected ${expected[k]}`);
    expected[k] = s + 1;
    if (s >= warmSeq) { hist.add(t - sentTime); delivered += 1; lastDelivery = t; }
  }
  let withPosition = 0;  // checked deliveries that carry a history position (offset, epoch)
  function checked(d) {  // the `data` of a #publish packet: is it publish d.data.s?
    const m = d && d.data;
    const ok = d && d.channel === channel && m && Number.isInteger(m.s) && m.s >= 0 && m.s < seq &&
      m.t === sentAt[m.s] && m.p === payload;
    if (ok && Number.isInteger(d.offset) && typeof d.epoch === 'string') withPosition += 1;
    return ok;
  }
  subs.forEach((c, k) => {
    c.onPublish = (d) => {
      if (!checked(d)) { fail(`bad publish ${JSON.stringify(d)}`); return; }
      received(k, d.data.s, d.data.t);
    };
    c.fastBuf = (buf) => {
      const n = PREFIX.length;
      if (buf.length <= n + 1 || buf[n - 1] !== 0x3a || buf[n - 2] !== 0x22) return false;
      let s = 0;
      let i = n;
      for (; i < buf.length && buf[i] >= 0x30 && buf[i] <= 0x39; i++) s = s * 10 + buf[i] - 0x30;
      if (i === n || s >= seq) return false;
      const want = first[s];
      if (want !== undefined) {
        if (!buf.equals(want)) return false;
        fastHits += 1;
      } else {
        let p;
        try { p = JSON.parse(buf.toString()); } catch (err) { return false; }
        if (!p || p.event !== '#publish' || !checked(p.data) || p.data.data.s !== s) return false;
        first[s] = Buffer.from(buf);
      }
      received(k, s, sentAt[s]);
      return true;
    };
  });

  function publishOne() {
    const s = seq++;
    const t = now();
    sentAt[s] = t;
    pub.invokeRaw('#publish', `{"channel":${JSON.stringify(channel)},"data":${JSON.stringify({s, t, p: payload})}}`, (p) => {
      if (p.error !== undefined) fail(`publish ${s}: ${JSON.stringify(p.error)}`);
      acked += 1;
      if (running) publishOne();
    });
  }
  for (let i = 0; i < cfg.in_flight; i++) publishOne();
  await sleep(cfg.warmup_s * 1000);
  warmSeq = seq;
  const t0 = now();
  say('START');
  await sleep(cfg.duration_s * 1000);
  running = false;
  const published = seq;
  // drain: every subscriber must receive everything that was published
  const deadline = now() + cfg.drain_s * 1000;
  while (now() < deadline && (acked < published || expected.some((e) => e !== published))) {
    await sleep(20);
  }
  const t1 = lastDelivery;
  say('END');
  const missing = expected.reduce((a, e) => a + (published - e), 0);
  if (acked !== published) fail(`${published - acked} publishes not acknowledged`);
  if (missing) fail(`${missing} deliveries missing after ${cfg.drain_s}s drain`);
  const measuredMsgs = published - warmSeq;
  if (delivered !== measuredMsgs * subs.length) {
    fail(`delivered ${delivered}, expected ${measuredMsgs * subs.length}`);
  }
  return {
    subscribers: subs.length, published, measured_publishes: measuredMsgs,
    elapsed_s: (t1 - t0) / 1000,
    msgs_per_s: delivered / ((t1 - t0) / 1000),
    publishes_per_s: measuredMsgs / ((t1 - t0) / 1000),
    fast_path_share: fastHits / Math.max(1, published * subs.length),
    history: withPosition > 0,  // the channel keeps history (its publishes carry offsets)
    latency: hist.summary(),
    _close: () => { subs.forEach((c) => c.close()); pub.close(); },
  };
}

// rpc / authrpc: `connections` connections each keeping `depth` invokes in flight.
async function rpcLoop(auth) {
  const conns = await openMany(cfg.connections, 50, auth ? login : null);
  const users = conns.map((c, i) => (i % 2 === 0 ? 'alice' : 'bob'));
  const hist = new Histogram();
  let measuring = false;
  let running = true;
  let done = 0;
  let outstanding = 0;
  const payload = 'x'.repeat(cfg.payload_bytes || 32);
  conns.forEach((c, k) => {
    let n = 0;
    // Fast path: a reply byte-identical to the expected one is verified without JSON.parse
    // (echo: `{"rid":cid,"data":<what was sent>}`; whoami: the first reply, once checked).
    const expect = new Map();  // cid -> expected reply text
    let whoamiData = null;
    c.fast = (text) => {
      if (!text.startsWith('{"rid":')) return false;
      const rid = parseInt(text.slice(7), 10);
      const want = auth ? (whoamiData && `{"rid":${rid},"data":${whoamiData}}`) : expect.get(rid);
      if (text !== want) return false;
      expect.delete(rid);
      const cb = c.pending.get(rid);
      c.pending.delete(rid);
      cb({rid, data: FAST_OK});
      return true;
    };
    function one() {
      const i = n++;
      const t = now();
      outstanding += 1;
      const check = auth
        ? (p) => {
          if (p.data === FAST_OK) return;
          if (!p.data || p.data.username !== users[k]) fail(`whoami: ${JSON.stringify(p)}`);
          else whoamiData = JSON.stringify(p.data);
        }
        : (p) => {
          if (p.data === FAST_OK) return;
          if (p.error !== undefined || !p.data || p.data.i !== i || p.data.p !== payload) {
            fail(`echo ${i}: ${JSON.stringify(p).slice(0, 120)}`);
          }
        };
      const dataJson = auth ? 'null' : JSON.stringify({i, p: payload});
      if (!auth) expect.set(c.cid + 1, `{"rid":${c.cid + 1},"data":${dataJson}}`);
      const cid = c.invokeRaw(auth ? 'whoami' : 'echo', dataJson, (p) => {
        outstanding -= 1;
        if (p.rid !== cid) fail('rid mismatch');
        check(p);
        if (measuring) { hist.add(now() - t); done += 1; }
        if (running) one();
      });
    }
    for (let j = 0; j < cfg.depth; j++) one();
  });
  await sleep(cfg.warmup_s * 1000);
  measuring = true;
  const t0 = now();
  say('START');
  await sleep(cfg.duration_s * 1000);
  measuring = false;
  const t1 = now();
  say('END');
  running = false;
  const deadline = now() + cfg.drain_s * 1000;
  while (outstanding > 0 && now() < deadline) await sleep(10);
  if (outstanding) fail(`${outstanding} invokes never answered`);
  return {
    connections: conns.length, depth: cfg.depth, requests: done,
    elapsed_s: (t1 - t0) / 1000, req_per_s: done / ((t1 - t0) / 1000),
    latency: hist.summary(),
    _close: () => conns.forEach((c) => c.close()),
  };
}

// handshake: `count` connections with a valid JWT, `concurrency` handshakes in flight; they
// are then kept open (idle, answering pings) until the runner writes a line on stdin.
async function handshake() {
  const tokens = [];
  const iat = Math.floor(Date.now() / 1000);
  for (let i = 0; i < cfg.count; i++) {
    tokens.push(jwt.sign({username: i % 2 ? 'bob' : 'alice', channels: ['news'], n: i, iat},
      cfg.auth_key, {algorithm: 'HS256', expiresIn: 86400}));
  }
  const hist = new Histogram();
  const conns = [];
  let next = 0;
  const t0 = now();
  say('START');
  async function worker() {
    while (next < cfg.count) {
      const i = next++;
      const t = now();
      await new Promise((resolve) => {
        const c = new Conn(cfg.url);
        c.open(tokens[i], (p) => {
          if (p.error !== undefined || !p.data || p.data.isAuthenticated !== true ||
              p.data.authError !== undefined || typeof p.data.id !== 'string') {
            fail(`handshake ${i}: ${JSON.stringify(p).slice(0, 200)}`);
          }
          hist.add(now() - t);
          conns.push(c);
          resolve();
        });
        c.ws.on('error', resolve);
      });
    }
  }
  await Promise.all(Array.from({length: cfg.concurrency}, worker));
  const t1 = now();
  say('END');
  const open = conns.filter((c) => !c.closed).length;
  if (open !== cfg.count) fail(`${cfg.count - open} connections not open`);
  return {
    count: cfg.count, concurrency: cfg.concurrency, elapsed_s: (t1 - t0) / 1000,
    handshakes_per_s: cfg.count / ((t1 - t0) / 1000), latency: hist.summary(),
    _hold: true,
    _close: () => conns.forEach((c) => c.close()),
  };
}

// idle: one process's share of a crowd of idle authenticated connections (benchmarks/idle.py
// starts several, each from its own source address). Opens `count` connections, each with its
// own HS256 JWT, `concurrency` handshakes in flight, prints `OPEN {...}`, then answers pings and
// obeys stdin, one command a line:
//   round <spread_ms>  every connection invokes `echo` once; the invokes are spread evenly
//                      over spread_ms (0: all at once); prints `ROUND {...}` with every
//                      latency (ms) once every reply is in (or after drain_s)
//   stats              prints `STATS {pings, open}` (heartbeats answered so far)
//   close              closes every connection and exits
async function idle() {
  const jwt8 = require('jsonwebtoken-8');  // 50x faster signing than jsonwebtoken 9
  const iat = Math.floor(Date.now() / 1000);
  const base = cfg.first_index || 0;
  const conns = [];
  let next = 0;
  let failed = 0;
  const t0 = now();
  async function worker() {
    while (next < cfg.count) {
      const i = next++;
      const token = jwt8.sign(
        {username: (base + i) % 2 ? 'bob' : 'alice', channels: ['news'], n: base + i, iat},
        cfg.auth_key, {algorithm: 'HS256', expiresIn: cfg.token_ttl_s || 86400});
      await new Promise((resolve) => {
        const c = new Conn(cfg.url, cfg.local_address);
        c.open(token, (p) => {
          if (p.error !== undefined || !p.data || p.data.isAuthenticated !== true) {
            fail(`handshake ${i}: ${JSON.stringify(p).slice(0, 200)}`);
            failed += 1;
          } else {
            conns.push(c);
          }
          resolve();
        });
        c.ws.on('error', () => { failed += 1; resolve(); });
      });
    }
  }
  await Promise.all(Array.from({length: cfg.concurrency || 100}, worker));
  say('OPEN ' + JSON.stringify({open: conns.length, failed, elapsed_s: (now() - t0) / 1000,
    errors, error_samples: errorSamples}));

  function round(spreadMs) {
    return new Promise((resolve) => {
      const lat = new Float64Array(conns.length);
      let answered = 0;
      let sent = 0;
      const start = now();
      const finish = () => {
        const got = Array.from(lat.subarray(0, conns.length)).filter((x) => x > 0);
        resolve({n: conns.length, answered, elapsed_ms: now() - start,
          latencies_ms: got.map((x) => Math.round(x * 100) / 100)});
      };
      const timer = setTimeout(finish, (cfg.drain_s || 60) * 1000 + spreadMs);
      function sendOne(k) {
        const c = conns[k];
        const t = now();
        const payload = `{"k":${k}}`;
        c.invokeRaw('echo', payload, (p) => {
          if (p.error !== undefined || !p.data || p.data.k !== k) {
            fail(`echo ${k}: ${JSON.stringify(p).slice(0, 120)}`);
          }
          lat[k] = Math.max(now() - t, 1e-6);
          answered += 1;
          if (answered === conns.length) { clearTimeout(timer); finish(); }
        });
      }
      if (spreadMs <= 0) {
        for (let k = 0; k < conns.length; k++) sendOne(k);
        return;
      }
      // Paced: every 5 ms, send what is due by now (evenly over spreadMs).
      const tick = () => {
        const due = Math.min(conns.length, Math.ceil((now() - start) / spreadMs * conns.length));
        while (sent < due) sendOne(sent++);
        if (sent < conns.length) setTimeout(tick, 5);
      };
      tick();
    });
  }

  let pending = '';
  await new Promise((resolveAll) => {
    process.stdin.on('data', async (chunk) => {
      pending += chunk.toString();
      let nl;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const [cmd, arg] = pending.slice(0, nl).trim().split(/\s+/);
        pending = pending.slice(nl + 1);
        if (cmd === 'round') {
          const r = await round(Number(arg || 0));
          say('ROUND ' + JSON.stringify({...r, errors, error_samples: errorSamples}));
        } else if (cmd === 'stats') {
          const open = conns.filter((c) => !c.closed).length;
          say('STATS ' + JSON.stringify({pings: conns.reduce((a, c) => a + c.pings, 0), open,
            errors}));
        } else if (cmd === 'close') {
          resolveAll();
        }
      }
    });
  });
  return {count: cfg.count, open: conns.length, _close: () => conns.forEach((c) => c.close())};
}

// micro: the Node side of the codec and JWT micro-benchmarks (ns per op).
function micro() {
  const formatter = require('sc-formatter');
  const jwt8 = require('jsonwebtoken-8');
  const packet = cfg.packet;
  const text = JSON.stringify(packet);
  function bench(fn) {
    for (let i = 0; i < 2000; i++) fn();  // warm up the JIT
    let n = 1000;
    for (;;) {
      const t = process.hrtime.bigint();
      for (let i = 0; i < n; i++) fn();
      const dt = Number(process.hrtime.bigint() - t);
      if (dt > 2e8) return dt / n;
      n *= 4;
    }
  }
  const key = cfg.auth_key;
  const token = jwt.sign(cfg.token_payload, key, {algorithm: 'HS256', expiresIn: 86400});
  const runs = (fn) => {
    const r = [1, 2, 3, 4, 5].map(() => bench(fn));
    return Math.min(...r);
  };
  let sink = 0;
  return {
    encode_ns: runs(() => { sink += formatter.encode(packet).length; }),
    decode_ns: runs(() => { sink += formatter.decode(text) ? 1 : 0; }),
    jwt_sign_ns: runs(() => {
      sink += jwt.sign(cfg.token_payload, key, {algorithm: 'HS256', expiresIn: 86400}).length;
    }),
    jwt_verify_ns: runs(() => { sink += jwt.verify(token, key, {algorithms: ['HS256']}) ? 1 : 0; }),
    // jsonwebtoken 8 is what socketcluster-server 14 uses (via sc-auth); 9 is S19's (ag-auth).
    jwt8_sign_ns: runs(() => {
      sink += jwt8.sign(cfg.token_payload, key, {algorithm: 'HS256', expiresIn: 86400}).length;
    }),
    jwt8_verify_ns: runs(() => { sink += jwt8.verify(token, key, {algorithms: ['HS256']}) ? 1 : 0; }),
    packet_bytes: Buffer.byteLength(text), sink: sink > 0,
  };
}

// Busy polling: an immediate that re-queues itself keeps libuv's poll phase non-blocking, so
// this process never sleeps in epoll_wait. On loopback the receiver's wakeup is paid by the
// *sender* (the server: TCP receive processing, ep_poll_callback, the IPI to the sleeping
// core), once per segment; a server writing one segment per delivery (socketcluster-server)
// would otherwise be charged a wakeup of the load generator for each of them.
let spinning = false;
function startBusyPoll() {
  spinning = true;
  const spin = () => { if (spinning) setImmediate(spin); };
  spin();
}

async function main() {
  if (cfg.busy_poll) startBusyPoll();
  let result;
  switch (cfg.workload) {
    case 'fanout': result = await fanout(); break;
    case 'rpc': result = await rpcLoop(false); break;
    case 'authrpc': result = await rpcLoop(true); break;
    case 'handshake': result = await handshake(); break;
    case 'idle': result = await idle(); break;
    case 'micro': result = micro(); break;
    default: throw new Error(`unknown workload ${cfg.workload}`);
  }
  spinning = false;
  const {_close, _hold, ...out} = result;
  out.errors = errors;
  out.error_samples = errorSamples;
  out.ok = errors === 0;
  out.loadgen_cpu_s = (process.cpuUsage().user + process.cpuUsage().system) / 1e6;
  say('RESULT ' + JSON.stringify(out));
  if (_hold) {
    say('HOLD');
    await new Promise((resolve) => process.stdin.once('data', resolve));
  }
  if (_close) _close();
  process.exit(0);
}

main().catch((err) => {
  say('RESULT ' + JSON.stringify({ok: false, errors: errors + 1, fatal: String(err.stack || err),
    error_samples: errorSamples}));
  process.exit(1);
});
