import http from 'node:http';
import test from 'ava';
import { loadSpec } from '../src/http/contract.js';
import { createTestDatabase, startTestApp, TEST_API_KEY, type TestApp } from './support/app.js';
import { startInstance } from './support/instance.js';
import { increase, labelsKey, parsePrometheus, series, type Sample } from './support/prometheus.js';

const METHODS = ['get', 'put', 'post', 'delete', 'patch'];
const operationIds = new Set(
  Object.values(loadSpec().document.paths ?? {}).flatMap((item) =>
    Object.entries(item ?? {})
      .filter(([method]) => METHODS.includes(method))
      .map(([, op]) => (op as { operationId: string }).operationId),
  ),
);
/** Route names outside /api, and what no route matched. */
const OTHER_ROUTES = new Set(['healthz', 'readyz', 'metrics', 'openapi.json', 'openapi.yaml', 'docs', 'docs/swagger', 'docs/swagger/init.js', 'docs/swagger/:file', 'unmatched']);

const auth = { Authorization: `Bearer ${TEST_API_KEY}` };
const key = (operation: string, status: number) => labelsKey({ operation, status: String(status) });

async function scrape(url: string, headers: Record<string, string> = auth): Promise<Sample[]> {
  const response = await fetch(`${url}/metrics`, { headers });
  if (response.status !== 200) throw new Error(`GET /metrics -> ${response.status}`);
  return parsePrometheus(await response.text());
}

/** A GET on a connection of its own (no keep-alive): node:cluster hands each new connection to the next worker. */
function getOnNewConnection(url: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false, headers: auth }, (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
      })
      .on('error', reject);
  });
}

let app: TestApp;
test.before(async () => {
  app = await startTestApp();
});
test.after.always(() => app?.close());

// Serial: each test counts every request its app answered between two scrapes.

test.serial('/metrics needs the API key by default: 401 problem without it, Prometheus text with it', async (t) => {
  const denied = await fetch(`${app.url}/metrics`);
  t.is(denied.status, 401);
  t.is(denied.headers.get('content-type'), 'application/problem+json');
  t.is(denied.headers.get('www-authenticate'), 'Bearer realm="api"');
  const wrong = await fetch(`${app.url}/metrics`, { headers: { Authorization: 'Bearer not-a-key' } });
  t.is(wrong.status, 401);
  const allowed = await fetch(`${app.url}/metrics`, { headers: auth });
  t.is(allowed.status, 200);
  t.regex(allowed.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const samples = parsePrometheus(await allowed.text());
  for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
    t.true(
      samples.some((s) => s.name === name),
      `default process metric ${name}`,
    );
  }
  for (const name of ['db_pool_connections', 'db_pool_idle_connections', 'db_pool_waiting_requests', 'http_requests_in_flight', 'idempotency_replays_total']) {
    t.true(
      samples.some((s) => s.name === name && Number.isFinite(s.value)),
      name,
    );
  }
});

test.serial('request counters move by exactly the requests made, labelled by operationId and status, never by raw path', async (t) => {
  const before = await scrape(app.url);
  const created = await app.client.POST('/users', { body: { name: 'Metered', email: `metered.${process.pid}@example.com` } });
  const id = created.data!.id;
  for (let i = 0; i < 3; i++) await app.client.GET('/users/{id}', { params: { path: { id } } });
  await app.fetch(`/api/users/${id}`, { method: 'HEAD' });
  await app.client.GET('/users/{id}', { params: { path: { id: 987654321 } } });
  await app.client.GET('/users', { params: { query: { limit: 501 } } });
  await app.fetch('/api/no-such-thing');
  await app.fetch(`/api/users/${id}`, { method: 'POST', body: '{}', headers: { 'Content-Type': 'application/json' } });
  await fetch(`${app.url}/api/users`); // no key
  await fetch(`${app.url}/healthz`);
  const after = await scrape(app.url);

  t.deepEqual(increase(before, after, 'http_requests_total'), {
    [key('createUser', 201)]: 1,
    [key('getUser', 200)]: 4, // three GETs and a HEAD: the same operation
    [key('getUser', 404)]: 1,
    [key('listUsers', 400)]: 1,
    [key('listUsers', 401)]: 1,
    [key('unmatched', 404)]: 1,
    [key('unmatched', 405)]: 1,
    [key('healthz', 200)]: 1,
    [key('metrics', 200)]: 1, // the first scrape, counted once it was answered
  });
  t.deepEqual(increase(before, after, 'http_request_duration_seconds_count'), increase(before, after, 'http_requests_total'));
  // Each observation lands in the +Inf bucket too, and durations are positive.
  t.is(
    series(after, 'http_request_duration_seconds_bucket').get(labelsKey({ operation: 'getUser', status: '200', le: '+Inf' })),
    series(after, 'http_requests_total').get(key('getUser', 200)),
  );
  t.true((series(after, 'http_request_duration_seconds_sum').get(key('getUser', 200)) ?? 0) > 0);

  // Bounded labels: only the spec's operationIds and the named routes, whatever paths were asked for.
  const operations = new Set(after.filter((s) => s.name === 'http_requests_total').map((s) => s.labels.operation!));
  t.deepEqual(
    [...operations].filter((o) => !operationIds.has(o) && !OTHER_ROUTES.has(o)),
    [],
  );
  t.false(
    after.some((s) => Object.values(s.labels).some((value) => value.includes('/api/'))),
    'no raw path as a label',
  );
});

test.serial('idempotent replays are counted; in-flight requests and the pool are reported', async (t) => {
  const before = await scrape(app.url);
  const body = { name: 'Replayed', email: `replayed.${process.pid}@example.com` };
  const headers = { 'Idempotency-Key': `metrics-${process.pid}` };
  await app.client.POST('/users', { body, params: { header: headers } });
  const again = await app.client.POST('/users', { body, params: { header: headers } });
  t.is(again.response.headers.get('idempotent-replayed'), 'true');
  const after = await scrape(app.url);
  t.deepEqual(increase(before, after, 'idempotency_replays_total'), { '{}': 1 });
  t.deepEqual(increase(before, after, 'http_requests_total'), { [key('createUser', 201)]: 2, [key('metrics', 200)]: 1 });
  // The scrape itself is the one request in flight.
  t.is(series(after, 'http_requests_in_flight').get('{}'), 1);
  const total = series(after, 'db_pool_connections').get('{}')!;
  const idle = series(after, 'db_pool_idle_connections').get('{}')!;
  t.true(total >= 1 && total <= 10 && idle <= total, `pool ${total} total, ${idle} idle`);
  t.is(series(after, 'db_pool_waiting_requests').get('{}'), 0);
});

test.serial('METRICS_PUBLIC=1 serves /metrics without a key; /api still needs one', async (t) => {
  const open = await startTestApp({ METRICS_PUBLIC: '1' });
  try {
    const response = await fetch(`${open.url}/metrics`);
    t.is(response.status, 200);
    t.true(parsePrometheus(await response.text()).some((s) => s.name === 'http_requests_total' || s.name === 'process_cpu_user_seconds_total'));
    t.is((await fetch(`${open.url}/api/users`)).status, 401);
  } finally {
    await open.close();
  }
});

test.serial('METRICS=0 collects nothing and has no /metrics route (404 problem); the API answers as before', async (t) => {
  const off = await startTestApp({ METRICS: '0' });
  try {
    const response = await fetch(`${off.url}/metrics`, { headers: auth });
    t.is(response.status, 404);
    t.is(response.headers.get('content-type'), 'application/problem+json');
    const features = await fetch(`${off.url}/api/features`, { headers: auth });
    t.is(features.status, 200);
  } finally {
    await off.close();
  }
});

test.serial('with WEB_CONCURRENCY=2 every scrape, whichever worker answers it, counts the requests of both workers', async (t) => {
  const databaseUrl = await createTestDatabase();
  const service = await startInstance({ DATABASE_URL: databaseUrl, API_KEYS: TEST_API_KEY, WEB_CONCURRENCY: '2', RATE_LIMIT_PER_MINUTE: '0' });
  try {
    const count = (samples: Sample[]) => series(samples, 'http_requests_total').get(key('listFeatures', 200)) ?? 0;
    const pids = (samples: Sample[]) => samples.filter((s) => s.name === 'process_start_time_seconds').length;
    const scrapeOnNewConnection = async () => {
      const { status, text } = await getOnNewConnection(`${service.url}/metrics`);
      if (status !== 200) throw new Error(`GET /metrics -> ${status}`);
      return parsePrometheus(text);
    };
    const first = await scrapeOnNewConnection();
    // A new connection each time: the primary deals connections to the workers in turn, so each
    // worker answers about half of the requests, and half of the scrapes.
    const requests = 40;
    for (let i = 0; i < requests; i++) t.is((await getOnNewConnection(`${service.url}/api/features`)).status, 200);
    const scrapes = [];
    for (let i = 0; i < 6; i++) scrapes.push(await scrapeOnNewConnection());
    for (const samples of scrapes) t.is(count(samples) - count(first), requests);
    // Two workers' pools: the aggregate holds at least one connection per worker that served a request.
    t.true(series(scrapes[0]!, 'db_pool_connections').get('{}')! >= 1);
    t.true(pids(first) <= 1, 'process_start_time_seconds is one aggregated series');
  } finally {
    await service.stop();
  }
});
