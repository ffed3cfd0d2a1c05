'use strict';
// Cluster scenarios: real npm socketcluster-clients (v14 and v20 side by side) on several
// server processes joined by Redis. Prints ONE JSON line of observations on stdout.
//
//   node cluster.js pubsub '{"subMajor":14,"pubMajor":20,"subUrl":"ws://..","pubUrl":"ws://..","count":500}'
//   node cluster.js deauth '{"urls":["ws://..","ws://.."]}'

const { scenario, ARGS, TAG, sleep, withTimeout } = require('./common');

class Client {
  constructor(major, url) {
    const u = new URL(url);
    this.major = major;
    const options = {
      hostname: u.hostname, port: Number(u.port), path: u.pathname, autoReconnect: false,
      ackTimeout: 10000
    };
    if (major === 14) options.multiplex = false;
    this.socket = require(major === 14 ? 'sc-client-14' : 'sc-client-20').create(options);
  }

  once(event) {
    if (this.major === 14) return new Promise((resolve) => this.socket.once(event, resolve));
    return this.socket.listener(event).once();
  }

  async connected() {
    if (this.socket.state !== 'open') await withTimeout(this.once('connect'), 5000, 'connect');
  }

  invoke(event, data) {
    if (this.major === 14) {
      return new Promise((resolve, reject) => {
        this.socket.emit(event, data, (err, res) => (err ? reject(err) : resolve(res)));
      });
    }
    return this.socket.invoke(event, data);
  }

  publish(channel, data) {
    if (this.major === 14) {
      return new Promise((resolve, reject) => {
        this.socket.publish(channel, data, (err) => (err ? reject(err) : resolve()));
      });
    }
    return this.socket.invokePublish(channel, data);
  }

  async subscribe(name, onData) {
    const ch = this.socket.subscribe(name);
    if (this.major === 14) {
      ch.watch(onData);
      if (ch.state !== 'subscribed') {
        await withTimeout(new Promise((resolve) => ch.once('subscribe', resolve)), 5000, 'subscribe');
      }
    } else {
      (async () => { for await (const data of ch) onData(data); })();
      if (ch.state !== 'subscribed') await withTimeout(ch.listener('subscribe').once(), 5000, 'subscribe');
    }
  }

  close() {
    if (this.major === 14) this.socket.destroy();
    else { this.socket.disconnect(); this.socket.killAllListeners(); }
  }
}

async function pubsub() {
  const sub = new Client(ARGS.subMajor, ARGS.subUrl);
  const pub = new Client(ARGS.pubMajor, ARGS.pubUrl);
  const received = [];
  const out = {received};
  try {
    await sub.connected();
    await pub.connected();
    await sub.subscribe('news', (data) => {
      if (data && data.tag === TAG) received.push(data.i);
    });
    await sub.invoke('waitSynced');  // its process's Redis subscription is live
    await pub.invoke('login', {username: 'bob', password: 'bob-pass'});
    const acks = [];
    for (let i = 0; i < ARGS.count; i++) acks.push(pub.publish('news', {tag: TAG, i}));
    out.acks = (await withTimeout(Promise.all(acks), 20000, 'publish acks')).length;
    const deadline = Date.now() + 10000;
    while (received.length < ARGS.count && Date.now() < deadline) await sleep(10);
    await sleep(200);  // anything extra (a duplicate) would arrive now
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    sub.close();
    pub.close();
  }
  return out;
}

async function deauth() {
  const [url0, url1] = ARGS.urls;
  const alice0 = new Client(20, url0);
  const alice1 = new Client(14, url1);
  const bob1 = new Client(20, url1);
  const clients = [alice0, alice1, bob1];
  const out = {};
  try {
    for (const c of clients) await c.connected();
    await alice0.invoke('login', {username: 'alice', password: 'alice-pass'});
    await alice1.invoke('login', {username: 'alice', password: 'alice-pass'});
    await bob1.invoke('login', {username: 'bob', password: 'bob-pass'});
    const waits = [alice0, alice1].map((c) => withTimeout(c.once('deauthenticate'), 5000, 'deauthenticate')
      .then(() => c.socket.authState === 'unauthenticated', () => false));
    out.count = await alice0.invoke('deauthenticateUser', {username: 'alice'});
    out.deauthenticated = await Promise.all(waits);
    const who = await bob1.invoke('whoami');
    out.bobStillAuthenticated = bob1.socket.authState === 'authenticated' && !!who && who.username === 'bob';
  } catch (err) {
    out.error = String(err && err.message || err);
  } finally {
    for (const c of clients) c.close();
  }
  return out;
}

const SCENARIOS = {pubsub, deauth};
(async () => {
  const fn = SCENARIOS[scenario];
  if (!fn) {
    console.error(`unknown scenario ${scenario}`);
    process.exit(2);
  }
  const out = await fn();
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
})();
