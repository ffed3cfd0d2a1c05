'use strict';
// What the multi-process interop scripts (cluster.js, tokens.js) share: their command line
// (`node <script> <scenario> '<json args>'`), a tag unique to the run, sleep and a timeout.

const crypto = require('crypto');

const [, , scenario, argsJson] = process.argv;

function withTimeout(promise, ms, what) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

module.exports = {
  scenario,
  ARGS: JSON.parse(argsJson || '{}'),
  TAG: crypto.randomBytes(6).toString('hex'),
  sleep: (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  withTimeout,
};
