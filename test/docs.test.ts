import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type Implementation } from 'ava';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { loadSpec } from '../src/http/contract.js';
import { startTestApp, TEST_API_KEY, type TestApp } from './support/app.js';

/** The browser: Debian's chromium, or the binary CHROMIUM_PATH names (make browser sets it too). */
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const inCI = !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());
const isExecutable = (file: string) => {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
};
// Decided at load time, so the TAP line itself says why the browser tests did not run.
const missing = isExecutable(CHROMIUM)
  ? undefined
  : `${CHROMIUM} is missing (make test installs Debian's chromium when run as root with apt-get; CHROMIUM_PATH names another browser)`;
if (missing) console.error(`# docs browser tests ${inCI ? 'FAIL under CI' : 'skipped'}: ${missing}`);
/** Outside CI a missing browser skips these tests, saying why in their title; under CI it fails each of them. */
const browserTest = (title: string, implementation: Implementation<[]>) => {
  if (!missing) test(title, implementation);
  else if (inCI) test(title, (t) => t.fail(`CI=${process.env.CI} and no browser: ${missing}`));
  else test.skip(`${title} (skipped: ${missing})`, implementation);
};

interface Operation {
  operationId: string;
  summary: string;
}
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const operations: Operation[] = Object.values(loadSpec().document.paths ?? {}).flatMap((item) =>
  Object.entries(item ?? {})
    .filter(([method]) => METHODS.includes(method))
    .map(([, op]) => op as Operation),
);

const isLoopback = (url: URL) => ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);

let app: TestApp;
let browser: BrowserContext | undefined;
let profileDir: string | undefined;
/** Every request the pages tried to send off this machine (all of them refused). */
const offMachine: string[] = [];

test.before(async () => {
  app = await startTestApp();
  if (missing) return;
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'docs-chromium-'));
  browser = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-quic', '--disable-component-update', '--disable-sync'],
  });
  // The network is closed: anything not on loopback is counted and aborted.
  await browser.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.protocol === 'data:' || url.protocol === 'blob:' || isLoopback(url)) return route.continue();
    offMachine.push(url.href);
    return route.abort('internetdisconnected');
  });
});

test.after.always(async () => {
  await browser?.close();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
  await app?.close();
});

async function openPage(url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser!.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  // A fetch the page's Content-Security-Policy blocks never reaches the network route above: the
  // page reports it itself, and any such attempt counts as an error too.
  // ('eval' and 'inline' violations are not fetches: Redoc probes eval, finds it blocked, and renders without.)
  await page.exposeFunction('reportBlocked', (uri: string) => {
    if (/^[a-z][a-z0-9+.-]*:/i.test(uri)) errors.push(`blocked by CSP: ${uri}`);
  });
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      (window as unknown as { reportBlocked: (uri: string) => void }).reportBlocked(event.blockedURI);
    });
  });
  await page.goto(url, { waitUntil: 'load' });
  return { page, errors };
}

test('the spec lists at least one operation, each with a summary', (t) => {
  t.true(operations.length > 0);
  for (const op of operations) t.truthy(op.summary, op.operationId);
});

test('/docs is one self-contained page that names no script, style or font on another host', async (t) => {
  const response = await app.fetch('/docs');
  t.is(response.status, 200, 'run make docs first');
  t.regex(response.headers.get('content-type') ?? '', /^text\/html/);
  const html = await response.text();
  // Tags that make a browser fetch: script/img src, link href (stylesheets, fonts, preloads), CSS url()/@import.
  const fetched = [
    ...html.matchAll(/<(?:script|img|iframe)\b[^>]*\bsrc\s*=\s*["']?(https?:)?\/\/[^"' >]+/gi),
    ...html.matchAll(/<link\b[^>]*\bhref\s*=\s*["']?(https?:)?\/\/[^"' >]+/gi),
    ...html.matchAll(/@import\s+(url\()?["']?https?:\/\/[^"')]+/gi),
    ...html.matchAll(/url\(\s*["']?https?:\/\/[^"')]+/gi),
  ].map((match) => match[0]);
  t.deepEqual(fetched, []);
  t.regex(html, /Content-Security-Policy/, 'the page forbids fetching from other origins');
});

test('/docs/swagger serves Swagger UI and its assets from this service only', async (t) => {
  const page = await app.fetch('/docs/swagger');
  t.is(page.status, 200);
  const html = await page.text();
  const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((match) => match[1]!);
  t.true(assets.length >= 3);
  for (const asset of assets) {
    t.true(asset.startsWith('/docs/swagger/'), asset);
    t.is((await app.fetch(asset)).status, 200, asset);
  }
});

test('/docs/swagger serves only its listed files: no other file and no path traversal', async (t) => {
  for (const asset of ['/docs/swagger/package.json', '/docs/swagger/..%2Fpackage.json', '/docs/swagger/%2e%2e%2fpackage.json', '/docs/swagger/index.html']) {
    const response = await app.fetch(asset);
    t.is(response.status, 404, asset);
    t.is(response.headers.get('content-type'), 'application/problem+json', asset);
  }
});

browserTest(`/docs renders every operation's summary in headless Chromium with the network closed`, async (t) => {
  const { page, errors } = await openPage(`${app.url}/docs`);
  try {
    // Redoc 3 shows one page at a time (#/<tag>, #/<tag>/<operation>) and renders lazily: open each
    // tag the sidebar lists, gather the operation links its page shows, then open each operation
    // and wait for its summary as the heading and as the sidebar entry.
    await page.waitForSelector('[data-component-name="Menu/MenuItem"].menu-item-type-group a[href]', { timeout: 20_000 });
    const tagRoutes = await page.$$eval('[data-component-name="Menu/MenuItem"].menu-item-type-group > a[href]', (links) => links.map((link) => link.getAttribute('href') ?? ''));
    t.true(tagRoutes.length > 0, 'the sidebar lists the tags');
    const hashes = new Set<string>();
    for (const route of tagRoutes) {
      await page.evaluate((target) => {
        window.location.hash = target;
      }, route);
      await page.waitForSelector(`a[href^="#${route}/"]`, { timeout: 10_000 }).catch(() => undefined);
      for (const href of await page.$$eval(`a[href^="#${route}/"]`, (links) => links.map((link) => link.getAttribute('href') ?? ''))) hashes.add(href);
    }
    for (const op of operations) {
      const hash = [...hashes].find((href) => href.endsWith(`/${op.operationId.toLowerCase()}`));
      if (!t.truthy(hash, `the overview links no page for ${op.operationId}`)) continue;
      await page.evaluate((target) => {
        window.location.hash = target;
      }, hash!.slice(1));
      const rendered = await page
        .waitForFunction(
          (summary) =>
            [...document.querySelectorAll('h1, h2')].some((h) => h.textContent?.trim() === summary) &&
            [...document.querySelectorAll('[data-component-name="Menu/MenuItem"]')].some((item) => item.textContent?.includes(summary)),
          op.summary,
          { timeout: 10_000 },
        )
        .then(() => true)
        .catch(() => false);
      t.true(rendered, `${op.operationId}: "${op.summary}" is not rendered as its heading and sidebar entry`);
    }
    t.deepEqual(errors, [], 'no script errors');
    t.deepEqual(offMachine, [], 'no request left the machine');
  } finally {
    await page.close();
  }
});

browserTest(`/docs/swagger lists every operation in headless Chromium with the network closed`, async (t) => {
  const { page, errors } = await openPage(`${app.url}/docs/swagger`);
  try {
    await page.waitForSelector('.opblock', { timeout: 20_000 });
    const listed = await page.$$eval('.opblock', (blocks) =>
      blocks.map((block) => ({
        operationId: block.querySelector('.opblock-summary-operation-id')?.textContent?.trim() ?? '',
        summary: block.querySelector('.opblock-summary-description')?.textContent?.trim() ?? '',
      })),
    );
    for (const op of operations) {
      t.true(
        listed.some((entry) => entry.operationId === op.operationId && entry.summary === op.summary),
        `${op.operationId} (${op.summary}) is not listed`,
      );
    }
    t.deepEqual(errors, [], 'no script errors');
    t.deepEqual(offMachine, [], 'no request left the machine');
  } finally {
    await page.close();
  }
});

browserTest(`/docs/swagger runs a request from the browser: authorize with the key, try GET /users, see its 200`, async (t) => {
  const { page, errors } = await openPage(`${app.url}/docs/swagger`);
  try {
    await app.client.POST('/users', { body: { name: 'Shown In Swagger', email: `swagger.${process.pid}@example.com` } });
    await page.click('button.authorize', { timeout: 20_000 });
    await page.fill('.modal-ux input', TEST_API_KEY);
    await page.click('.modal-ux .auth-btn-wrapper button.authorize');
    await page.click('.modal-ux button.btn-done');
    await page.click('#operations-users-listUsers .opblock-summary');
    await page.click('#operations-users-listUsers .try-out__btn');
    await page.click('#operations-users-listUsers button.execute');
    const status = await page.waitForSelector('#operations-users-listUsers .live-responses-table tbody .response-col_status', { timeout: 10_000 });
    t.is((await status.textContent())?.trim(), '200');
    const body = await page.textContent('#operations-users-listUsers .live-responses-table tbody .response-col_description');
    t.regex(body ?? '', /Shown In Swagger/);
    t.deepEqual(errors, [], 'no script errors');
    t.deepEqual(offMachine, [], 'no request left the machine');
  } finally {
    await page.close();
  }
});
