import net from 'node:net';
import { Writable } from 'node:stream';
import test from 'ava';
import pg from 'pg';
import { pino } from 'pino';
import { loadConfig } from '../src/config.js';
import { startService } from '../src/service.js';
import { openDatabase } from '../src/db/database.js';
import { ensureDatabase } from '../src/db/embedded.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { createTestDatabase, useTestApp, startTestApp, TEST_API_KEY } from './support/app.js';

const app = useTestApp(test);

test('healthz answers 200 and the spec is served as JSON and YAML', async (t) => {
  t.is((await app.fetch('/healthz')).status, 200);
  const json = await app.fetch('/openapi.json');
  t.is(json.status, 200);
  const spec = await json.json();
  t.is(spec.openapi, '3.0.3');
  t.truthy(spec.paths['/users']);
  const yaml = await app.fetch('/openapi.yaml');
  t.is(yaml.status, 200);
  t.regex(await yaml.text(), /^openapi: 3\.0\.3/);
});

test('unknown paths are 404 problems, inside and outside /api', async (t) => {
  for (const path of ['/api/nothing-here', '/nothing-here', '/api']) {
    const response = await app.fetch(path);
    t.is(response.status, 404, path);
    t.is(response.headers.get('content-type'), 'application/problem+json');
  }
});

test('a wrong method outside /api is a 405 problem with Allow too', async (t) => {
  for (const path of ['/healthz', '/readyz', '/openapi.json', '/docs']) {
    const response = await app.fetch(path, { method: 'POST' });
    t.is(response.status, 405, path);
    t.is(response.headers.get('content-type'), 'application/problem+json');
    t.regex(response.headers.get('allow') ?? '', /\bGET\b/, path);
  }
});

test('every response carries a request id, echoed when the client sends one', async (t) => {
  const response = await app.fetch('/api/users', { headers: { 'X-Request-Id': 'trace-123' } });
  t.is(response.headers.get('x-request-id'), 'trace-123');
  const problem = await (await app.fetch('/api/users/0')).json();
  t.truthy(problem.instance);
});

test('readyz is 503 while the database refuses connections and recovers after', async (t) => {
  t.is((await app.fetch('/readyz')).status, 200);
  const dbName = new URL(app.databaseUrl).pathname.slice(1);
  const admin = new pg.Client({ connectionString: `${process.env.TEST_PG_ADMIN_URL}/postgres` });
  await admin.connect();
  try {
    await admin.query(`ALTER DATABASE "${dbName}" ALLOW_CONNECTIONS false`);
    await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [dbName]);
    const down = await app.fetch('/readyz');
    t.is(down.status, 503);
    t.is(down.headers.get('retry-after'), '1');
    const users = await app.fetch('/api/users');
    t.is(users.status, 503);
  } finally {
    await admin.query(`ALTER DATABASE "${dbName}" ALLOW_CONNECTIONS true`);
    await admin.end();
  }
  // The test's own pool lost its connections too: reconnecting proves the database is back.
  t.is((await app.fetch('/readyz')).status, 200);
  t.is((await app.fetch('/api/users')).status, 200);
});

test('on shutdown /readyz fails first while requests are still served for SHUTDOWN_DELAY_MS, then the listener closes', async (t) => {
  // The test proves the order of events, not their timing: the delay only has to outlast three
  // loopback requests, and 10 s is far more than they take even on a loaded machine.
  const other = await startTestApp({ SHUTDOWN_DELAY_MS: '10000' });
  const get = (path: string) => fetch(`${other.url}${path}`, { headers: { Authorization: `Bearer ${TEST_API_KEY}` } });
  const events: string[] = [];
  const record = async (label: string, request: Promise<Response>) => {
    const outcome = await request.then(
      (response) => String(response.status),
      (err: Error & { cause?: { code?: string } }) => err.cause?.code ?? err.message,
    );
    events.push(`${label} ${outcome}`);
  };
  try {
    await record('readyz', get('/readyz'));
    const stopping = other.service.stop().then(() => events.push('stop finished'));
    await record('readyz', get('/readyz')); // a load balancer sees the instance leaving
    await record('healthz', get('/healthz')); // the process itself is fine
    await record('users', get('/api/users?limit=1')); // requests are still served during the delay
    await stopping;
    // A new connection is refused (a pooled keep-alive socket would only say it was closed).
    const after = await new Promise<string>((resolve) => {
      const socket = net.connect(Number(new URL(other.url).port), '127.0.0.1', () => {
        socket.destroy();
        resolve('connected');
      });
      socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    events.push(`connect ${after}`);
    t.deepEqual(events, ['readyz 200', 'readyz 503', 'healthz 200', 'users 200', 'stop finished', 'connect ECONNREFUSED']);
  } finally {
    await other.database.close();
  }
});

test('four migrators starting at once apply each migration exactly once', async (t) => {
  const name = `migrate_${process.pid}`;
  await ensureDatabase(process.env.TEST_PG_ADMIN_URL!, name);
  const url = `${process.env.TEST_PG_ADMIN_URL}/${name}`;
  // Three of them wait for the one that migrates, as long as it takes on this machine: the statement
  // timeout is only a hang guard here (the default 10 s was met by a loaded CI machine).
  const open = () => openDatabase(url, { statementTimeoutMs: 100_000 });
  const first = open();
  const second = open();
  const others = [open(), open()];
  try {
    const results = await Promise.all([first, second, ...others].map((d) => migrateToLatest(d.db)));
    const applied = results.flat().sort();
    const { rows } = await first.pool.query<{ name: string }>('SELECT name FROM kysely_migration ORDER BY name');
    t.deepEqual(
      applied,
      rows.map((r) => r.name),
    );
    t.true(rows.length >= 1);
    t.deepEqual(await migrateToLatest(first.db), []);
  } finally {
    await Promise.all([first, second, ...others].map((d) => d.close()));
  }
});

test('an unexpected failure is a 500 problem without internals', async (t) => {
  // Break the schema under the running service, as a bug would.
  const broken = await startTestApp();
  try {
    await broken.database.pool.query('ALTER TABLE users RENAME TO users_gone');
    // Plain fetch: the spec rightly declares no 500, so the validating client would refuse it.
    const response = await fetch(`${broken.url}/api/users`, { headers: { Authorization: `Bearer ${TEST_API_KEY}` } });
    t.is(response.status, 500);
    t.is(response.headers.get('content-type'), 'application/problem+json');
    const problem = await response.json();
    t.is(problem.title, 'Internal Server Error');
    t.notRegex(JSON.stringify(problem), /users_gone|relation|select|stack/i);
    t.is(problem.instance, response.headers.get('x-request-id'));
  } finally {
    await broken.close();
  }
});

test('every log line about a request is JSON and carries its request id, the 500 error line included', async (t) => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const databaseUrl = await createTestDatabase();
  const config = { ...loadConfig(process.env), databaseUrl, port: 0, host: '127.0.0.1', apiKeys: [TEST_API_KEY] };
  const service = await startService(config, pino({ level: 'info' }, sink));
  const send = (path: string, id: string) => fetch(`${service.url}${path}`, { headers: { Authorization: `Bearer ${TEST_API_KEY}`, 'X-Request-Id': id } });
  try {
    t.is((await send('/api/users', 'log-ok')).status, 200);
    t.is((await send('/api/users/0', 'log-400')).status, 400);
    await service.database.pool.query('ALTER TABLE users RENAME TO users_gone');
    t.is((await send('/api/users', 'log-500')).status, 500);
  } finally {
    await service.stop();
  }
  const entries = lines.map((line) => JSON.parse(line) as { requestId?: string; msg?: string; status?: number; err?: unknown });
  for (const id of ['log-ok', 'log-400', 'log-500']) {
    const mine = entries.filter((e) => e.requestId === id);
    t.true(
      mine.some((e) => e.msg === 'request'),
      `${id}: an access line`,
    );
  }
  // The unexpected error is logged with its details, under the request's id.
  t.true(entries.some((e) => e.requestId === 'log-500' && e.msg === 'unexpected error' && e.err !== undefined));
  // No line about a request lacks the id: every line with a status or an error has one.
  t.deepEqual(
    entries.filter((e) => (e.status !== undefined || e.err !== undefined) && !e.requestId),
    [],
  );
});
