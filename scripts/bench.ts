/**
 * make bench: seeds a dedicated database (BENCH_SUBSCRIPTIONS, default 500,000), starts the
 * service as make run does (a child process), drives it over loopback with autocannon (warm-up,
 * then a fixed duration and connection count per scenario), prints one table and writes
 * bench/results/<date>-<size>.json. Stops everything it started.
 *
 * Besides the load: EXPLAIN (ANALYZE, BUFFERS) of every list variant (first and deep page), the
 * insert rate with the analytics triggers disabled (then rebuilt), and analytics checked against
 * the base tables mid-flight during the mixed load.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import { loadConfig, projectRoot } from '../src/config.js';
import { assertPostgres16, openDatabase } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedPostgres } from '../src/db/embedded.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { seedDatabase } from '../src/db/seed.js';
import { CursorCodec } from '../src/http/cursor.js';
import { readAnalytics } from '../src/resources/analytics.js';
import { subscriptionPageQuery } from '../src/resources/subscriptions.js';
import { embeddedSettings } from '../src/service.js';
import { freePort } from '../src/free-port.js';

const env = process.env;
const num = (name: string, fallback: number) => (env[name] ? Number(env[name]) : fallback);
const size = num('BENCH_SUBSCRIPTIONS', 500_000);
const users = num('BENCH_USERS', Math.max(1_000, Math.round(size / 5)));
const seconds = num('BENCH_SECONDS', 8);
const warmupSeconds = num('BENCH_WARMUP_SECONDS', 2);
const connections = num('BENCH_CONNECTIONS', 16);
const mixedConnections = num('BENCH_MIXED_CONNECTIONS', 64);
// The service's default is 10 s; the plain-SQL analytics (?source=base_tables) takes about 13 s at 5M.
const statementTimeoutMs = num('BENCH_STATEMENT_TIMEOUT_MS', 60_000);
const explainRuns = num('BENCH_EXPLAIN_RUNS', 3);
const midFlightChecks = Math.max(3, num('BENCH_MIDFLIGHT_CHECKS', 3));
const KEY = 'bench-key';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- database and seed
const config = loadConfig();
const embedded = config.databaseUrl
  ? undefined
  : await startEmbeddedPostgres({ dataDir: path.join(config.dataDir, 'bench-pg16'), port: await freePort(), settings: embeddedSettings });
const databaseName = `bench_${size}`;
// A database of its own, beside (never instead of) the service's: the seed replaces its data.
const serverUrl = embedded ? embedded.adminUrl : Object.assign(new URL(config.databaseUrl!), { pathname: '' }).toString().replace(/\/$/, '');
await ensureDatabase(serverUrl, databaseName);
const databaseUrl = `${serverUrl}/${databaseName}`;
const database = openDatabase(databaseUrl, { statementTimeoutMs: 0 });

let service: ChildProcess | undefined;
let stopped = false;
/** Stops the service, the pool and the embedded PostgreSQL (once), also when a step fails. */
async function stopAll(): Promise<void> {
  if (stopped) return;
  stopped = true;
  if (service && service.exitCode === null && service.signalCode === null) {
    const exited = new Promise((resolve) => service!.once('exit', resolve));
    service.kill('SIGTERM');
    await exited;
  }
  await database.close();
  await embedded?.stop();
}
const failed = async (err: unknown): Promise<never> => {
  await stopAll().catch(() => {});
  throw err;
};

const postgresVersion = await assertPostgres16(database.pool).catch(failed);
await migrateToLatest(database.db).catch(failed);
console.log(`# PostgreSQL ${postgresVersion}; seeding ${size.toLocaleString('en-US')} subscriptions, ${users.toLocaleString('en-US')} users`);
const seed = await seedDatabase(database.pool, { users, subscriptions: size, features: 30, seed: 42 }, { reset: true, log: (line) => console.log(`#   ${line}`) }).catch(failed);

// The service's cursor key, read as the service reads it (src/service.ts): cursors made here are ones it issues.
const secret = await database.db.selectFrom('service_secrets').select('value').where('name', '=', 'cursor_hmac_key').executeTakeFirstOrThrow();
const cursors = new CursorCodec(secret.value);
const maxId = Number((await database.pool.query('SELECT max(id) AS max FROM subscriptions')).rows[0].max ?? 0);
const deepCursor = cursors.encode('id', [Math.floor(maxId * 0.9)]);
const daysAgo = (days: number) => new Date(Date.now() - days * 86400_000).toISOString().slice(0, 10);
const sixMonthsAgo = daysAgo(182);

// ---------------------------------------------------------------- EXPLAIN of every list variant
type ListQuery = Parameters<typeof subscriptionPageQuery>[2];

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  'Actual Rows'?: number;
  'Actual Loops'?: number;
  'Index Cond'?: string;
  'Recheck Cond'?: string;
  Filter?: string;
  'Rows Removed by Filter'?: number;
  'Sort Key'?: string[];
  'Shared Hit Blocks'?: number;
  'Shared Read Blocks'?: number;
  Plans?: PlanNode[];
}
interface ExplainOutput {
  Plan: PlanNode;
  'Planning Time': number;
  'Execution Time': number;
}
interface PageExplain {
  /** Median of the runs' execution times. */
  executionMs: number;
  executionRunsMs: number[];
  planningMs: number;
  indexes: string[];
  seqScanOnSubscriptions: boolean;
  rowsReturned: number;
  sharedHitBlocks: number;
  sharedReadBlocks: number;
  sql: string;
  parameters: unknown[];
  /** The plan tree, one node a line. */
  plan: string[];
}
interface VariantExplain {
  variant: string;
  query: ListQuery;
  /** Rows matching the filters: the deep page starts after the row at 90% of them. */
  matchingRows: number;
  deepOffset: number | null;
  first: PageExplain;
  deep: PageExplain | null;
  deepOverFirst: number | null;
  flags: string[];
}

function walkPlan(node: PlanNode, visit: (node: PlanNode, depth: number) => void, depth = 0): void {
  visit(node, depth);
  for (const child of node.Plans ?? []) walkPlan(child, visit, depth + 1);
}

function describeNode(node: PlanNode): string {
  const parts = [node['Node Type']];
  if (node['Index Name']) parts.push(`using ${node['Index Name']}`);
  if (node['Relation Name']) parts.push(`on ${node['Relation Name']}`);
  parts.push(`(rows=${node['Actual Rows']} loops=${node['Actual Loops']})`);
  if (node['Index Cond']) parts.push(`Index Cond: ${node['Index Cond']}`);
  if (node['Recheck Cond']) parts.push(`Recheck Cond: ${node['Recheck Cond']}`);
  if (node.Filter) parts.push(`Filter: ${node.Filter} (removed ${node['Rows Removed by Filter'] ?? 0})`);
  if (node['Sort Key']) parts.push(`Sort Key: ${node['Sort Key'].join(', ')}`);
  return parts.join(' ');
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const round2 = (n: number) => Math.round(n * 100) / 100;

/** EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) of the exact page query the service would run, explainRuns times. */
async function explainPage(query: ListQuery): Promise<PageExplain> {
  const { q } = subscriptionPageQuery(database.db, cursors, query);
  const compiled = q.compile();
  const outputs: ExplainOutput[] = [];
  for (let i = 0; i < explainRuns; i++) {
    const { rows } = await database.pool.query<{ 'QUERY PLAN': ExplainOutput[] }>(
      `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ${compiled.sql}`,
      compiled.parameters as unknown[],
    );
    outputs.push(rows[0]!['QUERY PLAN'][0]!);
  }
  const last = outputs.at(-1)!;
  const indexes = new Set<string>();
  let seqScanOnSubscriptions = false;
  const plan: string[] = [];
  walkPlan(last.Plan, (node, depth) => {
    if (node['Index Name']) indexes.add(node['Index Name']);
    if (node['Node Type'] === 'Seq Scan' && node['Relation Name'] === 'subscriptions') seqScanOnSubscriptions = true;
    plan.push(`${'  '.repeat(depth)}${describeNode(node)}`);
  });
  const runs = outputs.map((o) => round2(o['Execution Time']));
  return {
    executionMs: median(runs),
    executionRunsMs: runs,
    planningMs: round2(last['Planning Time']),
    indexes: [...indexes],
    seqScanOnSubscriptions,
    rowsReturned: last.Plan['Actual Rows'] ?? 0,
    sharedHitBlocks: last.Plan['Shared Hit Blocks'] ?? 0,
    sharedReadBlocks: last.Plan['Shared Read Blocks'] ?? 0,
    sql: compiled.sql,
    parameters: [...compiled.parameters],
    plan,
  };
}

/** First page and a page 90% deep (a real cursor: the keys of the row at 90% of the ordering, signed with the service's key). */
async function explainVariant(variant: string, query: ListQuery): Promise<VariantExplain> {
  const { q, sortName, keysOf } = subscriptionPageQuery(database.db, cursors, query);
  const all = q.clearLimit().clearOrderBy();
  const counted = await database.db.selectFrom(all.as('matching')).select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow();
  const matchingRows = Number(counted.n);
  const first = await explainPage(query);
  let deep: PageExplain | null = null;
  let deepOffset: number | null = null;
  if (matchingRows > 1) {
    deepOffset = Math.min(matchingRows - 2, Math.floor(matchingRows * 0.9));
    const row = await q.clearLimit().limit(1).offset(deepOffset).executeTakeFirstOrThrow();
    deep = await explainPage({ ...query, cursor: cursors.encode(sortName, keysOf(row)) });
  }
  const deepOverFirst = deep ? round2(deep.executionMs / Math.max(first.executionMs, 0.001)) : null;
  const flags: string[] = [];
  if (first.seqScanOnSubscriptions) flags.push('first page seq-scans subscriptions');
  if (deep?.seqScanOnSubscriptions) flags.push('deep page seq-scans subscriptions');
  if (deepOverFirst !== null && deepOverFirst > 3) flags.push(`deep page ${deepOverFirst}x the first page`);
  return { variant, query, matchingRows, deepOffset, first, deep, deepOverFirst, flags };
}

async function explainListVariants(): Promise<VariantExplain[]> {
  const heaviestUser = Number(
    (await database.pool.query('SELECT user_id FROM subscriptions GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1')).rows[0].user_id,
  );
  const features = (await database.pool.query('SELECT feature_id, count(*) AS n FROM subscription_features GROUP BY feature_id ORDER BY n DESC, feature_id')).rows;
  const commonFeature = Number(features[0].feature_id);
  const rareFeature = Number(features.at(-1).feature_id);
  const yearAgo = daysAgo(365);
  const twoYearsAgo = daysAgo(730);
  const variants: Array<[string, ListQuery]> = [
    ['sort=id', {}],
    ['sort=-id', { sort: '-id' }],
    ['sort=start_date', { sort: 'start_date' }],
    ['sort=-start_date', { sort: '-start_date' }],
    ['sort=plan_cost', { sort: 'plan_cost' }],
    ['sort=-plan_cost', { sort: '-plan_cost' }],
    ['status=active', { status: ['active'] }],
    ['status=past_due&status=paused', { status: ['past_due', 'paused'] }],
    [`user_id=${heaviestUser} (most subscriptions)`, { user_id: heaviestUser }],
    [`start_date_from=${sixMonthsAgo}`, { start_date_from: sixMonthsAgo }],
    [`start_date_to=${twoYearsAgo}`, { start_date_to: twoYearsAgo }],
    [`start_date_from=${yearAgo}&start_date_to=${sixMonthsAgo}`, { start_date_from: yearAgo, start_date_to: sixMonthsAgo }],
    ['plan_cost_min=100', { plan_cost_min: '100' }],
    ['plan_cost_max=20', { plan_cost_max: '20' }],
    ['plan_cost_min=40&plan_cost_max=100', { plan_cost_min: '40', plan_cost_max: '100' }],
    [`feature_id=${commonFeature} (most linked)`, { feature_id: commonFeature }],
    [`feature_id=${rareFeature} (least linked)`, { feature_id: rareFeature }],
    [`status=active&start_date_from=${sixMonthsAgo}`, { status: ['active'], start_date_from: sixMonthsAgo }],
    // Filters with the sort a screen would pair them with.
    ['status=active&sort=-start_date', { status: ['active'], sort: '-start_date' }],
    [`user_id=${heaviestUser}&sort=-start_date`, { user_id: heaviestUser, sort: '-start_date' }],
    [`feature_id=${rareFeature}&sort=-start_date`, { feature_id: rareFeature, sort: '-start_date' }],
    ['plan_cost_min=100&sort=-plan_cost', { plan_cost_min: '100', sort: '-plan_cost' }],
  ];
  const results: VariantExplain[] = [];
  for (const [name, query] of variants) results.push(await explainVariant(name, query));
  return results;
}

console.log(`# EXPLAIN (ANALYZE, BUFFERS) of the subscription list variants: first page and a page 90% deep, median of ${explainRuns} runs each`);
const explained = await explainListVariants().catch(failed);

// ---------------------------------------------------------------- analytics correctness
/** Leaf paths where two JSON values differ. */
function differences(a: unknown, b: unknown, at = ''): string[] {
  if (Array.isArray(a) && Array.isArray(b)) {
    return Array.from({ length: Math.max(a.length, b.length) }, (_, i) => differences(a[i], b[i], `${at}/${i}`)).flat();
  }
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((k) => differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], `${at}/${k}`));
  }
  return Object.is(a, b) ? [] : [`${at || '/'}: ${JSON.stringify(a)} (aggregates) vs ${JSON.stringify(b)} (base tables)`];
}

interface AnalyticsCheck {
  label: string;
  /** When it began and ended, ms after the start of the measured run it ran beside (if any). */
  startedAtMs: number;
  finishedAtMs: number;
  /** subscription_count of the snapshot both answers were read in. */
  subscriptionCount: number;
  mismatches: string[];
  error?: string;
}

/** The service's aggregates answer and the plain answer over the base tables, in one REPEATABLE READ snapshot. */
async function checkAnalytics(label: string, since: number): Promise<AnalyticsCheck> {
  const startedAtMs = Math.round(performance.now() - since);
  try {
    return await database.db
      .transaction()
      .setIsolationLevel('repeatable read')
      .setAccessMode('read only')
      .execute(async (trx) => {
        const aggregates = await readAnalytics(trx, 'aggregates');
        const baseTables = await readAnalytics(trx, 'base_tables');
        const mismatches = differences(aggregates, baseTables);
        return { label, startedAtMs, finishedAtMs: Math.round(performance.now() - since), subscriptionCount: aggregates.subscription_count, mismatches };
      });
  } catch (err) {
    return { label, startedAtMs, finishedAtMs: Math.round(performance.now() - since), subscriptionCount: -1, mismatches: [], error: String(err) };
  }
}

// ---------------------------------------------------------------- the analytics triggers, for the insert comparison
/** The statement-level analytics triggers on subscriptions (by their function, analytics_*), not set_updated_at. */
async function analyticsTriggers(): Promise<Array<{ name: string; enabled: string }>> {
  const { rows } = await database.pool.query<{ name: string; enabled: string }>(
    `SELECT t.tgname AS name, t.tgenabled AS enabled
       FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
      WHERE t.tgrelid = 'subscriptions'::regclass AND NOT t.tgisinternal AND p.proname LIKE 'analytics\\_%'
      ORDER BY t.tgname`,
  );
  return rows;
}
const quoteIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
const foundTriggers = await analyticsTriggers().catch(failed);
const triggersToDisable = foundTriggers.map((t) => t.name);
if (triggersToDisable.length === 0) await failed(new Error('no analytics triggers on subscriptions in pg_trigger'));
const alterTriggers = (action: 'DISABLE' | 'ENABLE') =>
  `ALTER TABLE subscriptions ${triggersToDisable.map((name) => `${action} TRIGGER ${quoteIdent(name)}`).join(', ')}`;
// The seed keeps a trigger's state: one left disabled by an interrupted bench would stay so. The
// seed has just computed the aggregates from the base tables, so enabling is all it takes.
if (foundTriggers.some((t) => t.enabled === 'D')) {
  await database.pool.query(alterTriggers('ENABLE')).catch(failed);
  console.log(`# analytics triggers were left disabled (an interrupted bench?): enabled again`);
}
let rebuildSeconds = 0;
let afterRebuild: AnalyticsCheck | undefined;

// ---------------------------------------------------------------- the service, as make run starts it
const port = await freePort();
// The same V8 flags as make run (SERVICE_NODE_FLAGS, exported by the Makefile).
const nodeFlags = (env.SERVICE_NODE_FLAGS ?? '').split(/\s+/).filter(Boolean);
console.log(`# the service runs with STATEMENT_TIMEOUT_MS=${statementTimeoutMs} (its default is 10000): the plain-SQL analytics takes ~13 s at 5M (BENCH_STATEMENT_TIMEOUT_MS)`);
service = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', 'src/main.ts'], {
  cwd: projectRoot,
  env: { ...env, DATABASE_URL: databaseUrl, PORT: String(port), HOST: '127.0.0.1', API_KEYS: KEY, LOG_LEVEL: 'warn', STATEMENT_TIMEOUT_MS: String(statementTimeoutMs), PG_POOL_SIZE: String(num('BENCH_POOL_SIZE', 10)) },
  stdio: ['ignore', 'inherit', 'inherit'],
});
const servicePid = service.pid;
const base = `http://127.0.0.1:${port}`;
const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
for (let i = 0; i < 300; i++) {
  const ok = await fetch(`${base}/readyz`).then((r) => r.ok, () => false);
  if (ok) break;
  await sleep(100);
}

/** Resident memory of the service now and at its peak (kB), from /proc. */
function memory(): { rssMb: number; peakRssMb: number } {
  const status = fs.readFileSync(`/proc/${servicePid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  return { rssMb: Math.round(kb('VmRSS') / 1024), peakRssMb: Math.round(kb('VmHWM') / 1024) };
}

const idleRssMb = memory().rssMb;
console.log(`# service ready, RSS ${idleRssMb} MB`);

const randomInt = (max: number) => 1 + Math.floor(Math.random() * max);
const statuses = ['active', 'trialing', 'past_due', 'paused', 'canceled', 'expired'];
const newSubscription = () =>
  JSON.stringify({ user_id: randomInt(users), status: statuses[randomInt(6) - 1], plan_cost: `${randomInt(200)}.99`, start_date: new Date().toISOString().slice(0, 10) });

type Req = autocannon.Request;
const get = (pathOf: () => string): Req => ({ method: 'GET', setupRequest: (req) => ({ ...req, path: pathOf() }) });
const post: Req = { method: 'POST', path: '/api/subscriptions', setupRequest: (req) => ({ ...req, body: newSubscription() }) };

interface Scenario {
  name: string;
  requests: Req[];
  connections?: number;
  /** A fixed number of requests instead of the fixed duration (for calls that take seconds at 5M). */
  amount?: number;
  /** Before the warm-up, and after the measured run. */
  before?: () => Promise<void>;
  after?: () => Promise<void>;
  /** Beside the measured run (started with it, given its start time), awaited after it. */
  during?: (since: number) => Promise<void>;
}

const POST_MAINTAINED = 'POST /api/subscriptions (aggregates maintained)';
const POST_UNMAINTAINED = 'POST /api/subscriptions (analytics triggers disabled)';
const midFlight: AnalyticsCheck[] = [];
let mixedStartCount = 0;

const scenarios: Scenario[] = [
  { name: 'one-row GET /api/users/{id}', requests: [get(() => `/api/users/${randomInt(users)}`)] },
  { name: 'analytics (maintained aggregates)', requests: [get(() => '/api/analytics/')] },
  // The plain way costs hundreds of ms per call: compared at 2 connections, beside the maintained one at 2.
  { name: 'analytics (maintained aggregates), 2 conns', connections: 2, requests: [get(() => '/api/analytics/')] },
  { name: 'analytics (plain SQL over base tables), 2 conns', connections: 2, amount: 10, requests: [get(() => '/api/analytics/?source=base_tables')] },
  { name: 'first page GET /api/subscriptions?limit=50', requests: [get(() => '/api/subscriptions?limit=50')] },
  { name: 'deep page (90% into the table, by cursor)', requests: [get(() => `/api/subscriptions?limit=50&cursor=${deepCursor}`)] },
  { name: `filtered: status=active & start_date_from=${sixMonthsAgo}`, requests: [get(() => `/api/subscriptions?limit=50&status=active&start_date_from=${sixMonthsAgo}`)] },
  { name: POST_MAINTAINED, requests: [post] },
  {
    // What the aggregates cost a single-row insert: the same load with the analytics triggers off.
    name: POST_UNMAINTAINED,
    requests: [post],
    before: async () => {
      await database.pool.query(alterTriggers('DISABLE'));
      console.log(`# disabled ${triggersToDisable.join(', ')}`);
    },
    after: async () => {
      // autocannon does not wait for its last requests: let those inserts land (unmaintained) first.
      await sleep(2_000);
      const started = performance.now();
      const client = await database.pool.connect();
      try {
        // Enabled and rebuilt in one transaction: no insert lands between the two unmaintained.
        await client.query('BEGIN');
        await client.query(alterTriggers('ENABLE'));
        await client.query('SELECT analytics_rebuild()');
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw err;
      } finally {
        client.release();
      }
      rebuildSeconds = (performance.now() - started) / 1000;
      const still = (await analyticsTriggers()).filter((t) => t.enabled !== 'O');
      if (still.length) throw new Error(`analytics triggers not enabled again: ${still.map((t) => t.name).join(', ')}`);
      afterRebuild = await checkAnalytics('after analytics_rebuild()', performance.now());
      console.log(`# enabled them again, analytics_rebuild() in ${rebuildSeconds.toFixed(1)} s; mismatches after it: ${afterRebuild.error ?? afterRebuild.mismatches.length}`);
    },
  },
  {
    name: 'mixed 80% reads / 20% writes',
    connections: mixedConnections,
    requests: [get(() => `/api/users/${randomInt(users)}`), get(() => '/api/analytics/'), post, get(() => '/api/subscriptions?limit=50'), get(() => `/api/subscriptions?user_id=${randomInt(users)}`)],
    // Analytics checked against the base tables while the writes go on, spread over the run.
    during: async (since) => {
      mixedStartCount = Number((await database.pool.query('SELECT count(*) AS n FROM subscriptions')).rows[0].n);
      const checks = Array.from({ length: midFlightChecks }, async (_, i) => {
        await sleep(Math.max(0, since + ((i + 1) * seconds * 1000) / (midFlightChecks + 1) - performance.now()));
        return checkAnalytics(`mid-flight ${i + 1}`, since);
      });
      midFlight.push(...(await Promise.all(checks)));
    },
  },
];

interface Row {
  scenario: string;
  connections: number;
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  requests: number;
}

async function run(scenario: Scenario, duration: number, warmup = false): Promise<autocannon.Result> {
  const length = scenario.amount ? { amount: warmup ? 2 : scenario.amount } : { duration };
  return autocannon({ url: base, connections: scenario.connections ?? connections, ...length, headers, requests: scenario.requests, timeout: 90 });
}

const rows: Row[] = [];
let peakRssUnderLoad = 0;

async function measure(): Promise<{ analyticsExact: boolean; mem: { rssMb: number; peakRssMb: number } }> {
  for (const scenario of scenarios) {
    await scenario.before?.();
    await run(scenario, warmupSeconds, true);
    const sampler = setInterval(() => (peakRssUnderLoad = Math.max(peakRssUnderLoad, memory().rssMb)), 250);
    const since = performance.now();
    const running = run(scenario, seconds);
    const beside = scenario.during?.(since);
    const result = await running;
    await beside;
    clearInterval(sampler);
    rows.push({
      scenario: scenario.name,
      connections: scenario.connections ?? connections,
      requestsPerSecond: Math.round(result.requests.average),
      p50Ms: result.latency.p50,
      p99Ms: result.latency.p99,
      errors: result.errors + result.timeouts + result.non2xx,
      requests: result.requests.total,
    });
    console.log(`# ${scenario.name}: ${Math.round(result.requests.average)} req/s, p50 ${result.latency.p50} ms, p99 ${result.latency.p99} ms, errors ${result.errors + result.timeouts + result.non2xx}`);
    await scenario.after?.();
  }

  // Analytics must still equal the plain answer after the writes of the load. autocannon stops at
  // the deadline without waiting for its last requests, so let those writes land first.
  await sleep(2_000);
  const fetchJson = async (p: string) => (await fetch(`${base}${p}`, { headers })).json() as Promise<Record<string, unknown>>;
  const maintained = await fetchJson('/api/analytics/');
  const plain = await fetchJson('/api/analytics/?source=base_tables');
  const strip = ({ as_of: _a, ...rest }: Record<string, unknown>) => JSON.stringify(rest);
  return { analyticsExact: strip(maintained) === strip(plain), mem: memory() };
}

const { analyticsExact, mem } = await measure().catch(failed);
await stopAll();

// ---------------------------------------------------------------- report
const rowOf = (name: string) => rows.find((r) => r.scenario.startsWith(name))!;
const p50 = (name: string) => rowOf(name).p50Ms;
const ratio = (a: number, b: number) => Math.round((a / b) * 100) / 100;
const day = new Date().toISOString().slice(0, 10);
const resultsDir = path.join(projectRoot, 'bench', 'results');
const previous = fs
  .readdirSync(resultsDir)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => JSON.parse(fs.readFileSync(path.join(resultsDir, f), 'utf8')) as { size: number; rows: Row[] });
const otherSize = (s: number) => previous.filter((r) => r.size === s).at(-1);
const small = size === 500_000 ? undefined : otherSize(500_000);
const maintainedRps = rowOf(POST_MAINTAINED).requestsPerSecond;
const unmaintainedRps = rowOf(POST_UNMAINTAINED).requestsPerSecond;
const ratios = {
  analytics_p50_over_one_row_p50: ratio(p50('analytics (maintained'), p50('one-row')),
  deep_page_p50_over_first_page_p50: ratio(p50('deep page'), p50('first page')),
  plain_analytics_p50_over_maintained_p50: ratio(p50('analytics (plain'), p50('analytics (maintained aggregates), 2')),
  insert_rps_maintained_over_unmaintained: ratio(maintainedRps, unmaintainedRps),
  ...(small ? { analytics_p50_this_size_over_500k: ratio(p50('analytics (maintained'), small.rows.find((r) => r.scenario.startsWith('analytics (maintained'))!.p50Ms) } : {}),
};
const midFlightMismatches = midFlight.reduce((n, c) => n + c.mismatches.length, 0);
const midFlightErrors = midFlight.filter((c) => c.error).length;
const flagged = explained.filter((v) => v.flags.length > 0);
const report = {
  date: new Date().toISOString(),
  size,
  users,
  machine: { cpus: (await import('node:os')).cpus().length, model: (await import('node:os')).cpus()[0]?.model, node: process.version, postgres: postgresVersion },
  settings: { seconds, warmupSeconds, connections, mixedConnections, serviceStatementTimeoutMs: statementTimeoutMs, explainRuns, midFlightChecks },
  seed: { seconds: seed.seconds, rows: seed.totalRows, rowsPerSecond: seed.rowsPerSecond },
  rows,
  ratios,
  insertThroughput: {
    maintainedRps,
    unmaintainedRps,
    ratio: ratios.insert_rps_maintained_over_unmaintained,
    target: 0.7,
    triggersDisabled: triggersToDisable,
    rebuildSeconds: round2(rebuildSeconds),
    afterRebuild,
  },
  analyticsExactAfterLoad: analyticsExact,
  midFlight: { rowsAtStartOfRun: mixedStartCount, mismatches: midFlightMismatches, errors: midFlightErrors, checks: midFlight },
  explain: explained,
  memory: { idleRssMb, peakRssUnderLoadMb: peakRssUnderLoad, peakRssMb: mem.peakRssMb },
};
fs.writeFileSync(path.join(resultsDir, `${day}-${size}.json`), `${JSON.stringify(report, null, 2)}\n`);

const pad = (s: string | number, n: number) => String(s).padEnd(n);
console.log(`\n${pad('scenario', 58)}${pad('conns', 7)}${pad('req/s', 9)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}errors`);
for (const r of rows) console.log(`${pad(r.scenario, 58)}${pad(r.connections, 7)}${pad(r.requestsPerSecond, 9)}${pad(r.p50Ms, 9)}${pad(r.p99Ms, 9)}${r.errors}`);

console.log(`\nEXPLAIN (ANALYZE, BUFFERS): exact page queries (limit 50), median execution of ${explainRuns} runs; deep = after the row at 90% of the matching rows`);
console.log(`${pad('variant', 58)}${pad('matching', 10)}${pad('first ms', 10)}${pad('deep ms', 10)}${pad('deep/1st', 10)}${pad('seq scan', 10)}indexes (first | deep)`);
for (const v of explained) {
  const seq = v.first.seqScanOnSubscriptions || v.deep?.seqScanOnSubscriptions ? 'YES' : 'no';
  const indexes = `${v.first.indexes.join(', ') || '-'} | ${v.deep?.indexes.join(', ') || '-'}`;
  console.log(`${pad(v.variant, 58)}${pad(v.matchingRows, 10)}${pad(v.first.executionMs, 10)}${pad(v.deep?.executionMs ?? '-', 10)}${pad(v.deepOverFirst ?? '-', 10)}${pad(seq, 10)}${indexes}`);
}
if (flagged.length === 0) console.log('no list variant seq-scans subscriptions or has a deep page over 3x its first page');
for (const v of flagged) {
  console.log(`\nFLAGGED ${v.variant}: ${v.flags.join('; ')}`);
  for (const [which, page] of [['first', v.first], ['deep', v.deep]] as const) {
    if (!page) continue;
    console.log(`  ${which} page, ${page.executionMs} ms (runs ${page.executionRunsMs.join(', ')}), buffers hit ${page.sharedHitBlocks} read ${page.sharedReadBlocks}:`);
    console.log(`    ${page.sql}`);
    console.log(`    parameters: ${JSON.stringify(page.parameters)}`);
    for (const line of page.plan) console.log(`    ${line}`);
  }
}

console.log(`\nseed: ${seed.totalRows.toLocaleString('en-US')} rows in ${seed.seconds.toFixed(1)} s (${Math.round(seed.rowsPerSecond).toLocaleString('en-US')} rows/s)`);
for (const [name, value] of Object.entries(ratios)) console.log(`ratio ${name}: ${value}`);
const insertRatio = ratios.insert_rps_maintained_over_unmaintained;
console.log(
  `inserts: ${maintainedRps} req/s with the aggregates maintained, ${unmaintainedRps} req/s with ${triggersToDisable.join(', ')} disabled: ratio ${insertRatio} (target >= 0.70: ${insertRatio >= 0.7 ? 'met' : 'NOT met'}); analytics_rebuild() after: ${rebuildSeconds.toFixed(1)} s, mismatches ${afterRebuild?.error ?? afterRebuild?.mismatches.length}`,
);
for (const c of midFlight) {
  console.log(`mid-flight check (${c.label}, ${c.startedAtMs}-${c.finishedAtMs} ms into the ${seconds} s run, ${c.subscriptionCount - mixedStartCount} rows inserted by then): ${c.error ?? `${c.mismatches.length} mismatches`}`);
  for (const m of c.mismatches.slice(0, 10)) console.log(`  ${m}`);
}
console.log(`analytics mismatches mid-flight: ${midFlightMismatches} in ${midFlight.length} checks${midFlightErrors ? `, ${midFlightErrors} checks failed` : ''}`);
console.log(`analytics equals the plain answer after the load: ${analyticsExact}`);
console.log(`service RSS: ${idleRssMb} MB when ready, peak under load ${peakRssUnderLoad} MB, lifetime peak ${mem.peakRssMb} MB`);
console.log(`service statement timeout: STATEMENT_TIMEOUT_MS=${statementTimeoutMs} for this run (default 10000)`);
console.log(`written: bench/results/${day}-${size}.json`);
const exact = analyticsExact && midFlightMismatches === 0 && midFlightErrors === 0 && midFlight.length === midFlightChecks && afterRebuild?.mismatches.length === 0 && !afterRebuild.error;
process.exit(exact ? 0 : 1);
