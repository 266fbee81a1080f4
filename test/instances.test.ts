/**
 * Two service processes, two ports, one PostgreSQL: what N instances behind a load balancer are.
 * They must behave as one service: nothing a client relies on may live in one process's memory.
 */
import test from 'ava';
import pg from 'pg';
import { checkResponse, createTestDatabase } from './support/app.js';
import { startInstance, type Instance } from './support/instance.js';

/** One key per concern, so the quota of one test is not spent by another. */
const KEYS = { idempotency: `idem_${process.pid}`, limits: `limits_${process.pid}`, writes: `writes_${process.pid}`, reads: `reads_${process.pid}` };
/** Requests per key in one window of 10 minutes (30 a minute): however slow the machine, the tests stay inside one window. */
const QUOTA = 300;

let databaseUrl: string;
let a: Instance;
let b: Instance;

test.before(async () => {
  databaseUrl = await createTestDatabase();
  const env = { DATABASE_URL: databaseUrl, API_KEYS: Object.values(KEYS).join(','), RATE_LIMIT_PER_MINUTE: String(QUOTA / 10), RATE_LIMIT_WINDOW_SECONDS: '600' };
  [a, b] = await Promise.all([startInstance(env), startInstance(env)]);
});
test.after.always(async () => {
  await Promise.all([a?.stop(), b?.stop()]);
});

/** A request to one instance, its answer checked against the spec. */
async function call(instance: Instance, key: string, path: string, init: RequestInit = {}): Promise<Response> {
  const headers = new Headers(init.headers);
  headers.set('Authorization', `Bearer ${key}`);
  if (init.body) headers.set('Content-Type', 'application/json');
  const response = await fetch(`${instance.url}${path}`, { ...init, headers });
  await checkResponse(init.method ?? 'GET', new URL(`${instance.url}${path}`), response);
  return response;
}

test('an Idempotency-Key used on one instance replays on the other, also when both are sent at once', async (t) => {
  const body = JSON.stringify({ name: 'Two Instances', email: `two.instances.${process.pid}@example.com` });
  const first = await call(a, KEYS.idempotency, '/api/users', { method: 'POST', body, headers: { 'Idempotency-Key': 'retry-elsewhere' } });
  t.is(first.status, 201);
  const retried = await call(b, KEYS.idempotency, '/api/users', { method: 'POST', body, headers: { 'Idempotency-Key': 'retry-elsewhere' } });
  t.is(retried.status, 201);
  t.is(retried.headers.get('idempotent-replayed'), 'true');
  t.is(retried.headers.get('location'), first.headers.get('location'));
  t.deepEqual(await retried.json(), await first.json());
  // The same key on both at the same instant: one creates, the other waits for it and replays.
  const raced = JSON.stringify({ name: 'Raced', email: `raced.${process.pid}@example.com` });
  const answers = await Promise.all(
    [a, b].map((instance) => call(instance, KEYS.idempotency, '/api/users', { method: 'POST', body: raced, headers: { 'Idempotency-Key': 'both-at-once' } })),
  );
  t.deepEqual(
    answers.map((r) => r.status),
    [201, 201],
  );
  t.deepEqual(answers.map((r) => r.headers.get('idempotent-replayed')).sort(), ['true', null].sort());
  const [one, two] = await Promise.all(answers.map((r) => r.json() as Promise<{ id: number }>));
  t.is(one!.id, two!.id);
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: number }>('SELECT count(*)::int AS n FROM users WHERE email IN ($1, $2)', [
      `two.instances.${process.pid}@example.com`,
      `raced.${process.pid}@example.com`,
    ]);
    t.is(rows[0]!.n, 2, 'one user per key, whichever instance answered');
  } finally {
    await client.end();
  }
});

test('the rate limit is one quota across both instances', async (t) => {
  const remaining: number[] = [];
  for (let i = 0; i < QUOTA; i++) {
    const response = await call(i % 2 === 0 ? a : b, KEYS.limits, '/api/features?limit=1');
    t.is(response.status, 200);
    remaining.push(Number(/r=(\d+)/.exec(response.headers.get('ratelimit') ?? '')?.[1]));
  }
  t.deepEqual(
    remaining,
    Array.from({ length: QUOTA }, (_, i) => QUOTA - 1 - i),
    'each answer, from either instance, counts every request before it',
  );
  for (const instance of [a, b]) {
    const refused = await call(instance, KEYS.limits, '/api/features');
    t.is(refused.status, 429);
    t.true(Number(refused.headers.get('retry-after')) >= 1);
  }
});

test('analytics stay exact under concurrent writes through both instances', async (t) => {
  const users = await Promise.all(
    [0, 1, 2, 3].map(async (i) => {
      const response = await call(i % 2 ? a : b, KEYS.writes, '/api/users', {
        method: 'POST',
        body: JSON.stringify({ name: `Writer ${i}`, email: `writer.${i}.${process.pid}@example.com` }),
      });
      return ((await response.json()) as { id: number }).id;
    }),
  );
  const statuses = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'];
  const today = new Date().toISOString().slice(0, 10);
  const created: number[] = [];
  // Four writers per instance at once: creates, then a change of price and status of what was created.
  await Promise.all(
    Array.from({ length: 8 }, async (_, writer) => {
      const instance = writer % 2 ? a : b;
      for (let n = 0; n < 12; n++) {
        const cents = (writer * 997 + n * 131) % 20_000;
        const body = {
          user_id: users[(writer + n) % users.length],
          status: statuses[(writer + n) % statuses.length],
          plan_cost: `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, '0')}`,
          start_date: today,
          billing_period: n % 3 ? 'month' : 'year',
        };
        const response = await call(instance, KEYS.writes, '/api/subscriptions', { method: 'POST', body: JSON.stringify(body) });
        t.is(response.status, 201);
        const { id } = (await response.json()) as { id: number };
        created.push(id);
        // Every third one is changed through the other instance, every fifth deleted.
        const other = instance === a ? b : a;
        if (n % 3 === 0)
          t.is((await call(other, KEYS.writes, `/api/subscriptions/${id}`, { method: 'PATCH', body: JSON.stringify({ status: 'active', plan_cost: '42.42' }) })).status, 200);
        if (n % 5 === 4) t.is((await call(other, KEYS.writes, `/api/subscriptions/${id}`, { method: 'DELETE' })).status, 204);
      }
    }),
  );
  t.is(created.length, 96);
  const read = async (instance: Instance, query: string) => {
    const { as_of: _, ...metrics } = (await (await call(instance, KEYS.reads, `/api/analytics${query}`)).json()) as Record<string, unknown>;
    return metrics;
  };
  // Each instance's answer from the maintained aggregates equals plain SQL over the base tables
  // (source=base_tables), asked of the other instance; and nothing needs reconciling.
  const fromA = await read(a, '');
  const fromB = await read(b, '');
  t.deepEqual(fromA, await read(b, '?source=base_tables'));
  t.deepEqual(fromB, await read(a, '?source=base_tables'));
  t.deepEqual(fromA, fromB);
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    t.deepEqual((await client.query('SELECT * FROM analytics_reconcile()')).rows, []);
  } finally {
    await client.end();
  }
});
