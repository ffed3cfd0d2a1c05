'use strict';
// Reconnect storm for benchmarks/storm.py: `count` clients, each holding its own stored JWT,
// connect and authenticate; the runner restarts the server; on `GO` (a line on stdin, written
// once the new server listens) every client reconnects at the same moment, presenting its token
// in `#handshake`, and must get `isAuthenticated: true`. A failed attempt (a 503 from the
// admission limits, a refused or reset TCP connection, a close before the handshake reply) is
// retried after the stock socketcluster-client back-off:
//   delay = min(maxDelay, round((initialDelay + randomness * random()) * multiplier ^ attempt))
// (`attempt` counts this client's failures since GO, from 0), with the delays in `retry`.
//
// Usage: node storm.js '<json config>'   (see storm.py for the fields)
// stdout: CONNECTED (all authenticated; restart the server now), then after GO: RESULT {json}

const WebSocket = require('ws');
const jwt = require('jsonwebtoken');
const {performance} = require('perf_hooks');

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.now();
const say = (line) => process.stdout.write(line + '\n');

// Log buckets 1 % wide (as loadgen.js).
const LOG_STEP = Math.log(1.01);
class Histogram {
  constructor() { this.counts = new Float64Array(2600); this.n = 0; this.max = 0; }
  add(ms) {
    const us = ms * 1000;
    this.counts[us <= 1 ? 0 : Math.min(2599, Math.ceil(Math.log(us) / LOG_STEP))] += 1;
    this.n += 1;
    if (ms > this.max) this.max = ms;
  }
  pct(p) {
    if (this.n === 0) return null;
    const target = Math.ceil(this.n * p / 100);
    let seen = 0;
    for (let i = 0; i < this.counts.length; i++) {
      seen += this.counts[i];
      if (seen >= target) return Math.round(Math.exp(i * LOG_STEP)) / 1000;
    }
    return this.max;
  }
  summary() {
    return {n: this.n, p50_ms: this.pct(50), p99_ms: this.pct(99), max_ms: Math.round(this.max)};
  }
}

const failures = {};  // kind -> count (every failed attempt, retried)
const samples = [];
function failed(kind, detail) {
  failures[kind] = (failures[kind] || 0) + 1;
  if (samples.length < 10) samples.push(`${kind}: ${detail}`);
}

class Client {
  constructor(i, token) {
    this.i = i;
    this.token = token;
    this.source = cfg.sources[i % cfg.sources.length];
    this.ws = null;
    this.authenticated = false;
    this.failures = 0;  // failed attempts since GO
    this.attempts = 0;
  }

  // One attempt: TCP + upgrade + `#handshake` with the stored token. cb(null) once
  // authenticated, cb(kind, detail) on a failure (the socket is then closed).
  attempt(cb) {
    let settled = false;
    const settle = (kind, detail) => {
      if (settled) return;
      settled = true;
      if (kind !== null) { ws.removeAllListeners('close'); ws.on('error', () => {}); ws.terminate(); }
      cb(kind, detail);
    };
    this.attempts += 1;
    const ws = new WebSocket(cfg.url, {
      perMessageDeflate: false, localAddress: this.source, generateMask: (m) => m.fill(0),
    });
    this.ws = ws;
    ws.on('open', () => {
      ws.send(JSON.stringify({event: '#handshake', data: {authToken: this.token}, cid: 1}));
    });
    ws.on('message', (buf) => {
      const text = buf.toString();
      if (text === '#1') { ws.send('#2'); return; }
      if (text === '') { ws.send(''); return; }
      if (settled) return;
      let p;
      try { p = JSON.parse(text); } catch (err) { settle('bad reply', text.slice(0, 80)); return; }
      if (p && p.rid === 1) {
        if (p.error === undefined && p.data && p.data.isAuthenticated === true &&
            p.data.authError === undefined) {
          settle(null);
        } else {
          settle('not authenticated', text.slice(0, 160));
        }
      }
    });
    ws.on('error', (err) => {
      const m = /Unexpected server response: (\d+)/.exec(err.message);
      settle(m ? `http ${m[1]}` : (err.code || 'error'), err.message);
    });
    ws.on('close', (code) => {
      if (!settled) settle(`close ${code}`, '');
      else if (this.authenticated && storming) lostAfterAuth += 1;
    });
  }
}

function backoff(failures) {
  const r = cfg.retry;
  const initial = Math.round(r.initial_ms + r.randomness_ms * Math.random());
  return Math.min(r.max_ms, Math.round(initial * Math.pow(r.multiplier, failures)));
}

let storming = false;
let lostAfterAuth = 0;

async function connectAll(clients) {
  let next = 0;
  async function worker() {
    while (next < clients.length) {
      const c = clients[next++];
      for (;;) {
        const kind = await new Promise((resolve) => c.attempt((k) => resolve(k)));
        if (kind === null) break;
        await new Promise((r) => setTimeout(r, 100));  // warm-up connect: retry quietly
      }
    }
  }
  await Promise.all(Array.from({length: 200}, worker));
}

async function main() {
  const iat = Math.floor(Date.now() / 1000);
  const clients = [];
  for (let i = 0; i < cfg.count; i++) {
    const token = jwt.sign({username: `user${i}`, channels: ['news'], iat}, cfg.auth_key,
      {algorithm: 'HS256', expiresIn: 86400});
    clients.push(new Client(i, token));
  }
  await connectAll(clients);
  say(`CONNECTED ${clients.length}`);
  await new Promise((resolve) => process.stdin.once('data', resolve));  // the runner's GO

  storming = true;
  const handshake = new Histogram();  // the successful attempt: TCP connect -> reply
  const reauth = new Histogram();     // GO -> authenticated
  let done = 0;
  let maxFailures = 0;
  const t0 = now();
  let tLast = t0;
  const finished = new Promise((resolve) => {
    const start = (c) => {
      const t = now();
      c.attempt((kind, detail) => {
        if (kind === null) {
          const t1 = now();
          handshake.add(t1 - t);
          reauth.add(t1 - t0);
          tLast = t1;
          c.authenticated = true;
          if (++done === clients.length) resolve();
          return;
        }
        failed(kind, detail);
        const delay = backoff(c.failures++);
        if (c.failures > maxFailures) maxFailures = c.failures;
        setTimeout(() => start(c), delay);
      });
    };
    clients.forEach((c) => { c.authenticated = false; c.attempts = 0; });
    clients.forEach(start);  // all at once
  });
  const timeout = new Promise((resolve) => setTimeout(resolve, cfg.deadline_s * 1000));
  await Promise.race([finished, timeout]);
  const refused = Object.entries(failures).filter(([k]) => k === 'http 503')
    .reduce((a, [, v]) => a + v, 0);
  const out = {
    count: clients.length,
    authenticated: done,
    failed_for_good: clients.length - done,  // not authenticated within deadline_s
    all_authenticated_s: done === clients.length ? (tLast - t0) / 1000 : null,
    reauth: reauth.summary(),
    handshake: handshake.summary(),
    attempts: clients.reduce((a, c) => a + c.attempts, 0),  // since GO
    refused_503: refused,
    failures,
    max_failures_per_client: maxFailures,
    lost_after_auth: lostAfterAuth,
    samples,
    retry: cfg.retry,
  };
  out.ok = out.failed_for_good === 0 && lostAfterAuth === 0;
  say('RESULT ' + JSON.stringify(out));
  clients.forEach((c) => { if (c.ws) c.ws.terminate(); });
  process.exit(0);
}

main().catch((err) => {
  say('RESULT ' + JSON.stringify({ok: false, fatal: String(err.stack || err)}));
  process.exit(1);
});
