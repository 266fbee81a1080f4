/**
 * Faults against a real PostgreSQL 16 of this file's own (the shared test server must keep
 * running for the other files): the database stops mid-load and comes back; the service gets
 * SIGTERM mid-load. Loopback only; every loop is bounded in count and time.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import pg from 'pg';
import { pino } from 'pino';
import { loadConfig, projectRoot } from '../src/config.js';
import { ensureDatabase, startEmbeddedPostgres, type RunningPostgres } from '../src/db/embedded.js';
import { startService } from '../src/service.js';
import { freePort } from '../src/free-port.js';

const KEY = 'fault-test-key';
const auth = { Authorization: `Bearer ${KEY}` };

function scratchDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'subscriptions-fault-'));
  fs.chmodSync(dir, 0o755);
  return dir;
}

/** Waits until the condition holds; the bound is only a hang guard, far above any plausible wait. */
async function waitFor(what: string | (() => string), condition: () => boolean | Promise<boolean>, hangGuardMs = 60_000): Promise<void> {
  const deadline = Date.now() + hangGuardMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`still waiting after ${hangGuardMs} ms: ${typeof what === 'string' ? what : what()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

interface Outcome {
  status: number | 'network';
  contentType?: string | null;
  id?: number;
}

/** One POST /api/users, never hanging: a network failure or a timeout is recorded as such. */
async function createUser(baseUrl: string, n: number): Promise<Outcome> {
  try {
    const response = await fetch(`${baseUrl}/api/users`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ name: `Fault ${n}`, email: `fault.${n}@example.com` }),
      signal: AbortSignal.timeout(15_000),
    });
    const body = (await response.json()) as { id?: number };
    return { status: response.status, contentType: response.headers.get('content-type'), ...(response.status === 201 ? { id: body.id! } : {}) };
  } catch {
    return { status: 'network' };
  }
}

test.serial('when PostgreSQL stops mid-load the service answers 503 problems, never hangs or crashes, and recovers by itself', async (t) => {
  const dir = scratchDir();
  const port = await freePort();
  let postgres: RunningPostgres | undefined = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port });
  await ensureDatabase(postgres.adminUrl, 'faults');
  const databaseUrl = postgres.urlFor('faults');
  const service = await startService({ ...loadConfig({}), databaseUrl, port: 0, host: '127.0.0.1', apiKeys: [KEY], dataDir: dir }, pino({ level: 'silent' }));
  try {
    const outcomes: Outcome[] = [];
    let n = 0;
    let running = true;
    const deadline = Date.now() + 100_000; // a hang guard only
    const workers = Array.from({ length: 4 }, async () => {
      while (running && Date.now() < deadline) outcomes.push(await createUser(service.url, n++));
    });
    // Each phase waits for what it needs to see, not for a length of time.
    await waitFor('a first user created', () => outcomes.some((o) => o.status === 201));
    await postgres.stop();
    postgres = undefined;
    const stoppedAt = outcomes.length;
    await waitFor('a request answered 503 during the outage', () => outcomes.slice(stoppedAt).some((o) => o.status === 503));
    const readyWhileDown = await fetch(`${service.url}/readyz`);
    t.is(readyWhileDown.status, 503);
    t.is(readyWhileDown.headers.get('content-type'), 'application/problem+json');
    postgres = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port });
    // Recovery without a restart of the service.
    await waitFor('readyz back to 200', async () => (await fetch(`${service.url}/readyz`)).status === 200);
    const recoveredAt = outcomes.length;
    await waitFor('a user created after recovery', () => outcomes.slice(recoveredAt).some((o) => o.status === 201));
    running = false;
    await Promise.all(workers);

    const statuses = outcomes.map((o) => o.status);
    t.deepEqual(
      statuses.filter((s) => s !== 201 && s !== 503),
      [],
      'only 201s and 503s, no 500s, no hangs',
    );
    t.true(outcomes.filter((o) => o.status === 503).every((o) => o.contentType === 'application/problem+json'));
    // Nothing that got a 201 was lost.
    const ids = outcomes.flatMap((o) => (o.id ? [o.id] : []));
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    const { rows } = await client.query<{ count: string }>('SELECT count(*) FROM users WHERE id = ANY($1)', [ids]);
    await client.end();
    t.is(Number(rows[0]!.count), ids.length);
    t.log(`${outcomes.length} requests: ${ids.length} created, ${statuses.filter((s) => s === 503).length} answered 503, 0 lost`);
  } finally {
    await service.stop();
    await postgres?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test.serial('SIGTERM drains: in-flight requests finish, the embedded database stops cleanly, no 2xx is lost', async (t) => {
  const dir = scratchDir();
  const [httpPort, pgPort] = [await freePort(), await freePort()];
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: projectRoot,
    env: { ...process.env, DATABASE_URL: '', DATA_DIR: dir, PORT: String(httpPort), PG_PORT: String(pgPort), API_KEYS: KEY, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await waitFor(
      () => `the service to start; its output so far:\n${output.slice(-2000)}`,
      () => output.includes('serving on') || child.exitCode !== null,
    );
    t.true(output.includes('serving on'), output.slice(-2000));
    const baseUrl = `http://127.0.0.1:${httpPort}`;
    const outcomes: Outcome[] = [];
    let n = 0;
    const deadline = Date.now() + 100_000; // a hang guard only
    let stop = false;
    const workers = Array.from({ length: 4 }, async () => {
      while (!stop && Date.now() < deadline) {
        const outcome = await createUser(baseUrl, 10_000 + n++);
        outcomes.push(outcome);
        if (outcome.status === 'network') stop = true;
      }
    });
    // SIGTERM while the clients are busy: some users are created already, more are in flight.
    await waitFor('users created before SIGTERM', () => outcomes.filter((o) => o.status === 201).length >= 4);
    child.kill('SIGTERM');
    const code = await exited;
    stop = true;
    await Promise.all(workers);
    t.is(code, 0, output.slice(-2000));
    t.regex(output, /SIGTERM: stopping/);
    // Every answer before the listener closed was a complete one; afterwards connections are refused.
    t.deepEqual(
      outcomes.filter((o) => o.status !== 201 && o.status !== 'network'),
      [],
    );
    t.false(fs.existsSync(path.join(dir, 'pg16', 'postmaster.pid')), 'PostgreSQL shut down cleanly');
    // Start the database again and count what the clients were told was created.
    const postgres = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg16'), port: pgPort });
    try {
      const ids = outcomes.flatMap((o) => (o.id ? [o.id] : []));
      t.true(ids.length > 0);
      const client = new pg.Client({ connectionString: postgres.urlFor('subscriptions') });
      await client.connect();
      const { rows } = await client.query<{ count: string }>('SELECT count(*) FROM users WHERE id = ANY($1)', [ids]);
      await client.end();
      t.is(Number(rows[0]!.count), ids.length);
      t.log(`${ids.length} users created before SIGTERM, all present after restart`);
    } finally {
      await postgres.stop();
    }
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
