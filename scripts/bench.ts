/**
 * make bench: seeds a dedicated database (BENCH_SUBSCRIPTIONS, default 500,000), starts the
 * service as make run does (a child process), drives it over loopback with autocannon (warm-up,
 * then a fixed duration and connection count per scenario), prints one table and writes
 * bench/results/<date>-<size>.json. Stops everything it started.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import autocannon from 'autocannon';
import { loadConfig, projectRoot } from '../src/config.js';
import { assertPostgres16, openDatabase } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedPostgres } from '../src/db/embedded.js';
import { migrateToLatest } from '../src/db/migrate.js';
import { seedDatabase } from '../src/db/seed.js';
import { CursorCodec } from '../src/http/cursor.js';
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
const KEY = 'bench-key';

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
const postgresVersion = await assertPostgres16(database.pool);
await migrateToLatest(database.db);
console.log(`# PostgreSQL ${postgresVersion}; seeding ${size.toLocaleString('en-US')} subscriptions, ${users.toLocaleString('en-US')} users`);
const seed = await seedDatabase(database.pool, { users, subscriptions: size, features: 30, seed: 42 }, { reset: true, log: (line) => console.log(`#   ${line}`) });

const secret = await database.db.selectFrom('service_secrets').select('value').where('name', '=', 'cursor_hmac_key').executeTakeFirstOrThrow();
const cursors = new CursorCodec(secret.value);
const maxId = Number((await database.pool.query('SELECT max(id) AS max FROM subscriptions')).rows[0].max ?? 0);
const deepCursor = cursors.encode('id', [Math.floor(maxId * 0.9)]);
const sixMonthsAgo = new Date(Date.now() - 182 * 86400_000).toISOString().slice(0, 10);

// ---------------------------------------------------------------- the service, as make run starts it
const port = await freePort();
// The same V8 flags as make run (SERVICE_NODE_FLAGS, exported by the Makefile).
const nodeFlags = (env.SERVICE_NODE_FLAGS ?? '').split(/\s+/).filter(Boolean);
const service = spawn(process.execPath, [...nodeFlags, '--import', 'tsx', 'src/main.ts'], {
  cwd: projectRoot,
  env: { ...env, DATABASE_URL: databaseUrl, PORT: String(port), HOST: '127.0.0.1', API_KEYS: KEY, LOG_LEVEL: 'warn', STATEMENT_TIMEOUT_MS: String(num('BENCH_STATEMENT_TIMEOUT_MS', 60_000)), PG_POOL_SIZE: String(num('BENCH_POOL_SIZE', 10)) },
  stdio: ['ignore', 'inherit', 'inherit'],
});
const base = `http://127.0.0.1:${port}`;
const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' };
for (let i = 0; i < 300; i++) {
  const ok = await fetch(`${base}/readyz`).then((r) => r.ok, () => false);
  if (ok) break;
  await new Promise((r) => setTimeout(r, 100));
}

/** Resident memory of the service now and at its peak (kB), from /proc. */
function memory(): { rssMb: number; peakRssMb: number } {
  const status = fs.readFileSync(`/proc/${service.pid}/status`, 'utf8');
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
}
const scenarios: Scenario[] = [
  { name: 'one-row GET /api/users/{id}', requests: [get(() => `/api/users/${randomInt(users)}`)] },
  { name: 'analytics (maintained aggregates)', requests: [get(() => '/api/analytics/')] },
  // The plain way costs hundreds of ms per call: compared at 2 connections, beside the maintained one at 2.
  { name: 'analytics (maintained aggregates), 2 conns', connections: 2, requests: [get(() => '/api/analytics/')] },
  { name: 'analytics (plain SQL over base tables), 2 conns', connections: 2, amount: 10, requests: [get(() => '/api/analytics/?source=base_tables')] },
  { name: 'first page GET /api/subscriptions?limit=50', requests: [get(() => '/api/subscriptions?limit=50')] },
  { name: 'deep page (90% into the table, by cursor)', requests: [get(() => `/api/subscriptions?limit=50&cursor=${deepCursor}`)] },
  { name: `filtered: status=active & start_date_from=${sixMonthsAgo}`, requests: [get(() => `/api/subscriptions?limit=50&status=active&start_date_from=${sixMonthsAgo}`)] },
  { name: 'POST /api/subscriptions (aggregates maintained)', requests: [post] },
  {
    name: 'mixed 80% reads / 20% writes',
    connections: mixedConnections,
    requests: [get(() => `/api/users/${randomInt(users)}`), get(() => '/api/analytics/'), post, get(() => '/api/subscriptions?limit=50'), get(() => `/api/subscriptions?user_id=${randomInt(users)}`)],
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
for (const scenario of scenarios) {
  await run(scenario, warmupSeconds, true);
  const sampler = setInterval(() => (peakRssUnderLoad = Math.max(peakRssUnderLoad, memory().rssMb)), 250);
  const result = await run(scenario, seconds);
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
}

// Analytics must still equal the plain answer after the writes of the load. autocannon stops at
// the deadline without waiting for its last requests, so let those writes land first.
await new Promise((r) => setTimeout(r, 2_000));
const fetchJson = async (p: string) => (await fetch(`${base}${p}`, { headers })).json() as Promise<Record<string, unknown>>;
const maintained = await fetchJson('/api/analytics/');
const plain = await fetchJson('/api/analytics/?source=base_tables');
const strip = ({ as_of: _a, ...rest }: Record<string, unknown>) => JSON.stringify(rest);
const analyticsExact = strip(maintained) === strip(plain);
const mem = memory();

service.kill('SIGTERM');
await new Promise((resolve) => service.once('exit', resolve));
await database.close();
await embedded?.stop();

// ---------------------------------------------------------------- report
const p50 = (name: string) => rows.find((r) => r.scenario.startsWith(name))!.p50Ms;
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
const ratios = {
  analytics_p50_over_one_row_p50: ratio(p50('analytics (maintained'), p50('one-row')),
  deep_page_p50_over_first_page_p50: ratio(p50('deep page'), p50('first page')),
  plain_analytics_p50_over_maintained_p50: ratio(p50('analytics (plain'), p50('analytics (maintained aggregates), 2')),
  ...(small ? { analytics_p50_this_size_over_500k: ratio(p50('analytics (maintained'), small.rows.find((r) => r.scenario.startsWith('analytics (maintained'))!.p50Ms) } : {}),
};
const report = {
  date: new Date().toISOString(),
  size,
  users,
  machine: { cpus: (await import('node:os')).cpus().length, model: (await import('node:os')).cpus()[0]?.model, node: process.version, postgres: postgresVersion },
  settings: { seconds, warmupSeconds, connections, mixedConnections },
  seed: { seconds: seed.seconds, rows: seed.totalRows, rowsPerSecond: seed.rowsPerSecond },
  rows,
  ratios,
  analyticsExactAfterLoad: analyticsExact,
  memory: { idleRssMb, peakRssUnderLoadMb: peakRssUnderLoad, peakRssMb: mem.peakRssMb },
};
fs.writeFileSync(path.join(resultsDir, `${day}-${size}.json`), `${JSON.stringify(report, null, 2)}\n`);

const pad = (s: string | number, n: number) => String(s).padEnd(n);
console.log(`\n${pad('scenario', 52)}${pad('conns', 7)}${pad('req/s', 9)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}errors`);
for (const r of rows) console.log(`${pad(r.scenario, 52)}${pad(r.connections, 7)}${pad(r.requestsPerSecond, 9)}${pad(r.p50Ms, 9)}${pad(r.p99Ms, 9)}${r.errors}`);
console.log(`\nseed: ${seed.totalRows.toLocaleString('en-US')} rows in ${seed.seconds.toFixed(1)} s (${Math.round(seed.rowsPerSecond).toLocaleString('en-US')} rows/s)`);
for (const [name, value] of Object.entries(ratios)) console.log(`ratio ${name}: ${value}`);
console.log(`analytics equals the plain answer after the load: ${analyticsExact}`);
console.log(`service RSS: ${idleRssMb} MB when ready, peak under load ${peakRssUnderLoad} MB, lifetime peak ${mem.peakRssMb} MB`);
console.log(`written: bench/results/${day}-${size}.json`);
process.exit(analyticsExact ? 0 : 1);
