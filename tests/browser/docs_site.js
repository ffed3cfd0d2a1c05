// Loads pages of the built docs site in headless Debian chromium (playwright-core, as run.js)
// and checks that every Mermaid diagram became an SVG, with no page error.
//
//   node docs_site.js <base-url> <artifacts-dir> <page>=<diagrams> ...
//
// Prints one JSON line: {"result":"ok","pages":{page: svgs}} or {"result":"fail","error":...}.
// A full-page screenshot of each page goes to <artifacts-dir>/<page>.png.
'use strict';

const path = require('path');
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

(async () => {
  const [baseUrl, artifactsDir, ...specs] = process.argv.slice(2);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  const pages = {};
  try {
    for (const spec of specs) {
      const [name, want] = spec.split('=');
      const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      // Material renders diagrams into closed shadow roots: open them, so the test can look.
      await page.addInitScript(() => {
        const attach = Element.prototype.attachShadow;
        Element.prototype.attachShadow = function (init) { return attach.call(this, { ...init, mode: 'open' }); };
      });
      const errors = [];
      page.on('pageerror', (err) => errors.push(String(err)));
      const external = [];
      page.on('request', (req) => {
        if (!req.url().startsWith(baseUrl) && !req.url().startsWith('data:')) external.push(req.url());
      });
      await page.goto(`${baseUrl}/${name}/`, { waitUntil: 'load' });
      const rendered = () => [...document.querySelectorAll('.mermaid')]
        .map((el) => (el.shadowRoot || el).querySelector('svg'))
        .filter((svg) => svg !== null && !/Syntax error/.test(svg.textContent));
      await page.waitForFunction(
        (n) => [...document.querySelectorAll('.mermaid')]
          .filter((el) => (el.shadowRoot || el).querySelector('svg')).length >= n,
        Number(want), { timeout: 20000 },
      ).catch(() => {});
      const svgs = await page.evaluate(`(${rendered})().length`);
      await page.screenshot({ path: path.join(artifactsDir, `${name}.png`), fullPage: true });
      pages[name] = { svgs, errors, external };
      await page.close();
    }
    console.log(JSON.stringify({ result: 'ok', pages }));
  } catch (err) {
    console.log(JSON.stringify({ result: 'fail', error: String(err && err.stack || err), pages }));
  } finally {
    await browser.close();
  }
})();
