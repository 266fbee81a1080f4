/** Resource limits (OWASP API4): slow queries and an exhausted pool answer 503 with Retry-After instead of hanging. */
import test from 'ava';
import pg from 'pg';
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
