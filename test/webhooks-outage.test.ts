/**
 * Webhooks lose nothing across a crash of the service and an outage of PostgreSQL: 1,000 events are
 * written while the service is killed (SIGKILL) and started again and PostgreSQL stops and starts
 * once; the receiver gets every event at least once, first in the feed's order. A PostgreSQL of this
 * file's own (the shared test server must keep running for the other files); loopback only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import pg from 'pg';
import { projectRoot } from '../src/config.js';
import { ensureDatabase, startEmbeddedPostgres, type RunningPostgres } from '../src/db/embedded.js';
import { freePort } from '../src/free-port.js';
import { eventIdsOf, startReceiver } from './support/webhook-receiver.js';

const KEY = 'webhook-outage-key';
const EVENTS = 1000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(what: string | (() => string), condition: () => boolean | Promise<boolean>, hangGuardMs = 120_000): Promise<void> {
  const deadline = Date.now() + hangGuardMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`still waiting after ${hangGuardMs} ms: ${typeof what === 'string' ? what : what()}`);
    await sleep(20);
  }
}

interface ServiceProcess {
  child: ChildProcess;
  output: () => string;
}

/** Every service process started here, so that the test stops each one whatever happens. */
const started: ChildProcess[] = [];

async function startServiceProcess(env: Record<string, string>): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], { cwd: projectRoot, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  // The banner main.ts prints once it listens.
  await waitFor(
    () => `the service to start:\n${output.slice(-2000)}`,
    () => /^API: +http/m.test(output) || child.exitCode !== null,
  );
  if (child.exitCode !== null) throw new Error(`the service exited:\n${output.slice(-2000)}`);
  return { child, output: () => output };
}

async function stopAll(): Promise<void> {
  await Promise.all(
    started.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(guard);
    }),
  );
}

test.serial('1,000 events written across a service crash and a PostgreSQL outage: every one delivered, first in feed order', async (t) => {
  // Two service starts and a database restart on a shared, loaded machine: longer than ava's default (a hang guard only).
  t.timeout(480_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'subscriptions-webhooks-'));
  fs.chmodSync(dir, 0o755);
  const [httpPort, pgPort] = [await freePort(), await freePort()];
  let postgres: RunningPostgres | undefined = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port: pgPort });
  await ensureDatabase(postgres.adminUrl, 'outage');
  const databaseUrl = postgres.urlFor('outage');
  const receiver = await startReceiver();
  // A receiver that also fails now and then: those events are retried.
  let answered = 0;
  let refused = 0;
  receiver.answer = () => (++answered % 17 === 0 ? (refused++, 503) : 200);
  const env = {
    DATABASE_URL: databaseUrl,
    DATA_DIR: dir,
    PORT: String(httpPort),
    API_KEYS: KEY,
    LOG_LEVEL: 'warn',
    WEBHOOK_ALLOW_PRIVATE: '1',
    WEBHOOK_POLL_MS: '20',
    WEBHOOK_TIMEOUT_MS: '1000',
    WEBHOOK_RETRY_BASE_MS: '50',
    WEBHOOK_RETRY_MAX_MS: '500',
  };
  let service: ServiceProcess = await startServiceProcess(env);
  const writers = new pg.Pool({ connectionString: databaseUrl, max: 4, connectionTimeoutMillis: 2_000 });
  writers.on('error', () => undefined);
  try {
    const created = await fetch(`http://127.0.0.1:${httpPort}/api/webhook-endpoints`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ url: `${receiver.url}/outage`, event_types: ['user.*'] }),
    });
    t.is(created.status, 201);
    const endpoint = (await created.json()) as { id: number };
    const {
      rows: [start],
    } = await writers.query<{ xid: string; id: number }>('SELECT cursor_xid::text AS xid, cursor_id AS id FROM webhook_endpoints WHERE id = $1', [endpoint.id]);

    // Four writers, one user per transaction; a failed write (database down) is tried again.
    let committed = 0;
    let failedWrites = 0;
    const deadline = Date.now() + 240_000; // a hang guard only
    const write = async (n: number) => {
      for (;;) {
        try {
          await writers.query('INSERT INTO users (name, email) VALUES ($1, $2)', [`Outage ${n}`, `outage.${n}@example.com`]);
          committed++;
          return;
        } catch (err) {
          // A write whose commit was cut off may have committed: the count below comes from the table.
          if ((err as { code?: string }).code === '23505') return;
          failedWrites++;
          if (Date.now() > deadline) throw err;
          await sleep(100);
        }
      }
    };
    // Writes in four phases: service up; service killed; service starting again; PostgreSQL stopped
    // and started again (failed writes are tried again). Each write is paced a little so that the
    // last phase is still writing when PostgreSQL stops.
    let next = 0;
    const produce = (count: number) => {
      const until = next + count;
      return Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < until) {
            await write(next++);
            await sleep(5);
          }
        }),
      );
    };
    await produce(250);
    service.child.kill('SIGKILL');
    await new Promise((resolve) => service!.child.once('exit', resolve));
    t.log(`service killed (SIGKILL) after ${committed} writes and ${receiver.received.length} deliveries`);
    await produce(250);
    const whileStarting = produce(250);
    service = await startServiceProcess(env);
    await whileStarting;
    const delivered = receiver.received.length;
    t.log(`service started again; ${committed} writes, ${delivered} deliveries so far`);
    await waitFor('deliveries after the restart', () => receiver.received.length > delivered + 20);
    const lastPhase = produce(EVENTS - next);
    await waitFor('writes under way', () => committed >= 800);
    await postgres.stop();
    postgres = undefined;
    const stoppedAt = committed;
    await sleep(1_000);
    postgres = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port: pgPort });
    t.log(`PostgreSQL stopped after ${stoppedAt} writes and ${receiver.received.length} deliveries, and started again`);
    await lastPhase;

    // The truth: every event in the table after the endpoint's starting place, in feed order.
    const { rows } = await writers.query<{ id: number }>('SELECT id FROM events WHERE (xid, id) > ($1::xid8, $2::bigint) ORDER BY xid, id', [start!.xid, start!.id]);
    const expected = rows.map((r) => Number(r.id));
    t.true(expected.length >= EVENTS, `${expected.length} events written`);
    const firstReceipts = () => [...new Set(eventIdsOf(receiver.received))];
    await waitFor(
      () => `every event delivered: ${firstReceipts().length} of ${expected.length}`,
      () => firstReceipts().length >= expected.length,
      180_000,
    );
    const received = eventIdsOf(receiver.received);
    t.deepEqual(firstReceipts(), expected, 'every event, none lost, first receipts in feed order');
    const extra = received.length - expected.length;
    const {
      rows: [log],
    } = await writers.query<{ failed: number; attempts: number }>(
      `SELECT count(*) FILTER (WHERE status_code IS DISTINCT FROM 200 OR error IS NOT NULL)::int AS failed, count(*)::int AS attempts
       FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1`,
      [endpoint.id],
    );
    t.log(
      `${expected.length} events, ${received.length} requests received: ${extra} repeats, ${refused} after a 503, ${extra - refused} made again because a crash or the outage kept an attempt's result from being recorded; ` +
        `${failedWrites} writes retried during the outage; the log holds ${log!.attempts} attempts, ${log!.failed} failed`,
    );
  } finally {
    await stopAll();
    await writers.end().catch(() => undefined);
    await receiver.close();
    await postgres?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
