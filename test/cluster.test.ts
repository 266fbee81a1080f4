/**
 * WEB_CONCURRENCY=2 (issue 17): the service as a real process, a primary and two node:cluster
 * workers on one port, each with its own pool. Which worker answered a request is read from the
 * JSON log (pino's pid on the request's line, found by the X-Request-Id the test sends); every
 * request opens a connection of its own, so the cluster's round-robin spreads them.
 */
import { randomBytes } from 'node:crypto';
import test from 'ava';
import pg from 'pg';
import { freePort } from '../src/free-port.js';
import { createTestDatabase } from './support/app.js';
import {
  analyticsBothWays,
  childPids,
  eachConcurrently,
  insertUsers,
  isRunning,
  request,
  rowsPerKey,
  seededRandom,
  seedFromEnv,
  spawnService,
  subscriptionFor,
  waitFor,
  type Answer,
  type NoAnswer,
  type ServiceProcess,
  type Subscription,
} from './support/service-process.js';

const API_KEY = `cluster_${randomBytes(8).toString('hex')}`;
const auth = { Authorization: `Bearer ${API_KEY}` };
const SEED = seedFromEnv('CLUSTER_TEST_SEED');
const random = seededRandom(SEED);
/** Hang guard for each test (a loaded machine is slow; no assertion depends on it). */
const HANG_GUARD_MS = 300_000;

interface Cluster {
  service: ServiceProcess;
  baseUrl: string;
  databaseUrl: string;
  userIds: number[];
}

/** A primary with two workers over a fresh database, at LOG_LEVEL=info (one line per request, with its pid). */
async function startCluster(): Promise<Cluster> {
  const databaseUrl = await createTestDatabase();
  const port = await freePort();
  const service = spawnService({
    DATABASE_URL: databaseUrl,
    API_KEYS: API_KEY,
    PORT: String(port),
    WEB_CONCURRENCY: '2',
    LOG_LEVEL: 'info',
    // Enough connections per worker for every request in flight: waiting for one (a 503 of its own) plays no part here.
    PG_POOL_SIZE: '20',
    RATE_LIMIT_PER_MINUTE: '0',
  });
  try {
    await service.listening;
  } catch (err) {
    await service.kill();
    throw err;
  }
  return { service, baseUrl: `http://127.0.0.1:${port}`, databaseUrl, userIds: await insertUsers(databaseUrl, 20, 'Cluster') };
}

let requestCount = 0;
/** A request with an X-Request-Id of its own, so the log tells which worker answered it. */
async function send(cluster: Cluster, path: string, options: { method?: string; headers?: Record<string, string>; body?: unknown } = {}) {
  const requestId = `cluster-${SEED}-${++requestCount}`;
  const answer = await request(cluster.baseUrl, path, { ...options, headers: { ...auth, ...options.headers, 'X-Request-Id': requestId } });
  return { requestId, answer };
}

/** The pid that answered each request, once its log line has arrived. */
async function workersOf(cluster: Cluster, requestIds: string[]): Promise<number[]> {
  await waitFor(
    () => `log lines of ${requestIds.filter((id) => !cluster.service.answeredBy.has(id)).length} requests`,
    () => requestIds.every((id) => cluster.service.answeredBy.has(id)),
  );
  return requestIds.map((id) => cluster.service.answeredBy.get(id)!);
}

const replayed = (answer: Answer | NoAnswer) => answer.status !== 'network' && answer.headers['idempotent-replayed'] === 'true';

const shared = {} as Cluster;
test.before(async () => {
  Object.assign(shared, await startCluster());
});
test.after.always(async () => {
  await shared.service?.kill();
});

test.serial('two worker processes, children of the primary, answer on one port', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const workers = childPids(shared.service.pid);
  t.is(workers.length, 2, 'the primary forked two workers');
  const sent = await Promise.all(Array.from({ length: 20 }, () => send(shared, '/api/analytics')));
  t.deepEqual(
    sent.map((s) => s.answer.status),
    Array(20).fill(200),
  );
  const answering = new Set(
    await workersOf(
      shared,
      sent.map((s) => s.requestId),
    ),
  );
  t.deepEqual([...answering].sort(), [...workers].sort(), 'both workers answered, and only they');
  t.log(`seed ${SEED}; primary ${shared.service.pid}, workers ${workers.join(' and ')}`);
});

test.serial('an Idempotency-Key retried concurrently and sequentially creates one subscription and is replayed by whichever worker answers', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const KEYS = 150;
  const keys = Array.from({ length: KEYS }, (_, i) => `cluster-${SEED}-${i}`);
  const bodies = new Map(keys.map((key) => [key, subscriptionFor(key, random, shared.userIds)]));
  const answers = new Map<string, { requestId: string; answer: Answer | NoAnswer }[]>(keys.map((key) => [key, []]));
  const post = async (key: string) => {
    const sent = await send(shared, '/api/subscriptions', { method: 'POST', headers: { 'Idempotency-Key': key }, body: bodies.get(key) });
    answers.get(key)!.push(sent);
  };
  // Four at once per key (8 keys at a time: 32 requests in flight), then two more one after another.
  await eachConcurrently(keys, 8, (key) => Promise.all([post(key), post(key), post(key), post(key)]).then(() => {}));
  await eachConcurrently(keys, 8, async (key) => {
    await post(key);
    await post(key);
  });

  const wrong: string[] = [];
  let createdOnOneReplayedOnOther = 0;
  const replayers = new Set<number>();
  for (const key of keys) {
    const sent = answers.get(key)!;
    const pids = await workersOf(
      shared,
      sent.map((s) => s.requestId),
    );
    const all = sent.map((s) => s.answer);
    const statuses = all.map((a) => a.status);
    if (statuses.some((s) => s !== 201)) {
      wrong.push(`${key}: ${statuses.join(', ')}`);
      continue;
    }
    const fresh = all.filter((a) => !replayed(a));
    const first = fresh[0] as Answer | undefined;
    if (fresh.length !== 1 || !first) {
      wrong.push(`${key}: ${fresh.length} answers not replayed`);
      continue;
    }
    if (!all.every((a) => a.status === 201 && a.text === first.text && a.headers.location === first.headers.location)) {
      wrong.push(`${key}: the answers differ`);
    }
    const creator = pids[all.indexOf(first)]!;
    const replayedBy = pids.filter((_, i) => all[i] !== first);
    for (const pid of replayedBy) replayers.add(pid);
    if (replayedBy.some((pid) => pid !== creator)) createdOnOneReplayedOnOther++;
  }
  t.deepEqual(wrong.slice(0, 10), [], 'every request answered 201; one created, the other five replayed its body byte for byte and its Location');
  const rows = await rowsPerKey(shared.databaseUrl, keys);
  t.deepEqual(rows.duplicated, []);
  t.deepEqual(rows.missing, []);
  t.true(
    keys.every((key) => rows.idOf.get(key) === ((answers.get(key)![0]!.answer as Answer).json as Subscription).id),
    'each key answers its one row',
  );
  t.is(replayers.size, 2, 'both workers replayed');
  t.true(createdOnOneReplayedOnOther > 0, 'a key created by one worker was replayed by the other');
  t.log(
    `${KEYS} keys x 6 requests (4 concurrent, 2 sequential): ${KEYS} subscriptions, 0 duplicates; ${createdOnOneReplayedOnOther} keys replayed by the worker that did not create them`,
  );
});

test.serial('after concurrent creates, updates and deletes through both workers, /api/analytics equals plain SQL', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const ids: number[] = [];
  const requestIds: string[] = [];
  const failures: string[] = [];
  const statusesOf = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'] as const;
  await eachConcurrently(
    Array.from({ length: 400 }, (_, i) => i),
    16,
    async (i) => {
      const roll = random();
      let sent: Awaited<ReturnType<typeof send>>;
      if (ids.length < 20 || roll < 0.5) {
        const key = `analytics-${SEED}-${i}`;
        sent = await send(shared, '/api/subscriptions', {
          method: 'POST',
          headers: roll < 0.25 ? { 'Idempotency-Key': key } : {},
          body: subscriptionFor(key, random, shared.userIds),
        });
        if (sent.answer.status === 201) ids.push((sent.answer.json as Subscription).id);
      } else if (roll < 0.85) {
        const id = ids[Math.floor(random() * ids.length)]!;
        const change =
          random() < 0.5 ? { status: statusesOf[Math.floor(random() * statusesOf.length)]! } : { plan_cost: `${Math.floor(random() * 500)}.${Math.floor(random() * 90 + 10)}` };
        sent = await send(shared, `/api/subscriptions/${id}`, { method: 'PATCH', body: change });
      } else {
        const id = ids.splice(Math.floor(random() * ids.length), 1)[0]!;
        sent = await send(shared, `/api/subscriptions/${id}`, { method: 'DELETE' });
      }
      requestIds.push(sent.requestId);
      // A PATCH may race the DELETE of the same subscription: a 404 is its right answer.
      if (![200, 201, 204, 404].includes(sent.answer.status as number)) failures.push(`${sent.requestId}: ${sent.answer.status}`);
    },
  );
  t.deepEqual(failures, []);
  const pids = new Set(await workersOf(shared, requestIds));
  t.is(pids.size, 2, 'both workers wrote');
  const analytics = await analyticsBothWays(shared.baseUrl, auth, shared.databaseUrl);
  t.deepEqual(analytics.aggregates, analytics.baseTables, '/api/analytics equals plain SQL over the base tables');
  t.deepEqual(analytics.reconcile, [], 'analytics_reconcile() finds no difference');
});

test.serial('a worker killed with SIGKILL is replaced, the port keeps answering, and its keys in flight are created once on retry', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const [victim, survivor] = childPids(shared.service.pid);
  t.truthy(victim && survivor);
  type Sent = { key: string; body: ReturnType<typeof subscriptionFor>; startedAt: number; requestId: string; answer: Answer | NoAnswer };
  const outcomes: Sent[] = [];
  let n = 0;
  let running = true;
  const load = eachConcurrently(Array.from({ length: 8 }), 8, async () => {
    while (running) {
      const key = `kill-worker-${SEED}-${n++}`;
      const body = subscriptionFor(key, random, shared.userIds);
      const startedAt = Date.now();
      const { requestId, answer } = await send(shared, '/api/subscriptions', { method: 'POST', headers: { 'Idempotency-Key': key }, body });
      outcomes.push({ key, body, startedAt, requestId, answer });
    }
  });
  try {
    await waitFor('creations before the kill', () => outcomes.filter((o) => o.answer.status === 201).length >= 20);
    process.kill(victim!, 'SIGKILL');
    await waitFor('the primary to reap the killed worker', () => !childPids(shared.service.pid).includes(victim!));
    const reapedAt = Date.now();
    await waitFor('a replacement worker', () => childPids(shared.service.pid).length === 2);
    const replacement = childPids(shared.service.pid).find((pid) => pid !== survivor)!;
    // The replacement is serving once it has answered requests itself.
    await waitFor('requests answered by the replacement', () => outcomes.filter((o) => shared.service.answeredBy.get(o.requestId) === replacement).length >= 5);
    running = false;
    await load;

    const afterReap = outcomes.filter((o) => o.startedAt >= reapedAt);
    t.deepEqual(
      afterReap.filter((o) => o.answer.status !== 201).map((o) => `${o.key}: ${o.answer.status}`),
      [],
      'every request sent after the kill was answered 201',
    );
    const answeredInGap = afterReap.filter((o) => shared.service.answeredBy.get(o.requestId) === survivor).length;
    t.true(answeredInGap > 0, 'the surviving worker answered meanwhile');
    // The keys in flight on the killed worker got no answer: retried, each is created once.
    const unanswered = outcomes.filter((o) => o.answer.status === 'network');
    t.deepEqual(
      outcomes.filter((o) => o.answer.status !== 201 && o.answer.status !== 'network').map((o) => o.answer.status),
      [],
    );
    let committedBeforeKill = 0;
    for (const o of unanswered) {
      const { answer } = await send(shared, '/api/subscriptions', { method: 'POST', headers: { 'Idempotency-Key': o.key }, body: o.body });
      t.is(answer.status, 201, o.key);
      if (replayed(answer)) committedBeforeKill++;
    }
    const rows = await rowsPerKey(
      shared.databaseUrl,
      outcomes.map((o) => o.key),
    );
    t.deepEqual(rows.duplicated, []);
    t.deepEqual(rows.missing, []);
    t.log(
      `killed worker ${victim}, replaced by ${replacement}; ${outcomes.length} keyed creates, ${unanswered.length} in flight on the killed worker (retried: ${committedBeforeKill} replayed, the rest created), ${afterReap.length} sent after the kill all answered 201`,
    );
  } finally {
    running = false;
    await load;
  }
});

test.serial('SIGTERM drains both workers: in-flight requests finish, the primary exits 0, no process is left', async (t) => {
  t.timeout(HANG_GUARD_MS);
  const cluster = await startCluster();
  t.teardown(() => cluster.service.kill());
  const workers = childPids(cluster.service.pid);
  t.is(workers.length, 2);
  const outcomes: { key: string; answer: Answer | NoAnswer }[] = [];
  let n = 0;
  let stop = false;
  const load = eachConcurrently(Array.from({ length: 8 }), 8, async () => {
    while (!stop) {
      const key = `sigterm-${SEED}-${n++}`;
      const { answer } = await send(cluster, '/api/subscriptions', { method: 'POST', headers: { 'Idempotency-Key': key }, body: subscriptionFor(key, random, cluster.userIds) });
      outcomes.push({ key, answer });
      // Once the listener is closed, connections are refused: the drain is over for this client.
      if (answer.status === 'network') stop = true;
    }
  });
  await waitFor('creations before SIGTERM', () => outcomes.filter((o) => o.answer.status === 201).length >= 20);
  cluster.service.child.kill('SIGTERM');
  const { code, signal } = await cluster.service.exited;
  stop = true;
  await load;
  t.is(code, 0, cluster.service.output().slice(-3000));
  t.is(signal, null);
  for (const pid of workers) t.regex(cluster.service.output(), new RegExp(`"pid":${pid},[^\\n]*"msg":"SIGTERM: stopping"`), `worker ${pid} drained`);
  await waitFor('the workers to be gone', () => workers.every((pid) => !isRunning(pid)));
  t.false(isRunning(cluster.service.pid), 'the primary is gone');
  t.deepEqual(
    outcomes.filter((o) => o.answer.status !== 201 && o.answer.status !== 'network').map((o) => o.answer.status),
    [],
    'only 201s, then refused connections',
  );
  // Every 201 is committed.
  const created = outcomes.flatMap((o) => (o.answer.status === 201 ? [((o.answer as Answer).json as Subscription).id] : []));
  const client = new pg.Client({ connectionString: cluster.databaseUrl });
  await client.connect();
  const { rows } = await client.query<{ count: string }>('SELECT count(*) FROM subscriptions WHERE id = ANY($1)', [created]);
  await client.end();
  t.is(Number(rows[0]!.count), created.length);
  t.log(`${created.length} created before and during the drain, all committed; workers ${workers.join(', ')} and primary ${cluster.service.pid} gone`);
});
