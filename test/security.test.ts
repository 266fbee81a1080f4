import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import pg from 'pg';
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { ApiKeys } from '../src/http/auth.js';
import { pruneIdempotencyKeys } from '../src/http/idempotency.js';
import { loadSpec } from '../src/http/contract.js';
import { startService } from '../src/service.js';
import { startTestApp, useTestApp, TEST_API_KEY } from './support/app.js';

const app = useTestApp(test);

let serial = 0;
const email = () => `sec.${process.pid}.${++serial}@example.com`;
const json = (body: unknown, headers: Record<string, string> = {}): RequestInit => ({
  method: 'POST',
  headers: { 'content-type': 'application/json', ...headers },
  body: JSON.stringify(body),
});
const usersWithEmail = async (address: string) => Number((await app.database.pool.query('SELECT count(*) FROM users WHERE email = $1', [address])).rows[0].count);

test('without a valid key every /api operation is a 401 problem that reveals nothing', async (t) => {
  const { data: user } = await app.client.POST('/users', { body: { name: 'Secret', email: email() } });
  for (const authorization of [undefined, 'Bearer wrong-key', `Basic ${Buffer.from(`x:${TEST_API_KEY}`).toString('base64')}`, `Bearer ${TEST_API_KEY}x`]) {
    const headers: Record<string, string> = authorization ? { Authorization: authorization } : {};
    const existing = await fetch(`${app.url}/api/users/${user!.id}`, { headers });
    const missing = await fetch(`${app.url}/api/users/987654`, { headers });
    for (const response of [existing, missing]) {
      t.is(response.status, 401, authorization);
      t.is(response.headers.get('content-type'), 'application/problem+json');
      t.is(response.headers.get('www-authenticate'), 'Bearer realm="api"');
    }
    // The same answer whether or not the object exists, and nothing of it.
    const [a, b] = [await existing.json(), await missing.json()];
    t.is(a.detail, b.detail);
    t.notRegex(JSON.stringify(a), /Secret|sec\./);
  }
  const post = await fetch(`${app.url}/api/users`, json({ name: 'Intruder', email: 'intruder@example.com' }));
  t.is(post.status, 401);
  t.is(await usersWithEmail('intruder@example.com'), 0);
});

// Other tests of this file store keys at the same time: count only this test's.
const intruderKeys = async () => Number((await app.database.pool.query("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'intruder-%'")).rows[0].count);

test('every operation of the spec, whatever the body, is a 401 before anything else without a valid key', async (t) => {
  const paths = loadSpec().document.paths as Record<string, Record<string, unknown>>;
  const bodies: Array<[string, RequestInit]> = [
    ['no body', {}],
    ['valid JSON', { headers: { 'content-type': 'application/json' }, body: '{"name":"Intruder","email":"intruder@example.com"}' }],
    ['broken JSON', { headers: { 'content-type': 'application/json' }, body: '{"name":' }],
    ['not JSON', { headers: { 'content-type': 'text/plain' }, body: 'hello' }],
    ['too large', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x'.repeat(200_000) }) }],
  ];
  let requests = 0;
  for (const [template, item] of Object.entries(paths)) {
    const url = `${app.url}/api${template.replace(/\{[^}]+\}/g, '1')}`;
    for (const method of Object.keys(item).filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m))) {
      for (const [label, init] of method === 'get' || method === 'delete' ? bodies.slice(0, 1) : bodies) {
        for (const authorization of [undefined, 'Bearer wrong-key']) {
          const headers = new Headers(init.headers);
          if (authorization) headers.set('Authorization', authorization);
          headers.set('Idempotency-Key', `intruder-${requests}`);
          const response = await fetch(url, { ...init, method: method.toUpperCase(), headers });
          requests++;
          t.is(response.status, 401, `${method.toUpperCase()} ${template} (${label}, ${authorization ?? 'no key'})`);
          t.is(response.headers.get('content-type'), 'application/problem+json');
        }
      }
    }
  }
  t.log(`${requests} requests without a valid key`);
  // Nothing was parsed into the idempotency store, and nobody was created.
  t.is(await intruderKeys(), 0);
  t.is(await usersWithEmail('intruder@example.com'), 0);
});

test('a key removed from API_KEYS is refused, and replays nothing stored under it', async (t) => {
  const key = `replayed-${process.pid}`;
  const address = email();
  const first = await app.fetch('/api/users', json({ name: 'Kept', email: address }, { 'Idempotency-Key': key }));
  t.is(first.status, 201);
  // The same database, restarted with the key revoked.
  const config = { ...loadConfig(process.env), databaseUrl: app.databaseUrl, port: 0, host: '127.0.0.1', apiKeys: ['the-new-key'] };
  const revoked = await startService(config, pino({ level: 'silent' }));
  try {
    const retry = await fetch(`${revoked.url}/api/users`, json({ name: 'Kept', email: address }, { 'Idempotency-Key': key, Authorization: `Bearer ${TEST_API_KEY}` }));
    t.is(retry.status, 401);
    t.is(retry.headers.get('idempotent-replayed'), null);
    t.notRegex(await retry.text(), /Kept|sec\./);
  } finally {
    await revoked.stop();
  }
});

test('health, readiness, docs and the spec stay open', async (t) => {
  for (const path of ['/healthz', '/readyz', '/openapi.json', '/openapi.yaml', '/docs', '/docs/swagger/']) {
    t.is((await fetch(`${app.url}${path}`)).status, 200, path);
  }
});

test('without API_KEYS a key is generated once, kept owner-only under DATA_DIR, and works', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'keys-'));
  const config = { ...loadConfig(process.env), databaseUrl: app.databaseUrl, dataDir, port: 0, host: '127.0.0.1', apiKeys: [] };
  try {
    const keys: string[] = [];
    for (let start = 0; start < 2; start++) {
      const service = await startService(config, pino({ level: 'silent' }));
      try {
        t.truthy(service.generatedApiKey);
        keys.push(service.generatedApiKey!);
        const ok = await fetch(`${service.url}/api/users?limit=1`, { headers: { Authorization: `Bearer ${service.generatedApiKey}` } });
        t.is(ok.status, 200);
        t.is((await fetch(`${service.url}/api/users?limit=1`, { headers: { Authorization: `Bearer ${TEST_API_KEY}` } })).status, 401);
      } finally {
        await service.stop();
      }
    }
    t.is(keys[0], keys[1], 'the second start uses the kept key');
    const file = path.join(dataDir, 'api-key');
    t.deepEqual([fs.readFileSync(file, 'utf8').trim()], keys.slice(0, 1));
    t.is(fs.statSync(file).mode & 0o777, 0o600);
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
});

test('keys are held as digests and compared whole', (t) => {
  const keys = new ApiKeys(['alpha', 'beta']);
  t.true(keys.verify('alpha'));
  t.true(keys.verify('beta'));
  t.false(keys.verify('alph'));
  t.false(keys.verify(undefined));
  t.false(keys.verify(''));
  t.is(ApiKeys.fromHeader('Bearer abc'), 'abc');
  t.is(ApiKeys.fromHeader('bearer   abc '), 'abc');
  t.is(ApiKeys.fromHeader('Token abc'), undefined);
  t.false(JSON.stringify(keys).includes('alpha'));
});

test('API responses carry nosniff, no-store and a request id, and no X-Powered-By', async (t) => {
  const response = await app.fetch('/api/users');
  t.is(response.headers.get('x-content-type-options'), 'nosniff');
  t.is(response.headers.get('cache-control'), 'no-store');
  t.truthy(response.headers.get('x-request-id'));
  t.is(response.headers.get('x-powered-by'), null);
});

test('a retried POST with the same Idempotency-Key replays the first response and creates nothing new', async (t) => {
  const address = email();
  const body = { name: 'Once', email: address };
  const first = await app.fetch('/api/users', json(body, { 'Idempotency-Key': `k-${address}` }));
  t.is(first.status, 201);
  const created = await first.json();
  const retry = await app.fetch('/api/users', json(body, { 'Idempotency-Key': `k-${address}` }));
  t.is(retry.status, 201);
  t.is(retry.headers.get('idempotent-replayed'), 'true');
  t.is(retry.headers.get('location'), first.headers.get('location'));
  t.deepEqual(await retry.json(), created);
  t.is(await usersWithEmail(address), 1);
  // A 4xx is remembered too: the same retry gets the same answer.
  const bad = { name: '', email: email() };
  const rejected = await app.fetch('/api/users', json(bad, { 'Idempotency-Key': `bad-${address}` }));
  const rejectedAgain = await app.fetch('/api/users', json(bad, { 'Idempotency-Key': `bad-${address}` }));
  t.is(rejected.status, 400);
  t.is(rejectedAgain.status, 400);
  t.is(rejectedAgain.headers.get('idempotent-replayed'), 'true');
});

test('the same Idempotency-Key with a different body is a 422 and stores nothing', async (t) => {
  const key = `k-${email()}`;
  t.is((await app.fetch('/api/users', json({ name: 'A', email: email() }, { 'Idempotency-Key': key }))).status, 201);
  const other = email();
  const reused = await app.fetch('/api/users', json({ name: 'B', email: other }, { 'Idempotency-Key': key }));
  t.is(reused.status, 422);
  t.is(await usersWithEmail(other), 0);
});

/** Holds the key's lock as a running first request does (the service's own idempotency_begin), until released. */
async function holdKey(databaseUrl: string, key: string): Promise<{ release(): Promise<void> }> {
  const holder = new pg.Client({ connectionString: databaseUrl });
  await holder.connect();
  await holder.query('BEGIN');
  await holder.query("SELECT * FROM idempotency_begin($1, $2, '1 second', '24 hours')", [ApiKeys.clientId(TEST_API_KEY), key]);
  return {
    async release() {
      await holder.query('ROLLBACK');
      await holder.end();
    },
  };
}

test('a duplicate of a request still running waits for it, and is a 409 only if it is still running after IDEMPOTENCY_WAIT_MS', async (t) => {
  const impatient = await startTestApp({ IDEMPOTENCY_WAIT_MS: '200' });
  t.teardown(() => impatient.close());
  const key = `inflight-${email()}`;
  const body = { name: 'Racer', email: email() };
  const first = await holdKey(impatient.databaseUrl, key);
  const duplicate = await impatient.fetch('/api/users', json(body, { 'Idempotency-Key': key }));
  t.is(duplicate.status, 409);
  t.regex((await duplicate.json()).detail, /still in progress/);
  await first.release();
  // The first one ended without an answer (as a crash ends it): the key is free at once, no lock to expire.
  const retry = await impatient.fetch('/api/users', json(body, { 'Idempotency-Key': key }));
  t.is(retry.status, 201);
  t.is(retry.headers.get('idempotent-replayed'), null);
  t.is(Number((await impatient.database.pool.query('SELECT count(*) FROM users WHERE email = $1', [body.email])).rows[0].count), 1);
});

test('requests that arrive while the first with their key runs wait, and replay its answer', async (t) => {
  const key = `queue-${email()}`;
  const body = { name: 'Queued', email: email() };
  const first = await holdKey(app.databaseUrl, key);
  const waiting = Promise.all([1, 2, 3].map(() => app.fetch('/api/users', json(body, { 'Idempotency-Key': key }))));
  // Both wait on the key's lock until it is released; then one carries the request out, the others replay it.
  await new Promise((resolve) => setTimeout(resolve, 300));
  await first.release();
  const responses = await waiting;
  t.deepEqual(
    responses.map((r) => r.status),
    [201, 201, 201],
  );
  t.is(responses.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 2);
  const bodies = await Promise.all(responses.map((r) => r.json()));
  t.true(bodies.every((b) => b.id === bodies[0].id));
  t.is(await usersWithEmail(body.email), 1);
});

test('concurrent identical POSTs with one key create exactly one object', async (t) => {
  const key = `burst-${email()}`;
  const body = { name: 'Burst', email: email() };
  const responses = await Promise.all(Array.from({ length: 8 }, () => app.fetch('/api/users', json(body, { 'Idempotency-Key': key }))));
  const statuses = responses.map((r) => r.status);
  // Each waits for the one before it and replays its answer: no 409 while the first finishes in time.
  t.deepEqual(statuses, Array(8).fill(201));
  t.is(responses.filter((r) => r.headers.get('idempotent-replayed') === 'true').length, 7);
  t.is(await usersWithEmail(body.email), 1);
});

test('an over-long Idempotency-Key is a 400', async (t) => {
  const response = await app.fetch('/api/users', json({ name: 'L', email: email() }, { 'Idempotency-Key': 'k'.repeat(256) }));
  t.is(response.status, 400);
});

test('a stored response expires after 24 hours: pruned, and a retry after that is a new request', async (t) => {
  const client = ApiKeys.clientId(TEST_API_KEY);
  const [old, fresh] = [`expired-${process.pid}`, `fresh-${process.pid}`];
  // Stored as the service stores them; the first is 25 hours old.
  await app.database.pool.query(
    `INSERT INTO idempotency_keys (client, key, request_hash, status, response_headers, response_body, created_at)
     VALUES ($1, $2, 'h', 201, '{}', '{"id": 1}', now() - interval '25 hours'), ($1, $3, 'h', 201, '{}', '{"id": 1}', now())`,
    [client, old, fresh],
  );
  const address = email();
  const retried = await app.fetch('/api/users', json({ name: 'Late', email: address }, { 'Idempotency-Key': old }));
  t.is(retried.status, 201, 'an expired key is not replayed: the request is carried out');
  t.is(retried.headers.get('idempotent-replayed'), null);
  t.is(await usersWithEmail(address), 1);

  await app.database.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE client = $1 AND key = $2`, [client, old]);
  t.true((await pruneIdempotencyKeys(app.database.db)) >= 1);
  const { rows } = await app.database.pool.query('SELECT key FROM idempotency_keys WHERE client = $1 AND key = ANY($2) ORDER BY key', [client, [old, fresh]]);
  t.deepEqual(
    rows.map((r: { key: string }) => r.key),
    [fresh],
  );
});
