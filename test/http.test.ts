import http from 'node:http';
import zlib from 'node:zlib';
import test from 'ava';
import { loadSpec } from '../src/http/contract.js';
import { TEST_API_KEY, useTestApp } from './support/app.js';
import { waitFor } from './support/service-process.js';

// The webhook endpoint below points at loopback, which only WEBHOOK_ALLOW_PRIVATE permits.
const app = useTestApp(test, { WEBHOOK_ALLOW_PRIVATE: '1' });

/** Every GET path of the spec with its parameters filled by objects that exist. */
async function getPathsOfTheSpec(): Promise<string[]> {
  const { data: user } = await app.client.POST('/users', { body: { name: 'Head', email: `head.${process.pid}@example.com` } });
  const { data: feature } = await app.client.POST('/features', { body: { name: `Head feature ${process.pid}` } });
  const { data: subscription } = await app.client.POST('/subscriptions', {
    body: { user_id: user!.id, status: 'active', plan_cost: '9.99', start_date: '2025-01-15', feature_ids: [feature!.id] },
  });
  const { data: endpoint } = await app.client.POST('/webhook-endpoints', { body: { url: 'http://127.0.0.1:9/hooks', event_types: ['user.deleted'] } });
  // The feed serves an event once no transaction older than it is in flight (the service's own
  // background work included): under load the events just written can take a moment to appear.
  let eventId: number | undefined;
  await waitFor('an event in the feed', async () => {
    eventId = (await app.client.GET('/events', { params: { query: { limit: 1 } } })).data?.data[0]?.id;
    return eventId !== undefined;
  });
  const ids: Record<string, number | string> = {
    users: user!.id,
    subscriptions: subscription!.id,
    features: feature!.id,
    events: eventId!,
    'webhook-endpoints': endpoint!.id,
  };
  const paths = loadSpec().document.paths as Record<string, Record<string, unknown>>;
  return Object.entries(paths)
    .filter(([, item]) => 'get' in item)
    .map(([template]) => template.replace(/^\/([\w-]+)\/\{id\}/, (_, resource: string) => `/${resource}/${ids[resource]}`).replace('{feature_id}', String(feature!.id)))
    .map((path) => `/api${path}${path.endsWith('s') && !path.endsWith('analytics') ? '?limit=1' : ''}`);
}

test('HEAD answers wherever GET does, with the same status and headers and no body', async (t) => {
  const paths = await getPathsOfTheSpec();
  t.true(paths.length >= 8, paths.join(' '));
  for (const path of paths) {
    t.notRegex(path, /\{/, 'every parameter filled');
    // Identity on both: HEAD describes the uncompressed representation (compression skips HEAD).
    const get = await app.fetch(path, { headers: { 'Accept-Encoding': 'identity' } });
    const head = await app.fetch(path, { method: 'HEAD', headers: { 'Accept-Encoding': 'identity' } });
    t.is(head.status, get.status, path);
    t.is(get.status, 200, path);
    for (const name of ['etag', 'link', 'content-type', 'content-length', 'cache-control']) {
      if (name === 'etag' && path.includes('/analytics')) continue; // as_of moves between the two requests
      t.is(head.headers.get(name), get.headers.get(name), `${path} ${name}`);
    }
    t.is(Number(head.headers.get('content-length')), (await get.arrayBuffer()).byteLength, path);
    t.is((await head.arrayBuffer()).byteLength, 0, path);
  }
});

test('HEAD is in Allow where GET is, and a 405 elsewhere', async (t) => {
  const wrong = await app.fetch('/api/users', { method: 'DELETE' });
  t.is(wrong.status, 405);
  t.deepEqual(wrong.headers.get('allow')?.split(', ').sort(), ['GET', 'HEAD', 'POST']);
  const headless = await app.fetch('/api/users/1', { method: 'OPTIONS' });
  t.true(headless.headers.get('allow')?.split(', ').includes('HEAD'));
  const noGet = await app.fetch('/api/subscriptions/1/features/1', { method: 'POST' });
  t.is(noGet.status, 405);
  t.false(noGet.headers.get('allow')?.split(', ').includes('POST'));
});

/** One request over node:http, so the bytes on the wire can be counted (fetch decompresses). */
function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const request = http.get(`${app.url}${path}`, { headers: { Authorization: `Bearer ${TEST_API_KEY}`, ...headers } }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) }));
      response.on('error', reject);
    });
    request.on('error', reject);
  });
}

test('a 500-row page goes out compressed, at least 4x smaller with gzip; small bodies and 304s do not', async (t) => {
  const { data: user } = await app.client.POST('/users', { body: { name: 'Many', email: `many.${process.pid}@example.com` } });
  await app.database.pool.query(
    `INSERT INTO subscriptions (user_id, status, plan_name, plan_cost, billing_period, start_date)
     SELECT $1, (ARRAY['active','trialing','canceled'])[1 + n % 3], 'Plan ' || n % 7, (n % 200) + 0.99, 'month', date '2025-01-01' + n % 300
     FROM generate_series(1, 500) AS n`,
    [user!.id],
  );
  const path = `/api/users/${user!.id}/subscriptions?limit=500`;
  const plain = await rawGet(path, { 'Accept-Encoding': 'identity' });
  t.is(plain.status, 200);
  t.is(plain.headers['content-encoding'], undefined);
  t.is((JSON.parse(plain.body.toString()) as { data: unknown[] }).data.length, 500);
  for (const [encoding, decode] of [
    ['gzip', zlib.gunzipSync],
    ['br', zlib.brotliDecompressSync],
  ] as const) {
    const packed = await rawGet(path, { 'Accept-Encoding': encoding });
    t.is(packed.headers['content-encoding'], encoding);
    t.regex(String(packed.headers.vary), /Accept-Encoding/i);
    t.deepEqual(decode(packed.body), plain.body, `${encoding} decodes to the same bytes`);
    t.log(`${encoding}: ${plain.body.length} bytes -> ${packed.body.length} (${(plain.body.length / packed.body.length).toFixed(1)}x)`);
    if (encoding === 'gzip') t.true(plain.body.length >= 4 * packed.body.length, `${plain.body.length} vs ${packed.body.length}`);
  }
  // One object is too small to be worth it; a 304 has no body at all.
  const one = await rawGet(`/api/users/${user!.id}`, { 'Accept-Encoding': 'gzip, br' });
  t.is(one.headers['content-encoding'], undefined);
  const again = await rawGet(`/api/users/${user!.id}`, { 'Accept-Encoding': 'gzip, br', 'If-None-Match': String(one.headers.etag) });
  t.is(again.status, 304);
  t.is(again.headers['content-encoding'], undefined);
  t.is(again.body.length, 0);
});
