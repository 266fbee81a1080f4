/**
 * What rate limiting and metrics cost per request, and what a second instance adds: services
 * started as `make run` starts them, measured with wrk in interleaved rounds (each side warmed up
 * first), medians and ranges printed. Not part of make test; run by hand:
 *
 *   node --import tsx scripts/rate-limit-cost.ts [BASE_REF]
 *
 * Sides, each a service process over the same seeded data (own copy of the database):
 * - `base`: BASE_REF (default e2d6d32, the commit before /metrics and rate limiting), from a
 *   worktree of it: no metrics, no rate limit;
 * - `limit off`: this checkout, RATE_LIMIT_PER_MINUTE=0 (metrics on, no rate limit);
 * - `limit on`: this checkout with a quota never reached (one upsert per request);
 * and, separately, one instance against two instances of this checkout (limit on) on one database,
 * the same two wrk processes hitting either one instance or one each.
 * Load: GET /api/subscriptions/{random id} (one row), 32 connections in all.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectRoot } from '../src/config.js';
import { openDatabase } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedPostgres } from '../src/db/embedded.js';
import { freePort } from '../src/free-port.js';

const BASE_REF = process.argv[2] ?? 'e2d6d32';
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const SECONDS = Number(process.env.SECONDS_PER_RUN ?? 8);
const SUBSCRIPTIONS = 100_000;
const KEY = 'cost_measurement_key';
/** Clients of their own: the limiter's row per key is then not one hot row for every request. */
const MANY_KEYS = Array.from({ length: 32 }, (_, i) => `cost_measurement_key_${i}`);
const NODE_FLAGS = (process.env.SERVICE_NODE_FLAGS ?? '--max-semi-space-size=2 --max-old-space-size=192').split(' ').filter(Boolean);

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rate-limit-cost-'));
fs.chmodSync(root, 0o755);
const children: ChildProcess[] = [];

interface Service {
  url: string;
  child: ChildProcess;
}

async function startService(cwd: string, databaseUrl: string, env: Record<string, string>): Promise<Service> {
  const port = await freePort();
  const child = spawn(process.execPath, [...NODE_FLAGS, '--import', 'tsx', 'src/main.ts'], {
    cwd,
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PORT: String(port),
      HOST: '127.0.0.1',
      API_KEYS: [KEY, ...MANY_KEYS].join(','),
      LOG_LEVEL: 'warn',
      WEB_CONCURRENCY: '1',
      SEED_WHEN_EMPTY: '0',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  children.push(child);
  const url = `http://127.0.0.1:${port}`;
  servicePids.set(url, child.pid!);
  for (let i = 0; i < 600; i++) {
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { url, child };
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`service in ${cwd} not ready`);
}

/** The load: GET /api/subscriptions/{random id}, with one API key or with one of 32 at random. */
const luaFor = (keys: string[]) => {
  const file = path.join(root, `one-row-${keys.length}-keys.lua`);
  fs.writeFileSync(
    file,
    `math.randomseed(os.time())
local keys = { ${keys.map((k) => `"${k}"`).join(', ')} }
request = function()
  return wrk.format("GET", "/api/subscriptions/" .. math.random(1, ${SUBSCRIPTIONS}), { ["Authorization"] = "Bearer " .. keys[math.random(1, #keys)] })
end
`,
  );
  return file;
};
const ONE_KEY = luaFor([KEY]);
const SPREAD_KEYS = luaFor(MANY_KEYS);

/** CPU time (user + system) of a process and of each of its children so far, in ms (Linux /proc, clock ticks of 10 ms). */
function cpuByPid(pid: number): Map<number, number> {
  const result = new Map<number, number>();
  const own = (p: number) => {
    try {
      const fields = fs.readFileSync(`/proc/${p}/stat`, 'utf8').split(') ')[1]!.split(' ');
      result.set(p, (Number(fields[11]) + Number(fields[12])) * 10);
    } catch {
      // exited meanwhile
    }
  };
  own(pid);
  try {
    for (const child of fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean)) own(Number(child));
  } catch {
    // none
  }
  return result;
}

/**
 * CPU used between two readings by the processes alive at the second: PostgreSQL's postmaster and
 * its backends (a pool's idle connections close after 10 s, so a run's backends are often new).
 * A process that exited in between (an autovacuum worker) is left out: its CPU is gone from /proc.
 */
function cpuBetween(before: Map<number, number>, after: Map<number, number>): number {
  let used = 0;
  for (const [pid, ms] of after) used += ms - (before.get(pid) ?? 0);
  return used;
}
const cpuMs = (pid: number) => cpuByPid(pid).get(pid) ?? 0;

/** Processes whose CPU a side's runs are charged with: its service (or services) and PostgreSQL. */
let postmasterPid = 0;
const servicePids = new Map<string, number>();

interface Run {
  rate: number;
  requests: number;
  serviceCpuUsPerRequest: number;
  postgresCpuUsPerRequest: number;
}

/** wrk runs at once (one per URL, connections split): requests per second summed, CPU per request of the services and of PostgreSQL. */
async function load(urls: string[], seconds: number, lua = ONE_KEY): Promise<Run> {
  const pids = [...new Set(urls)].map((url) => servicePids.get(url)!);
  const serviceBefore = pids.reduce((sum, pid) => sum + cpuMs(pid), 0);
  const postgresBefore = cpuByPid(postmasterPid);
  const runs = urls.map(
    (url) =>
      new Promise<{ rate: number; requests: number }>((resolve, reject) => {
        const wrk = spawn('wrk', ['-t1', `-c${32 / urls.length}`, `-d${seconds}s`, '-s', lua, url], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        wrk.stdout.on('data', (chunk) => (out += chunk));
        wrk.on('close', () => {
          const rate = /Requests\/sec:\s+([\d.]+)/.exec(out);
          const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
          if (non2xx) return reject(new Error(`${url}: ${non2xx[1]} non-2xx answers`));
          const requests = /(\d+) requests in/.exec(out);
          if (!rate || !requests) return reject(new Error(`wrk said: ${out}`));
          resolve({ rate: Number(rate[1]), requests: Number(requests[1]) });
        });
      }),
  );
  const results = await Promise.all(runs);
  const requests = results.reduce((sum, r) => sum + r.requests, 0);
  return {
    rate: results.reduce((sum, r) => sum + r.rate, 0),
    requests,
    serviceCpuUsPerRequest: ((pids.reduce((sum, pid) => sum + cpuMs(pid), 0) - serviceBefore) * 1000) / requests,
    postgresCpuUsPerRequest: (cpuBetween(postgresBefore, cpuByPid(postmasterPid)) * 1000) / requests,
  };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Interleaved rounds: every side once per round, in turn; a warm-up run of each side first. */
/** A side: the services the load is split over, and its wrk script (one key unless said). */
type SideSpec = string[] | { urls: string[]; lua: string };
const urlsOf = (side: SideSpec) => (Array.isArray(side) ? side : side.urls);
const luaOf = (side: SideSpec) => (Array.isArray(side) ? ONE_KEY : side.lua);

async function compare(sides: Record<string, SideSpec>): Promise<Record<string, Run[]>> {
  const results: Record<string, Run[]> = Object.fromEntries(Object.keys(sides).map((name) => [name, []]));
  for (const side of Object.values(sides)) await load(urlsOf(side), 3, luaOf(side));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, side] of Object.entries(sides)) {
      checkInterrupted();
      const run = await load(urlsOf(side), SECONDS, luaOf(side));
      results[name]!.push(run);
      console.log(
        `round ${round + 1} ${name}: ${run.rate.toFixed(0)} req/s, CPU per request ${run.serviceCpuUsPerRequest.toFixed(0)} µs service + ${run.postgresCpuUsPerRequest.toFixed(0)} µs PostgreSQL`,
      );
    }
  }
  return results;
}

const summary = (values: number[], unit: string) =>
  `median ${median(values).toFixed(0).padStart(5)} ${unit}, range ${Math.min(...values).toFixed(0)}-${Math.max(...values).toFixed(0)}`;

function report(title: string, results: Record<string, Run[]>): void {
  console.log(`\n${title}`);
  for (const [name, runs] of Object.entries(results)) {
    console.log(
      `  ${name.padEnd(28)} ${summary(
        runs.map((r) => r.rate),
        'req/s',
      )}; CPU per request: service ${summary(
        runs.map((r) => r.serviceCpuUsPerRequest),
        'µs',
      )}, PostgreSQL ${summary(
        runs.map((r) => r.postgresCpuUsPerRequest),
        'µs',
      )}`,
    );
  }
}

let postgres: Awaited<ReturnType<typeof startEmbeddedPostgres>> | undefined;
// Ctrl-C: the finally below still stops the services, PostgreSQL and the worktrees.
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => (interrupted = true));
const checkInterrupted = () => {
  if (interrupted) throw new Error('interrupted');
};
try {
  const baseTree = path.join(root, 'base');
  execFileSync('git', ['worktree', 'add', '--detach', baseTree, BASE_REF], { cwd: projectRoot, stdio: 'ignore' });
  fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(baseTree, 'node_modules'));
  const headTree = path.join(root, 'head');
  execFileSync('git', ['worktree', 'add', '--detach', headTree, 'HEAD'], { cwd: projectRoot, stdio: 'ignore' });
  fs.symlinkSync(path.join(projectRoot, 'node_modules'), path.join(headTree, 'node_modules'));

  postgres = await startEmbeddedPostgres({
    dataDir: path.join(root, 'pg'),
    port: await freePort(),
    settings: { shared_buffers: '256MB', max_connections: 100 },
  });
  // The same seeded data for each side: the base's own migrations and seed for it, this checkout's for the others (a copy each).
  for (const [name, tree] of [
    ['seeded_base', baseTree],
    ['seeded_head', headTree],
  ] as const) {
    await ensureDatabase(postgres.adminUrl, name);
    const seeded = openDatabase(postgres.urlFor(name));
    const { migrateToLatest } = (await import(path.join(tree, 'src/db/migrate.ts'))) as typeof import('../src/db/migrate.js');
    const { seedDatabase } = (await import(path.join(tree, 'src/db/seed.ts'))) as typeof import('../src/db/seed.js');
    await migrateToLatest(seeded.db);
    await seedDatabase(seeded.pool, { users: 20_000, subscriptions: SUBSCRIPTIONS, features: 30, seed: 42 });
    await seeded.pool.query('VACUUM ANALYZE');
    await seeded.close();
  }
  await ensureDatabase(postgres.adminUrl, 'base', 'seeded_base');
  for (const name of ['off', 'on', 'pair']) await ensureDatabase(postgres.adminUrl, name, 'seeded_head');

  postmasterPid = Number(fs.readFileSync(path.join(root, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]);
  const base = await startService(baseTree, postgres.urlFor('base'), {});
  const off = await startService(headTree, postgres.urlFor('off'), { RATE_LIMIT_PER_MINUTE: '0' });
  const on = await startService(headTree, postgres.urlFor('on'), { RATE_LIMIT_PER_MINUTE: '1000000000' });
  const costs = await compare({
    [`base (${BASE_REF})`]: [base.url],
    'limit off (metrics on)': [off.url],
    'limit on (quota not reached)': [on.url],
    'limit on, 32 keys': { urls: [on.url], lua: SPREAD_KEYS },
  });
  for (const s of [base, off, on]) s.child.kill('SIGTERM');

  const first = await startService(headTree, postgres.urlFor('pair'), { RATE_LIMIT_PER_MINUTE: '1000000000' });
  const second = await startService(headTree, postgres.urlFor('pair'), { RATE_LIMIT_PER_MINUTE: '1000000000' });
  const scaling = await compare({ 'one instance': [first.url, first.url], 'two instances': [first.url, second.url] });

  report(`One-row GET, ${ROUNDS} interleaved rounds of ${SECONDS} s, wrk 32 connections, ${os.cpus().length} cores shared with PostgreSQL and wrk`, costs);
  report('One instance vs two on one database (limit on), same two wrk processes', scaling);
  const cpu = (runs: Run[]) => median(runs.map((r) => r.serviceCpuUsPerRequest + r.postgresCpuUsPerRequest));
  const [cpuBase, cpuOff, cpuOn] = [cpu(costs[`base (${BASE_REF})`]!), cpu(costs['limit off (metrics on)']!), cpu(costs['limit on (quota not reached)']!)];
  console.log(
    `\nCPU per request (service + PostgreSQL, medians): base ${cpuBase.toFixed(0)} µs, limit off ${cpuOff.toFixed(0)} µs, limit on ${cpuOn.toFixed(0)} µs: ` +
      `the rate limit costs ${(cpuOn - cpuOff).toFixed(0)} µs, the rest of the difference to the base (metrics, and whatever else changed since) ${(cpuOff - cpuBase).toFixed(0)} µs`,
  );
} finally {
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
  await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
  await postgres?.stop();
  for (const tree of ['base', 'head']) {
    try {
      execFileSync('git', ['worktree', 'remove', '--force', path.join(root, tree)], { cwd: projectRoot, stdio: 'ignore' });
    } catch {
      // already gone
    }
  }
  fs.rmSync(root, { recursive: true, force: true });
}
