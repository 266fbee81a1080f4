/** Resource limits (OWASP API4): slow queries and an exhausted pool answer 503 with Retry-After instead of hanging. */
import test from 'ava';
import pg from 'pg';
import { loadSpec } from '../src/http/app.js';
import { useTestApp } from './support/app.js';

const app = useTestApp(test, { STATEMENT_TIMEOUT_MS: '300', PG_POOL_SIZE: '1', PG_CONNECTION_TIMEOUT_MS: '200' });

test('a query that runs past statement_timeout and a request that finds no free connection are 503s with Retry-After', async (t) => {
  // Another session holds a lock every read of users must wait for.
  const blocker = new pg.Client({ connectionString: app.databaseUrl });
  await blocker.connect();
  try {
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
    const started = Date.now();
    const [slow, starved] = await Promise.all([
      app.fetch('/api/users'),
      new Promise<Response>((resolve) => setTimeout(() => resolve(app.fetch('/api/users')), 50)),
    ]);
    t.log(`answered after ${Date.now() - started} ms`);
    t.is(slow.status, 503);
    t.is(slow.headers.get('retry-after'), '1');
    t.is(starved.status, 503);
    t.is(starved.headers.get('retry-after'), '1');
    t.true(Date.now() - started < 5_000, 'answered promptly, not hung');
  } finally {
    await blocker.query('ROLLBACK');
    await blocker.end();
  }
  t.is((await app.fetch('/api/users')).status, 200);
});

test('page size is capped: limit above 500 is a 400', async (t) => {
  t.is((await app.fetch('/api/users?limit=100000')).status, 400);
});

test('every operation with a body answers 415 to a body that is not JSON and 413 to one over the limit', async (t) => {
  const paths = loadSpec().document.paths as Record<string, Record<string, { requestBody?: unknown; responses?: Record<string, unknown> }>>;
  let operations = 0;
  for (const [template, item] of Object.entries(paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (!operation.requestBody) continue;
      operations++;
      const url = `/api${template.replace(/\{[^}]+\}/g, '1')}`;
      const where = `${method.toUpperCase()} ${template}`;
      t.truthy(operation.responses?.['413'] && operation.responses['415'], `${where} declares 413 and 415`);
      const plain = await app.fetch(url, { method: method.toUpperCase(), headers: { 'content-type': 'text/plain' }, body: 'name=x' });
      t.is(plain.status, 415, where);
      const huge = JSON.stringify({ name: 'x'.repeat(70 * 1024) });
      const large = await app.fetch(url, { method: method.toUpperCase(), headers: { 'content-type': 'application/json' }, body: huge });
      t.is(large.status, 413, where);
    }
  }
  t.is(operations, 12, 'every operation with a body was tried');
});
