/**
 * Two checkouts side by side, by hand: each service on its own copy of make bench's bench_<size>
 * database (run make bench once first), wrk with 32 connections, rounds interleaved (the order
 * alternates), medians and ranges of p50, req/s and the service's CPU per request, and each
 * request's p50 over the one-row GET's per round. For a before/after of one change in one sitting,
 * where make bench's BENCH_BASELINE_REF compares only the one-row GET. AB_REQUESTS picks among
 * analytics, user, mrr, mixed and written (below).
 *
 *   git worktree add /tmp/before <ref> && cp -a node_modules /tmp/before/   (a copy: never a symlink)
 *   AB_SIDES=before=/tmp/before,now=. AB_REQUESTS=analytics,mrr,user node --import tsx bench/side-by-side.ts
 *
 * AB_SIZE (500000), AB_ROUNDS (3), AB_SECONDS (10); AB_PG_URL uses a running server instead of
 * starting the embedded one under DATA_DIR/bench-pg16. Each side's copy is made again on every run.
 */
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { loadConfig } from '../src/config.js';
import { startEmbeddedPostgres } from '../src/db/embedded.js';
import { freePort } from '../src/free-port.js';
import { embeddedSettings } from '../src/service.js';
import { runLoad } from './load.js';
import { get, int, post, t, type BenchRequest } from './requests.js';
import { median, spread } from './rounds.js';
import { requestHeaders, startService, treeCpuMs, type Server } from './servers.js';
import { makefileNodeFlags } from './settings.js';

const size = Number(process.env.AB_SIZE ?? 500000);
const rounds = Number(process.env.AB_ROUNDS ?? 3);
const seconds = Number(process.env.AB_SECONDS ?? 10);
const sides = (process.env.AB_SIDES ?? 'now=.').split(',').map((s) => {
  const [side, dir] = s.split('=');
  if (!side || !/^\w+$/.test(side) || !dir) throw new Error(`AB_SIDES: name=directory pairs, names of letters, digits and _ (got ${s})`);
  return [side, path.resolve(dir)] as const;
});
const which = (process.env.AB_REQUESTS ?? 'analytics,user').split(',');

const config = loadConfig();
const pgServer = process.env.AB_PG_URL
  ? { adminUrl: process.env.AB_PG_URL, stop: async () => {} }
  : await startEmbeddedPostgres({ dataDir: path.join(config.dataDir, 'bench-pg16'), port: await freePort(), settings: embeddedSettings });
const servers: Array<{ side: string; server: Server }> = [];
try {
  const admin = new pg.Client({ connectionString: `${pgServer.adminUrl}/postgres` });
  await admin.connect();
  const counts = await admin.query(`SELECT count(*) FROM pg_database WHERE datname = $1`, [`bench_${size}`]);
  if (Number(counts.rows[0].count) !== 1) throw new Error(`no bench_${size}: run make bench first`);
  const copy = new pg.Client({ connectionString: `${pgServer.adminUrl}/bench_${size}` });
  await copy.connect();
  const users = Number((await copy.query('SELECT max(id) AS n FROM users')).rows[0].n);
  await copy.end();
  const today = new Date().toISOString().slice(0, 10);
  const newSubscription = post(t`/api/subscriptions`, t`{"user_id":${int(users)},"status":"active","plan_cost":"${int(200)}.99","start_date":"${today}"}`);
  const oneUser = get(t`/api/users/${int(users)}`);
  const analytics = get(t`/api/analytics/`);
  // Lists of requests taken in turn; "mixed" is make bench's mix (a write among five), "written"
  // a write before every analytics request (each one then finds its kept document out of date).
  const requests: Record<string, BenchRequest[]> = {
    analytics: [analytics],
    user: [oneUser],
    mrr: [get(t`/api/analytics/mrr`)],
    mixed: [oneUser, analytics, newSubscription, get(t`/api/subscriptions?limit=50`), get(t`/api/subscriptions?user_id=${int(users)}`)],
    written: [newSubscription, analytics],
  };
  for (const [side] of sides) {
    await admin.query(`DROP DATABASE IF EXISTS ab_${side} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ab_${side} TEMPLATE bench_${size} STRATEGY FILE_COPY`);
    // AB_PREPARE_<side>=file.sql runs on that side's copy first (an older checkout's copy may need a
    // newer migration undone: the file then also deletes its row from kysely_migration).
    const prepare = process.env[`AB_PREPARE_${side}`];
    if (prepare) {
      const copy = new pg.Client({ connectionString: `${pgServer.adminUrl}/ab_${side}` });
      await copy.connect();
      await copy.query(fs.readFileSync(prepare, 'utf8'));
      await copy.end();
    }
  }
  await admin.end();
  for (const [side, dir] of sides) {
    const server = await startService({
      name: `ab-${side}`,
      cwd: dir,
      nodeFlags: makefileNodeFlags(dir),
      webConcurrency: undefined,
      databaseUrl: `${pgServer.adminUrl}/ab_${side}`,
      poolSize: loadConfig({}).poolSize,
      statementTimeoutMs: 60000,
    });
    servers.push({ side, server });
  }
  // warm-up
  for (const { server } of servers)
    for (const r of which) await runLoad('wrk', { url: server.url, requests: requests[r]!, connections: 32, seconds: 3, headers: requestHeaders }, 1);
  const results: Record<string, Array<{ p50: number; rps: number; cpuUs: number }>> = {};
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? servers : [...servers].reverse();
    for (const r of which) {
      for (const { side, server } of order) {
        const cpu0 = treeCpuMs(server.pid);
        const res = await runLoad('wrk', { url: server.url, requests: requests[r]!, connections: 32, seconds, headers: requestHeaders }, 1);
        const cpu = treeCpuMs(server.pid) - cpu0;
        const key = `${side} ${r}`;
        (results[key] ??= []).push({ p50: res.p50Ms, rps: res.requestsPerSecond, cpuUs: (cpu * 1000) / res.requests });
        console.log(
          `round ${round + 1} ${key}: ${res.requestsPerSecond.toFixed(0)} req/s p50 ${res.p50Ms.toFixed(2)} ms, service CPU ${((cpu * 1000) / res.requests).toFixed(0)} us/req (errors ${res.errors})`,
        );
      }
    }
  }
  console.log('\nmedians (range):');
  for (const [key, xs] of Object.entries(results)) {
    const p = spread(xs.map((x) => x.p50));
    const rps = spread(xs.map((x) => x.rps));
    console.log(
      `${key}: p50 ${p.median.toFixed(2)} ms (${p.min.toFixed(2)}-${p.max.toFixed(2)}), ${rps.median.toFixed(0)} req/s (${rps.min.toFixed(0)}-${rps.max.toFixed(0)}), CPU ${median(xs.map((x) => x.cpuUs)).toFixed(0)} us`,
    );
  }
  for (const [side] of sides) {
    if (!which.includes('user')) break;
    for (const r of which.filter((w) => w !== 'user')) {
      const ratios = results[`${side} ${r}`]!.map((x, i) => x.p50 / results[`${side} user`]![i]!.p50);
      console.log(`${side}: ${r} p50 / one-row p50 per round: ${ratios.map((x) => x.toFixed(2)).join(', ')}; median ${median(ratios).toFixed(2)}`);
    }
  }
} finally {
  for (const { server } of servers) await server.stop();
  await pgServer.stop();
}
