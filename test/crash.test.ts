/**
 * Exactly once through crashes (issue 14): keyed `POST /api/subscriptions` at concurrency 16
 * against the service as a real process, which is killed with SIGKILL mid-load at instants chosen
 * by a seeded generator and started again; then the same with PostgreSQL stopped (fast shutdown,
 * and crashed by an immediate shutdown) and restarted mid-load while the service stays up. Every
 * key is retried afterwards. Each key's plan_name is the key, so rows per key can be counted.
 *
 * The seed is printed; CRASH_TEST_SEED=<seed> replays the same instants and request bodies.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { ensureDatabase, startEmbeddedPostgres, type RunningPostgres } from '../src/db/embedded.js';
import { createTestDatabase } from './support/app.js';
import {
  analyticsBothWays,
  eachConcurrently,
  insertUsers,
  request,
  restartablePort,
  rowsPerKey,
  scratchDir,
  seededRandom,
  seedFromEnv,
  sleep,
  spawnService,
  subscriptionFor,
  waitFor,
  type Answer,
  type NoAnswer,
  type ServiceProcess,
  type Subscription,
} from './support/service-process.js';

const API_KEY = `crash_${randomBytes(8).toString('hex')}`;
const auth = { Authorization: `Bearer ${API_KEY}` };
const SEED = seedFromEnv('CRASH_TEST_SEED');
const KEYS = 1_500;
const CONCURRENCY = 16;
const FAULTS = 3;
/**
 * The service's variables: its pool holds a connection for each concurrent request (so waiting
 * for a connection, a 503 of its own, plays no part), and no rate limit. IDEMPOTENCY_WAIT_MS is
 * its default, 10 s: a retry that had to wait for a lock would take that long or answer 409.
 */
const SERVICE_ENV = { API_KEYS: API_KEY, LOG_LEVEL: 'warn', PG_POOL_SIZE: String(CONCURRENCY + 4), RATE_LIMIT_PER_MINUTE: '0' };
/** Hang guard for each test (a loaded machine is slow; no assertion depends on it). */
const HANG_GUARD_MS = 480_000;

/** The fault instants: counted in first attempts answered 201, one in each of FAULTS equal stretches. */
function faultInstants(random: () => number, from: number, to: number): number[] {
  const stretch = (to - from) / FAULTS;
  // At least 40 answers from each stretch's edges, so every fault lands under load.
  return Array.from({ length: FAULTS }, (_, i) => Math.round(from + i * stretch + 40 + random() * (stretch - 80)));
}

type Outcome = Answer | NoAnswer;

interface KeyRecord {
  key: string;
  body: ReturnType<typeof subscriptionFor>;
  /** Every attempt's outcome, in order. */
  attempts: Outcome[];
}

/** One keyed create; the caller records it. */
const post = (baseUrl: string, record: KeyRecord) =>
  request(baseUrl, '/api/subscriptions', { method: 'POST', headers: { ...auth, 'Idempotency-Key': record.key }, body: record.body });

const replayed = (outcome: Outcome) => outcome.status !== 'network' && outcome.headers['idempotent-replayed'] === 'true';
const stillInProgress = (outcome: Outcome) => outcome.status === 409;

function makeKeys(label: string, random: () => number, userIds: number[]): KeyRecord[] {
  return Array.from({ length: KEYS }, (_, i) => {
    const key = `${label}-${SEED}-${i}`;
    return { key, body: subscriptionFor(key, random, userIds), attempts: [] };
  });
}

/**
 * Retries every key once more, at concurrency 16, and checks each against its first answer:
 * same status, the same body byte for byte, same Location, marked `Idempotent-Replayed: true`. Keys whose
 * first answer was a 503 (the database was down) have nothing to replay: their reference is
 * their first 201, which this pass may itself be.
 */
async function retryEveryKey(baseUrl: string, records: KeyRecord[]): Promise<string[]> {
  const mismatches: string[] = [];
  await eachConcurrently(records, CONCURRENCY, async (record) => {
    const reference = record.attempts.find((a): a is Answer => a.status === 201);
    const retry = await post(baseUrl, record);
    record.attempts.push(retry);
    if (retry.status !== 201) return void mismatches.push(`${record.key}: retry answered ${retry.status}${'error' in retry ? ` (${retry.error})` : ''}`);
    if (!reference || reference === retry) return; // this retry is the key's first 201
    const same = replayed(retry) && retry.text === reference.text && retry.headers.location === reference.headers.location;
    if (!same) {
      mismatches.push(
        `${record.key}: first ${reference.text} (location ${reference.headers.location}), retry ${retry.text} (location ${retry.headers.location}, replayed ${retry.headers['idempotent-replayed']})`,
      );
    }
  });
  return mismatches;
}

/**
 * What must hold once every key was retried: exactly one subscription per key (0 duplicates,
 * 0 missing), each key's every 201 names that one row, and analytics equal to plain SQL.
 */
async function assertExactlyOnce(t: ExecutionContext, baseUrl: string, databaseUrl: string, records: KeyRecord[]): Promise<void> {
  const rows = await rowsPerKey(
    databaseUrl,
    records.map((r) => r.key),
  );
  t.deepEqual(rows.duplicated, [], 'no key created twice');
  t.deepEqual(rows.missing, [], 'no key without its subscription');
  t.is(rows.storedOther, 0, 'every stored answer is the 201');
  const wrongId = records.flatMap((r) =>
    r.attempts.flatMap((a) =>
      a.status === 201 && (a.json as Subscription).id !== rows.idOf.get(r.key) ? [`${r.key}: answered id ${(a.json as Subscription).id}, row ${rows.idOf.get(r.key)}`] : [],
    ),
  );
  t.deepEqual(wrongId.slice(0, 10), [], 'every 201 of a key names its one row');
  const analytics = await analyticsBothWays(baseUrl, auth, databaseUrl);
  t.deepEqual(analytics.aggregates, analytics.baseTables, '/api/analytics equals plain SQL over the base tables');
  t.deepEqual(analytics.reconcile, [], 'analytics_reconcile() finds no difference');
  t.log(
    `${records.length} keys: ${records.length - rows.missing.length - rows.duplicated.length} with exactly one subscription, ${rows.duplicated.length} duplicated, ${rows.missing.length} missing`,
  );
}

/** Restart times depend on the machine's other work: said beside them. */
const machineLoad = () => `load average ${os.loadavg()[0]!.toFixed(1)} on ${os.cpus().length} cores`;

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;

test.serial('SIGKILL mid-load at seeded instants, restart, retry every key: exactly one subscription per key and every retry replays the first answer', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const started = Date.now();
  t.log(`seed ${SEED} (CRASH_TEST_SEED=${SEED} replays it)`);
  const random = seededRandom(SEED);
  const databaseUrl = await createTestDatabase();
  const userIds = await insertUsers(databaseUrl, 50, 'Crash');
  const port = await restartablePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  const env = { ...SERVICE_ENV, DATABASE_URL: databaseUrl, PORT: String(port) };
  let service: ServiceProcess = spawnService(env);
  t.teardown(() => service.kill());
  await service.listening;

  const records = makeKeys('kill', random, userIds);
  const killAt = faultInstants(random, 100, KEYS - 150);
  t.log(`kill instants (first attempts answered 201 before each SIGKILL): ${killAt.join(', ')}`);
  const queue = [...records];
  const inFlightAtKill = new Set<KeyRecord>();
  const figures: string[] = [];
  const restartTimes: number[] = [];
  const firstRetryTimes: number[] = [];
  let created = 0;
  let kills = 0;

  for (;;) {
    let killed = false;
    const unanswered: KeyRecord[] = [];
    await eachConcurrently(Array.from({ length: CONCURRENCY }), CONCURRENCY, async () => {
      while (!killed && queue.length > 0) {
        const record = queue.shift()!;
        const outcome = await post(baseUrl, record);
        record.attempts.push(outcome);
        if (outcome.status === 'network') unanswered.push(record);
        if (outcome.status === 201) created++;
        if (!killed && kills < FAULTS && created >= killAt[kills]!) {
          // Synchronously on the answer: the other 15 requests are in flight, at whatever stage.
          killed = true;
          service.child.kill('SIGKILL');
        }
      }
    });
    if (!killed) {
      t.deepEqual(
        unanswered.map((r) => r.key),
        [],
        'with the service up, every request is answered',
      );
      break;
    }
    kills++;
    const { signal } = await service.exited;
    t.is(signal, 'SIGKILL');
    for (const record of unanswered) inFlightAtKill.add(record);

    // Start again, and retry the keys that got no answer at once, each until it is answered: the
    // first success comes as soon as the service listens, with no lock to wait out.
    const restartedAt = Date.now();
    service = spawnService(env);
    const retries = await Promise.all(
      unanswered.map(async (record) => {
        // Until it is answered, or the service has exited (it failed to start: its output says why).
        while (service.child.exitCode === null) {
          const outcome = await post(baseUrl, record);
          if (outcome.status !== 'network') {
            record.attempts.push(outcome);
            return outcome;
          }
          await sleep(10);
        }
        throw new Error(`${record.key}: the service exited before answering:\n${service.output().slice(-3000)}`);
      }),
    );
    const listeningAt = await service.listening;
    const successes = retries.filter((r): r is Answer => r.status === 201);
    t.deepEqual(retries.filter(stillInProgress).length, 0, 'no retry after the crash is told the key is still in progress');
    t.is(successes.length, unanswered.length, 'every key in flight at the kill is answered 201 after the restart');
    const committedBefore = successes.filter(replayed).length;
    const restartMs = listeningAt - restartedAt;
    const firstRetryMs = successes.length ? Math.min(...successes.map((s) => s.at)) - restartedAt : NaN;
    restartTimes.push(restartMs);
    if (successes.length) firstRetryTimes.push(firstRetryMs);
    figures.push(
      `kill ${kills} at ${created} created: ${unanswered.length} keys in flight (${committedBefore} had committed: replayed; ` +
        `${unanswered.length - committedBefore} created by the retry); the restarted service listened ${restartMs} ms after its start, ` +
        `the first retry of a crashed key succeeded ${firstRetryMs} ms after it (${firstRetryMs - restartMs} ms after listening)`,
    );
  }
  for (const line of figures) t.log(line);
  t.is(kills, FAULTS, `${FAULTS} kills mid-load`);
  t.true(inFlightAtKill.size > 0, 'some keys were in flight at a kill');

  // Every request before a kill was answered 201 or not at all; never a 409 or a 5xx.
  const firstAttempts = records.map((r) => r.attempts[0]!);
  t.deepEqual(
    firstAttempts.filter((a) => a.status !== 201 && a.status !== 'network').map((a) => a.status),
    [],
  );
  t.is(firstAttempts.filter(replayed).length, 0, 'no first attempt is a replay');

  const mismatches = await retryEveryKey(baseUrl, records);
  t.deepEqual(mismatches.slice(0, 10), [], `every retry answers the first 201 again (${mismatches.length} mismatches)`);
  t.is(records.flatMap((r) => r.attempts).filter(stillInProgress).length, 0, 'no request at all was told "still in progress"');
  await assertExactlyOnce(t, baseUrl, databaseUrl, records);
  t.log(
    `${kills} kills, ${inFlightAtKill.size} keys in flight at them; start to listening ${restartTimes.join('/')} ms (median ${median(restartTimes)}), ` +
      `start to first successful retry of a crashed key ${firstRetryTimes.join('/')} ms (median ${median(firstRetryTimes)}); whole test ${Date.now() - started} ms, ${machineLoad()}`,
  );
});

test.serial('PostgreSQL stopped and crashed mid-load while the service stays up: 503s meanwhile, then exactly one subscription per key', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const started = Date.now();
  t.log(`seed ${SEED} (CRASH_TEST_SEED=${SEED} replays it)`);
  const random = seededRandom(SEED ^ 0x5eed);
  const dir = scratchDir('subscriptions-crash-');
  const dataDir = path.join(dir, 'pg');
  const pgPort = await restartablePort();
  let postgres: RunningPostgres | undefined = await startEmbeddedPostgres({ dataDir, port: pgPort });
  let service: ServiceProcess | undefined;
  t.teardown(async () => {
    await service?.kill();
    await postgres?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await ensureDatabase(postgres.adminUrl, 'crash');
  const databaseUrl = postgres.urlFor('crash');
  const port = await restartablePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  service = spawnService({ ...SERVICE_ENV, DATABASE_URL: databaseUrl, PORT: String(port) });
  await service.listening; // it has migrated the database
  const userIds = await insertUsers(databaseUrl, 50, 'Outage');

  const records = makeKeys('outage', random, userIds);
  // Keys answered 503 during an outage are spent too: the outages come in the first 60% of the creations.
  const outageAt = faultInstants(random, 100, Math.round(KEYS * 0.6));
  t.log(`outage instants (first attempts answered 201 before each stop): ${outageAt.join(', ')}`);
  const queue = [...records];
  const answered: Outcome[] = [];
  const figures: string[] = [];
  let created = 0;
  let outages = 0;
  /** Every outage staged; one at a time. */
  const staged: Promise<void>[] = [];
  let inOutage = false;
  /** Set when an outage could not be staged or ended: the load stops, and the test fails with its error. */
  let outageFailed = false;

  /** Stops PostgreSQL (fast shutdown, or an immediate one: a crash, recovered from WAL at start), waits for a 503, starts it again. */
  const stopAndRestart = async (n: number) => {
    const immediate = n % 2 === 1;
    const stoppedAt = answered.length;
    if (immediate) {
      const postmasterPid = Number(fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(postmasterPid, 'SIGQUIT');
    }
    await postgres!.stop();
    postgres = undefined;
    await waitFor('a 503 during the outage', () => answered.slice(stoppedAt).some((a) => a.status === 503));
    const restartedAt = Date.now();
    postgres = await startEmbeddedPostgres({ dataDir, port: pgPort });
    const upAt = Date.now();
    const from = answered.length;
    await waitFor('a 201 after PostgreSQL is back', () => answered.slice(from).some((a) => a.status === 201));
    const firstCreated = Math.min(...answered.slice(from).flatMap((a) => (a.status === 201 ? [a.at] : [])));
    figures.push(
      `outage ${n + 1} (${immediate ? 'immediate shutdown: a crash' : 'fast shutdown'}) at ${created} created: ` +
        `${answered.slice(stoppedAt, from).filter((a) => a.status === 503).length} answered 503; PostgreSQL up in ${upAt - restartedAt} ms, first 201 ${firstCreated - upAt} ms after`,
    );
  };

  await eachConcurrently(Array.from({ length: CONCURRENCY }), CONCURRENCY, async () => {
    while (queue.length > 0 && !outageFailed) {
      const record = queue.shift()!;
      const outcome = await post(baseUrl, record);
      record.attempts.push(outcome);
      answered.push(outcome);
      if (outcome.status === 201) created++;
      if (!inOutage && outages < FAULTS && created >= outageAt[outages]!) {
        inOutage = true;
        const outage = stopAndRestart(outages++).then(
          () => void (inOutage = false),
          (err: unknown) => {
            outageFailed = true;
            throw err;
          },
        );
        outage.catch(() => {}); // awaited after the load, with the others
        staged.push(outage);
      }
      // As Retry-After asks: a client does not hammer a service that said 503.
      if (outcome.status === 503) await sleep(200);
    }
  });
  await Promise.all(staged);
  for (const line of figures) t.log(line);
  t.is(outages, FAULTS, `${FAULTS} outages mid-load`);
  t.is(service.child.exitCode, null, 'the service stayed up');

  const firstAttempts = records.map((r) => r.attempts[0]!);
  const statuses = new Map<string, number>();
  for (const a of firstAttempts) statuses.set(String(a.status), (statuses.get(String(a.status)) ?? 0) + 1);
  t.log(`first attempts: ${[...statuses].map(([s, n]) => `${n} x ${s}`).join(', ')}`);
  t.deepEqual(
    [...statuses.keys()].filter((s) => s !== '201' && s !== '503'),
    [],
    'every request was answered: 201, or 503 during an outage',
  );
  t.true((statuses.get('503') ?? 0) > 0);

  const mismatches = await retryEveryKey(baseUrl, records);
  // The keys first answered 503 got their first 201 in that pass: once more, to see it replayed.
  const unavailableFirst = records.filter((r) => r.attempts[0]!.status === 503);
  const committedDespite503 = unavailableFirst.filter((r) => replayed(r.attempts[1]!)).length;
  mismatches.push(...(await retryEveryKey(baseUrl, unavailableFirst)));
  t.deepEqual(mismatches.slice(0, 10), [], `every retry answers the key's 201 again (${mismatches.length} mismatches)`);
  t.is(records.flatMap((r) => r.attempts).filter(stillInProgress).length, 0, 'no request was told "still in progress"');
  t.log(`${unavailableFirst.length} keys first answered 503: ${committedDespite503} of them had committed (their retry replayed), the rest were created by the retry`);
  await assertExactlyOnce(t, baseUrl, databaseUrl, records);
  t.log(`whole test ${Date.now() - started} ms, ${machineLoad()}`);
});
