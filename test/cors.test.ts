import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import test, { type Implementation } from 'ava';
import { chromium, type BrowserContext } from 'playwright-core';
import { EXPOSED_HEADERS } from '../src/http/cors.js';
import { startTestApp, TEST_API_KEY, type TestApp } from './support/app.js';

// The browser, and what happens without one, as in docs.test.ts: Debian's chromium or CHROMIUM_PATH;
// missing, these tests are skipped saying why, and fail under CI.
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const inCI = !['', '0', 'false'].includes((process.env.CI ?? '').toLowerCase());
const missing = (() => {
  try {
    fs.accessSync(CHROMIUM, fs.constants.X_OK);
    return undefined;
  } catch {
    return `${CHROMIUM} is missing (make test installs Debian's chromium when run as root with apt-get; CHROMIUM_PATH names another browser)`;
  }
})();
const browserTest = (title: string, implementation: Implementation<[]>) => {
  if (!missing) test.serial(title, implementation);
  else if (inCI) test(title, (t) => t.fail(`CI=${process.env.CI} and no browser: ${missing}`));
  else test.skip(`${title} (skipped: ${missing})`, implementation);
};

/**
 * The browser client: a page's own script, as a web app on another origin would call the API. It
 * creates a user with an Idempotency-Key, retries it, lists features, and reports each answer's
 * status, body and the headers JavaScript could read (or the error the browser raised).
 */
const CLIENT_PAGE = `<!doctype html><title>client</title><script>
async function runClient(api, key, email) {
  const names = ['etag', 'location', 'ratelimit', 'ratelimit-policy', 'x-request-id', 'idempotent-replayed'];
  const attempt = async (path, init) => {
    try {
      const response = await fetch(api + path, init);
      const headers = Object.fromEntries(names.map((name) => [name, response.headers.get(name)]));
      return { ok: true, status: response.status, body: await response.json(), headers };
    } catch (err) {
      return { ok: false, error: String(err) };
    }
  };
  const auth = { Authorization: 'Bearer ' + key };
  const post = { method: 'POST', body: JSON.stringify({ name: 'From A Browser', email }), headers: { ...auth, 'Content-Type': 'application/json', 'Idempotency-Key': email } };
  return [await attempt('/api/users', post), await attempt('/api/users', post), await attempt('/api/features', { headers: auth })];
}
</script>`;

/** A page server: another origin than the API's (another port), serving the client page. */
async function pageServer(): Promise<{ origin: string; close(): Promise<void> }> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(CLIENT_PAGE);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { origin: `http://127.0.0.1:${port}`, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

let allowedPage: Awaited<ReturnType<typeof pageServer>>;
let otherPage: Awaited<ReturnType<typeof pageServer>>;
let app: TestApp;
let plain: TestApp;
let browser: BrowserContext | undefined;
let profileDir: string | undefined;

test.before(async () => {
  [allowedPage, otherPage] = await Promise.all([pageServer(), pageServer()]);
  app = await startTestApp({ CORS_ORIGINS: `https://app.example.com, ${allowedPage.origin}` });
  plain = await startTestApp({ CORS_ORIGINS: '' });
  if (missing) return;
  profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cors-chromium-'));
  browser = await chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-quic', '--disable-component-update', '--disable-sync'],
  });
});

test.after.always(async () => {
  await browser?.close();
  if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
  await Promise.all([app?.close(), plain?.close(), allowedPage?.close(), otherPage?.close()]);
});

const preflight = (url: string, origin: string, method = 'POST') =>
  fetch(url, {
    method: 'OPTIONS',
    headers: { Origin: origin, 'Access-Control-Request-Method': method, 'Access-Control-Request-Headers': 'authorization,content-type,idempotency-key' },
  });

test('a preflight from an allowed origin is answered without the API key', async (t) => {
  const response = await preflight(`${app.url}/api/users`, 'https://app.example.com');
  t.is(response.status, 204);
  t.is(response.headers.get('access-control-allow-origin'), 'https://app.example.com');
  t.regex(response.headers.get('access-control-allow-methods') ?? '', /POST/);
  for (const header of ['Authorization', 'Content-Type', 'Idempotency-Key', 'If-Match']) {
    t.true((response.headers.get('access-control-allow-headers') ?? '').split(',').includes(header), header);
  }
  t.is(response.headers.get('access-control-max-age'), '600');
  t.regex(response.headers.get('vary') ?? '', /Origin/);
  t.is(response.headers.get('access-control-allow-credentials'), null, 'no credentials mode: the key is a header, not a cookie');
});

test('a preflight from another origin gets no CORS header (and, keyless, the 401 of any /api request)', async (t) => {
  const response = await preflight(`${app.url}/api/users`, 'https://evil.example.net');
  t.is(response.headers.get('access-control-allow-origin'), null);
  t.is(response.status, 401);
});

test('answers on /api and the spec carry Access-Control-Allow-Origin and expose the headers a client reads; other paths none', async (t) => {
  const origin = 'https://app.example.com';
  for (const url of [`${app.url}/api/features`, `${app.url}/openapi.json`, `${app.url}/openapi.yaml`]) {
    const response = await fetch(url, { headers: { Origin: origin, Authorization: `Bearer ${TEST_API_KEY}` } });
    t.is(response.status, 200, url);
    t.is(response.headers.get('access-control-allow-origin'), origin, url);
    t.deepEqual(response.headers.get('access-control-expose-headers')?.split(','), EXPOSED_HEADERS, url);
  }
  // Errors too: a browser must be able to read a problem (here the 401 of a missing key).
  const denied = await fetch(`${app.url}/api/features`, { headers: { Origin: origin } });
  t.is(denied.status, 401);
  t.is(denied.headers.get('access-control-allow-origin'), origin);
  for (const url of [`${app.url}/healthz`, `${app.url}/docs`, `${app.url}/metrics`]) {
    const response = await fetch(url, { headers: { Origin: origin, Authorization: `Bearer ${TEST_API_KEY}` } });
    t.is(response.headers.get('access-control-allow-origin'), null, url);
  }
  t.true(EXPOSED_HEADERS.includes('RateLimit') && EXPOSED_HEADERS.includes('Idempotent-Replayed') && EXPOSED_HEADERS.includes('Location'));
});

test('without CORS_ORIGINS no answer carries a CORS header, preflights included', async (t) => {
  const response = await fetch(`${plain.url}/api/features`, { headers: { Origin: 'https://app.example.com', Authorization: `Bearer ${TEST_API_KEY}` } });
  t.is(response.status, 200);
  t.false([...response.headers.keys()].some((name) => name.startsWith('access-control-')));
  const pre = await preflight(`${plain.url}/api/users`, 'https://app.example.com');
  t.false([...pre.headers.keys()].some((name) => name.startsWith('access-control-')));
});

/** What the page's script reports back: the answer's status and the headers JavaScript could read, or the error. */
interface PageResult {
  ok: boolean;
  status?: number;
  body?: unknown;
  headers?: Record<string, string | null>;
  error?: string;
}

async function fetchFromPage(pageOrigin: string, apiUrl: string): Promise<PageResult[]> {
  const page = await browser!.newPage();
  try {
    await page.goto(`${pageOrigin}/`);
    const email = `browser.${pageOrigin.replace(/\D/g, '')}@example.com`;
    // A string, so the page runs its own script as written (no helper of this file's compiler).
    return (await page.evaluate(`runClient(${JSON.stringify(apiUrl)}, ${JSON.stringify(TEST_API_KEY)}, ${JSON.stringify(email)})`)) as PageResult[];
  } finally {
    await page.close();
  }
}

browserTest('a page on an allowed origin calls the API with its key from headless Chromium and reads the exposed headers', async (t) => {
  const [created, replayed, listed] = await fetchFromPage(allowedPage.origin, app.url);
  t.true(created!.ok, created!.error);
  t.is(created!.status, 201);
  t.regex(created!.headers!.location ?? '', /^\/api\/users\/\d+$/);
  t.truthy(created!.headers!.etag);
  t.regex(created!.headers!.ratelimit ?? '', /^"default";r=\d+;t=\d+$/);
  t.regex(created!.headers!['ratelimit-policy'] ?? '', /^"default";q=\d+;w=\d+$/);
  t.truthy(created!.headers!['x-request-id']);
  t.is(replayed!.status, 201);
  t.is(replayed!.headers!['idempotent-replayed'], 'true');
  t.deepEqual(replayed!.body, created!.body);
  t.is(listed!.status, 200);
});

browserTest('a page on an origin not listed cannot read the API: the browser refuses the cross-origin fetch', async (t) => {
  const before = await app.client.GET('/users', { params: { query: { email: `browser.${otherPage.origin.replace(/\D/g, '')}@example.com` } } });
  const results = await fetchFromPage(otherPage.origin, app.url);
  for (const result of results) {
    t.false(result.ok);
    t.regex(result.error ?? '', /TypeError: Failed to fetch/);
  }
  // The preflight failed, so the POST was never sent: nothing was created.
  const after = await app.client.GET('/users', { params: { query: { email: `browser.${otherPage.origin.replace(/\D/g, '')}@example.com` } } });
  t.deepEqual(before.data!.data, []);
  t.deepEqual(after.data!.data, []);
});
