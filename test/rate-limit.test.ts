import test from 'ava';
import { loadSpec } from '../src/http/contract.js';
import { quotaPerWindow } from '../src/http/rate-limit.js';
import { createTestDatabase, startTestApp, TEST_API_KEY, type TestApp } from './support/app.js';
import { startInstance } from './support/instance.js';

const POLICY = /^"default";q=(\d+);w=(\d+)$/;
const CURRENT = /^"default";r=(\d+);t=(\d+)$/;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The two headers of an answer, parsed; throws when either is missing or malformed. */
function rateLimitOf(response: Response): { quota: number; window: number; remaining: number; reset: number } {
  const policy = POLICY.exec(response.headers.get('ratelimit-policy') ?? '');
  const current = CURRENT.exec(response.headers.get('ratelimit') ?? '');
  if (!policy || !current) {
    throw new Error(`${response.status}: RateLimit-Policy ${response.headers.get('ratelimit-policy')}, RateLimit ${response.headers.get('ratelimit')}`);
  }
  return { quota: Number(policy[1]), window: Number(policy[2]), remaining: Number(current[1]), reset: Number(current[2]) };
}

async function withApp(env: Record<string, string>, body: (app: TestApp) => Promise<void>): Promise<void> {
  const app = await startTestApp(env);
  try {
    await body(app);
  } finally {
    await app.close();
  }
}

test('every answer to a keyed /api request carries both headers, and each request takes exactly one from the quota', async (t) => {
  await withApp({ RATE_LIMIT_PER_MINUTE: '1000', RATE_LIMIT_WINDOW_SECONDS: '60' }, async (app) => {
    const email = `limited.${process.pid}@example.com`;
    const requests: Array<[string, RequestInit, number]> = [
      ['/api/users', { method: 'POST', body: JSON.stringify({ name: 'Limited', email }), headers: { 'Content-Type': 'application/json' } }, 201],
      ['/api/users', { method: 'POST', body: JSON.stringify({ name: 'Limited', email }), headers: { 'Content-Type': 'application/json' } }, 409],
      ['/api/users?limit=1', {}, 200],
      ['/api/users?limit=0', {}, 400],
      ['/api/users/987654321', {}, 404],
      ['/api/users', { method: 'POST', body: 'name=x', headers: { 'Content-Type': 'text/plain' } }, 415],
      ['/api/users', { method: 'POST', body: JSON.stringify({ name: 'x'.repeat(70_000), email }), headers: { 'Content-Type': 'application/json' } }, 413],
      ['/api/analytics/', {}, 200],
      ['/api/users/1', { method: 'HEAD' }, 200],
      ['/api/no-such-resource', {}, 404],
      ['/api/users', { method: 'DELETE' }, 405],
    ];
    let previous: number | undefined;
    for (const [path, init, status] of requests) {
      const response = await app.fetch(path, init);
      t.is(response.status, status, `${init.method ?? 'GET'} ${path}`);
      const limit = rateLimitOf(response);
      t.is(limit.quota, 1000);
      t.is(limit.window, 60);
      t.true(limit.reset >= 1 && limit.reset <= 60, `t=${limit.reset}`);
      if (previous !== undefined) t.is(limit.remaining, previous - 1, `${init.method ?? 'GET'} ${path}: one request, one less`);
      previous = limit.remaining;
    }
    t.is(previous, 1000 - requests.length);
    // No key: nothing is counted against any key, and there is no quota to report.
    const anonymous = await fetch(`${app.url}/api/users`);
    t.is(anonymous.status, 401);
    t.is(anonymous.headers.get('ratelimit'), null);
    t.is(anonymous.headers.get('ratelimit-policy'), null);
    // Outside /api: no rate limit.
    t.is((await app.fetch('/healthz')).headers.get('ratelimit'), null);
  });
});

test('past the quota the answer is a 429 problem with Retry-After and r=0, and the window then resets', async (t) => {
  // 60 a minute in windows of 2 s: 2 requests per window.
  await withApp({ RATE_LIMIT_PER_MINUTE: '60', RATE_LIMIT_WINDOW_SECONDS: '2' }, async (app) => {
    // Requests until one is refused: the third of a window (later, if a slow machine let windows pass between them).
    const answers: Response[] = [];
    while (answers.length < 20 && answers.at(-1)?.status !== 429) answers.push(await app.fetch('/api/features'));
    const refused = answers.at(-1)!;
    t.is(refused.status, 429);
    t.deepEqual(
      answers.slice(0, -1).map((r) => r.status),
      Array.from({ length: answers.length - 1 }, () => 200),
    );
    t.is(rateLimitOf(answers.at(-2)!).remaining, 0, 'the last request allowed took the last of the quota');
    t.is(refused.headers.get('content-type'), 'application/problem+json');
    const problem = (await refused.json()) as { status: number; title: string };
    t.is(problem.status, 429);
    t.is(problem.title, 'Too Many Requests');
    const retryAfter = Number(refused.headers.get('retry-after'));
    t.true(retryAfter === 1 || retryAfter === 2, `Retry-After ${refused.headers.get('retry-after')}: the window is 2 s`);
    t.deepEqual(rateLimitOf(refused), { quota: 2, window: 2, remaining: 0, reset: retryAfter });
    // Retry-After later, the window has reset: a new one, counting from this request.
    await sleep(retryAfter * 1000 + 50);
    const later = await app.fetch('/api/features');
    t.is(later.status, 200);
    t.is(rateLimitOf(later).remaining, 1);
  });
});

test('each API key has its own quota', async (t) => {
  const other = `other_${process.pid}`;
  const databaseUrl = await createTestDatabase();
  const instance = await startInstance({ DATABASE_URL: databaseUrl, API_KEYS: `${TEST_API_KEY},${other}`, RATE_LIMIT_PER_MINUTE: '3' });
  try {
    const get = (key: string) => fetch(`${instance.url}/api/features`, { headers: { Authorization: `Bearer ${key}` } });
    for (let i = 0; i < 3; i++) t.is((await get(TEST_API_KEY)).status, 200);
    t.is((await get(TEST_API_KEY)).status, 429);
    // A refused request does not open the door either (the window is a minute: still the same one).
    t.is((await get(TEST_API_KEY)).status, 429);
    const fresh = await get(other);
    t.is(fresh.status, 200);
    t.is(rateLimitOf(fresh).remaining, 2);
  } finally {
    await instance.stop();
  }
});

test('the quota is shared by two service processes on one database', async (t) => {
  const databaseUrl = await createTestDatabase();
  const env = { DATABASE_URL: databaseUrl, API_KEYS: TEST_API_KEY, RATE_LIMIT_PER_MINUTE: '6' };
  const [a, b] = await Promise.all([startInstance(env), startInstance(env)]);
  try {
    const get = (url: string) => fetch(`${url}/api/features`, { headers: { Authorization: `Bearer ${TEST_API_KEY}` } });
    const remaining: number[] = [];
    for (let i = 0; i < 6; i++) {
      const response = await get(i % 2 === 0 ? a.url : b.url);
      t.is(response.status, 200);
      remaining.push(rateLimitOf(response).remaining);
    }
    // One count, whichever process answered: 5, 4, 3, 2, 1, 0 alternating between them.
    t.deepEqual(remaining, [5, 4, 3, 2, 1, 0]);
    for (const url of [a.url, b.url]) {
      const refused = await get(url);
      t.is(refused.status, 429);
      t.truthy(refused.headers.get('retry-after'));
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
});

test('RATE_LIMIT_PER_MINUTE=0 turns it off: no limit and no headers', async (t) => {
  await withApp({ RATE_LIMIT_PER_MINUTE: '0' }, async (app) => {
    const response = await app.fetch('/api/features');
    t.is(response.status, 200);
    t.is(response.headers.get('ratelimit'), null);
    t.is(response.headers.get('ratelimit-policy'), null);
  });
});

test('a window whose quota is not a whole number of requests is refused at start-up, naming both variables', (t) => {
  t.is(quotaPerWindow({ perMinute: 600, windowSeconds: 60 }), 600);
  t.is(quotaPerWindow({ perMinute: 600, windowSeconds: 1 }), 10);
  t.throws(() => quotaPerWindow({ perMinute: 100, windowSeconds: 1 }), { message: /RATE_LIMIT_PER_MINUTE × RATE_LIMIT_WINDOW_SECONDS \/ 60 .* 100 × 1 \/ 60/ });
  t.throws(() => quotaPerWindow({ perMinute: 600, windowSeconds: 0 }), { message: /RATE_LIMIT_WINDOW_SECONDS must be at least 1/ });
});

test('the spec declares the 429, with Retry-After and both headers, on every operation', (t) => {
  const METHODS = ['get', 'put', 'post', 'delete', 'patch'];
  const document = loadSpec().document as unknown as { paths: Record<string, Record<string, { operationId?: string; responses?: Record<string, { $ref?: string }> }>> };
  const missing = Object.entries(document.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => METHODS.includes(method))
      .filter(([, op]) => op.responses?.['429']?.$ref !== '#/components/responses/TooManyRequests')
      .map(([method, op]) => `${method.toUpperCase()} ${path} (${op.operationId})`),
  );
  t.deepEqual(missing, []);
  const response = (loadSpec().document.components?.responses as Record<string, { headers: Record<string, unknown> }>).TooManyRequests!;
  t.deepEqual(Object.keys(response.headers).sort(), ['RateLimit', 'RateLimit-Policy', 'Retry-After']);
});
