/** Resource limits (OWASP API4): slow queries and an exhausted pool answer 503 with Retry-After instead of hanging. */
import test from 'ava';
import pg from 'pg';
import { loadSpec } from '../src/http/contract.js';
import { startTestApp, useTestApp } from './support/app.js';

const app = useTestApp(test);

/** The problem details of the two causes of a 503 (src/http/pg-errors.ts): the test tells them apart by these. */
const STATEMENT_TIMEOUT_DETAIL = 'the query ran longer than the statement timeout; retry shortly, or ask for less';
const NO_FREE_CONNECTION_DETAIL = 'no database connection became free in time: the service is at capacity; retry shortly';

/** Another session holds a lock every read of users must wait for, until `release` is called. */
async function lockUsers(databaseUrl: string) {
  const blocker = new pg.Client({ connectionString: databaseUrl });
  await blocker.connect();
  await blocker.query('BEGIN');
  await blocker.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
  return {
    /** Resolves once some other session waits for the lock (60 s hang guard); fails once `ended` says why not. */
    async waiter(ended: () => string | undefined = () => undefined) {
      for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
        const why = ended();
        if (why) throw new Error(`the request ended before it waited for the lock: ${why}`);
        const { rowCount } = await blocker.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()");
        if (rowCount) return;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      throw new Error('no request waited for the lock on users within 60 s');
    },
    async release() {
      await blocker.query('ROLLBACK');
      await blocker.end();
    },
  };
}

test('a query that runs past statement_timeout is a 503 with Retry-After that says so', async (t) => {
  const own = await startTestApp({ STATEMENT_TIMEOUT_MS: '300' });
  t.teardown(() => own.close());
  const lock = await lockUsers(own.databaseUrl);
  try {
    const slow = await own.fetch('/api/users');
    t.is(slow.status, 503);
    t.is(slow.headers.get('retry-after'), '1');
    t.is((await slow.json()).detail, STATEMENT_TIMEOUT_DETAIL);
  } finally {
    await lock.release();
  }
  t.is((await own.fetch('/api/users')).status, 200);
});

test('a request that finds no free connection is a 503 with Retry-After that says so, while the busy one finishes', async (t) => {
  // One connection, which the first request holds while it waits for the lock; the statement
  // timeout is far away (a hang guard), so nothing but the lock decides when it ends. The wait for
  // a connection (10 s) also bounds opening one: generous, so a loaded machine does not cut it short.
  const own = await startTestApp({ PG_POOL_SIZE: '1', PG_CONNECTION_TIMEOUT_MS: '10000', STATEMENT_TIMEOUT_MS: '120000' });
  t.teardown(() => own.close());
  // The pool's one connection is opened now, before the lock, so the first request only reuses it.
  t.is((await own.fetch('/api/users')).status, 200);
  const lock = await lockUsers(own.databaseUrl);
  let busy: Promise<Response> | undefined;
  let busyEnded: string | undefined;
  try {
    busy = own.fetch('/api/users', { signal: AbortSignal.timeout(100_000) });
    void busy.then(
      (response) => (busyEnded = `answered ${response.status}`),
      (err: unknown) => (busyEnded = String(err)),
    );
    await lock.waiter(() => busyEnded);
    // 60 s: a hang guard only; a hang is what this test exists to rule out.
    const starved = await own.fetch('/api/users', { signal: AbortSignal.timeout(60_000) });
    t.is(starved.status, 503);
    t.is(starved.headers.get('retry-after'), '1');
    t.is((await starved.json()).detail, NO_FREE_CONNECTION_DETAIL);
  } finally {
    await lock.release();
  }
  t.is((await busy).status, 200, 'the request holding the connection was served once the lock went');
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
  t.is(operations, 14, 'every operation with a body was tried (14 in the spec, webhook endpoints included)');
});
