#!/usr/bin/env node
// Browser driver for the chat example (examples/chat): one scenario per run, in headless
// Debian chromium driven by playwright-core (no browser download).
//
//   node run.js <scenario> <base-url> <artifacts-dir>
//
// Talks to the pytest side over stdio, one JSON object per line:
// * stdout {"control": "stop-server"} / {"control": "start-server"}: the test stops or starts
//   the chat server (same port, same auth key) and answers with one line on stdin.
// * stdout {"step": "..."}: progress, for the failure report.
// * stdout {"result": "ok"} or {"result": "fail", "error": "..."}, last; exit code 0 / 1.
//
// Every wait is a condition (page.waitForFunction / locator expectations), never a sleep.
// Screenshots of each step go to <artifacts-dir>/<scenario>-NN-<step>.png.

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const WAIT_MS = 15000;

const [scenarioName, baseUrl, artifactsDir] = process.argv.slice(2);

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ------------------------------------------------------------------ control channel

const stdinLines = readline.createInterface({ input: process.stdin });
const pendingReplies = [];
stdinLines.on('line', (line) => {
  const waiter = pendingReplies.shift();
  if (waiter) waiter(line.trim());
});

function control(command) {
  return new Promise((resolve, reject) => {
    pendingReplies.push((line) => (line === 'ok' ? resolve() : reject(new Error(`${command}: ${line}`))));
    emit({ control: command });
  });
}

// ------------------------------------------------------------------ helpers

let shotCount = 0;
async function shot(page, name) {
  shotCount += 1;
  const file = path.join(artifactsDir, `${scenarioName}-${String(shotCount).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

function step(name) {
  emit({ step: name });
}

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

// Wait until document.body's data attributes match `want` (view, auth, connection, user).
async function waitFor(page, want, what) {
  try {
    await page.waitForFunction(
      (w) => Object.entries(w).every(([k, v]) =>
        Array.isArray(v) ? v.includes(document.body.dataset[k]) : document.body.dataset[k] === v),
      want,
      { timeout: WAIT_MS },
    );
  } catch (err) {
    const now = await page.evaluate(() => ({ ...document.body.dataset }));
    throw new Failure(`${what}: waited for ${JSON.stringify(want)}, page is ${JSON.stringify(now)}`);
  }
}

async function openChat(context, label) {
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${label}: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(`${label}: ${msg.text()}`);
  });
  await page.goto(baseUrl);
  await waitFor(page, { connection: 'open' }, `${label} connects`);
  return page;
}

async function logIn(page, username, password) {
  await page.fill('#username', username);
  await page.fill('#password', password);
  await page.click('#login-button');
}

async function channelsOf(page) {
  return page.$$eval('#channels button', (buttons) => buttons.map((b) => b.dataset.channel));
}

// Wait until the page's socket is subscribed (not pending) to all of `channels`.
async function waitSubscribed(page, channels) {
  await page.waitForFunction(
    (names) => names.every((n) => window.chat.socket.isSubscribed(n)),
    channels,
    { timeout: WAIT_MS },
  );
}

async function send(page, text) {
  await page.fill('#message-input', text);
  await page.click('#send-button');
}

async function waitMessage(page, from, text, what) {
  const locator = page.locator('#messages li', { hasText: text });
  try {
    await locator.first().waitFor({ timeout: WAIT_MS });
  } catch (err) {
    throw new Failure(`${what}: message ${JSON.stringify(text)} never appeared`);
  }
  const sender = await locator.first().getAttribute('data-from');
  check(sender === from, `${what}: message ${JSON.stringify(text)} is from ${sender}, not ${from}`);
}

function storedToken(page) {
  return page.evaluate(() => localStorage.getItem(window.chat.socket.authTokenName));
}

function viewsShown(page) {
  return page.evaluate(() => window.chat.viewHistory.map((v) => v.view));
}

const pageErrors = [];
const consoleErrors = [];

// ------------------------------------------------------------------ scenarios

const scenarios = {
  // Log in (a wrong password first), two users in two browser contexts, send and receive.
  async 'login-chat'(browser) {
    const alice = await openChat(await browser.newContext(), 'alice');
    await waitFor(alice, { view: 'login', auth: 'unauthenticated' }, 'login form first');
    await shot(alice, 'login-form');

    step('wrong password');
    await logIn(alice, 'alice', 'not-her-password');
    await alice.locator('#login-error', { hasText: 'Login failed' }).waitFor({ timeout: WAIT_MS });
    await waitFor(alice, { view: 'login', auth: 'unauthenticated' }, 'still logged out');
    await shot(alice, 'login-failed');

    step('log in');
    await logIn(alice, 'alice', 'alice-pass');
    await waitFor(alice, { view: 'chat', auth: 'authenticated', user: 'alice' }, 'alice logs in');
    check(
      JSON.stringify(await channelsOf(alice)) === JSON.stringify(['general', 'alice-room']),
      `alice's channels come from her token: ${await channelsOf(alice)}`,
    );
    check((await storedToken(alice)) !== null, 'the token is stored in localStorage');
    await waitSubscribed(alice, ['general', 'alice-room']);
    await shot(alice, 'alice-logged-in');

    const bob = await openChat(await browser.newContext(), 'bob');
    await waitFor(bob, { view: 'login' }, 'bob gets the login form (his own context)');
    await logIn(bob, 'bob', 'bob-pass');
    await waitFor(bob, { view: 'chat', auth: 'authenticated', user: 'bob' }, 'bob logs in');
    check(
      JSON.stringify(await channelsOf(bob)) === JSON.stringify(['general', 'random']),
      `bob's channels come from his token: ${await channelsOf(bob)}`,
    );
    await waitSubscribed(bob, ['general', 'random']);

    step('send and receive');
    await send(alice, 'hello from alice');
    await waitMessage(alice, 'alice', 'hello from alice', 'alice sees her message');
    await waitMessage(bob, 'alice', 'hello from alice', 'bob receives it');
    await send(bob, 'hi alice');
    await waitMessage(alice, 'bob', 'hi alice', 'alice receives the reply');
    await shot(alice, 'alice-conversation');
    await shot(bob, 'bob-conversation');

    step('the seed\'s publish middleware, from the browser');
    const denied = await alice.evaluate(() =>
      window.chat.socket.invokePublish('random', { text: 'sneaking in' }).then(
        () => null, (err) => err.message));
    check(
      denied === 'You are not authorized to publish to random',
      `publishing outside the token's channels is refused: ${denied}`,
    );
    const forged = await alice.evaluate(() =>
      window.chat.socket.invokePublish('general', { text: 'forged sender', from: 'bob' }).then(
        () => 'ok', (err) => err.message));
    check(forged === 'ok', `publish with a made-up sender: ${forged}`);
    await waitMessage(bob, 'alice', 'forged sender', 'the server stamps the real sender');
  },

  // Lost connection: the server stops and starts again on the same port (same auth key).
  async reconnect(browser) {
    const page = await openChat(await browser.newContext(), 'tab');
    await waitFor(page, { view: 'login' }, 'login form first');
    await logIn(page, 'alice', 'alice-pass');
    await waitFor(page, { view: 'chat', auth: 'authenticated', user: 'alice' }, 'logged in');
    await waitSubscribed(page, ['general', 'alice-room']);
    const token = await storedToken(page);
    await shot(page, 'logged-in');

    step('stop the server');
    await control('stop-server');
    await waitFor(page, { connection: ['closed', 'connecting'] }, 'the page sees the lost connection');
    await waitFor(page, { view: 'chat', user: 'alice' }, 'the chat stays on screen');
    await shot(page, 'server-down');

    step('start the server again');
    await control('start-server');
    await waitFor(page, { connection: 'open', auth: 'authenticated', user: 'alice', view: 'chat' },
      'reconnected and authenticated from the stored token');
    await page.waitForFunction(() => window.chat.socket.id !== null, null, { timeout: WAIT_MS });
    check((await storedToken(page)) === token, 'the same token is still stored');
    await waitSubscribed(page, ['general', 'alice-room']);
    await shot(page, 'reconnected');

    const views = await viewsShown(page);
    check(
      JSON.stringify(views) === JSON.stringify(['loading', 'login', 'chat']),
      `no login form after logging in: views shown ${JSON.stringify(views)}`,
    );

    step('the channels work after the reconnect');
    await send(page, 'still here');
    await waitMessage(page, 'alice', 'still here', 'message after reconnect');

    step('revisit the page later');
    await page.reload();
    await waitFor(page, { connection: 'open', view: 'chat', user: 'alice' }, 'reload: straight to chat');
    const afterReload = await viewsShown(page);
    check(
      JSON.stringify(afterReload) === JSON.stringify(['loading', 'chat']),
      `a reload goes straight to the chat: views shown ${JSON.stringify(afterReload)}`,
    );
    await shot(page, 'reloaded');
  },

  // Channel history: a tab that was away gets what was published meanwhile (recovered on
  // resubscribe; after a server restart, which loses the in-process history, from the
  // `history` procedure), and a reloaded page shows the recent messages. Each message once,
  // in order.
  async history(browser) {
    const alice = await openChat(await browser.newContext(), 'alice');
    await logIn(alice, 'alice', 'alice-pass');
    await waitFor(alice, { view: 'chat', auth: 'authenticated', user: 'alice' }, 'alice logs in');
    await waitSubscribed(alice, ['general', 'alice-room']);
    const bob = await openChat(await browser.newContext(), 'bob');
    await logIn(bob, 'bob', 'bob-pass');
    await waitFor(bob, { view: 'chat', auth: 'authenticated', user: 'bob' }, 'bob logs in');
    await waitSubscribed(bob, ['general', 'random']);
    check((await alice.evaluate(() => window.chat.state.current)) === 'general', 'alice is on #general');

    const texts = (page) => page.$$eval('#messages li .text', (items) => items.map((li) => li.textContent));
    async function expectTexts(page, want, what) {
      try {
        await page.waitForFunction(
          (w) => JSON.stringify([...document.querySelectorAll('#messages li .text')].map((li) => li.textContent)) === JSON.stringify(w),
          want, { timeout: WAIT_MS });
      } catch (err) {
        throw new Failure(`${what}: wanted ${JSON.stringify(want)}, page shows ${JSON.stringify(await texts(page))}`);
      }
    }

    step('both chat');
    await send(alice, 'a1');
    await waitMessage(bob, 'alice', 'a1', 'bob gets a1');
    await send(bob, 'b1');
    await expectTexts(alice, ['a1', 'b1'], 'alice sees both');

    step('alice is away while bob posts');
    await alice.evaluate(() => window.chat.socket.disconnect());
    await waitFor(alice, { connection: 'closed' }, 'alice is disconnected');
    await send(bob, 'b2');
    await send(bob, 'b3');
    await waitMessage(bob, 'bob', 'b3', 'bob posted b3');
    await shot(alice, 'away');
    await alice.evaluate(() => window.chat.socket.connect());
    await waitFor(alice, { connection: 'open' }, 'alice is back');
    await expectTexts(alice, ['a1', 'b1', 'b2', 'b3'], 'alice gets what she missed, once each');
    await shot(alice, 'recovered');

    step('a reloaded page shows the recent history');
    await alice.reload();
    await waitFor(alice, { connection: 'open', view: 'chat', user: 'alice' }, 'reload: straight to chat');
    await expectTexts(alice, ['a1', 'b1', 'b2', 'b3'], 'the reloaded page shows the history');
    await send(alice, 'a2');
    await expectTexts(alice, ['a1', 'b1', 'b2', 'b3', 'a2'], 'and live messages after it');
    await shot(alice, 'reloaded');

    step('the server restarts while alice is away');
    await alice.evaluate(() => window.chat.socket.disconnect());
    await waitFor(alice, { connection: 'closed' }, 'alice is disconnected');
    await control('stop-server');
    await control('start-server');
    await waitFor(bob, { connection: 'open', auth: 'authenticated' }, 'bob reconnects');
    await waitSubscribed(bob, ['general', 'random']);
    await send(bob, 'b4');
    await waitMessage(bob, 'bob', 'b4', 'bob posted b4 after the restart');
    await alice.evaluate(() => window.chat.socket.connect());
    await waitFor(alice, { connection: 'open', auth: 'authenticated' }, 'alice is back');
    await expectTexts(alice, ['a1', 'b1', 'b2', 'b3', 'a2', 'b4'],
      'alice keeps what she had and gets what was posted after the restart');
    await send(bob, 'b5');
    await expectTexts(alice, ['a1', 'b1', 'b2', 'b3', 'a2', 'b4', 'b5'], 'then live ones');
    await expectTexts(bob, ['a1', 'b1', 'b2', 'b3', 'a2', 'b4', 'b5'], 'bob saw the same, once each');
    await shot(alice, 'after-restart');
  },

  // Two tabs in one browser context share the token through localStorage.
  async tabs(browser) {
    const context = await browser.newContext();
    const first = await openChat(context, 'first');
    const second = await openChat(context, 'second');
    await waitFor(first, { view: 'login' }, 'first tab: login form');
    await waitFor(second, { view: 'login' }, 'second tab: login form');
    await shot(second, 'second-tab-logged-out');

    step('log in in the first tab');
    await logIn(first, 'bob', 'bob-pass');
    await waitFor(first, { view: 'chat', auth: 'authenticated', user: 'bob' }, 'first tab logged in');
    await waitFor(second, { view: 'chat', auth: 'authenticated', user: 'bob' },
      'second tab follows without typing');
    check(
      (await second.inputValue('#username')) === '' && (await second.inputValue('#password')) === '',
      'nothing was typed in the second tab',
    );
    await shot(first, 'first-tab-logged-in');
    await shot(second, 'second-tab-logged-in');

    step('the second tab is authenticated on the server too');
    await waitSubscribed(first, ['general', 'random']);
    await waitSubscribed(second, ['general', 'random']);
    await send(second, 'from the second tab');
    await waitMessage(first, 'bob', 'from the second tab', 'first tab receives it');

    step('log out in the second tab');
    await second.click('#logout');
    await waitFor(second, { view: 'login', auth: 'unauthenticated' }, 'second tab logged out');
    await waitFor(first, { view: 'login', auth: 'unauthenticated' }, 'first tab follows');
    check((await storedToken(first)) === null, 'the token is gone from localStorage');
    const refused = await first.evaluate(() =>
      window.chat.socket.invokePublish('general', { text: 'after logout' }).then(
        () => null, (err) => err.message));
    check(
      refused === 'You are not authorized to publish to general',
      `the first tab's socket is logged out on the server too: ${refused}`,
    );
    await shot(first, 'first-tab-logged-out');
    await shot(second, 'second-tab-logged-out-again');

    step('log in again in the second, out in the first');
    await logIn(second, 'alice', 'alice-pass');
    await waitFor(first, { view: 'chat', user: 'alice' }, 'first tab follows the second login');
    await first.click('#logout');
    await waitFor(second, { view: 'login', auth: 'unauthenticated' }, 'second tab follows');
  },

  // Token expiry with no renewal (server: CHAT_TOKEN_TTL short, CHAT_RENEW=0).
  async expiry(browser) {
    const context = await browser.newContext();
    const page = await openChat(context, 'first');
    const other = await openChat(context, 'second');
    await logIn(page, 'alice', 'alice-pass');
    await waitFor(page, { view: 'chat', auth: 'authenticated' }, 'logged in');
    await waitFor(other, { view: 'chat', auth: 'authenticated' }, 'second tab logged in');
    const exp = await page.evaluate(() => window.chat.socket.authToken.exp);
    const iat = await page.evaluate(() => window.chat.socket.authToken.iat);
    check(exp - iat > 0 && exp - iat <= 10, `a short-lived token (exp - iat = ${exp - iat})`);
    await shot(page, 'logged-in');

    step('wait for the token to expire, with no user action');
    await waitFor(page, { view: 'login', auth: 'unauthenticated' }, 'logged out at expiry');
    const at = Date.now() / 1000;
    check(at >= exp - 1, `logged out at expiry, not before (now ${at}, exp ${exp})`);
    check((await storedToken(page)) === null, 'the expired token is gone from localStorage');
    await waitFor(other, { view: 'login', auth: 'unauthenticated' }, 'the other tab too');
    await shot(page, 'expired');
    await shot(other, 'expired-other-tab');
  },

  // Renewal through the server's renewal hook (server: CHAT_TOKEN_TTL short, CHAT_RENEW set).
  async renewal(browser) {
    const page = await openChat(await browser.newContext(), 'tab');
    await logIn(page, 'bob', 'bob-pass');
    await waitFor(page, { view: 'chat', auth: 'authenticated' }, 'logged in');
    const exp = await page.evaluate(() => window.chat.socket.authToken.exp);
    await shot(page, 'logged-in');

    step('a renewed token arrives before expiry');
    await page.waitForFunction((e) => (window.chat.socket.authToken?.exp ?? 0) > e, exp,
      { timeout: WAIT_MS });
    step('still logged in past the first token\'s expiry');
    await page.waitForFunction((e) => Date.now() / 1000 > e + 1, exp, { timeout: WAIT_MS });
    await waitFor(page, { view: 'chat', auth: 'authenticated', user: 'bob' }, 'still logged in');
    const stored = await storedToken(page);
    const current = await page.evaluate(() => window.chat.socket.signedAuthToken);
    check(stored === current, 'the renewed token is the stored one');
    const views = await viewsShown(page);
    check(!views.slice(2).includes('login'), `no login form: ${JSON.stringify(views)}`);
    await shot(page, 'renewed');
  },
};

// ------------------------------------------------------------------ main

async function main() {
  const scenario = scenarios[scenarioName];
  if (!scenario || !baseUrl || !artifactsDir) {
    emit({ result: 'fail', error: `usage: run.js <${Object.keys(scenarios).join('|')}> <base-url> <artifacts-dir>` });
    return 2;
  }
  fs.mkdirSync(artifactsDir, { recursive: true });
  for (const file of fs.readdirSync(artifactsDir)) {  // this scenario's shots of an earlier run
    if (file.startsWith(`${scenarioName}-`) && file.endsWith('.png')) fs.unlinkSync(path.join(artifactsDir, file));
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  try {
    await scenario(browser);
    check(pageErrors.length === 0, `errors in the page: ${pageErrors.join('; ')}`);
    emit({ result: 'ok', consoleErrors });
    return 0;
  } catch (err) {
    // Screenshot every open page as it was at the failure.
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        await shot(page, 'failure').catch(() => {});
      }
    }
    const message = err instanceof Failure ? err.message : (err && err.stack) || String(err);
    emit({ result: 'fail', error: message, pageErrors, consoleErrors });
    return 1;
  } finally {
    await browser.close();
  }
}

main().then((code) => {
  stdinLines.close();
  process.exitCode = code;
});
